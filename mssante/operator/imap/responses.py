"""Byte-exact IMAP responses (rfc/9051 §7): status responses with response codes, untagged
data, and the value encodings they need (strings, flags, dates, sequence sets, mailbox names).

Everything returns `bytes` ending in CRLF (whole responses) or without it (values to put in a
FETCH, LIST or STATUS response). Text and names that would break the framing (CR, LF, NUL) are
refused with `ValueError` rather than sent: a response is never built from unchecked text.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from mssante.operator.imap import mutf7
from mssante.operator.imap.sequence import MAX_NUMBER, format_numbers

CRLF: Final = b"\r\n"
MAX_QUOTED: Final = 1024  # longer strings go out as literals, easier on clients' line buffers

Condition = Literal["OK", "NO", "BAD"]
UntaggedCondition = Literal["OK", "NO", "BAD", "PREAUTH", "BYE"]

_TAG: Final = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\+]+')
_ATOM: Final = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\\]]+')
_ASTRING: Final = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\]+')
_FLAG: Final = re.compile(rb'\\?[^\x00-\x20\x7f-\xff(){%*"\\\]]+|\\\*')
_MONTHS: Final = (
    "Jan",
    "Feb",
    "Mar",
    "Apr",
    "May",
    "Jun",
    "Jul",
    "Aug",
    "Sep",
    "Oct",
    "Nov",
    "Dec",
)


def _text(text: str) -> bytes:
    # rfc/9051 §9: text = 1*TEXT-CHAR (no CR, LF, NUL).
    raw = text.encode("utf-8")
    if not raw or any(c in raw for c in b"\r\n\x00"):
        raise ValueError("response text must be non-empty, without CR, LF or NUL")
    return raw


def _atom(value: str, what: str) -> bytes:
    raw = value.encode("ascii", "replace")
    if _ATOM.fullmatch(raw) is None:
        raise ValueError(f"{what} is not an atom: {value!r}")
    return raw


# --- response codes (rfc/9051 §7.1 and extensions) --------------------------------------------


@dataclass(frozen=True, slots=True)
class Code:
    """A response code, `[NAME args]`."""

    name: str
    args: str | None = None

    def __bytes__(self) -> bytes:
        out = b"[" + _atom(self.name, "response code")
        if self.args is not None:
            raw = self.args.encode("utf-8")
            # rfc/9051 §9 resp-text-code: arguments cannot contain "]" or CR/LF.
            if not raw or any(c in raw for c in b"]\r\n\x00"):
                raise ValueError("invalid response code arguments")
            out += b" " + raw
        return out + b"]"


ALERT: Final = Code("ALERT")
ALREADYEXISTS: Final = Code("ALREADYEXISTS")
AUTHENTICATIONFAILED: Final = Code("AUTHENTICATIONFAILED")
AUTHORIZATIONFAILED: Final = Code("AUTHORIZATIONFAILED")
CANNOT: Final = Code("CANNOT")
CLIENTBUG: Final = Code("CLIENTBUG")
CLOSED: Final = Code("CLOSED")  # rfc/7162 §3.2.11
CONTACTADMIN: Final = Code("CONTACTADMIN")
CORRUPTION: Final = Code("CORRUPTION")
EXPIRED: Final = Code("EXPIRED")
EXPUNGEISSUED: Final = Code("EXPUNGEISSUED")
HASCHILDREN: Final = Code("HASCHILDREN")
INUSE: Final = Code("INUSE")
LIMIT: Final = Code("LIMIT")
NOMODSEQ: Final = Code("NOMODSEQ")  # rfc/7162 §3.1.2
NONEXISTENT: Final = Code("NONEXISTENT")
NOPERM: Final = Code("NOPERM")
OVERQUOTA: Final = Code("OVERQUOTA")
PARSE: Final = Code("PARSE")
PRIVACYREQUIRED: Final = Code("PRIVACYREQUIRED")
READ_ONLY: Final = Code("READ-ONLY")
READ_WRITE: Final = Code("READ-WRITE")
SERVERBUG: Final = Code("SERVERBUG")
TOOBIG: Final = Code("TOOBIG")  # rfc/7889 §4
TRYCREATE: Final = Code("TRYCREATE")
UIDNOTSTICKY: Final = Code("UIDNOTSTICKY")
UNAVAILABLE: Final = Code("UNAVAILABLE")
UNKNOWN_CTE: Final = Code("UNKNOWN-CTE")  # rfc/3516 §4.3
USEATTR: Final = Code("USEATTR")  # rfc/6154 §6


def _nz(value: int, what: str, maximum: int = MAX_NUMBER) -> str:
    if not 1 <= value <= maximum:
        raise ValueError(f"{what} out of range: {value}")
    return str(value)


def _ordered_set(numbers: Sequence[int]) -> str:
    # rfc/4315 §3: in COPYUID the n-th source UID matches the n-th destination UID, so runs
    # are compressed in the given order, never sorted.
    if not numbers:
        raise ValueError("an empty UID set cannot be written")
    parts: list[str] = []
    start = prev = numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        _nz(start, "UID")
        _nz(prev, "UID")
        parts.append(str(start) if start == prev else f"{start}:{prev}")
        if n is not None:
            start = prev = n
    return ",".join(parts)


def uidvalidity(value: int) -> Code:
    return Code("UIDVALIDITY", _nz(value, "UIDVALIDITY"))


def uidnext(value: int) -> Code:
    return Code("UIDNEXT", _nz(value, "UIDNEXT"))


def unseen(seq: int) -> Code:
    return Code("UNSEEN", _nz(seq, "UNSEEN"))


def highestmodseq(modseq: int) -> Code:
    return Code("HIGHESTMODSEQ", _nz(modseq, "HIGHESTMODSEQ", 2**63 - 1))  # rfc/7162 §3.1.2.1


def modified(numbers: Iterable[int]) -> Code:
    return Code("MODIFIED", format_numbers(numbers))  # rfc/7162 §3.1.3


def appenduid(uidvalidity: int, uids: Sequence[int]) -> Code:
    # rfc/4315 §3 (several UIDs after a MULTIAPPEND, rfc/3502).
    return Code("APPENDUID", f"{_nz(uidvalidity, 'UIDVALIDITY')} {_ordered_set(uids)}")


def copyuid(uidvalidity: int, source: Sequence[int], destination: Sequence[int]) -> Code:
    """[COPYUID v source-uids destination-uids] (rfc/4315 §3), pairs in matching order."""
    if len(source) != len(destination):
        raise ValueError("COPYUID needs as many source as destination UIDs")
    v = _nz(uidvalidity, "UIDVALIDITY")
    return Code("COPYUID", f"{v} {_ordered_set(source)} {_ordered_set(destination)}")


def capability_code(capabilities: Iterable[str]) -> Code:
    return Code("CAPABILITY", b" ".join(_caps(capabilities)).decode("ascii"))


def permanentflags(flags: Iterable[str]) -> Code:
    return Code("PERMANENTFLAGS", flag_list(flags).decode("ascii"))


def badcharset(charsets: Iterable[str] = ()) -> Code:
    # rfc/9051 §7.1: [BADCHARSET (charset …)], the list optional.
    names = [astring(c).decode("utf-8") for c in charsets]
    return Code("BADCHARSET", "(" + " ".join(names) + ")" if names else None)


# --- status responses -------------------------------------------------------------------------


def tagged(tag: str, condition: Condition, text: str, code: Code | None = None) -> bytes:
    """`<tag> OK|NO|BAD [code] text` (rfc/9051 §7.1)."""
    raw_tag = tag.encode("ascii", "replace")
    if _TAG.fullmatch(raw_tag) is None:
        raise ValueError(f"invalid tag {tag!r}")
    return raw_tag + b" " + _condition(condition, text, code)


def untagged(condition: UntaggedCondition, text: str, code: Code | None = None) -> bytes:
    """`* OK|NO|BAD|PREAUTH|BYE [code] text`."""
    return b"* " + _condition(condition, text, code)


def bye(text: str, code: Code | None = None) -> bytes:
    return untagged("BYE", text, code)


def _condition(condition: str, text: str, code: Code | None) -> bytes:
    body = _text(text)
    if code is None:
        if body.startswith(b"["):
            # A client would read it as a response code (rfc/9051 §7.1).
            raise ValueError("response text cannot start with '[' without a code")
        return condition.encode("ascii") + b" " + body + CRLF
    return condition.encode("ascii") + b" " + bytes(code) + b" " + body + CRLF


def continuation(text: str = "Ready") -> bytes:
    """`+ text`: go on (send the literal, rfc/9051 §7.5)."""
    return b"+ " + _text(text) + CRLF


def challenge(data: bytes) -> bytes:
    """`+ base64`: a SASL challenge (rfc/9051 §6.2.2); an empty one is "+ " alone."""
    return b"+ " + base64.b64encode(data) + CRLF


# --- untagged data ----------------------------------------------------------------------------


def _caps(capabilities: Iterable[str]) -> list[bytes]:
    out = [_atom(c, "capability") for c in capabilities]
    if not out:
        raise ValueError("no capability")
    return out


def capability(capabilities: Iterable[str]) -> bytes:
    return b"* CAPABILITY " + b" ".join(_caps(capabilities)) + CRLF


def enabled(capabilities: Iterable[str]) -> bytes:
    # rfc/5161 §3.2: "* ENABLED" may list nothing.
    caps = [_atom(c, "capability") for c in capabilities]
    return b"* ENABLED" + b"".join(b" " + c for c in caps) + CRLF


def exists(count: int) -> bytes:
    return b"* %d EXISTS\r\n" % _count(count)


def recent(count: int) -> bytes:
    return b"* %d RECENT\r\n" % _count(count)


def expunge(seq: int) -> bytes:
    return b"* %s EXPUNGE\r\n" % _nz(seq, "sequence number").encode()


def vanished(uids: Iterable[int], *, earlier: bool = False) -> bytes:
    """`* VANISHED [(EARLIER)] uid-set` (rfc/7162 §3.2.10)."""
    prefix = b"* VANISHED (EARLIER) " if earlier else b"* VANISHED "
    return prefix + format_numbers(uids).encode("ascii") + CRLF


def flags(flag_names: Iterable[str]) -> bytes:
    return b"* FLAGS " + flag_list(flag_names) + CRLF


def search(numbers: Iterable[int], *, modseq: int | None = None) -> bytes:
    """`* SEARCH n…` (rfc/3501 §7.2.5), with `(MODSEQ n)` per rfc/7162 §3.1.5."""
    out = b"* SEARCH" + b"".join(b" " + _nz(n, "number").encode() for n in numbers)
    if modseq is not None:
        out += b" (MODSEQ " + _nz(modseq, "MODSEQ", 2**63 - 1).encode() + b")"
    return out + CRLF


def esearch(
    tag: str | None,
    *,
    uid: bool = False,
    min_: int | None = None,
    max_: int | None = None,
    all_: Iterable[int] | None = None,
    count: int | None = None,
    modseq: int | None = None,
) -> bytes:
    """`* ESEARCH (TAG "t") [UID] [MIN n] [MAX n] [ALL set] [COUNT n] [MODSEQ n]`
    (rfc/4731 §3.1, rfc/9051 §7.3.4)."""
    out = b"* ESEARCH"
    if tag is not None:
        out += b" (TAG " + quoted(tag.encode("ascii")) + b")"
    if uid:
        out += b" UID"
    if min_ is not None:
        out += b" MIN " + _nz(min_, "MIN").encode()
    if max_ is not None:
        out += b" MAX " + _nz(max_, "MAX").encode()
    if all_ is not None:
        numbers = list(all_)
        if numbers:  # rfc/4731 §3.1: ALL is omitted when nothing matched
            out += b" ALL " + format_numbers(numbers).encode()
    if count is not None:
        out += b" COUNT " + str(_count(count)).encode()
    if modseq is not None:
        out += b" MODSEQ " + _nz(modseq, "MODSEQ", 2**63 - 1).encode()
    return out + CRLF


def list_item(
    attributes: Iterable[str],
    delimiter: str | None,
    name: str,
    *,
    utf8: bool = False,
    command: Literal["LIST", "LSUB"] = "LIST",
) -> bytes:
    """`* LIST (\\attrs) "/" "name"` (rfc/9051 §7.3.1), name in modified UTF-7 unless utf8."""
    attrs = b" ".join(_flag(a) for a in attributes)
    if delimiter is None:
        delim = b"NIL"
    else:
        raw = delimiter.encode("ascii")
        if len(raw) != 1 or raw in (b"\r", b"\n", b"\x00"):
            raise ValueError("invalid hierarchy delimiter")
        delim = quoted(raw)
    return b"* %s (%s) %s %s\r\n" % (command.encode(), attrs, delim, mailbox(name, utf8=utf8))


def status(name: str, items: Sequence[tuple[str, int]], *, utf8: bool = False) -> bytes:
    """`* STATUS "name" (MESSAGES n …)` (rfc/9051 §7.3.2)."""
    body = b" ".join(_atom(k, "STATUS item") + b" " + str(_count(v)).encode() for k, v in items)
    return b"* STATUS " + mailbox(name, utf8=utf8) + b" (" + body + b")" + CRLF


def quotaroot(name: str, roots: Sequence[str], *, utf8: bool = False) -> bytes:
    """`* QUOTAROOT "mailbox" root …` (rfc/9208 §5.2); no root: the mailbox has no quota."""
    listed = b"".join(b" " + astring(root, utf8=utf8) for root in roots)
    return b"* QUOTAROOT " + mailbox(name, utf8=utf8) + listed + CRLF


def quota(root: str, resources: Sequence[tuple[str, int, int]], *, utf8: bool = False) -> bytes:
    """`* QUOTA root (NAME usage limit …)` (rfc/9208 §5.1); `resources` are (name, usage,
    limit), both numbers 63-bit (`number64`)."""
    body = b" ".join(
        _atom(n, "quota resource") + b" " + number(usage) + b" " + number(limit)
        for n, usage, limit in resources
    )
    return b"* QUOTA " + astring(root, utf8=utf8) + b" (" + body + b")" + CRLF


def fetch(seq: int, items: Sequence[tuple[str, bytes]]) -> bytes:
    """`* seq FETCH (NAME value …)` (rfc/9051 §7.5.2); values are already encoded (see
    `string`, `nstring`, `flag_list`, `date_time`, `number`)."""
    if not items:
        raise ValueError("a FETCH response needs at least one item")
    parts: list[bytes] = []
    for name, value in items:
        raw = name.encode("ascii")
        # Names may hold spaces (BODY[HEADER.FIELDS (FROM TO)]), never line breaks.
        if not raw or any(c in raw for c in b"\r\n\x00"):
            raise ValueError(f"invalid FETCH item name {name!r}")
        parts.append(raw + b" " + value)
    seq_raw = _nz(seq, "sequence number").encode()
    return b"* " + seq_raw + b" FETCH (" + b" ".join(parts) + b")" + CRLF


# --- values -----------------------------------------------------------------------------------


def _count(value: int) -> int:
    if not 0 <= value <= 2**63 - 1:
        raise ValueError(f"count out of range: {value}")
    return value


def number(value: int) -> bytes:
    return str(_count(value)).encode()


def quoted(value: bytes) -> bytes:
    """`"…"` with `\\` and `"` escaped; the caller checked the bytes may be quoted."""
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def literal(value: bytes) -> bytes:
    """`{N}` CRLF octets (rfc/9051 §4.3); NUL needs `literal8`."""
    if b"\x00" in value:
        raise ValueError("NUL cannot be sent in a literal; use literal8")
    return b"{%d}\r\n" % len(value) + value


def literal8(value: bytes) -> bytes:
    """`~{N}` CRLF octets, for BINARY[] data (rfc/3516 §4.2)."""
    return b"~{%d}\r\n" % len(value) + value


def _quotable(value: bytes, utf8: bool) -> bool:
    if len(value) > MAX_QUOTED or any(c in value for c in b"\r\n\x00"):
        return False
    if value.isascii():
        return True
    if not utf8:
        return False
    try:
        value.decode("utf-8")  # rfc/9051 §9 QUOTED-CHAR admits UTF-8 once UTF8=ACCEPT is on
    except UnicodeDecodeError:
        return False
    return True


def _string_value(value: bytes, utf8: bool = False) -> bytes:
    return quoted(value) if _quotable(value, utf8) else literal(value)


def string(value: bytes | str, *, utf8: bool = False) -> bytes:
    """A `string`: quoted when safe (short, 7-bit or UTF-8 with utf8, no CR/LF/NUL), else a
    literal."""
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return _string_value(raw, utf8)


def nstring(value: bytes | str | None, *, utf8: bool = False) -> bytes:
    return b"NIL" if value is None else string(value, utf8=utf8)


def astring(value: bytes | str, *, utf8: bool = False) -> bytes:
    """An atom when the value is one (and is not NIL), else a string."""
    raw = value.encode("utf-8") if isinstance(value, str) else value
    if _ASTRING.fullmatch(raw) is not None and raw.upper() != b"NIL":
        return raw
    return _string_value(raw, utf8)


def mailbox(name: str, *, utf8: bool = False) -> bytes:
    """A mailbox name, always as a string: modified UTF-7 (rfc/3501 §5.1.3) or, once the
    client enabled UTF8=ACCEPT, UTF-8 (rfc/6855 §3)."""
    encoded = name.encode("utf-8") if utf8 else mutf7.encode(name).encode("ascii")
    return _string_value(encoded, utf8)


def _flag(name: str) -> bytes:
    raw = name.encode("ascii", "replace")
    if _FLAG.fullmatch(raw) is None:
        raise ValueError(f"invalid flag {name!r}")
    return raw


def flag_list(flag_names: Iterable[str]) -> bytes:
    """`(\\Seen $Label)` (rfc/9051 §9 flag-list)."""
    return b"(" + b" ".join(_flag(f) for f in flag_names) + b")"


def date_time(value: dt.datetime) -> bytes:
    """`"dd-Mon-yyyy hh:mm:ss +zzzz"` (rfc/9051 §9 date-time, day space-padded)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("INTERNALDATE needs a timezone")
    offset = value.utcoffset()
    assert offset is not None
    minutes = int(offset.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    text = (
        f'"{value.day:2d}-{_MONTHS[value.month - 1]}-{value.year:04d} '
        f"{value.hour:02d}:{value.minute:02d}:{value.second:02d} "
        f'{sign}{minutes // 60:02d}{minutes % 60:02d}"'
    )
    return text.encode("ascii")
