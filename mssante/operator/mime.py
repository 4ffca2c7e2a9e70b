"""MIME structure of a message, computed once at delivery so that IMAP FETCH only slices bytes.

Pure functions, bytes in and frozen dataclasses out; no I/O. What is computed is what an IMAP
server needs to answer without reading the message again (RFC 3501 §7.4.2):

- the ENVELOPE (date, subject, addresses, In-Reply-To, Message-ID), fields kept raw as the
  RFC asks (encoded words are the client's to decode);
- the BODYSTRUCTURE: per part its media type and parameters, Content-ID, description,
  transfer encoding, size and line count, MD5, disposition, language and location;
- per part, the offsets of its header section and body in the stored message, so that
  `BODY[1.2]`, `BODY[1.MIME]`, `BODY[3.HEADER]` and BINARY are served by slicing.

The input comes from the network: every loop is bounded (nesting depth, number of parts,
header fields, addresses, parameters, characters examined per structured field), and bad input
is never an error. A syntactically invalid Content-Type is read as `text/plain;
charset=us-ascii` (RFC 2045 §5.2); a multipart without a usable boundary or without any
delimiter line degrades the same way; what exceeds a bound becomes an opaque
`application/octet-stream` leaf. The delivery path nevertheless guards the call (`fallback`).

Header text is decoded as UTF-8 with `surrogateescape`, so 8-bit bytes that are not UTF-8 come
back byte for byte when encoded again (`encode`), including through the JSON form.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MAX_DEPTH = 16  # nesting of multiparts and encapsulated messages
MAX_PARTS = 512  # MIME entities in one message, containers included
MAX_HEADER_FIELDS = 1024  # fields recorded per header section; later ones still count as header
MAX_STRUCTURED_CHARS = 16_384  # characters of one structured field that are examined
MAX_ADDRESSES = 1024  # per address header
MAX_PARAMS = 64  # per Content-Type / Content-Disposition
MAX_BOUNDARY = 256  # RFC 2046 §5.1.1 allows 70; some mailers exceed it, nobody needs 256

# UW imapd's spelling of "no domain in this address": an address structure with a NIL host
# means a group marker (RFC 3501 §7.4.2), so a real address without a domain needs a value.
MISSING_HOST = ".MISSING-HOST-NAME."

JSON_VERSION = 1

_LF = 0x0A
_CR = 0x0D
# field-name = 1*ftext, ftext = %d33-57 / %d59-126 (RFC 5322 §3.6.8); obs-optional allows
# white space before the colon (RFC 5322 §4.5.3).
_FIELD_NAME = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
# token := 1*<any (US-ASCII) CHAR except SPACE, CTLs, or tspecials> (RFC 2045 §5.1)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`{|}~0-9A-Za-z]+")
_COMMENT = re.compile(r"\([^()]*\)")
# Bytes that may appear in an IMAP quoted string: TEXT-CHAR (RFC 3501 §9), 7-bit, no CR/LF.
_QUOTABLE = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x7f]*")


def decode(raw: bytes) -> str:
    """Header bytes as text; bytes that are not UTF-8 survive as surrogates (see `encode`)."""
    return raw.decode("utf-8", "surrogateescape")


def encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


# --- header sections --------------------------------------------------------------------------


@dataclass(frozen=True)
class HeaderField:
    name: str  # lower-cased
    value: str  # unfolded (RFC 5322 §2.2.3), everything after the colon, not stripped
    start: int  # offset of the field's first byte
    end: int  # offset just past its last line break


@dataclass(frozen=True)
class Header:
    fields: tuple[HeaderField, ...]
    start: int
    body_start: int  # just past the blank line, or where the body begins without one
    separator: bool  # a blank line ended the header section

    def first(self, name: str) -> str | None:
        """The value of the first field with this (lower-case) name."""
        for f in self.fields:
            if f.name == name:
                return f.value
        return None

    def all(self, name: str) -> list[HeaderField]:
        return [f for f in self.fields if f.name == name]


def split_header(data: bytes, start: int = 0, end: int | None = None) -> Header:
    """The header section of the entity in `data[start:end]` (RFC 5322 §2.1, RFC 2045 §3).

    It ends at the first empty line (which belongs to it), or at the first line that is neither
    a field nor the continuation of one: that line starts the body, as if a blank line preceded
    it. A white-space line with no field before it is such a line (stored below our own trace
    fields, it would otherwise continue them). Lines end with LF, with or without CR.
    """
    stop = len(data) if end is None else min(end, len(data))
    fields: list[HeaderField] = []
    pos = start
    field_start = -1
    value_start = 0
    name = ""

    def close(field_end: int) -> None:
        if field_start < 0 or len(fields) >= MAX_HEADER_FIELDS:
            return
        raw = data[value_start:field_end]
        if raw.endswith(b"\n"):
            raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
        # Within one field every line break precedes white space: removing them unfolds.
        unfolded = raw.replace(b"\r\n", b"").replace(b"\n", b"")
        fields.append(HeaderField(name, decode(unfolded), field_start, field_end))

    while pos < stop:
        newline = data.find(b"\n", pos, stop)
        line_end = stop if newline < 0 else newline + 1
        first = data[pos]
        if first == _LF or (first == _CR and line_end - pos == 2 and newline >= 0):
            close(pos)
            return Header(tuple(fields), start, line_end, True)
        if first in (0x20, 0x09) and field_start >= 0:
            pos = line_end  # a continuation: the current field grows
            continue
        match = _FIELD_NAME.match(data, pos, line_end)
        if match is None:
            close(pos)
            return Header(tuple(fields), start, pos, False)
        close(pos)
        field_start = pos
        value_start = match.end()
        name = match.group(1).decode("ascii").lower()
        pos = line_end
    close(stop)
    return Header(tuple(fields), start, stop, False)


# --- structured field values ------------------------------------------------------------------

Token = tuple[str, str]  # (kind, text): a atom, q quoted string, c comment, l literal, s special


def _lex(text: str, specials: str) -> list[Token]:
    """RFC 5322 §3.2 lexical tokens of a structured field, leniently and within bounds."""
    out: list[Token] = []
    n = min(len(text), MAX_STRUCTURED_CHARS)
    i = 0
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            i += 1
        elif c == '"':
            j = i + 1
            buf: list[str] = []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n:
                    j += 1
                buf.append(text[j])
                j += 1
            out.append(("q", "".join(buf)))
            i = j + 1
        elif c == "(":
            depth = 1
            j = i + 1
            buf = []
            while j < n:
                ch = text[j]
                if ch == "\\" and j + 1 < n:
                    j += 1
                    buf.append(text[j])
                elif ch == "(":
                    depth += 1
                    buf.append(ch)
                elif ch == ")":
                    depth -= 1
                    if depth == 0:
                        break
                    buf.append(ch)
                else:
                    buf.append(ch)
                j += 1
            out.append(("c", "".join(buf)))
            i = j + 1
        elif c == "[":
            j = text.find("]", i + 1, n)
            j = n - 1 if j < 0 else j
            out.append(("l", text[i : j + 1]))
            i = j + 1
        elif c in specials:
            out.append(("s", c))
            i += 1
        else:
            j = i + 1
            while j < n and text[j] not in specials and text[j] not in ' \t\r\n"([':
                j += 1
            out.append(("a", text[i:j]))
            i = j
    return out


def _uncomment(text: str) -> str:
    # Comments are allowed in MIME structured fields (RFC 2045 §5.1); nested ones are rare
    # enough that peeling one level at a time, a bounded number of times, is enough.
    for _ in range(4):
        stripped = _COMMENT.sub(" ", text)
        if stripped == text:
            break
        text = stripped
    return text.strip()


def _split_semicolons(text: str) -> list[str]:
    pieces: list[str] = []
    buf: list[str] = []
    quoted = escaped = False
    for ch in text[:MAX_STRUCTURED_CHARS]:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ";" and not quoted:
            pieces.append("".join(buf))
            buf = []
            continue
        buf.append(ch)
    pieces.append("".join(buf))
    return pieces


def _unquote(value: str) -> str:
    if not value.startswith('"'):
        return _uncomment(value) if "(" in value else value
    buf: list[str] = []
    i = 1
    while i < len(value) and value[i] != '"':
        if value[i] == "\\" and i + 1 < len(value):
            i += 1
        buf.append(value[i])
        i += 1
    return "".join(buf)


Params = tuple[tuple[str, str], ...]


def _params(pieces: Sequence[str]) -> Params:
    """`attribute=value` pairs (RFC 2045 §5.1), names upper-cased, first occurrence kept.

    Lenient on purpose: an unquoted value containing tspecials (`boundary=----=_Part_1`) is
    common and taken as written. RFC 2231 continuations are passed through as they are.
    """
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for piece in pieces:
        key, sep, value = piece.partition("=")
        key = key.strip()
        if not sep or not _TOKEN.fullmatch(key):
            continue
        upper = key.upper()
        if upper in seen:
            continue
        seen.add(upper)
        out.append((upper, _unquote(value.strip())))
        if len(out) >= MAX_PARAMS:
            break
    return tuple(out)


def _content_type(value: str | None) -> tuple[str, str, Params] | None:
    if value is None:
        return None
    pieces = _split_semicolons(value)
    kind, sep, sub = _uncomment(pieces[0]).partition("/")
    kind, sub = kind.strip(), sub.strip()
    if not sep or not _TOKEN.fullmatch(kind) or not _TOKEN.fullmatch(sub):
        return None
    return kind.upper(), sub.upper(), _params(pieces[1:])


def _single_token(value: str | None) -> str | None:
    if value is None:
        return None
    text = _uncomment(value)
    return text.upper() if _TOKEN.fullmatch(text) else None


def _nstring(value: str | None) -> str | None:
    return None if value is None else value.strip()


@dataclass(frozen=True)
class Disposition:
    type: str  # upper-cased: INLINE, ATTACHMENT…
    params: Params


def _disposition(value: str | None) -> Disposition | None:
    """Content-Disposition (RFC 2183)."""
    if value is None:
        return None
    pieces = _split_semicolons(value)
    kind = _uncomment(pieces[0])
    if not _TOKEN.fullmatch(kind):
        return None
    return Disposition(kind.upper(), _params(pieces[1:]))


def _language(value: str | None) -> tuple[str, ...] | None:
    """Content-Language (RFC 3282): a comma-separated list of tags."""
    if value is None:
        return None
    tags = tuple(t.strip() for t in _uncomment(value).split(",")[:MAX_PARAMS] if t.strip())
    return tags or None


# --- addresses and the envelope ---------------------------------------------------------------


@dataclass(frozen=True)
class Address:
    """An RFC 3501 address structure: (name route mailbox host).

    A NIL host marks a group (RFC 3501 §7.4.2): with a mailbox, the start of the group named by
    it; with no mailbox, the end of the group.
    """

    name: str | None
    route: str | None  # obsolete source route, `@a,@b` (RFC 5322 §4.4)
    mailbox: str | None
    host: str | None


_GROUP_END = Address(None, None, None, None)


def _quote_local(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _join_spec(tokens: Sequence[Token]) -> str:
    return "".join(_quote_local(t) if k == "q" else t for k, t in tokens)


def _phrase(tokens: Sequence[Token]) -> str | None:
    words = [t for k, t in tokens if k in ("a", "q", "l")]
    return " ".join(words) if words else None


def _addr_spec(tokens: Sequence[Token]) -> tuple[str | None, str | None]:
    ats = [i for i, t in enumerate(tokens) if t == ("s", "@")]
    if not ats:
        local = _join_spec([t for t in tokens if t[0] != "s"])
        return (local, MISSING_HOST) if local else (None, None)
    at = ats[-1]
    local = _join_spec([t for t in tokens[:at] if t[0] != "s"])
    domain = "".join(t for k, t in tokens[at + 1 :] if k != "s")
    return local, domain or MISSING_HOST


def _mailbox(tokens: Sequence[Token]) -> Address | None:
    """One `name-addr` or `addr-spec` (RFC 5322 §3.4), or None for nothing usable."""
    if all(k == "c" for k, _ in tokens):
        return None
    if ("s", "<") in tokens:
        lt = tokens.index(("s", "<"))
        gt = tokens.index(("s", ">"), lt) if ("s", ">") in tokens[lt:] else len(tokens)
        inner = [t for t in tokens[lt + 1 : gt] if t[0] != "c"]
        route = None
        if ("s", ":") in inner:
            colon = inner.index(("s", ":"))
            route = "".join(t for _, t in inner[:colon]) or None
            inner = inner[colon + 1 :]
        local, host = _addr_spec(inner)
        name = _phrase(tokens[:lt])
        if local is None and name is None:
            return None
        return Address(name, route, local or "", host or MISSING_HOST)
    local, host = _addr_spec([t for t in tokens if t[0] != "c"])
    if local is None:
        return None
    # Old style `user@host (Full Name)`: the comment is the only name there is.
    comments = [t for k, t in tokens if k == "c" and t.strip()]
    return Address(comments[-1].strip() if comments else None, None, local, host)


def parse_addresses(value: str | None) -> tuple[Address, ...]:
    """An address-list with groups (RFC 5322 §3.4), leniently: garbage is skipped, not fatal."""
    if value is None:
        return ()
    out: list[Address] = []
    current: list[Token] = []
    angle = group = False

    def flush() -> None:
        address = _mailbox(current)
        if address is not None:
            out.append(address)
        current.clear()

    for token in _lex(value, "<>,;:@"):
        if len(out) >= MAX_ADDRESSES:
            break
        if token[0] == "s":
            special = token[1]
            if special == ">":
                angle = False
            elif not angle:
                if special == ",":
                    flush()
                    continue
                if special == ":" and not group and ("s", "@") not in current:
                    out.append(Address(None, None, _phrase(current) or "", None))
                    current.clear()
                    group = True
                    continue
                if special == ";" and group:
                    flush()
                    out.append(_GROUP_END)
                    group = False
                    continue
                if special == "<":
                    angle = True
        current.append(token)
    flush()
    if group:
        out.append(_GROUP_END)
    return tuple(out[:MAX_ADDRESSES])


@dataclass(frozen=True)
class Envelope:
    """RFC 3501 §7.4.2 ENVELOPE; strings as they appear in the header, unfolded."""

    date: str | None
    subject: str | None
    from_: tuple[Address, ...]
    sender: tuple[Address, ...]
    reply_to: tuple[Address, ...]
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    bcc: tuple[Address, ...]
    in_reply_to: str | None
    message_id: str | None


def envelope(header: Header) -> Envelope:
    from_ = parse_addresses(header.first("from"))
    return Envelope(
        date=_nstring(header.first("date")),
        subject=_nstring(header.first("subject")),
        from_=from_,
        # RFC 3501 §7.4.2: absent or empty Sender and Reply-To take the value of From.
        sender=parse_addresses(header.first("sender")) or from_,
        reply_to=parse_addresses(header.first("reply-to")) or from_,
        to=parse_addresses(header.first("to")),
        cc=parse_addresses(header.first("cc")),
        bcc=parse_addresses(header.first("bcc")),
        in_reply_to=_nstring(header.first("in-reply-to")),
        message_id=_nstring(header.first("message-id")),
    )


# --- body structure ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One MIME entity: what BODYSTRUCTURE says about it, and where it lies in the message.

    `header_start:body_start` is its header section with the blank line (BODY[n.MIME]);
    `body_start:body_end` its body (BODY[n]), without the line break that precedes the next
    boundary delimiter, which belongs to the delimiter (RFC 2046 §5.1.1).
    """

    type: str  # upper-cased, e.g. TEXT
    subtype: str  # upper-cased, e.g. PLAIN
    params: Params
    id: str | None
    description: str | None
    encoding: str  # upper-cased Content-Transfer-Encoding, 7BIT when absent
    lines: int | None  # for TEXT/* and MESSAGE/RFC822
    md5: str | None  # the Content-MD5 field (RFC 1864), if any
    disposition: Disposition | None
    language: tuple[str, ...] | None
    location: str | None
    header_start: int
    body_start: int
    body_end: int
    parts: tuple[Part, ...] = ()  # children of a multipart
    message: Message | None = None  # the encapsulated message of a MESSAGE/RFC822

    @property
    def size(self) -> int:
        """body-fld-octets: the body's size in its transfer encoding."""
        return self.body_end - self.body_start

    @property
    def is_multipart(self) -> bool:
        return bool(self.parts)


@dataclass(frozen=True)
class Message:
    """A message (the stored one, or one encapsulated in a MESSAGE/RFC822 part).

    `body` is the message's own entity: its header section is the message header
    (BODY[HEADER]), its body the text (BODY[TEXT]).
    """

    envelope: Envelope
    body: Part

    @property
    def size(self) -> int:
        return self.body.body_end - self.body.header_start


def _lines(data: bytes, start: int, end: int) -> int:
    """body-fld-lines: line breaks in the body, plus an unterminated last line."""
    if end <= start:
        return 0
    count = data.count(b"\n", start, end)
    return count + (0 if data[end - 1] == _LF else 1)


_DEFAULT_TEXT = ("TEXT", "PLAIN", (("CHARSET", "US-ASCII"),))
_OPAQUE = ("APPLICATION", "OCTET-STREAM", ())
_IDENTITY_ENCODINGS = {"7BIT", "8BIT", "BINARY"}


class _Budget:
    def __init__(self) -> None:
        self.parts = MAX_PARTS


def _delimiters(data: bytes, start: int, end: int, boundary: bytes) -> list[tuple[int, int, bool]]:
    """Boundary delimiter lines in `data[start:end]`: (line start, next line start, is close).

    A delimiter line is `--boundary`, or `--boundary--` for the close delimiter, then only
    transport padding (spaces and tabs) up to the line break (RFC 2046 §5.1.1). It starts the
    body or follows a line break.
    """
    dash = b"--" + boundary
    found: list[tuple[int, int, bool]] = []
    pos = start
    while len(found) <= MAX_PARTS:
        i = data.find(dash, pos, end)
        if i < 0:
            break
        pos = i + 1
        if i != start and data[i - 1] != _LF:
            continue
        after = i + len(dash)
        close = data.startswith(b"--", after, end)
        newline = data.find(b"\n", after, end)
        line_end = end if newline < 0 else newline + 1
        tail = data[after + (2 if close else 0) : newline if newline >= 0 else end]
        if tail.rstrip(b"\r").strip(b" \t"):
            continue  # `--boundaryX`: a longer boundary, or text that merely starts alike
        found.append((i, line_end, close))
        if close:
            break
        pos = line_end
    return found


def _multipart_children(
    data: bytes,
    body_start: int,
    body_end: int,
    boundary: bytes,
    depth: int,
    budget: _Budget,
    digest: bool,
) -> tuple[Part, ...]:
    delimiters = _delimiters(data, body_start, body_end, boundary)
    children: list[Part] = []
    for index, (_, part_start, close) in enumerate(delimiters):
        if close or budget.parts <= 0:
            break
        following = delimiters[index + 1] if index + 1 < len(delimiters) else None
        if following is None:
            part_end = body_end  # no close delimiter: the last part runs to the end
        else:
            part_end = following[0]
            # The line break before a delimiter belongs to the delimiter (RFC 2046 §5.1.1).
            if part_end - 2 >= part_start and data[part_end - 2 : part_end] == b"\r\n":
                part_end -= 2
            elif part_end - 1 >= part_start and data[part_end - 1] == _LF:
                part_end -= 1
        header = split_header(data, part_start, part_end)
        # RFC 2046 §5.1.5: in a digest, parts are messages unless they say otherwise.
        default = ("MESSAGE", "RFC822", ()) if digest else None
        children.append(_entity(data, header, part_end, depth + 1, budget, default))
    return tuple(children)


def _entity(
    data: bytes,
    header: Header,
    end: int,
    depth: int,
    budget: _Budget,
    default: tuple[str, str, Params] | None = None,
) -> Part:
    budget.parts -= 1
    raw_type = header.first("content-type")
    parsed = _content_type(raw_type)
    if parsed is None:
        # Absent, or syntactically invalid: RFC 2045 §5.2 default (RFC 2046 §5.1.5 in digests).
        parsed = default if (raw_type is None and default is not None) else _DEFAULT_TEXT
    kind, subtype, params = parsed
    encoding = _single_token(header.first("content-transfer-encoding")) or "7BIT"
    body_start = min(header.body_start, end)
    parts: tuple[Part, ...] = ()
    message: Message | None = None
    lines: int | None = None

    if kind == "MULTIPART":
        boundary = dict(params).get("BOUNDARY", "")
        boundary_bytes = encode(boundary)
        if depth >= MAX_DEPTH or budget.parts <= 0:
            kind, subtype, params = _OPAQUE
        elif 0 < len(boundary_bytes) <= MAX_BOUNDARY:
            parts = _multipart_children(
                data, body_start, end, boundary_bytes, depth, budget, subtype == "DIGEST"
            )
        if kind == "MULTIPART" and not parts:
            # No boundary, or not one delimiter line: not a multipart we can read.
            kind, subtype, params = _DEFAULT_TEXT
    elif kind == "MESSAGE" and subtype == "RFC822":
        # RFC 2046 §5.2.1: only identity encodings are allowed for message/rfc822; an encoded
        # one cannot be described as a message without decoding it, so it is opaque.
        if encoding not in _IDENTITY_ENCODINGS or depth >= MAX_DEPTH or budget.parts <= 0:
            kind, subtype, params = _OPAQUE
        else:
            message = _message(data, body_start, end, depth + 1, budget)
            lines = _lines(data, body_start, end)
    if kind == "TEXT":
        lines = _lines(data, body_start, end)
        if not any(name == "CHARSET" for name, _ in params):
            # RFC 2046 §4.1.2: the default charset of text is US-ASCII.
            params = (*params, ("CHARSET", "US-ASCII"))
    return Part(
        type=kind,
        subtype=subtype,
        params=params,
        id=_nstring(header.first("content-id")),
        description=_nstring(header.first("content-description")),
        encoding=encoding,
        lines=lines,
        md5=_nstring(header.first("content-md5")),
        disposition=_disposition(header.first("content-disposition")),
        language=_language(header.first("content-language")),
        # RFC 2557 §4.4.1: white space in a folded Content-Location is not part of the URI.
        location=(
            "".join(loc.split()) if (loc := header.first("content-location")) is not None else None
        ),
        header_start=header.start,
        body_start=body_start,
        body_end=max(end, body_start),
        parts=parts,
        message=message,
    )


def _message(data: bytes, start: int, end: int, depth: int, budget: _Budget) -> Message:
    header = split_header(data, start, end)
    return Message(envelope(header), _entity(data, header, end, depth, budget))


def parse(data: bytes) -> Message:
    """The structure of a whole message. Never raises on any input (that is tested)."""
    return _message(data, 0, len(data), 0, _Budget())


def fallback(data: bytes) -> Message:
    """A minimal structure (no envelope, one text/plain body): the guard if `parse` failed."""
    empty = Envelope(None, None, (), (), (), (), (), (), None, None)
    kind, subtype, params = _DEFAULT_TEXT
    body = Part(
        kind, subtype, params, None, None, "7BIT", _lines(data, 0, len(data)), None, None, None,
        None, 0, 0, len(data),
    )  # fmt: skip
    return Message(empty, body)


def find_part(message: Message, section: Sequence[int]) -> Part | None:
    """The part a section number names (RFC 3501 §6.4.5), or None if there is none.

    A non-multipart message has only a part 1, itself; the parts of an encapsulated message
    are numbered inside the MESSAGE/RFC822 part that holds it.
    """
    part = message.body
    for n in section:
        if part.message is not None:
            part = part.message.body
        if part.parts:
            if not 1 <= n <= len(part.parts):
                return None
            part = part.parts[n - 1]
        elif n != 1:
            return None
    return part


# --- IMAP syntax (RFC 3501 §9) ---------------------------------------------------------------


def imap_string(value: str | None) -> bytes:
    """nstring: NIL, a quoted string, or a literal for 8-bit or line-breaking content.

    NUL is not allowed in IMAP4rev1 strings (CHAR8 excludes it) and is dropped.
    """
    if value is None:
        return b"NIL"
    if value.isascii() and value.isprintable():
        # The common case (header words, MIME names, addresses), decided without a regex: a
        # printable ASCII string has no NUL, CR or LF, so it is always quotable.
        return b'"' + value.encode().replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    raw = encode(value).replace(b"\x00", b"")
    if _QUOTABLE.fullmatch(raw):
        return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(raw) + raw


def _imap_addresses(addresses: Sequence[Address]) -> bytes:
    if not addresses:
        return b"NIL"
    items = (
        b"(%s %s %s %s)"
        % (imap_string(a.name), imap_string(a.route), imap_string(a.mailbox), imap_string(a.host))
        for a in addresses
    )
    return b"(" + b"".join(items) + b")"


def imap_envelope(env: Envelope) -> bytes:
    """The ENVELOPE data item (RFC 3501 §7.4.2)."""
    return b"(%s)" % b" ".join(
        [
            imap_string(env.date),
            imap_string(env.subject),
            _imap_addresses(env.from_),
            _imap_addresses(env.sender),
            _imap_addresses(env.reply_to),
            _imap_addresses(env.to),
            _imap_addresses(env.cc),
            _imap_addresses(env.bcc),
            imap_string(env.in_reply_to),
            imap_string(env.message_id),
        ]
    )


def _imap_params(params: Params) -> bytes:
    if not params:
        return b"NIL"
    return b"(" + b" ".join(imap_string(k) + b" " + imap_string(v) for k, v in params) + b")"


def _imap_disposition(disposition: Disposition | None) -> bytes:
    if disposition is None:
        return b"NIL"
    return b"(%s %s)" % (imap_string(disposition.type), _imap_params(disposition.params))


def _imap_language(language: tuple[str, ...] | None) -> bytes:
    if language is None:
        return b"NIL"
    if len(language) == 1:
        return imap_string(language[0])
    return b"(" + b" ".join(imap_string(tag) for tag in language) + b")"


def imap_body(part: Part, extensible: bool = True) -> bytes:
    """BODYSTRUCTURE (`extensible`) or BODY of an entity (RFC 3501 §7.4.2, §9 `body`)."""
    if part.parts:
        # body-type-mpart = 1*body SP media-subtype [SP body-ext-mpart]
        out = b"".join(imap_body(child, extensible) for child in part.parts)
        out += b" " + imap_string(part.subtype)
        if extensible:
            out += b" " + b" ".join(
                [
                    _imap_params(part.params),
                    _imap_disposition(part.disposition),
                    _imap_language(part.language),
                    imap_string(part.location),
                ]
            )
        return b"(" + out + b")"
    fields = [
        imap_string(part.type),
        imap_string(part.subtype),
        _imap_params(part.params),
        imap_string(part.id),
        imap_string(part.description),
        imap_string(part.encoding),
        b"%d" % part.size,
    ]
    if part.message is not None:
        # body-type-msg: envelope, body of the encapsulated message, its line count
        fields += [
            imap_envelope(part.message.envelope),
            imap_body(part.message.body, extensible),
            b"%d" % (part.lines or 0),
        ]
    elif part.type == "TEXT":
        fields.append(b"%d" % (part.lines or 0))
    if extensible:
        # body-ext-1part = body-fld-md5 [SP body-fld-dsp [SP body-fld-lang [SP body-fld-loc]]]
        fields += [
            imap_string(part.md5),
            _imap_disposition(part.disposition),
            _imap_language(part.language),
            imap_string(part.location),
        ]
    return b"(" + b" ".join(fields) + b")"


# --- persistence ------------------------------------------------------------------------------


def _address_json(addresses: Sequence[Address]) -> list[list[str | None]]:
    return [[a.name, a.route, a.mailbox, a.host] for a in addresses]


def _envelope_json(env: Envelope) -> list[Any]:
    return [
        env.date,
        env.subject,
        _address_json(env.from_),
        _address_json(env.sender),
        _address_json(env.reply_to),
        _address_json(env.to),
        _address_json(env.cc),
        _address_json(env.bcc),
        env.in_reply_to,
        env.message_id,
    ]


def _part_json(part: Part) -> dict[str, Any]:
    out: dict[str, Any] = {
        "t": part.type,
        "s": part.subtype,
        "p": [list(p) for p in part.params],
        "e": part.encoding,
        "o": [part.header_start, part.body_start, part.body_end],
    }
    optional: dict[str, Any] = {
        "id": part.id,
        "de": part.description,
        "l": part.lines,
        "md5": part.md5,
        "d": (
            [part.disposition.type, [list(p) for p in part.disposition.params]]
            if part.disposition is not None
            else None
        ),
        "la": list(part.language) if part.language is not None else None,
        "lo": part.location,
        "c": [_part_json(c) for c in part.parts] or None,
        "m": _message_json(part.message) if part.message is not None else None,
    }
    out.update((k, v) for k, v in optional.items() if v is not None)
    return out


def _message_json(message: Message) -> dict[str, Any]:
    return {"e": _envelope_json(message.envelope), "b": _part_json(message.body)}


def to_json(message: Message) -> bytes:
    """A compact JSON form for storage (ASCII: non-UTF-8 bytes travel as escaped surrogates)."""
    document = {"v": JSON_VERSION, **_message_json(message)}
    return json.dumps(document, separators=(",", ":")).encode("ascii")


def _addresses_from(items: list[list[str | None]]) -> tuple[Address, ...]:
    return tuple(Address(*item) for item in items)


def _params_from(items: list[list[str]]) -> Params:
    return tuple((k, v) for k, v in items)


def _part_from(obj: dict[str, Any]) -> Part:
    dsp = obj.get("d")
    la = obj.get("la")
    message = obj.get("m")
    header_start, body_start, body_end = obj["o"]
    return Part(
        type=obj["t"],
        subtype=obj["s"],
        params=_params_from(obj["p"]),
        id=obj.get("id"),
        description=obj.get("de"),
        encoding=obj["e"],
        lines=obj.get("l"),
        md5=obj.get("md5"),
        disposition=Disposition(dsp[0], _params_from(dsp[1])) if dsp is not None else None,
        language=tuple(la) if la is not None else None,
        location=obj.get("lo"),
        header_start=header_start,
        body_start=body_start,
        body_end=body_end,
        parts=tuple(_part_from(c) for c in obj.get("c") or ()),
        message=_message_from(message) if message is not None else None,
    )


def _message_from(obj: dict[str, Any]) -> Message:
    e = obj["e"]
    env = Envelope(
        date=e[0],
        subject=e[1],
        from_=_addresses_from(e[2]),
        sender=_addresses_from(e[3]),
        reply_to=_addresses_from(e[4]),
        to=_addresses_from(e[5]),
        cc=_addresses_from(e[6]),
        bcc=_addresses_from(e[7]),
        in_reply_to=e[8],
        message_id=e[9],
    )
    return Message(env, _part_from(obj["b"]))


def from_json(raw: bytes) -> Message:
    """The structure stored by `to_json`; ValueError for another version or a broken form."""
    try:
        document = json.loads(raw)
        if document.get("v") != JSON_VERSION:
            raise ValueError(f"message structure version {document.get('v')!r} is not supported")
        return _message_from(document)
    except (KeyError, TypeError, IndexError, AttributeError) as exc:
        raise ValueError(f"broken message structure: {type(exc).__name__}") from None
