"""The commands a client can send, as typed values (what `parser.parse_command` returns).

One frozen dataclass per command (EXAMINE is `Select(read_only=True)`, the `UID` prefix is a
`uid` field); arguments are already decoded: mailbox names to `str` (modified UTF-7 or UTF-8,
rfc/3501 §5.1.3, rfc/6855 §3), numbers to `int`, dates to `datetime`, `INBOX` in any case to
"INBOX" (rfc/9051 §5.1). Search strings stay `bytes`: their charset is the session's business
(rfc/9051 §6.4.4 `CHARSET`).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable
from dataclasses import dataclass

from mssante.operator.imap.sequence import SequenceSet

# --- values shared by several commands --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Section:
    """`section-spec` of BODY[...] (rfc/9051 §6.4.5): part numbers, then optionally HEADER,
    HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT or (after a part number only) MIME."""

    part: tuple[int, ...] = ()
    text: str | None = None
    headers: tuple[str, ...] = ()

    def __str__(self) -> str:
        items = [str(p) for p in self.part]
        if self.text is not None:
            items.append(self.text)
        spec = ".".join(items)
        if self.headers:
            spec += " (" + " ".join(_astring_text(h) for h in self.headers) + ")"
        return spec


def _astring_text(value: str) -> str:
    # Header names echoed in a FETCH response: an atom when possible, else a quoted string.
    if value and all(c.isascii() and c.isprintable() and c not in '(){ %*"\\]' for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True, slots=True)
class Partial:
    """`<offset.length>` (rfc/9051 §6.4.5 `partial`)."""

    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class FetchAttr:
    """A FETCH data item without a section: ENVELOPE, FLAGS, INTERNALDATE, RFC822.SIZE, BODY,
    BODYSTRUCTURE, UID, MODSEQ (rfc/7162 §3.1.4.1), RFC822, RFC822.HEADER, RFC822.TEXT
    (rfc/3501 §6.4.5)."""

    name: str


@dataclass(frozen=True, slots=True)
class FetchBody:
    """BODY[section]<partial> or BODY.PEEK[...] (rfc/9051 §6.4.5)."""

    section: Section
    peek: bool = False
    partial: Partial | None = None

    @property
    def reply_name(self) -> str:
        """The item name in the FETCH response: no .PEEK, only the origin of a partial
        (rfc/9051 §7.5.2 `msg-att-static`)."""
        origin = "" if self.partial is None else f"<{self.partial.offset}>"
        return f"BODY[{self.section}]{origin}"


@dataclass(frozen=True, slots=True)
class FetchBinary:
    """BINARY[part]<partial> or BINARY.PEEK[...] (rfc/3516 §4.1, rfc/9051 §6.4.5)."""

    part: tuple[int, ...] = ()
    peek: bool = False
    partial: Partial | None = None

    @property
    def reply_name(self) -> str:
        origin = "" if self.partial is None else f"<{self.partial.offset}>"
        return f"BINARY[{'.'.join(map(str, self.part))}]{origin}"


@dataclass(frozen=True, slots=True)
class FetchBinarySize:
    """BINARY.SIZE[part] (rfc/3516 §4.1)."""

    part: tuple[int, ...] = ()

    @property
    def reply_name(self) -> str:
        return f"BINARY.SIZE[{'.'.join(map(str, self.part))}]"


FetchItem = FetchAttr | FetchBody | FetchBinary | FetchBinarySize


# --- search keys (rfc/3501 §6.4.4, rfc/9051 §6.4.4, rfc/7162 §3.1.5) ------------------------


@dataclass(frozen=True, slots=True)
class FlagKey:
    """ALL, ANSWERED, DELETED, DRAFT, FLAGGED, NEW, OLD, RECENT, SEEN and their UN- forms."""

    name: str


@dataclass(frozen=True, slots=True)
class TextKey:
    """BCC, BODY, CC, FROM, SUBJECT, TEXT, TO: a substring, in the command's charset."""

    field: str
    value: bytes


@dataclass(frozen=True, slots=True)
class HeaderKey:
    """HEADER field-name string."""

    name: str
    value: bytes


@dataclass(frozen=True, slots=True)
class DateKey:
    """BEFORE, ON, SINCE (internal date) and SENTBEFORE, SENTON, SENTSINCE (Date: header)."""

    field: str
    date: dt.date


@dataclass(frozen=True, slots=True)
class SizeKey:
    """LARGER n / SMALLER n (rfc/9051 uses number64)."""

    field: str
    size: int


@dataclass(frozen=True, slots=True)
class KeywordKey:
    """KEYWORD flag (negated=False) / UNKEYWORD flag (negated=True)."""

    keyword: str
    negated: bool = False


@dataclass(frozen=True, slots=True)
class UidKey:
    uids: SequenceSet


@dataclass(frozen=True, slots=True)
class SeqKey:
    """A bare sequence set used as a key: message sequence numbers."""

    sequence: SequenceSet


@dataclass(frozen=True, slots=True)
class ModSeqKey:
    """MODSEQ ["/flags/<flag>" priv|shared|all] n (rfc/7162 §3.1.5)."""

    modseq: int
    entry: str | None = None
    entry_type: str | None = None


@dataclass(frozen=True, slots=True)
class NotKey:
    key: SearchKey


@dataclass(frozen=True, slots=True)
class OrKey:
    left: SearchKey
    right: SearchKey


@dataclass(frozen=True, slots=True)
class AndKey:
    """A parenthesised list of keys, all of which must match."""

    keys: tuple[SearchKey, ...]


SearchKey = (
    FlagKey
    | TextKey
    | HeaderKey
    | DateKey
    | SizeKey
    | KeywordKey
    | UidKey
    | SeqKey
    | ModSeqKey
    | NotKey
    | OrKey
    | AndKey
)


def any_leaf(key: SearchKey, test: Callable[[SearchKey], bool]) -> bool:
    """Whether `test` holds for some leaf of the expression (a key other than NOT, OR and a
    parenthesised list), whatever the logic around it."""
    if isinstance(key, NotKey):
        return any_leaf(key.key, test)
    if isinstance(key, OrKey):
        return any_leaf(key.left, test) or any_leaf(key.right, test)
    if isinstance(key, AndKey):
        return any(any_leaf(k, test) for k in key.keys)
    return test(key)


class StoreAction(enum.Enum):
    """FLAGS (replace), +FLAGS (add), -FLAGS (remove); rfc/9051 §6.4.6."""

    REPLACE = ""
    ADD = "+"
    REMOVE = "-"


@dataclass(frozen=True, slots=True)
class Qresync:
    """SELECT/EXAMINE (QRESYNC (uidvalidity modseq [known-uids [seq-match]])), rfc/7162 §3.2.5."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    known_sequence: SequenceSet | None = None
    known_sequence_uids: SequenceSet | None = None


@dataclass(frozen=True, slots=True)
class AppendMessage:
    """One message of APPEND (several with MULTIAPPEND, rfc/3502). `binary` when it came as a
    literal8 `~{N}` (rfc/3516 §4.4): it may contain NUL and needs no content-transfer-encoding."""

    data: bytes
    flags: tuple[str, ...] = ()
    internal_date: dt.datetime | None = None
    binary: bool = False


# --- commands ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    """Base of every command: the client's tag (rfc/9051 §2.2.1)."""

    tag: str


@dataclass(frozen=True, slots=True)
class Capability(Command):
    pass


@dataclass(frozen=True, slots=True)
class Noop(Command):
    pass


@dataclass(frozen=True, slots=True)
class Logout(Command):
    pass


@dataclass(frozen=True, slots=True)
class StartTLS(Command):
    pass


@dataclass(frozen=True, slots=True)
class Login(Command):
    username: str
    password: str


@dataclass(frozen=True, slots=True)
class Authenticate(Command):
    """`mechanism` upper-cased; `initial_response` is the decoded SASL-IR (rfc/4959), b"" for
    "=" (an empty initial response), None when the client sent none."""

    mechanism: str
    initial_response: bytes | None = None


@dataclass(frozen=True, slots=True)
class Enable(Command):
    """ENABLE (rfc/5161), capability names upper-cased."""

    capabilities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Id(Command):
    """ID (rfc/2971): field/value pairs, or None for `ID NIL`."""

    parameters: tuple[tuple[str, str | None], ...] | None


@dataclass(frozen=True, slots=True)
class Namespace(Command):
    pass


@dataclass(frozen=True, slots=True)
class Select(Command):
    """SELECT, or EXAMINE when `read_only` (rfc/9051 §6.3.2-3), with the CONDSTORE/QRESYNC
    parameters of rfc/7162 §3.1.8 and §3.2.5."""

    mailbox: str
    read_only: bool = False
    condstore: bool = False
    qresync: Qresync | None = None


@dataclass(frozen=True, slots=True)
class Create(Command):
    """CREATE, with `USE (\\Sent …)` special-use attributes (rfc/6154 §3)."""

    mailbox: str
    special_use: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Delete(Command):
    mailbox: str


@dataclass(frozen=True, slots=True)
class Rename(Command):
    source: str
    destination: str


@dataclass(frozen=True, slots=True)
class Subscribe(Command):
    mailbox: str


@dataclass(frozen=True, slots=True)
class Unsubscribe(Command):
    mailbox: str


@dataclass(frozen=True, slots=True)
class List(Command):
    """LIST, basic (rfc/9051 §6.3.9) or extended (rfc/5258): selection options (SUBSCRIBED,
    REMOTE, RECURSIVEMATCH, SPECIAL-USE), several patterns, return options (SUBSCRIBED,
    CHILDREN, SPECIAL-USE, STATUS (…) of rfc/5819). `extended` says the client used the
    extended syntax, which changes some answers (rfc/5258 §3)."""

    reference: str
    patterns: tuple[str, ...]
    selection: frozenset[str] = frozenset()
    return_subscribed: bool = False
    return_children: bool = False
    return_special_use: bool = False
    return_status: tuple[str, ...] | None = None
    extended: bool = False


@dataclass(frozen=True, slots=True)
class Lsub(Command):
    """LSUB (rfc/3501 §6.3.9; gone from rfc/9051, still sent by old clients)."""

    reference: str
    pattern: str


@dataclass(frozen=True, slots=True)
class Status(Command):
    """STATUS with its items upper-cased: MESSAGES, UIDNEXT, UIDVALIDITY, UNSEEN, DELETED,
    SIZE (rfc/9051 §6.3.11), RECENT (rfc/3501), HIGHESTMODSEQ (rfc/7162), APPENDLIMIT
    (rfc/7889)."""

    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Append(Command):
    mailbox: str
    messages: tuple[AppendMessage, ...]


@dataclass(frozen=True, slots=True)
class Idle(Command):
    pass


@dataclass(frozen=True, slots=True)
class Check(Command):
    pass


@dataclass(frozen=True, slots=True)
class Close(Command):
    pass


@dataclass(frozen=True, slots=True)
class Unselect(Command):
    pass


@dataclass(frozen=True, slots=True)
class Expunge(Command):
    """EXPUNGE, or UID EXPUNGE (rfc/4315 §2.1, rfc/9051 §6.4.9) when `uids` is set."""

    uids: SequenceSet | None = None


@dataclass(frozen=True, slots=True)
class Search(Command):
    """SEARCH / UID SEARCH. `criteria` are ANDed. `returns` is None for a plain SEARCH (the
    rfc/3501 `* SEARCH` answer), else the ESEARCH return options (rfc/4731, rfc/9051 §6.4.4)
    among MIN, MAX, ALL, COUNT, SAVE; `RETURN ()` means ALL and is given as ("ALL",)."""

    criteria: tuple[SearchKey, ...]
    uid: bool = False
    charset: str | None = None
    returns: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Fetch(Command):
    """FETCH / UID FETCH; macros ALL/FAST/FULL come expanded (rfc/9051 §6.4.5).
    `changed_since` and `vanished` are the modifiers of rfc/7162 §3.1.4.1 and §3.2.6."""

    sequence: SequenceSet
    items: tuple[FetchItem, ...]
    uid: bool = False
    changed_since: int | None = None
    vanished: bool = False


@dataclass(frozen=True, slots=True)
class Store(Command):
    """STORE / UID STORE (rfc/9051 §6.4.6) with UNCHANGEDSINCE (rfc/7162 §3.1.3)."""

    sequence: SequenceSet
    action: StoreAction
    flags: tuple[str, ...]
    uid: bool = False
    silent: bool = False
    unchanged_since: int | None = None


@dataclass(frozen=True, slots=True)
class Copy(Command):
    sequence: SequenceSet
    mailbox: str
    uid: bool = False


@dataclass(frozen=True, slots=True)
class Move(Command):
    """MOVE / UID MOVE (rfc/6851)."""

    sequence: SequenceSet
    mailbox: str
    uid: bool = False


@dataclass(frozen=True, slots=True)
class GetQuota(Command):
    """GETQUOTA quota-root (rfc/9208 §4.2)."""

    root: str


@dataclass(frozen=True, slots=True)
class GetQuotaRoot(Command):
    """GETQUOTAROOT mailbox (rfc/9208 §4.3)."""

    mailbox: str


@dataclass(frozen=True, slots=True)
class SetQuota(Command):
    """SETQUOTA root (resource limit …) (rfc/9208 §4.4), resource names upper-cased."""

    root: str
    limits: tuple[tuple[str, int], ...]
