"""The IMAP command grammar: one complete command (bytes) → one typed `Command`.

`parse_command` takes a command as the `CommandReader` assembled it: its lines joined by CRLF,
each literal's octets right after its `{N}` CRLF, a final CRLF. It never does I/O and never
trusts a count: every list, nesting level, sequence set and search program is bounded by
`Limits`. A syntax error raises `CommandSyntaxError` (the session answers BAD); a bound raises
`CommandLimitError`. Both carry the tag when one could be read.

The grammar is rfc/9051 §9 (IMAP4rev2) with what rfc/3501 (IMAP4rev1) clients still send
(LSUB, RECENT, NEW/OLD, RFC822.*) and the extensions listed in docs/imap.md.
"""

from __future__ import annotations

import binascii
import datetime as dt
import re
from collections.abc import Callable
from typing import Final, NoReturn

from mssante.operator.imap import mutf7
from mssante.operator.imap.commands import (
    AndKey,
    Append,
    AppendMessage,
    Authenticate,
    Capability,
    Check,
    Close,
    Command,
    Copy,
    Create,
    DateKey,
    Delete,
    Enable,
    Expunge,
    Fetch,
    FetchAttr,
    FetchBinary,
    FetchBinarySize,
    FetchBody,
    FetchItem,
    FlagKey,
    GetQuota,
    GetQuotaRoot,
    HeaderKey,
    Id,
    Idle,
    KeywordKey,
    List,
    Login,
    Logout,
    Lsub,
    ModSeqKey,
    Move,
    Namespace,
    Noop,
    NotKey,
    OrKey,
    Partial,
    Qresync,
    Rename,
    Search,
    SearchKey,
    Section,
    Select,
    SeqKey,
    SetQuota,
    SizeKey,
    StartTLS,
    Status,
    Store,
    StoreAction,
    Subscribe,
    TextKey,
    UidKey,
    Unselect,
    Unsubscribe,
)
from mssante.operator.imap.limits import DEFAULT_LIMITS, Limit, Limits
from mssante.operator.imap.sequence import MAX_NUMBER, STAR, SeqNumber, SeqRange, SequenceSet

MAX_NUMBER64: Final = 2**63 - 1  # rfc/9051 §9 `number64`; also `mod-sequence-value` (rfc/7162)


class CommandSyntaxError(Exception):
    """The command does not follow the grammar: answer `<tag> BAD <message>` (or `* BAD`)."""

    def __init__(self, tag: str | None, message: str) -> None:
        super().__init__(message)
        self.tag = tag
        self.message = message


class CommandLimitError(Exception):
    """The command goes over a bound of `Limits`."""

    def __init__(self, tag: str | None, limit: Limit) -> None:
        super().__init__(f"{limit.value} limit exceeded")
        self.tag = tag
        self.limit = limit


class _GrammarError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _LimitError(Exception):
    def __init__(self, limit: Limit) -> None:
        super().__init__(limit.value)
        self.limit = limit


# rfc/9051 §9: atom-specials = "(" / ")" / "{" / SP / CTL / list-wildcards / quoted-specials /
# resp-specials; ATOM-CHAR is any 7-bit CHAR but those. ASTRING-CHAR adds "]"; a tag is
# ASTRING-CHARs but "+"; list-char adds the wildcards "%" and "*".
_ATOM: Final = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\\]]+')
_ASTRING: Final = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\]+')
_TAG: Final = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\+]+')
_LIST_CHARS: Final = re.compile(rb'[^\x00-\x20\x7f-\xff(){"\\]+')
# rfc/9051 §4.3: quoted = DQUOTE *QUOTED-CHAR DQUOTE, with \" and \\ the only escapes.
_QUOTED: Final = re.compile(rb'"((?:[^"\\\r\n\x00]|\\["\\])*)"')
_UNESCAPE: Final = re.compile(rb'\\(["\\])')
# rfc/9051 §4.3 literal, rfc/7888 §3 non-synchronising "{N+}", rfc/3516 §4.1 literal8 "~{N}".
_LITERAL: Final = re.compile(rb"(~?)\{([0-9]{1,10})(\+?)\}\r\n")
_DIGITS: Final = re.compile(rb"[0-9]+")
_SEQ_TOKEN: Final = re.compile(rb"[0-9:*,$]+")
_FETCH_NAME: Final = re.compile(rb"[A-Za-z0-9.]+")
_SECTION_WORD: Final = re.compile(rb"[A-Za-z.]+")
_BASE64: Final = re.compile(rb"[A-Za-z0-9+/]+={0,2}")
_STORE_ITEM: Final = re.compile(rb"([+-]?)FLAGS(\.SILENT)?", re.IGNORECASE)
# rfc/5322 §3.6.8 ftext: printable US-ASCII but ":".
_FIELD_NAME: Final = re.compile(r"[\x21-\x39\x3b-\x7e]+")
_DATE_TEXT: Final = re.compile(rb"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})")
# rfc/9051 §9 date-time = DQUOTE date-day-fixed "-" date-month "-" date-year SP time SP zone
# DQUOTE; a one-digit day without its leading space is accepted too (older clients send it).
_DATE_TIME: Final = re.compile(
    rb'" ?([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4}) '
    rb'([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})"'
)
_MONTHS: Final = {
    m: i + 1
    for i, m in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
    )
}
_SYSTEM_FLAGS: Final = {
    f.upper(): f for f in ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "\\Recent")
}
# rfc/6154 §2 special-use attributes, for CREATE ... USE (...).
_SPECIAL_USE: Final = {
    f.upper(): f
    for f in ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash")
}
_STATUS_ITEMS: Final = frozenset(
    {
        "MESSAGES",
        "UIDNEXT",
        "UIDVALIDITY",
        "UNSEEN",
        "DELETED",  # rfc/9051 §6.3.11
        "SIZE",  # rfc/9051 §6.3.11
        "RECENT",  # rfc/3501 §6.3.10
        "HIGHESTMODSEQ",  # rfc/7162 §3.1.6
        "APPENDLIMIT",  # rfc/7889 §3.1
        "DELETED-STORAGE",  # rfc/9208 §4.2.2
    }
)
_FLAG_KEYS: Final = frozenset(
    {
        "ALL",
        "ANSWERED",
        "DELETED",
        "DRAFT",
        "FLAGGED",
        "SEEN",
        "UNANSWERED",
        "UNDELETED",
        "UNDRAFT",
        "UNFLAGGED",
        "UNSEEN",
        "NEW",  # rfc/3501 only, like OLD and RECENT
        "OLD",
        "RECENT",
    }
)
_TEXT_KEYS: Final = frozenset({"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"})
_DATE_KEYS: Final = frozenset({"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"})
_SEARCH_RETURNS: Final = ("MIN", "MAX", "ALL", "COUNT", "SAVE")  # rfc/4731 §3.1, rfc/5182
_FETCH_ATTRS: Final = frozenset(
    {
        "ENVELOPE",
        "FLAGS",
        "INTERNALDATE",
        "RFC822.SIZE",
        "BODY",
        "BODYSTRUCTURE",
        "UID",
        "MODSEQ",  # rfc/7162 §3.1.4.1
        "RFC822",  # rfc/3501 §6.4.5
        "RFC822.HEADER",
        "RFC822.TEXT",
    }
)
# rfc/9051 §6.4.5: the macros.
_FAST: Final = (FetchAttr("FLAGS"), FetchAttr("INTERNALDATE"), FetchAttr("RFC822.SIZE"))
_MACROS: Final[dict[str, tuple[FetchItem, ...]]] = {
    "FAST": _FAST,
    "ALL": (*_FAST, FetchAttr("ENVELOPE")),
    "FULL": (*_FAST, FetchAttr("ENVELOPE"), FetchAttr("BODY")),
}
_LIST_SELECT: Final = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
_UID_COMMANDS: Final = frozenset({"COPY", "MOVE", "FETCH", "SEARCH", "STORE", "EXPUNGE"})
SP: Final = 0x20
LPAREN: Final = 0x28
RPAREN: Final = 0x29
DQUOTE: Final = 0x22


def read_tag(line: bytes) -> str | None:
    """The tag at the start of a command line, if there is a well-formed one followed by SP."""
    m = _TAG.match(line)
    if m is None or m.end() >= len(line) or line[m.end()] != SP:
        return None
    return m.group().decode("ascii")


def parse_command(data: bytes, *, utf8: bool = False, limits: Limits = DEFAULT_LIMITS) -> Command:
    """Parse one whole command (see the module doc for the framing).

    `utf8` is set once the client enabled UTF8=ACCEPT (rfc/6855 §3) or IMAP4rev2: mailbox names
    are then UTF-8 rather than modified UTF-7.
    """
    tag = read_tag(data)
    try:
        if tag is None:
            raise _GrammarError("missing or invalid tag")
        if not data.endswith(b"\r\n"):
            raise _GrammarError("command does not end with CRLF")
        cur = _Cursor(data, len(tag) + 1, utf8, limits)
        return cur.command(tag)
    except _GrammarError as exc:
        raise CommandSyntaxError(tag, exc.message) from None
    except _LimitError as exc:
        raise CommandLimitError(tag, exc.limit) from None


class _Cursor:
    """A position in one command; each method consumes one grammar element or raises."""

    def __init__(self, buf: bytes, pos: int, utf8: bool, limits: Limits) -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf) - 2  # the final CRLF
        self.utf8 = utf8
        self.limits = limits
        self.depth = 0
        self.keys = 0

    # --- low level --------------------------------------------------------------------------

    @staticmethod
    def fail(message: str) -> NoReturn:
        raise _GrammarError(message)

    def peek(self) -> int:
        return self.buf[self.pos] if self.pos < self.end else -1

    def at_end(self) -> bool:
        return self.pos == self.end

    def finish(self) -> None:
        if not self.at_end():
            self.fail("unexpected characters at end of command")

    def sp(self) -> None:
        if self.peek() != SP:
            self.fail("expected a space")
        self.pos += 1

    def byte(self, value: int, what: str) -> None:
        if self.peek() != value:
            self.fail(f"expected {what}")
        self.pos += 1

    def match(self, pattern: re.Pattern[bytes]) -> bytes | None:
        m = pattern.match(self.buf, self.pos, self.end)
        if m is None:
            return None
        self.pos = m.end()
        return m.group()

    def enter(self) -> None:
        self.depth += 1
        if self.depth > self.limits.max_depth:
            raise _LimitError(Limit.DEPTH)

    def leave(self) -> None:
        self.depth -= 1

    def word(self, what: str = "an atom") -> str:
        """An atom, upper-cased (command names, keywords of the grammar)."""
        raw = self.match(_ATOM)
        if raw is None:
            self.fail(f"expected {what}")
        return raw.decode("ascii").upper()

    def peek_word(self) -> str | None:
        m = _ATOM.match(self.buf, self.pos, self.end)
        return None if m is None else m.group().decode("ascii").upper()

    def paren_list(self, item: Callable[[], None], *, allow_empty: bool) -> None:
        """`"(" item *(SP item) ")"`, bounded in length and nesting."""
        self.byte(LPAREN, '"("')
        self.enter()
        count = 0
        if self.peek() == RPAREN:
            if not allow_empty:
                self.fail("empty list")
        else:
            while True:
                count += 1
                if count > self.limits.max_list_items:
                    raise _LimitError(Limit.LIST_ITEMS)
                item()
                if self.peek() != SP:
                    break
                self.pos += 1
        self.byte(RPAREN, '")"')
        self.leave()

    # --- numbers ----------------------------------------------------------------------------

    def number(self, *, maximum: int = MAX_NUMBER, nonzero: bool = False) -> int:
        raw = self.match(_DIGITS)
        if raw is None:
            self.fail("expected a number")
        if len(raw) > 20:  # also keeps int() away from huge digit strings
            self.fail("number out of range")
        value = int(raw)
        if value > maximum or (nonzero and value == 0):
            self.fail("number out of range")
        return value

    def modseq(self, *, zero: bool = False) -> int:
        # rfc/7162 §7: mod-sequence-value = 1*DIGIT, 1..2^63-1; mod-sequence-valzer allows 0.
        return self.number(maximum=MAX_NUMBER64, nonzero=not zero)

    # --- strings ----------------------------------------------------------------------------

    def quoted(self) -> bytes:
        m = _QUOTED.match(self.buf, self.pos, self.end)
        if m is None:
            self.fail("invalid quoted string")
        self.pos = m.end()
        value = _UNESCAPE.sub(rb"\1", m.group(1))
        if not value.isascii():
            # rfc/9051 §9 QUOTED-CHAR admits UTF-8 (UTF8-2 / UTF8-3 / UTF8-4), nothing else.
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                self.fail("quoted string is not UTF-8")
        return value

    def literal(self, *, allow8: bool = False) -> tuple[bytes, bool]:
        m = _LITERAL.match(self.buf, self.pos, self.end)
        if m is None:
            self.fail("invalid literal")
        binary = bool(m.group(1))
        if binary and not allow8:
            self.fail("literal8 is only allowed in APPEND")
        size = int(m.group(2))
        start = m.end()
        if size > MAX_NUMBER or start + size > self.end:
            self.fail("truncated literal")
        data = self.buf[start : start + size]
        self.pos = start + size
        if not binary and 0 in data:
            # rfc/9051 §4.3: a literal is CHAR8 (no NUL); NUL needs literal8 (rfc/3516).
            self.fail("NUL in a literal")
        return data, binary

    def string(self) -> bytes:
        c = self.peek()
        if c == DQUOTE:
            return self.quoted()
        if c == 0x7B:  # "{"
            return self.literal()[0]
        self.fail("expected a string")

    def astring(self) -> bytes:
        raw = self.match(_ASTRING)
        return raw if raw is not None else self.string()

    def nstring(self) -> bytes | None:
        if self.peek_word() == "NIL":
            self.pos += 3
            return None
        return self.string()

    def text(self, raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.fail("string is not UTF-8")

    def mailbox_name(self, raw: bytes, *, inbox: bool = True) -> str:
        if self.utf8:
            name = self.text(raw)
        else:
            try:
                name = mutf7.decode(raw)
            except ValueError as exc:
                self.fail(f"mailbox name: {exc}")
        # rfc/9051 §5.1: no control characters in mailbox names.
        if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in name):
            self.fail("control character in mailbox name")
        # rfc/9051 §5.1: INBOX is case-insensitive.
        if inbox and name.upper() == "INBOX":
            return "INBOX"
        return name

    def mailbox(self) -> str:
        return self.mailbox_name(self.astring())

    def list_mailbox(self) -> str:
        raw = self.match(_LIST_CHARS)
        return self.mailbox_name(raw if raw is not None else self.string())

    # --- sequence sets (rfc/9051 §9, rfc/5182 §2.1) ------------------------------------------

    def sequence_set(self, *, star: bool = True, saved: bool = True) -> SequenceSet:
        token = self.match(_SEQ_TOKEN)
        if token is None:
            self.fail("expected a sequence set")
        if token == b"$":
            if not saved:
                self.fail("$ is not allowed here")
            return SequenceSet(saved=True)
        if token.count(b",") >= self.limits.max_sequence_ranges:
            raise _LimitError(Limit.SEQUENCE_RANGES)
        ranges: list[SeqRange] = []
        for part in token.split(b","):
            ends = part.split(b":")
            if len(ends) > 2:
                self.fail("invalid sequence range")
            nums = [self._seq_number(e, star) for e in ends]
            ranges.append(SeqRange(nums[0], nums[-1]))
        return SequenceSet(tuple(ranges))

    def _seq_number(self, raw: bytes, star: bool) -> SeqNumber:
        if raw == b"*":
            if not star:
                self.fail("* is not allowed here")
            return STAR
        # nz-number = digit-nz *DIGIT: no leading zero, no zero.
        if not raw.isdigit() or raw[0] == 0x30 or len(raw) > 10 or int(raw) > MAX_NUMBER:
            self.fail("invalid sequence number")
        return int(raw)

    # --- flags ------------------------------------------------------------------------------

    def flag(self) -> str:
        if self.peek() == 0x5C:  # "\": system flag or flag-extension (rfc/9051 §9 `flag`)
            self.pos += 1
            name = "\\" + (self.match(_ATOM) or self.fail("expected a flag")).decode("ascii")
            return _SYSTEM_FLAGS.get(name.upper(), name)
        raw = self.match(_ATOM)
        if raw is None:
            self.fail("expected a flag")
        return raw.decode("ascii")

    def flag_list(self) -> tuple[str, ...]:
        flags: list[str] = []
        self.paren_list(lambda: flags.append(self.flag()), allow_empty=True)
        return tuple(dict.fromkeys(flags))

    # --- dates (rfc/9051 §9 `date`, `date-time`) ---------------------------------------------

    def date(self) -> dt.date:
        quoted = self.peek() == DQUOTE
        if quoted:
            self.pos += 1
        raw = self.match(_DATE_TEXT)
        if raw is None:
            self.fail("expected a date")
        if quoted:
            self.byte(DQUOTE, "a closing quote")
        day, month, year = raw.split(b"-")
        try:
            return dt.date(int(year), _MONTHS[month.decode("ascii").upper()], int(day))
        except (KeyError, ValueError):
            self.fail("invalid date")

    def date_time(self) -> dt.datetime:
        m = _DATE_TIME.match(self.buf, self.pos, self.end)
        if m is None:
            self.fail("invalid date-time")
        self.pos = m.end()
        day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
        try:
            offset = dt.timedelta(hours=int(zh), minutes=int(zm))
            if int(zm) >= 60:
                raise ValueError("zone minutes")
            zone = dt.timezone(offset if sign == b"+" else -offset)
            return dt.datetime(
                int(year),
                _MONTHS[mon.decode("ascii").upper()],
                int(day),
                int(hh),
                int(mm),
                int(ss),
                tzinfo=zone,
            )
        except (KeyError, ValueError):
            self.fail("invalid date-time")

    # --- commands ---------------------------------------------------------------------------

    def command(self, tag: str) -> Command:
        name = self.word("a command name")
        uid = False
        if name == "UID":
            self.sp()
            name = self.word("a command name")
            if name not in _UID_COMMANDS:
                self.fail("command cannot follow UID")
            uid = True
        handler = _HANDLERS.get(name)
        if handler is None:
            self.fail("unknown command")
        result = handler(self, tag, uid)
        self.finish()
        return result

    def login(self, tag: str, uid: bool) -> Command:
        self.sp()
        user = self.text(self.astring())
        self.sp()
        password = self.text(self.astring())
        return Login(tag, user, password)

    def authenticate(self, tag: str, uid: bool) -> Command:
        self.sp()
        mechanism = self.word("a SASL mechanism")
        initial: bytes | None = None
        if self.peek() == SP:
            self.pos += 1
            # rfc/4959 §3: initial-response = base64 / "=" (an empty response).
            if self.peek() == 0x3D and self.pos + 1 == self.end:
                self.pos += 1
                initial = b""
            else:
                raw = self.match(_BASE64)
                if raw is None:
                    self.fail("invalid initial response")
                initial = decode_base64(raw)
                if initial is None:
                    self.fail("invalid base64 in initial response")
        return Authenticate(tag, mechanism, initial)

    def enable(self, tag: str, uid: bool) -> Command:
        caps: list[str] = []
        while self.peek() == SP:
            self.pos += 1
            if len(caps) >= self.limits.max_list_items:
                raise _LimitError(Limit.LIST_ITEMS)
            caps.append(self.word("a capability"))
        if not caps:
            self.fail("ENABLE needs at least one capability")
        return Enable(tag, tuple(caps))

    def id_(self, tag: str, uid: bool) -> Command:
        self.sp()
        if self.peek_word() == "NIL":
            self.pos += 3
            return Id(tag, None)
        pairs: list[tuple[str, str | None]] = []

        def pair() -> None:
            field = self.text(self.string())
            self.sp()
            value = self.nstring()
            # rfc/2971 §3.3: fields up to 30 octets, values up to 1024, at most 30 pairs.
            if len(field.encode()) > 30 or (value is not None and len(value) > 1024):
                self.fail("ID field or value too long")
            pairs.append((field, None if value is None else self.text(value)))

        self.paren_list(pair, allow_empty=True)
        if len(pairs) > 30:
            self.fail("too many ID pairs")
        return Id(tag, tuple(pairs))

    def select(self, tag: str, uid: bool, *, read_only: bool = False) -> Command:
        self.sp()
        mailbox = self.mailbox()
        condstore = False
        qresync: Qresync | None = None
        if self.peek() == SP:
            self.pos += 1
            params: list[str] = []

            def param() -> None:
                nonlocal condstore, qresync
                name = self.word("a SELECT parameter")
                if name in params:
                    self.fail("repeated SELECT parameter")
                params.append(name)
                if name == "CONDSTORE":  # rfc/7162 §3.1.8
                    condstore = True
                elif name == "QRESYNC":  # rfc/7162 §3.2.5
                    self.sp()
                    qresync = self.qresync()
                else:
                    self.fail("unknown SELECT parameter")

            self.paren_list(param, allow_empty=False)
        return Select(tag, mailbox, read_only, condstore, qresync)

    def qresync(self) -> Qresync:
        self.byte(LPAREN, '"("')
        self.enter()
        uidvalidity = self.number(nonzero=True)
        self.sp()
        modseq = self.modseq()
        known: SequenceSet | None = None
        seqs: SequenceSet | None = None
        seq_uids: SequenceSet | None = None
        if self.peek() == SP:
            self.pos += 1
            if self.peek() != LPAREN:
                # rfc/7162 §3.2.5: known-uids, "*" is not allowed.
                known = self.sequence_set(star=False, saved=False)
                if self.peek() == SP:
                    self.pos += 1
                    if self.peek() != LPAREN:
                        self.fail("expected sequence match data")
            if self.peek() == LPAREN:
                self.pos += 1
                seqs = self.sequence_set(star=False, saved=False)
                self.sp()
                seq_uids = self.sequence_set(star=False, saved=False)
                self.byte(RPAREN, '")"')
        self.byte(RPAREN, '")"')
        self.leave()
        return Qresync(uidvalidity, modseq, known, seqs, seq_uids)

    def create(self, tag: str, uid: bool) -> Command:
        self.sp()
        mailbox = self.mailbox()
        uses: list[str] = []
        if self.peek() == SP:
            self.pos += 1

            def use_attr() -> None:
                if self.peek() != 0x5C:
                    self.fail("expected a special-use attribute")
                self.pos += 1
                raw = self.match(_ATOM)
                if raw is None:
                    self.fail("expected a special-use attribute")
                name = "\\" + raw.decode("ascii")
                uses.append(_SPECIAL_USE.get(name.upper(), name))

            def param() -> None:
                if self.word("a CREATE parameter") != "USE":  # rfc/6154 §3
                    self.fail("unknown CREATE parameter")
                self.sp()
                self.paren_list(use_attr, allow_empty=True)

            self.paren_list(param, allow_empty=False)
        return Create(tag, mailbox, tuple(dict.fromkeys(uses)))

    def one_mailbox(
        self, tag: str, uid: bool, *, cls: type[Delete | Subscribe | Unsubscribe]
    ) -> Command:
        self.sp()
        return cls(tag, self.mailbox())

    def rename(self, tag: str, uid: bool) -> Command:
        self.sp()
        source = self.mailbox()
        self.sp()
        return Rename(tag, source, self.mailbox())

    def list_(self, tag: str, uid: bool) -> Command:
        self.sp()
        selection: set[str] = set()
        extended = False
        if self.peek() == LPAREN:  # rfc/5258 §3 list-select-opts
            extended = True

            def select_opt() -> None:
                name = self.word("a LIST selection option")
                if name not in _LIST_SELECT:
                    self.fail("unknown LIST selection option")
                selection.add(name)

            self.paren_list(select_opt, allow_empty=True)
            # rfc/5258 §3.1: RECURSIVEMATCH needs another selection option (not just REMOTE).
            if "RECURSIVEMATCH" in selection and not selection - {"RECURSIVEMATCH", "REMOTE"}:
                self.fail("RECURSIVEMATCH needs another selection option")
            self.sp()
        reference = self.mailbox_name(self.astring(), inbox=False)
        self.sp()
        patterns: list[str] = []
        if self.peek() == LPAREN:  # rfc/5258 §3: several patterns
            extended = True
            self.paren_list(lambda: patterns.append(self.list_mailbox()), allow_empty=False)
        else:
            patterns.append(self.list_mailbox())
        ret: dict[str, bool] = {}
        status: tuple[str, ...] | None = None
        if self.peek() == SP:
            self.pos += 1
            if self.word('"RETURN"') != "RETURN":
                self.fail('expected "RETURN"')
            extended = True
            self.sp()

            def return_opt() -> None:
                nonlocal status
                name = self.word("a LIST return option")
                if name == "STATUS":  # rfc/5819 §2
                    if status is not None:
                        self.fail("repeated STATUS return option")
                    self.sp()
                    status = self.status_items()
                elif name in ("SUBSCRIBED", "CHILDREN", "SPECIAL-USE"):
                    ret[name] = True
                else:
                    self.fail("unknown LIST return option")

            self.paren_list(return_opt, allow_empty=True)
        return List(
            tag,
            reference,
            tuple(dict.fromkeys(patterns)),
            frozenset(selection),
            return_subscribed=ret.get("SUBSCRIBED", False),
            return_children=ret.get("CHILDREN", False),
            return_special_use=ret.get("SPECIAL-USE", False),
            return_status=status,
            extended=extended,
        )

    def lsub(self, tag: str, uid: bool) -> Command:
        self.sp()
        reference = self.mailbox_name(self.astring(), inbox=False)
        self.sp()
        return Lsub(tag, reference, self.list_mailbox())

    def status_items(self) -> tuple[str, ...]:
        items: list[str] = []

        def item() -> None:
            name = self.word("a STATUS item")
            if name not in _STATUS_ITEMS:
                self.fail("unknown STATUS item")
            items.append(name)

        self.paren_list(item, allow_empty=False)
        return tuple(dict.fromkeys(items))

    def status(self, tag: str, uid: bool) -> Command:
        self.sp()
        mailbox = self.mailbox()
        self.sp()
        return Status(tag, mailbox, self.status_items())

    def append(self, tag: str, uid: bool) -> Command:
        self.sp()
        mailbox = self.mailbox()
        messages: list[AppendMessage] = []
        while True:  # rfc/3502 §6.3.11: several messages, each with its own flags and date
            self.sp()
            flags: tuple[str, ...] = ()
            date: dt.datetime | None = None
            if self.peek() == LPAREN:
                flags = self.flag_list()
                self.sp()
            if self.peek() == DQUOTE:
                date = self.date_time()
                self.sp()
            if self.peek() not in (0x7B, 0x7E):  # "{" or "~"
                self.fail("expected the message as a literal")
            data, binary = self.literal(allow8=True)
            messages.append(AppendMessage(data, flags, date, binary))
            if self.at_end():
                break
        return Append(tag, mailbox, tuple(messages))

    def expunge(self, tag: str, uid: bool) -> Command:
        if not uid:
            return Expunge(tag)
        self.sp()  # rfc/4315 §2.1: UID EXPUNGE sequence-set
        return Expunge(tag, self.sequence_set())

    def copy_move(self, tag: str, uid: bool, *, cls: type[Copy | Move]) -> Command:
        self.sp()
        seq = self.sequence_set()
        self.sp()
        return cls(tag, seq, self.mailbox(), uid)

    def store(self, tag: str, uid: bool) -> Command:
        self.sp()
        seq = self.sequence_set()
        self.sp()
        unchanged: int | None = None
        if self.peek() == LPAREN:

            def modifier() -> None:
                nonlocal unchanged
                if self.word("a STORE modifier") != "UNCHANGEDSINCE" or unchanged is not None:
                    self.fail("unknown STORE modifier")
                self.sp()
                unchanged = self.modseq(zero=True)  # rfc/7162 §3.1.3: mod-sequence-valzer

            self.paren_list(modifier, allow_empty=False)
            self.sp()
        m = _STORE_ITEM.match(self.buf, self.pos, self.end)
        if m is None:
            self.fail("expected FLAGS, +FLAGS or -FLAGS")
        self.pos = m.end()
        action = StoreAction(m.group(1).decode("ascii"))
        silent = m.group(2) is not None
        self.sp()
        if self.peek() == LPAREN:
            flags = self.flag_list()
        else:
            items = [self.flag()]
            while self.peek() == SP:
                self.pos += 1
                if len(items) >= self.limits.max_list_items:
                    raise _LimitError(Limit.LIST_ITEMS)
                items.append(self.flag())
            flags = tuple(dict.fromkeys(items))
        return Store(tag, seq, action, flags, uid, silent, unchanged)

    def fetch(self, tag: str, uid: bool) -> Command:
        self.sp()
        seq = self.sequence_set()
        self.sp()
        items: list[FetchItem] = []
        if self.peek() == LPAREN:
            self.paren_list(lambda: items.append(self.fetch_att()), allow_empty=False)
        else:
            word = self.peek_word()
            if word in _MACROS:
                assert word is not None
                self.pos += len(word)
                items.extend(_MACROS[word])
            else:
                items.append(self.fetch_att())
        changed_since: int | None = None
        vanished = False
        if self.peek() == SP:
            self.pos += 1
            seen: set[str] = set()

            def modifier() -> None:
                nonlocal changed_since, vanished
                name = self.word("a FETCH modifier")
                if name in seen:
                    self.fail("repeated FETCH modifier")
                seen.add(name)
                if name == "CHANGEDSINCE":  # rfc/7162 §3.1.4.1
                    self.sp()
                    changed_since = self.modseq()
                elif name == "VANISHED":  # rfc/7162 §3.2.6
                    vanished = True
                else:
                    self.fail("unknown FETCH modifier")

            self.paren_list(modifier, allow_empty=False)
            # rfc/7162 §3.2.6: VANISHED only with UID FETCH and together with CHANGEDSINCE.
            if vanished and (not uid or changed_since is None):
                self.fail("VANISHED needs UID FETCH and CHANGEDSINCE")
        return Fetch(tag, seq, tuple(dict.fromkeys(items)), uid, changed_since, vanished)

    def fetch_att(self) -> FetchItem:
        raw = self.match(_FETCH_NAME)
        if raw is None:
            self.fail("expected a FETCH item")
        name = raw.decode("ascii").upper()
        if name in ("BODY", "BODY.PEEK") and self.peek() == 0x5B:  # "["
            section = self.section()
            return FetchBody(section, name == "BODY.PEEK", self.partial())
        if name in ("BINARY", "BINARY.PEEK", "BINARY.SIZE"):  # rfc/3516 §4.1
            self.byte(0x5B, '"["')
            part = self.section_part() if self.peek() != 0x5D else ()
            self.byte(0x5D, '"]"')
            if name == "BINARY.SIZE":
                return FetchBinarySize(part)
            return FetchBinary(part, name == "BINARY.PEEK", self.partial())
        if name not in _FETCH_ATTRS:
            self.fail("unknown FETCH item")
        return FetchAttr(name)

    def section_part(self) -> tuple[int, ...]:
        part = [self.number(nonzero=True)]
        while (
            self.peek() == 0x2E
            and self.pos + 1 < self.end
            and self.buf[self.pos + 1] in b"0123456789"
        ):
            self.pos += 1
            if len(part) >= self.limits.max_depth:
                raise _LimitError(Limit.DEPTH)
            part.append(self.number(nonzero=True))
        return tuple(part)

    def section(self) -> Section:
        self.byte(0x5B, '"["')
        part: tuple[int, ...] = ()
        text: str | None = None
        headers: list[str] = []
        if 0x30 <= self.peek() <= 0x39:
            part = self.section_part()
            if self.peek() == 0x2E:
                self.pos += 1
                text = self._section_text(allow_mime=True)
        elif self.peek() != 0x5D:
            text = self._section_text(allow_mime=False)
        if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            self.sp()

            def field() -> None:
                name = self.text(self.astring())
                if _FIELD_NAME.fullmatch(name) is None:
                    self.fail("invalid header field name")
                headers.append(name)

            self.paren_list(field, allow_empty=False)
        self.byte(0x5D, '"]"')
        return Section(part, text, tuple(headers))

    def _section_text(self, *, allow_mime: bool) -> str:
        raw = self.match(_SECTION_WORD)
        word = raw.decode("ascii").upper() if raw else ""
        allowed = {"HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT"}
        if allow_mime:
            allowed.add("MIME")  # rfc/9051 §6.4.5: MIME only after a part number
        if word not in allowed:
            self.fail("invalid section")
        return word

    def partial(self) -> Partial | None:
        if self.peek() != 0x3C:  # "<"
            return None
        self.pos += 1
        offset = self.number(maximum=MAX_NUMBER64)
        self.byte(0x2E, '"."')
        length = self.number(maximum=MAX_NUMBER64, nonzero=True)
        self.byte(0x3E, '">"')
        return Partial(offset, length)

    def search(self, tag: str, uid: bool) -> Command:
        self.sp()
        returns: tuple[str, ...] | None = None
        if self.peek_word() == "RETURN":  # rfc/4731 §3.1, rfc/9051 §6.4.4
            self.pos += len("RETURN")
            self.sp()
            opts: list[str] = []

            def opt() -> None:
                name = self.word("a SEARCH return option")
                if name not in _SEARCH_RETURNS:
                    self.fail("unknown SEARCH return option")
                opts.append(name)

            self.paren_list(opt, allow_empty=True)
            returns = tuple(dict.fromkeys(opts)) or ("ALL",)
            self.sp()
        charset: str | None = None
        if self.peek_word() == "CHARSET":
            self.pos += len("CHARSET")
            self.sp()
            raw = self.quoted() if self.peek() == DQUOTE else self.match(_ATOM)
            if not raw or not raw.isascii():
                self.fail("invalid charset")
            charset = raw.decode("ascii").upper()
            self.sp()
        keys = [self.search_key()]
        while self.peek() == SP:
            self.pos += 1
            keys.append(self.search_key())
        return Search(tag, tuple(keys), uid, charset, returns)

    def search_key(self) -> SearchKey:
        self.keys += 1
        if self.keys > self.limits.max_search_keys:
            raise _LimitError(Limit.SEARCH_KEYS)
        c = self.peek()
        if c == LPAREN:
            keys: list[SearchKey] = []
            self.paren_list(lambda: keys.append(self.search_key()), allow_empty=False)
            return keys[0] if len(keys) == 1 else AndKey(tuple(keys))
        if 0x30 <= c <= 0x39 or c in (0x2A, 0x24):  # digit, "*" or "$"
            return SeqKey(self.sequence_set())
        name = self.word("a search key")
        if name in _FLAG_KEYS:
            return FlagKey(name)
        if name in ("NOT", "OR"):
            self.enter()
            self.sp()
            first = self.search_key()
            result: SearchKey
            if name == "NOT":
                result = NotKey(first)
            else:
                self.sp()
                result = OrKey(first, self.search_key())
            self.leave()
            return result
        self.sp()
        if name in _TEXT_KEYS:
            return TextKey(name, self.astring())
        if name in _DATE_KEYS:
            return DateKey(name, self.date())
        if name in ("LARGER", "SMALLER"):
            return SizeKey(name, self.number(maximum=MAX_NUMBER64))
        if name in ("KEYWORD", "UNKEYWORD"):
            raw = self.match(_ATOM)
            if raw is None:
                self.fail("expected a keyword")
            return KeywordKey(raw.decode("ascii"), name == "UNKEYWORD")
        if name == "HEADER":
            field = self.text(self.astring())
            if _FIELD_NAME.fullmatch(field) is None:
                self.fail("invalid header field name")
            self.sp()
            return HeaderKey(field, self.astring())
        if name == "UID":
            return UidKey(self.sequence_set())
        if name == "MODSEQ":
            return self.modseq_key()
        self.fail("unknown search key")

    def modseq_key(self) -> ModSeqKey:
        # rfc/7162 §3.1.5: MODSEQ [SP entry-name SP entry-type-req] SP mod-sequence-valzer,
        # entry-name = DQUOTE "/flags/" attr-flag DQUOTE, entry-type-req = priv / shared / all.
        entry: str | None = None
        entry_type: str | None = None
        if self.peek() == DQUOTE:
            raw = self.quoted()
            if not raw.lower().startswith(b"/flags/") or len(raw) == len(b"/flags/"):
                self.fail("invalid MODSEQ entry name")
            entry = raw.decode("ascii", "replace")
            self.sp()
            entry_type = self.word("an entry type").lower()
            if entry_type not in ("priv", "shared", "all"):
                self.fail("invalid MODSEQ entry type")
            self.sp()
        return ModSeqKey(self.modseq(zero=True), entry, entry_type)

    def getquota(self, tag: str, uid: bool) -> Command:
        self.sp()
        return GetQuota(tag, self.text(self.astring()))

    def getquotaroot(self, tag: str, uid: bool) -> Command:
        self.sp()
        return GetQuotaRoot(tag, self.mailbox())

    def setquota(self, tag: str, uid: bool) -> Command:
        self.sp()
        root = self.text(self.astring())
        self.sp()
        limits: list[tuple[str, int]] = []

        def resource() -> None:
            name = self.word("a quota resource")  # rfc/9208 §4.4 resource-name
            self.sp()
            limits.append((name, self.number(maximum=MAX_NUMBER64)))

        self.paren_list(resource, allow_empty=True)
        return SetQuota(tag, root, tuple(limits))


def decode_base64(raw: bytes) -> bytes | None:
    """Strict base64 (rfc/4648 §4, padding required as rfc/9051 §9 `base64`), or None."""
    try:
        return binascii.a2b_base64(raw, strict_mode=True)
    except binascii.Error:
        return None


def _simple(cls: type[Command]) -> Callable[[_Cursor, str, bool], Command]:
    def handler(cur: _Cursor, tag: str, uid: bool) -> Command:
        return cls(tag)

    return handler


_Handler = Callable[[_Cursor, str, bool], Command]
_HANDLERS: Final[dict[str, _Handler]] = {
    "CAPABILITY": _simple(Capability),
    "NOOP": _simple(Noop),
    "LOGOUT": _simple(Logout),
    "STARTTLS": _simple(StartTLS),
    "NAMESPACE": _simple(Namespace),  # rfc/2342, rfc/9051 §6.3.10
    "IDLE": _simple(Idle),  # rfc/2177, rfc/9051 §6.3.13
    "CHECK": _simple(Check),
    "CLOSE": _simple(Close),
    "UNSELECT": _simple(Unselect),  # rfc/3691
    "LOGIN": _Cursor.login,
    "AUTHENTICATE": _Cursor.authenticate,
    "ENABLE": _Cursor.enable,
    "ID": _Cursor.id_,
    "SELECT": _Cursor.select,
    "EXAMINE": lambda cur, tag, uid: cur.select(tag, uid, read_only=True),
    "CREATE": _Cursor.create,
    "DELETE": lambda cur, tag, uid: cur.one_mailbox(tag, uid, cls=Delete),
    "SUBSCRIBE": lambda cur, tag, uid: cur.one_mailbox(tag, uid, cls=Subscribe),
    "UNSUBSCRIBE": lambda cur, tag, uid: cur.one_mailbox(tag, uid, cls=Unsubscribe),
    "RENAME": _Cursor.rename,
    "LIST": _Cursor.list_,
    "LSUB": _Cursor.lsub,
    "STATUS": _Cursor.status,
    "APPEND": _Cursor.append,
    "EXPUNGE": _Cursor.expunge,
    "SEARCH": _Cursor.search,
    "FETCH": _Cursor.fetch,
    "STORE": _Cursor.store,
    "COPY": lambda cur, tag, uid: cur.copy_move(tag, uid, cls=Copy),
    "MOVE": lambda cur, tag, uid: cur.copy_move(tag, uid, cls=Move),  # rfc/6851
    "GETQUOTA": _Cursor.getquota,  # rfc/9208
    "GETQUOTAROOT": _Cursor.getquotaroot,
    "SETQUOTA": _Cursor.setquota,
}
