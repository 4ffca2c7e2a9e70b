"""One IMAP connection: reads bytes, feeds the sans-IO reader, runs its commands over the store.

States are those of rfc/3501 §3: not authenticated, authenticated, selected, logout. Every
response goes through `responses` (byte-exact writers). A command this slice does not run gets
`NO [CANNOT]`, a malformed one `BAD` (the reader's events), and the session goes on.

The session keeps the UIDs of the selected folder as its snapshot: sequence number n is the
n-th UID (rfc/3501 §2.3.1.2). The snapshot changes only at the moments the RFC allows
(§7.4.1: no EXPUNGE during FETCH, STORE or SEARCH): at NOOP and CHECK (new messages: EXISTS;
messages removed by another session: EXPUNGE), at this session's own EXPUNGE or CLOSE, after
its APPEND/COPY/MOVE into the selected folder, and while it idles (rfc/2177: the server's
process-wide `notify.FolderWatcher` wakes it when a writer of any process changed the folder).
What to report (EXPUNGE or VANISHED, EXISTS, other sessions' flag changes as unsolicited FETCH)
is computed by `updates.py`; `_refresh` sends it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import ssl
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from sqlalchemy.exc import SQLAlchemyError

from mssante.logs import event
from mssante.operator import auth, metarecord
from mssante.operator.delivery import THREAD_THRESHOLD
from mssante.operator.imap import (
    appender,
    queries,
    quota,
    responses,
    shared,
    textsearch,
    updates,
)
from mssante.operator.imap import fetch as fetch_items
from mssante.operator.imap.binary import UnknownEncodingError
from mssante.operator.imap.commands import (
    Append,
    Authenticate,
    Capability,
    Check,
    Close,
    Command,
    Copy,
    Create,
    Delete,
    Enable,
    Expunge,
    Fetch,
    FetchAttr,
    GetQuota,
    GetQuotaRoot,
    Id,
    Idle,
    List,
    Login,
    Logout,
    Lsub,
    ModSeqKey,
    Move,
    Namespace,
    Noop,
    Rename,
    Search,
    SearchKey,
    Select,
    SetQuota,
    StartTLS,
    Status,
    Store,
    StoreAction,
    Subscribe,
    Unselect,
    Unsubscribe,
    any_leaf,
)
from mssante.operator.imap.limits import DEFAULT_LIMITS, Limit
from mssante.operator.imap.reader import (
    CommandReader,
    Event,
    IdleDone,
    NeedContinuation,
    ParseError,
    SaslResponse,
    TooBig,
)
from mssante.operator.imap.sequence import SequenceSet, compress
from mssante.operator.imap.uidview import UidView
from mssante.operator.store import blobmeta
from mssante.operator.store import folders as store_folders
from mssante.operator.store import messages as store_messages
from mssante.operator.store import seen as store_seen
from mssante.operator.store.crypto import BlobCipher, SealedBlob, SealedRecord
from mssante.operator.store.errors import AlreadyExists, NotFound, StoreError
from mssante.operator.store.notify import folders_changed
from mssante.operator.store.schema import Outcome, SpecialUse, utcnow
from mssante.pki.tls import peer_identity

if TYPE_CHECKING:
    from cryptography import x509
    from sqlalchemy.ext.asyncio import AsyncSession

    from mssante.operator.imap.server import ImapServer

log = logging.getLogger("mssante.imap")

READ_SIZE: Final = 65536
DELIMITER: Final = "/"
SHARED_PREFIX: Final = "Shared"  # rfc/2342 other users' / shared namespace (issue 4 §5)
PERMANENT_FLAGS: Final = (*fetch_items.SYSTEM_FLAGS, "\\*")
# A FETCH is read, decrypted and sent in batches: memory stays bounded whatever the set (a
# client may ask 1:* BODY[] of a mailbox of gigabytes), other sessions run between batches,
# and the client receives the first responses while the next batch is read.
FETCH_BATCH_MESSAGES: Final = 500
FETCH_BATCH_BYTES: Final = 16 * 1024 * 1024
STATUS_ITEMS: Final = frozenset(
    {
        "MESSAGES",
        "RECENT",
        "UIDNEXT",
        "UIDVALIDITY",
        "UNSEEN",
        "DELETED",
        "SIZE",
        "APPENDLIMIT",
        "HIGHESTMODSEQ",  # rfc/7162 §3.1.6
        "DELETED-STORAGE",  # rfc/9208 §4.2.2
    }
)


class _LogoutError(Exception):
    """The session ends (LOGOUT, idle timeout, a fatal reader error)."""


@dataclass(frozen=True, slots=True)
class Selected:
    folder_id: int
    name: str
    uidvalidity: int
    read_only: bool
    access: shared.Access | None = None  # a folder of another mailbox (shared.py)


@dataclass(frozen=True, slots=True)
class _ListEntry:
    """A name LIST may show; `located` is None for the \\Noselect levels of the namespace."""

    name: str
    attributes: tuple[str, ...]
    subscribed: bool
    special_use: SpecialUse | None
    located: shared.Located | None


def capabilities(
    *,
    tls: bool,
    authenticated: bool,
    append_limit: int = DEFAULT_LIMITS.max_literal,
    client_certificate: bool = False,
) -> list[str]:
    caps = ["IMAP4rev1", "IMAP4rev2"]  # rfc/3501; rfc/9051 once enabled (ENABLE IMAP4rev2)
    if not authenticated:
        if tls:
            caps += ["AUTH=PLAIN", "SASL-IR"]  # rfc/4616, rfc/4959
            if client_certificate:
                # rfc/4422 App. A, only when the client sent a certificate: SASL libraries
                # (mbsync's Cyrus SASL) pick EXTERNAL whenever it is offered, without falling
                # back to PLAIN when it fails.
                caps += ["AUTH=EXTERNAL"]
        else:
            # rfc/3501 §6.2.3 and rfc/8314 §4: no password in clear; TLS first.
            caps += ["STARTTLS", "LOGINDISABLED"]  # rfc/3501 §6.2.1, §7.2.1
    caps += [
        "LITERAL-",  # rfc/7888 (the reader's max_nonsync_literal bound)
        "ID",  # rfc/2971
        "ENABLE",  # rfc/5161 (it enables CONDSTORE and QRESYNC)
        "NAMESPACE",  # rfc/2342
        "UNSELECT",  # rfc/3691
        "SPECIAL-USE",  # rfc/6154 (\Sent, \Drafts, \Trash, \Junk, \Archive in LIST)
        "CHILDREN",  # rfc/3348 (\HasChildren / \HasNoChildren in every LIST)
        "CREATE-SPECIAL-USE",  # rfc/6154 §3 (CREATE … (USE (\Archive)))
        "UIDPLUS",  # rfc/4315 (APPENDUID, COPYUID, UID EXPUNGE)
        "MOVE",  # rfc/6851
        "IDLE",  # rfc/2177 (in-process wake-ups, plus a poll for other writers: notify.py)
        "MULTIAPPEND",  # rfc/3502 (all messages in one transaction)
        "CONDSTORE",  # rfc/7162 §3.1 (MODSEQ, CHANGEDSINCE, UNCHANGEDSINCE)
        "QRESYNC",  # rfc/7162 §3.2 (SELECT (QRESYNC …), VANISHED; updates.py)
        "LIST-EXTENDED",  # rfc/5258 (selection and return options, several patterns)
        "LIST-STATUS",  # rfc/5819 (LIST … RETURN (STATUS (…)))
        f"APPENDLIMIT={append_limit}",  # rfc/7889 (the reader's max_literal)
        "BINARY",  # rfc/3516 (FETCH BINARY[…], BINARY.SIZE, APPEND ~{N}: binary.py)
        "QUOTA",  # rfc/9208 (GETQUOTA, GETQUOTAROOT; SETQUOTA refused: quota.py)
        "QUOTA=RES-STORAGE",  # rfc/9208 §5.1 (with STATUS DELETED-STORAGE)
        "STATUS=SIZE",  # rfc/8438 (STATUS SIZE)
        "ESEARCH",  # rfc/4731 (SEARCH RETURN (MIN MAX ALL COUNT SAVE))
        "SEARCHRES",  # rfc/5182 (RETURN (SAVE) and `$`)
    ]
    return caps


def _wildcard_match(pattern: str, name: str) -> bool:
    """rfc/3501 §6.3.8: `*` matches anything, `%` anything but the hierarchy delimiter.

    Run as a set of pattern positions over the name (no backtracking): linear in
    len(pattern) × len(name), whatever a client sends.
    """

    def closure(positions: set[int]) -> set[int]:
        out = set(positions)
        for p in sorted(positions):
            q = p
            while q < len(pattern) and pattern[q] in "*%":
                q += 1
                out.add(q)
        return out

    states = closure({0})
    for c in name:
        nxt: set[int] = set()
        for p in states:
            if p >= len(pattern):
                continue
            w = pattern[p]
            if w == "*" or (w == "%" and c != DELIMITER):
                nxt.add(p)  # the wildcard takes this character and may take more
            elif w == c:
                nxt.add(p + 1)
        if not nxt:
            return False
        states = closure(nxt)
    return len(pattern) in states


def seal_message(cipher: BlobCipher, data: bytes) -> tuple[SealedBlob, SealedRecord]:
    """The CPU part of storing an APPENDed message, run in a worker thread: the body sealed and
    its MIME structure sealed as the `blob_meta` record, exactly as Delivery prepares them
    (`delivery._assemble_and_seal`) but over the client's bytes unchanged (no trace fields)."""
    record = metarecord.build(metarecord.parse(data), data)
    sealed = cipher.seal(data)
    return sealed, blobmeta.seal_meta(cipher, sealed.digest, record, data)


def _unavailable(tag: str) -> bytes:
    # rfc/5530 §3: the database failed; nothing of the command was stored.
    return responses.tagged(tag, "NO", "temporary failure", responses.UNAVAILABLE)


def _has_modseq(key: SearchKey) -> bool:
    """Whether a search key uses MODSEQ anywhere (rfc/7162 §3.1.5)."""
    return any_leaf(key, lambda leaf: isinstance(leaf, ModSeqKey))


def _merged(runs: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Ranges sorted and with overlapping or adjacent ones joined."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(runs):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _in_runs(value: int, merged: Sequence[tuple[int, int]], starts: Sequence[int]) -> bool:
    index = bisect.bisect_right(starts, value) - 1
    return index >= 0 and value <= merged[index][1]


def _snapshot(uids: Iterable[int]) -> UidView:
    """A session's view of its selected folder (sequence number n is the n-th UID), as runs
    of consecutive UIDs (uidview.py): what an idle session on a large folder holds for days."""
    return UidView(uids)


def _batches(uids: Sequence[int], sizes: dict[int, int]) -> list[list[int]]:
    """`uids` cut into FETCH batches: at most FETCH_BATCH_MESSAGES messages, and at most
    FETCH_BATCH_BYTES of message octets when `sizes` are given (a larger message alone)."""
    out: list[list[int]] = []
    current: list[int] = []
    total = 0
    for uid in uids:
        size = sizes.get(uid, 0)
        if current and (len(current) >= FETCH_BATCH_MESSAGES or total + size > FETCH_BATCH_BYTES):
            out.append(current)
            current, total = [], 0
        current.append(uid)
        total += size
    if current:
        out.append(current)
    return out


def _parents(name: str) -> list[str]:
    """ "a/b/c" -> ["a", "a/b"]."""
    parts = name.split(DELIMITER)
    return [DELIMITER.join(parts[:i]) for i in range(1, len(parts))]


class ImapSession:
    def __init__(
        self,
        server: ImapServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        session_id: str,
        peer_ip: str,
        implicit_tls: bool,
    ) -> None:
        self.server = server
        self.stream = reader
        self.writer = writer
        self.session_id = session_id
        self.peer_ip = peer_ip
        self.tls = implicit_tls
        self.commands = CommandReader(server.limits)
        self.account: queries.Account | None = None
        self.selected: Selected | None = None
        self.uids: UidView = _snapshot(())
        self.condstore = False  # rfc/7162 §3.1: enabled by ENABLE or a CONDSTORE command
        self.qresync = False  # rfc/7162 §3.2.3: enabled by ENABLE QRESYNC only
        # rfc/9051 §2.1 / App. E: IMAP4rev1 behaviour until ENABLE IMAP4rev2; then mailbox
        # names are UTF-8 both ways, SELECT sends LIST instead of RECENT/UNSEEN, SEARCH answers
        # ESEARCH.
        self.rev2 = False
        # The highest MODSEQ of the selected folder this session has reported (flag updates,
        # updates.py), the (UIDNEXT, HIGHESTMODSEQ) its view matches, and the MODSEQs of its
        # own changes already answered (not echoed back as unsolicited FETCH).
        self.modseq_seen = 0
        self._marker: tuple[int, int] | None = None
        self._reported: dict[int, int] = {}
        self.saved: list[int] = []  # rfc/5182 §2.1: the `$` of RETURN (SAVE), as UIDs
        self._queue: deque[Event] = deque()
        self._idling = False
        self._idle_again = False
        self._idle_task: asyncio.Task[None] | None = None  # a report under way, while idling
        self._sasl_mechanism = "PLAIN"
        self._sasl_tag: str | None = None  # an AUTHENTICATE waiting for the client's response

    # --- I/O ---------------------------------------------------------------------------------

    async def _send(self, *chunks: bytes) -> None:
        self.writer.write(b"".join(chunks))
        await self.writer.drain()

    async def run(self) -> None:
        caps = capabilities(
            tls=self.tls,
            authenticated=False,
            append_limit=self.server.limits.max_literal,
            client_certificate=self._client_certificate() is not None,
        )
        code = responses.capability_code(caps)
        await self._send(responses.untagged("OK", "MSSante IMAP server ready", code))
        try:
            while True:
                # rfc/9051 §5.4: the autologout timer is at least 30 minutes once logged in;
                # before that nothing is owed to a silent peer holding a connection slot.
                authenticated = self.account is not None
                timeout = (
                    self.server.idle_timeout
                    if authenticated
                    else self.server.unauthenticated_timeout
                )
                try:
                    data = await asyncio.wait_for(self.stream.read(READ_SIZE), timeout)
                except TimeoutError:
                    await self._send(responses.bye("Autologout; idle for too long"))
                    self.server.audit(
                        self, "imap.timeout", Outcome.REFUSED, {"authenticated": authenticated}
                    )
                    return
                if not data:
                    return
                self._queue.extend(self.commands.feed(data))
                while self._queue:
                    await self._event(self._queue.popleft())
        except _LogoutError:
            return
        except (ConnectionError, ssl.SSLError):
            return
        finally:
            if self._idling and self.selected is not None:
                self.server.watcher.unsubscribe(self.selected.folder_id, self._idle_wake)
            self._idling = False
            if self._idle_task is not None:
                self._idle_task.cancel()

    # --- events -------------------------------------------------------------------------------

    async def _event(self, ev: Event) -> None:
        if isinstance(ev, ParseError):
            await self._stop_idle()  # a line other than DONE ends IDLE too (reader.py)
            await self._bad(ev.tag, ev.message)
            if ev.close:
                await self._fatal()
            self._end_failed_sasl(ev.tag)
        elif isinstance(ev, TooBig):
            if ev.tag is not None and ev.limit in (Limit.LITERAL, Limit.LITERAL_TOTAL):
                # rfc/7889 §4: a message over the APPENDLIMIT gets NO [TOOBIG].
                await self._send(
                    responses.tagged(ev.tag, "NO", f"too big: {ev.limit.value}", responses.TOOBIG)
                )
            else:
                await self._bad(ev.tag, f"too big: {ev.limit.value}", responses.TOOBIG)
            if ev.close:
                await self._fatal()
            self._end_failed_sasl(ev.tag)
        elif isinstance(ev, NeedContinuation):
            # Before login only small literals (astrings in LOGIN…) are read; after it, up to
            # the APPENDLIMIT (the reader already refused larger ones with TooBig).
            if self.account is None and ev.size > self.server.limits.max_nonsync_literal:
                self.commands.refuse_literal()
                await self._send(
                    responses.tagged(ev.tag, "NO", "literal too large", responses.TOOBIG)
                )
            else:
                await self._send(responses.continuation())
        elif isinstance(ev, SaslResponse):
            await self._sasl_response(ev)
        elif isinstance(ev, IdleDone):
            if not self._idling:
                await self._bad(ev.tag, "unexpected DONE")
            else:
                await self._stop_idle()
                await self._send(responses.tagged(ev.tag, "OK", "IDLE terminated"))
        elif isinstance(ev, Append) and self.account is not None:
            # APPENDs already read behind this one are stored with it (appender.py).
            group = [ev]
            while self._queue and isinstance(self._queue[0], Append):
                appended = self._queue.popleft()
                assert isinstance(appended, Append)
                group.append(appended)
            await self._appends(group)
        else:
            try:
                await self._command(ev)
            except (StoreError, SQLAlchemyError):
                # A database that fails (down, a deadlock, a constraint): this command gets
                # NO [UNAVAILABLE] (rfc/5530 §3), its transaction is rolled back, and the
                # session goes on.
                log.exception("store error in an IMAP command")
                self._resume_if_paused()
                await self._send(
                    responses.tagged(ev.tag, "NO", "temporary failure", responses.UNAVAILABLE)
                )

    async def _bad(self, tag: str | None, text: str, code: responses.Code | None = None) -> None:
        if tag is None:
            await self._send(responses.untagged("BAD", text, code))
        else:
            await self._send(responses.tagged(tag, "BAD", text, code))

    def _end_failed_sasl(self, tag: str | None) -> None:
        # A SASL response line that is not base64 (or too long) is an error of the
        # AUTHENTICATE command: the exchange is over and the paused reader must read commands
        # again, or the session would hang (rfc/9051 §6.2.2).
        if tag is not None and tag == self._sasl_tag:
            self._sasl_tag = None
            self._resume_if_paused()

    async def _fatal(self) -> None:
        await self._send(responses.bye("Too many errors, closing connection"))
        raise _LogoutError

    async def _no_cannot(self, tag: str, what: str = "not implemented yet") -> None:
        await self._send(responses.tagged(tag, "NO", what, responses.CANNOT))

    async def _command(self, cmd: Command) -> None:
        tag = cmd.tag
        if isinstance(cmd, Capability):
            caps = capabilities(
                tls=self.tls,
                authenticated=self.account is not None,
                append_limit=self.server.limits.max_literal,
                client_certificate=self._client_certificate() is not None,
            )
            await self._send(
                responses.capability(caps), responses.tagged(tag, "OK", "CAPABILITY completed")
            )
        elif isinstance(cmd, Noop | Check):
            if self.selected is not None:
                await self._refresh()
            await self._send(responses.tagged(tag, "OK", f"{type(cmd).__name__.upper()} completed"))
        elif isinstance(cmd, Logout):
            await self._send(
                responses.bye("Logging out"), responses.tagged(tag, "OK", "LOGOUT completed")
            )
            raise _LogoutError
        elif isinstance(cmd, Id):
            # rfc/2971 §3.1: the server may answer NIL; we do not tell our software version.
            await self._send(b"* ID NIL\r\n", responses.tagged(tag, "OK", "ID completed"))
        elif isinstance(cmd, StartTLS):
            await self._starttls(tag)
        elif isinstance(cmd, Authenticate):
            await self._authenticate(cmd)
        elif isinstance(cmd, Login):
            await self._login(cmd)
        elif self.account is None:
            await self._bad(tag, "log in first")
            self._resume_if_paused()
        elif isinstance(cmd, Enable):
            # rfc/5161 §3.1: only what the server supports is enabled, and ENABLED lists what
            # this command newly enabled: CONDSTORE (rfc/7162 §3.1) and QRESYNC (§3.2.3,
            # which enables CONDSTORE too without listing it).
            newly: list[str] = []
            if "IMAP4REV2" in cmd.capabilities and not self.rev2:
                newly.append("IMAP4rev2")
                self.rev2 = True
                self.commands.enable_utf8()  # rfc/9051 §5.1: mailbox names in UTF-8
            if "CONDSTORE" in cmd.capabilities and not self.condstore:
                newly.append("CONDSTORE")
                self.condstore = True
            if "QRESYNC" in cmd.capabilities and not self.qresync:
                newly.append("QRESYNC")
                self.qresync = self.condstore = True
            await self._send(
                responses.enabled(newly), responses.tagged(tag, "OK", "ENABLE completed")
            )
        elif isinstance(cmd, Namespace):
            # rfc/2342 §5: personal "" with "/", no other users', shared "Shared/".
            line = b'* NAMESPACE (("" "/")) NIL (("' + SHARED_PREFIX.encode() + b'/" "/"))\r\n'
            await self._send(line, responses.tagged(tag, "OK", "NAMESPACE completed"))
        elif isinstance(cmd, List):
            await self._list(cmd.tag, cmd.reference, cmd.patterns, cmd, subscribed_only=False)
        elif isinstance(cmd, Lsub):
            await self._list(cmd.tag, cmd.reference, (cmd.pattern,), None, subscribed_only=True)
        elif isinstance(cmd, Status):
            await self._status(cmd)
        elif isinstance(cmd, Select):
            await self._select(cmd)
        elif isinstance(cmd, Create):
            await self._create(cmd)
        elif isinstance(cmd, Delete):
            await self._delete(cmd)
        elif isinstance(cmd, Rename):
            await self._rename(cmd)
        elif isinstance(cmd, Subscribe | Unsubscribe):
            await self._subscribe(cmd)
        elif isinstance(cmd, Append):
            await self._appends([cmd])
        elif isinstance(cmd, Idle):
            await self._idle(cmd)
        elif isinstance(cmd, GetQuotaRoot):
            await quota.getquotaroot(self, cmd)
        elif isinstance(cmd, GetQuota):
            await quota.getquota(self, cmd)
        elif isinstance(cmd, SetQuota):
            await quota.setquota(self, cmd)
        elif self.selected is None:
            await self._bad(tag, "select a mailbox first")
            self._resume_if_paused()
        elif isinstance(cmd, Fetch):
            await self._fetch(cmd)
        elif isinstance(cmd, Store):
            await self._store(cmd)
        elif isinstance(cmd, Search):
            await self._search(cmd)
        elif isinstance(cmd, Expunge):
            await self._expunge(cmd)
        elif isinstance(cmd, Copy | Move):
            await self._copy(cmd)
        elif isinstance(cmd, Close):
            # rfc/3501 §6.4.2: expunge silently, unless read-only.
            selected = self.selected
            if not selected.read_only and await self._close_expunges(selected):
                await self._remove_deleted(selected, None, announce=False)
            self._deselect()
            await self._send(responses.tagged(tag, "OK", "CLOSE completed"))
        elif isinstance(cmd, Unselect):
            self._deselect()
            await self._send(responses.tagged(tag, "OK", "UNSELECT completed"))
        else:
            await self._no_cannot(tag)
            self._resume_if_paused()

    def _resume_if_paused(self) -> None:
        # IDLE and AUTHENTICATE pause the reader (reader.py); a refusal ends the pause.
        if self.commands.paused:
            self._queue.extend(self.commands.resume())

    # --- TLS and authentication --------------------------------------------------------------

    async def _starttls(self, tag: str) -> None:
        if self.tls or self.account is not None:
            await self._bad(tag, "TLS already active" if self.tls else "already authenticated")
            self._resume_if_paused()
            return
        await self._send(responses.tagged(tag, "OK", "Begin TLS negotiation now"))
        # Bytes sent in clear after STARTTLS must not be read as if protected (CVE-2011-0411,
        # rfc/9051 §11.1): those our reader holds and those the stream buffered.
        injected = self.commands.discard_pending()
        buffered = getattr(self.stream, "_buffer", None)
        if isinstance(buffered, bytearray):
            injected += len(buffered)
            buffered.clear()
        if injected:
            self.server.audit(self, "imap.starttls", Outcome.REFUSED, {"reason": "injection"})
            raise _LogoutError
        try:
            await self.writer.start_tls(self.server.tls_context, ssl_handshake_timeout=30)
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            event(log, "imap starttls failed", peer_ip=self.peer_ip, error=type(exc).__name__)
            raise _LogoutError from None
        self.tls = True
        self._queue.extend(self.commands.resume())

    async def _authenticate(self, cmd: Authenticate) -> None:
        if not self.tls:
            await self._send(
                responses.tagged(cmd.tag, "NO", "TLS required", responses.PRIVACYREQUIRED)
            )
            self._resume_if_paused()
            return
        if self.account is not None:
            await self._bad(cmd.tag, "already authenticated")
            self._resume_if_paused()
            return
        if cmd.mechanism not in ("PLAIN", "EXTERNAL"):
            await self._send(
                responses.tagged(cmd.tag, "NO", "unsupported mechanism", responses.CANNOT)
            )
            self._resume_if_paused()
            return
        self._sasl_mechanism = cmd.mechanism
        if cmd.initial_response is None:
            await self._send(responses.challenge(b""))
            self._sasl_tag = cmd.tag
            self._queue.extend(self.commands.expect_sasl_response(cmd.tag))
            return
        await self._sasl_step(cmd.tag, cmd.initial_response)

    async def _sasl_response(self, ev: SaslResponse) -> None:
        self._sasl_tag = None
        if ev.data is None:
            # rfc/9051 §6.2.2: "*" cancels, answered with BAD.
            await self._bad(ev.tag, "authentication cancelled")
            self._resume_if_paused()
            return
        await self._sasl_step(ev.tag, ev.data)

    async def _sasl_step(self, tag: str, data: bytes) -> None:
        if self._sasl_mechanism == "EXTERNAL":
            await self._external(tag, data)
        else:
            await self._plain(tag, data)

    def _client_certificate(self) -> x509.Certificate | None:
        """The certificate the client presented in this session's TLS handshake, if any."""
        ssl_object = self.writer.get_extra_info("ssl_object")
        return peer_identity(ssl_object) if ssl_object is not None else None

    async def _external(self, tag: str, data: bytes) -> None:
        """rfc/4422 App. A: the response is the authorization identity (empty: the mailbox the
        certificate maps to); the credentials are the TLS client certificate."""
        self._resume_if_paused()
        try:
            authzid = data.decode("utf-8")
        except UnicodeDecodeError:
            await self._bad(tag, "malformed EXTERNAL response (rfc 4422)")
            return
        server = self.server
        login = await server.auth.certificate(self._client_certificate(), authzid, self.peer_ip)
        details: dict[str, object] = {"mechanism": "EXTERNAL", **login.details}
        if login.account is None:
            server.audit(
                self,
                "imap.login",
                Outcome.REFUSED,
                {"user": login.user, "reason": login.reason, **details},
            )
            await self._send(
                responses.tagged(tag, "NO", "Authentication failed", responses.AUTHENTICATIONFAILED)
            )
            return
        await self._logged_in(tag, login.account, details)

    async def _plain(self, tag: str, data: bytes) -> None:
        self._resume_if_paused()
        credentials = auth.decode_plain(data)
        if credentials is None:
            await self._bad(tag, "malformed PLAIN response (rfc 4616)")
            return
        if credentials.authzid and credentials.authzid.lower() != credentials.authcid.lower():
            # Acting as another mailbox (delegation) comes with shared mailboxes.
            await self._send(
                responses.tagged(tag, "NO", "Authorization failed", responses.AUTHORIZATIONFAILED)
            )
            return
        await self._verify(tag, credentials.authcid, credentials.password, "PLAIN")

    async def _login(self, cmd: Login) -> None:
        if self.account is not None:
            await self._bad(cmd.tag, "already authenticated")
            return
        if not self.tls:
            # rfc/3501 §6.2.3 with LOGINDISABLED advertised.
            await self._send(
                responses.tagged(
                    cmd.tag, "NO", "TLS required: use STARTTLS", responses.PRIVACYREQUIRED
                )
            )
            return
        await self._verify(cmd.tag, cmd.username, cmd.password, "LOGIN")

    async def _verify(self, tag: str, username: str, password: str, mechanism: str) -> None:
        server = self.server
        login = await server.auth.password(username, password, self.peer_ip)
        if login.account is None:
            server.audit(
                self, "imap.login", Outcome.REFUSED,
                {"user": login.user, "mechanism": mechanism, "reason": login.reason},
            )  # fmt: skip
            await self._send(
                responses.tagged(tag, "NO", "Authentication failed", responses.AUTHENTICATIONFAILED)
            )
            return
        await self._logged_in(tag, login.account, {"mechanism": mechanism})

    async def _logged_in(
        self, tag: str, account: queries.Account, details: dict[str, object]
    ) -> None:
        self.account = account
        self.server.audit(self, "imap.login", Outcome.OK, {"user": account.address, **details})
        # rfc/9051 §6.2.3: the capabilities may change at login; say so in the OK.
        caps = capabilities(
            tls=self.tls, authenticated=True, append_limit=self.server.limits.max_literal
        )
        await self._send(responses.tagged(tag, "OK", "Logged in", responses.capability_code(caps)))

    # --- folders ------------------------------------------------------------------------------

    async def _folders(self, mailbox_id: int | None = None) -> list[store_folders.Folder]:
        assert self.account is not None
        async with self.server.store.read_session() as session:
            return await store_folders.list_folders(
                session, self.account.mailbox_id if mailbox_id is None else mailbox_id
            )

    # --- shared and delegated mailboxes (shared.py) ---------------------------------------------

    async def _locate(self, name: str, command: str) -> shared.Located | None:
        """A folder a client names, its own or a shared one. A shared name the user may not see
        is None, exactly like a missing name (no existence leak), and the attempt is audited."""
        assert self.account is not None
        if not shared.in_namespace(name):
            folder = await self._find_folder(name)
            return None if folder is None else shared.Located(folder, folder.name, None)
        async with self.server.store.read_session() as session:
            located = await shared.locate(session, self.account.mailbox_id, name)
        if located is None:
            self._audit_shared(None, name, command, Outcome.REFUSED, reason="no_access")
        return located

    def _audit_shared(
        self,
        access: shared.Access | None,
        folder: str,
        command: str,
        outcome: Outcome,
        **details: object,
    ) -> None:
        """One event per delegate access or refusal (issue 4 §5): who, whose mailbox, which
        folder, which command, and the outcome."""
        assert self.account is not None
        self.server.audit(
            self, "imap.shared", outcome,
            {"user": self.account.address,
             "owner": access.owner_address if access is not None else None,
             "folder": folder, "command": command, **details},
        )  # fmt: skip

    async def _shared_write(
        self, tag: str, access: shared.Access, write: shared.Write | None, folder: str
    ) -> shared.Access | None:
        """Re-read the grant before a write into another mailbox; answer NO [NOPERM]
        (rfc/5530 §3) and audit when refused. `write` None: a change of the user's own
        \\Seen, which any access allows. The current access, or None when refused."""
        assert self.account is not None
        command = write.value if write is not None else "STORE"
        async with self.server.store.read_session() as session:
            current = await shared.access_to(session, self.account.mailbox_id, access.owner_id)
        text: str | None
        if current is None:
            text = f"{command} refused: access to {access.owner_address} was withdrawn"
        else:
            text = shared.refusal(current, write) if write is not None else None
        if text is not None:
            self._audit_shared(access, folder, command, Outcome.REFUSED, reason="no_right")
            await self._send(responses.tagged(tag, "NO", text, responses.NOPERM))
            return None
        self._audit_shared(current, folder, command, Outcome.OK)
        return current

    async def _close_expunges(self, selected: Selected) -> bool:
        """Whether CLOSE may expunge (rfc/3501 §6.4.2: silently): in a shared folder only with
        write access, read again now; when it may, the write is audited."""
        assert self.account is not None
        if selected.access is None:
            return True
        async with self.server.store.read_session() as session:
            current = await shared.access_to(
                session, self.account.mailbox_id, selected.access.owner_id
            )
        if current is None or not current.can_write:
            return False
        self._audit_shared(current, selected.name, "CLOSE", Outcome.OK)
        return True

    def _owner_id(self, selected: Selected) -> int:
        """The mailbox the selected folder belongs to (its quota and its counters)."""
        assert self.account is not None
        return self.account.mailbox_id if selected.access is None else selected.access.owner_id

    async def _list(
        self,
        tag: str,
        reference: str,
        patterns: Sequence[str],
        cmd: List | None,
        *,
        subscribed_only: bool,
    ) -> None:
        verb: Literal["LIST", "LSUB"] = "LSUB" if subscribed_only else "LIST"
        if all(p == "" for p in patterns):
            # rfc/3501 §6.3.8: the delimiter and the root of the reference.
            out = responses.list_item(["\\Noselect"], DELIMITER, "", command=verb, utf8=self.rev2)
            await self._send(out, responses.tagged(tag, "OK", f"{verb} completed"))
            return
        if cmd is not None and cmd.return_status is not None:
            unknown = set(cmd.return_status) - STATUS_ITEMS
            if unknown:
                await self._no_cannot(tag, f"STATUS {sorted(unknown)[0]} is not implemented yet")
                return
        selection = cmd.selection if cmd is not None else frozenset()
        # rfc/5258 §3.1: the SUBSCRIBED selection implies the SUBSCRIBED return option.
        by_subscription = subscribed_only or "SUBSCRIBED" in selection
        special_only = "SPECIAL-USE" in selection
        show_subscribed = cmd is not None and (by_subscription or cmd.return_subscribed)
        entries = await self._list_entries()

        def meets(entry: _ListEntry) -> bool:
            if by_subscription and not entry.subscribed:
                return False
            return not (special_only and entry.special_use is None)

        lines: list[bytes] = []
        status_of: list[tuple[int, shared.Located]] = []
        for entry in entries:
            if not any(_wildcard_match(reference + p, entry.name) for p in patterns if p):
                continue
            descendants = [e for e in entries if e.name.startswith(entry.name + DELIMITER)]
            # rfc/5258 §3.5: with RECURSIVEMATCH a parent whose descendant meets the selection
            # is returned with CHILDINFO, even when the descendant does not match the pattern.
            childinfo = "RECURSIVEMATCH" in selection and any(meets(d) for d in descendants)
            if not meets(entry) and not childinfo:
                continue
            attrs = list(entry.attributes)
            attrs.append("\\HasChildren" if descendants else "\\HasNoChildren")
            if entry.special_use is not None:
                attrs.append(entry.special_use.value)
            if show_subscribed and entry.subscribed:
                attrs.append("\\Subscribed")
            line = responses.list_item(attrs, DELIMITER, entry.name, command=verb, utf8=self.rev2)
            if childinfo:
                criteria = [c for c in ("SUBSCRIBED", "SPECIAL-USE") if c in selection]
                info = " ".join(f'"{c}"' for c in criteria)
                line = line[:-2] + f' ("CHILDINFO" ({info}))'.encode() + b"\r\n"
            lines.append(line)
            if entry.located is not None and cmd is not None and cmd.return_status is not None:
                status_of.append((len(lines), entry.located))
        if cmd is not None and cmd.return_status is not None:
            # rfc/5819 §2: the STATUS of each selectable mailbox right after its LIST item.
            for index, located in reversed(status_of):
                values = await self._status_values(located, cmd.return_status)
                lines.insert(index, responses.status(located.name, values, utf8=self.rev2))
        await self._send(*lines, responses.tagged(tag, "OK", f"{verb} completed"))

    async def _list_entries(self) -> list[_ListEntry]:
        """Every name LIST can show: the user's folders, then the shared namespace: `Shared`,
        `Shared/<address>` of each mailbox granted (both \\Noselect) and its folders."""
        assert self.account is not None
        own = [
            _ListEntry(f.name, (), f.subscribed, f.special_use, shared.Located(f, f.name, None))
            for f in await self._folders()
        ]
        async with self.server.store.read_session() as session:
            others = await shared.listing(session, self.account.mailbox_id)
        noselect = ("\\Noselect",)
        out = [*own, _ListEntry(SHARED_PREFIX, noselect, False, None, None)]
        owner: int | None = None
        for located in others:
            assert located.access is not None
            if located.access.owner_id != owner:
                owner = located.access.owner_id
                root = shared.DELIMITER.join((SHARED_PREFIX, located.access.owner_address))
                out.append(_ListEntry(root, noselect, False, None, None))
            # Shared folders count as subscribed: the subscription flag is the owner's. No
            # special-use: another mailbox's Sent is not this user's Sent (rfc/6154 §2).
            out.append(_ListEntry(located.name, (), True, None, located))
        return out

    async def _attributes(self, located: shared.Located) -> list[str]:
        """The LIST attributes of one folder (the SELECT of rfc/9051 §6.3.2)."""
        siblings = await self._folders(located.folder.mailbox_id)
        prefix = located.folder.name + DELIMITER
        attrs = [
            "\\HasChildren"
            if any(f.name.startswith(prefix) for f in siblings)
            else "\\HasNoChildren"
        ]
        if located.access is None and located.folder.special_use is not None:
            attrs.append(located.folder.special_use.value)  # not in another's mailbox (§2)
        return attrs

    async def _find_folder(self, name: str) -> store_folders.Folder | None:
        assert self.account is not None
        try:
            async with self.server.store.read_session() as session:
                return await store_folders.get_folder(session, self.account.mailbox_id, name)
        except (ValueError, NotFound):  # a name we would not store, or no such folder
            return None

    async def _status(self, cmd: Status) -> None:
        unknown = set(cmd.items) - STATUS_ITEMS
        if unknown:
            await self._no_cannot(cmd.tag, f"STATUS {sorted(unknown)[0]} is not implemented yet")
            return
        located = await self._locate(cmd.mailbox, "STATUS")
        if located is None:
            await self._send(
                responses.tagged(cmd.tag, "NO", "no such mailbox", responses.NONEXISTENT)
            )
            return
        if "HIGHESTMODSEQ" in cmd.items:
            self.condstore = True  # rfc/7162 §3.1: a CONDSTORE-enabling command
        items = await self._status_values(located, cmd.items)
        await self._send(
            responses.status(located.name, items, utf8=self.rev2),
            responses.tagged(cmd.tag, "OK", "STATUS completed"),
        )

    async def _status_values(
        self, located: shared.Located, wanted: Sequence[str]
    ) -> list[tuple[str, int]]:
        """STATUS items of a folder (STATUS, LIST RETURN (STATUS …) of rfc/5819)."""
        assert self.account is not None
        folder = located.folder
        async with self.server.store.read_session() as session:
            counts = await queries.folder_counts(session, folder.id)
            deleted_storage = (
                await quota.deleted_storage(session, folder.id)
                if "DELETED-STORAGE" in wanted
                else 0
            )
            current = await store_folders.get_folder_by_id(session, folder.id)
            if located.access is not None:  # the grantee's own \\Seen (shared.py)
                unseen = await store_seen.unseen_count(session, folder.id, self.account.mailbox_id)
                counts = queries.FolderCounts(counts.messages, unseen, counts.deleted, counts.size)
                self._audit_shared(located.access, located.name, "STATUS", Outcome.OK)
        values = {
            "MESSAGES": counts.messages,
            "RECENT": 0,  # \Recent is not kept (rfc/9051 removed it)
            "UIDNEXT": current.uidnext,
            "UIDVALIDITY": current.uidvalidity,
            "UNSEEN": counts.unseen,
            "DELETED": counts.deleted,
            "SIZE": counts.size,
            "APPENDLIMIT": self.server.limits.max_literal,  # rfc/7889 §3: same for every folder
            "HIGHESTMODSEQ": current.highest_modseq,
            "DELETED-STORAGE": deleted_storage,
        }
        return [(item, values[item]) for item in wanted]

    def _deselect(self) -> None:
        self.selected = None
        self.uids = _snapshot(())
        self.modseq_seen = 0
        self._marker = None
        self._reported = {}
        self.saved = []  # rfc/5182 §2.1: `$` is empty again after SELECT/EXAMINE/CLOSE/UNSELECT

    async def _select(self, cmd: Select) -> None:
        if cmd.qresync is not None and not self.qresync:
            # rfc/7162 §3.2.5: the QRESYNC parameter before ENABLE QRESYNC is BAD.
            await self._bad(cmd.tag, "QRESYNC is not enabled")
            return
        assert self.account is not None
        closed = self.selected is not None
        self._deselect()  # rfc/3501 §6.3.1: a failed SELECT leaves no mailbox selected
        if closed and (self.qresync or self.rev2):
            # rfc/7162 §3.2.11, rfc/9051 §6.3.2: the previous mailbox is closed before the new
            # one's responses.
            await self._send(responses.untagged("OK", "previous mailbox closed", responses.CLOSED))
        located = await self._locate(cmd.mailbox, "EXAMINE" if cmd.read_only else "SELECT")
        if located is None:
            await self._send(
                responses.tagged(cmd.tag, "NO", "no such mailbox", responses.NONEXISTENT)
            )
            return
        folder, access = located.folder, located.access
        reader_id = None if access is None else self.account.mailbox_id
        resync: list[bytes] = []
        async with self.server.store.read_session() as session:
            # The folder row first: its HIGHESTMODSEQ is then no later than the rows read next
            # (a change in between is reported again later, never lost).
            current = await store_folders.get_folder_by_id(session, folder.id)
            uids = await queries.folder_uids(session, folder.id)
            if reader_id is None:
                first_unseen = await queries.first_unseen_uid(session, folder.id)
            else:
                first_unseen = await store_seen.first_unseen_uid(session, folder.id, reader_id)
            q = cmd.qresync
            if q is not None and q.uidvalidity == current.uidvalidity:
                # rfc/7162 §3.2.5.2: removals since the client's MODSEQ among its known UIDs
                # (all of them: the sequence match data is not used to narrow the answer), then
                # every message changed since.
                gone = await updates.vanished_since(session, folder.id, q.modseq)
                line = updates.vanished_earlier(gone, q.known_uids, uids)
                resync += [line] if line is not None else []
                changed = await updates.changed_since(
                    session, folder.id, q.modseq, reader_id=reader_id
                )
                resync += updates.flag_lines(uids, changed, reported={}, condstore=True)
        self.selected = Selected(
            folder.id, located.name, current.uidvalidity, cmd.read_only, access
        )
        if access is not None:
            self._audit_shared(
                access, located.name, "EXAMINE" if cmd.read_only else "SELECT", Outcome.OK,
                rights="read-write" if access.can_write else "read",
            )  # fmt: skip
        permanent: tuple[str, ...] = () if cmd.read_only else PERMANENT_FLAGS
        if access is not None and not access.can_write and not cmd.read_only:
            permanent = (shared.SEEN,)  # a read-only grantee keeps only their own \Seen
        self.uids = _snapshot(uids)
        self.modseq_seen = current.highest_modseq
        self._marker = (current.uidnext, current.highest_modseq)
        out = [responses.flags(fetch_items.SYSTEM_FLAGS), responses.exists(len(uids))]
        if self.rev2:
            # rfc/9051 §6.3.2: LIST with the mailbox's name and accurate attributes; RECENT and
            # the UNSEEN code are gone from IMAP4rev2.
            attrs = await self._attributes(located)
            out.append(responses.list_item(attrs, DELIMITER, located.name, utf8=True))
        else:
            out.append(responses.recent(0))
        if not self.rev2 and first_unseen is not None and first_unseen in uids:
            out.append(
                responses.untagged(
                    "OK", "first unseen", responses.unseen(uids.index(first_unseen) + 1)
                )
            )
        out += [
            responses.untagged("OK", "UIDs valid", responses.uidvalidity(current.uidvalidity)),
            responses.untagged("OK", "predicted next UID", responses.uidnext(current.uidnext)),
            responses.untagged("OK", "flags permitted", responses.permanentflags(permanent)),
        ]
        if cmd.condstore:
            self.condstore = True  # rfc/7162 §3.1.8
        if self.condstore:
            # rfc/7162 §3.1.2.1: every message has a MODSEQ here, so never NOMODSEQ.
            out.append(
                responses.untagged("OK", "highest", responses.highestmodseq(current.highest_modseq))
            )
        out += resync
        code = responses.READ_ONLY if cmd.read_only else responses.READ_WRITE
        verb = "EXAMINE" if cmd.read_only else "SELECT"
        out.append(responses.tagged(cmd.tag, "OK", f"{verb} completed", code))
        await self._send(*out)

    async def _refresh(self, *, expunge: bool = True) -> None:
        """Report what changed in the selected folder (updates.py): removals (EXPUNGE or
        VANISHED) only when `expunge` (not during FETCH, STORE, SEARCH: rfc/3501 §7.4.1), new
        messages (EXISTS) and flag changes (unsolicited FETCH). Nothing is read beyond the
        folder row when its (UIDNEXT, HIGHESTMODSEQ) has not moved since the view was made."""
        selected = self.selected
        assert selected is not None
        async with self.server.store.read_session() as session:
            marker = await queries.folder_marker(session, selected.folder_id)
            if marker is None or marker == self._marker:
                return
            changed = await updates.changed_since(
                session,
                selected.folder_id,
                self.modseq_seen,
                reader_id=None if selected.access is None else self._reader_id(),
            )
            current = await queries.folder_uids(session, selected.folder_id)
        result = updates.compute(
            self.uids,
            current,
            changed,
            modseq=self.modseq_seen,
            reported=self._reported,
            expunge=expunge,
            qresync=self.qresync,
            condstore=self.condstore,
        )
        self.uids = _snapshot(result.uids)
        self.modseq_seen = result.modseq
        self._reported = {u: m for u, m in self._reported.items() if m > result.modseq}
        if expunge or len(result.uids) == len(current):
            self._marker = marker  # the view holds no removal still to announce
        if result.lines:
            await self._send(*result.lines)

    # --- messages -----------------------------------------------------------------------------

    def _target_uids(self, sequence: SequenceSet, uid: bool) -> list[int]:
        """UIDs a set names in the snapshot (`$` is the saved result)."""
        if sequence.saved:
            # rfc/5182 §2.1: the saved UIDs, whether the command uses UIDs or numbers;
            # those expunged since are no longer in the snapshot, so they drop out.
            saved = set(self.saved)
            return [u for u in self.uids if u in saved]
        if not self.uids:
            return []
        if uid:
            merged = _merged(sequence.resolve(self.uids[-1]))
            starts = [lo for lo, _ in merged]
            # One bisection per UID: a set may hold thousands of ranges (limits.py).
            return [u for u in self.uids if _in_runs(u, merged, starts)]
        runs = sequence.resolve(len(self.uids))
        return [self.uids[n - 1] for lo, hi in runs for n in range(lo, min(hi, len(self.uids)) + 1)]

    async def _fetch(self, cmd: Fetch) -> None:
        selected = self.selected
        assert selected is not None
        if cmd.vanished and not self.qresync:
            # rfc/7162 §3.2.6: VANISHED before ENABLE QRESYNC is BAD.
            await self._bad(cmd.tag, "VANISHED needs ENABLE QRESYNC")
            return
        if not fetch_items.supported(cmd.items):
            await self._no_cannot(cmd.tag, "FETCH item or modifier not implemented yet")
            return
        uids = self._target_uids(cmd.sequence, cmd.uid)
        if not cmd.uid and cmd.sequence.ranges and not uids and not self.uids:
            await self._bad(cmd.tag, "no messages")  # rfc/9051 §6.4.5: invalid sequence numbers
            return
        if cmd.changed_since is not None or any(
            isinstance(i, FetchAttr) and i.name == "MODSEQ" for i in cmd.items
        ):
            self.condstore = True  # rfc/7162 §3.1: a CONDSTORE-enabling command
        store = self.server.store
        flags_changed: set[int] = set()
        if selected.access is not None:
            flags_changed = await self._shared_fetch_seen(selected, cmd, uids)
        elif fetch_items.sets_seen(cmd.items) and not selected.read_only and uids:
            async with store.session() as session:
                before = await queries.fetch_messages(
                    session, store.cipher, selected.folder_id, uids, body=False, structure=False
                )
                unseen = [m.state.uid for m in before if "\\Seen" not in m.state.flags]
                if unseen:
                    stored = await queries.store_flags(
                        session, selected.folder_id, unseen, StoreAction.ADD, ("\\Seen",)
                    )
                    await folders_changed(session, [selected.folder_id])
                    await session.commit()
                    flags_changed = set(unseen)
                    self._reported.update({u: stored.modseqs[u] for u in stored.changed})
        if cmd.vanished and cmd.changed_since is not None:
            # rfc/7162 §3.2.6: the UIDs of the set removed since CHANGEDSINCE, before the FETCHes.
            async with store.read_session() as session:
                gone = await updates.vanished_since(session, selected.folder_id, cmd.changed_since)
            line = updates.vanished_earlier(gone, cmd.sequence, self.uids)
            if line is not None:
                await self._send(line)
        body = fetch_items.needs_body(cmd.items)
        structure = fetch_items.needs_structure(cmd.items)
        reader_id = None if selected.access is None else self._reader_id()
        if body:
            async with store.read_session() as session:
                sizes = await queries.message_sizes(session, selected.folder_id, uids)
            batches = _batches(uids, sizes)
        else:
            batches = _batches(uids, {})
        seq_of = {u: i + 1 for i, u in enumerate(self.uids)}
        asked_flags = any(isinstance(i, FetchAttr) and i.name == "FLAGS" for i in cmd.items)
        sent: list[int] = []
        try:
            for batch in batches:
                async with store.read_session() as session:
                    messages = await queries.fetch_messages(
                        session,
                        store.cipher,
                        selected.folder_id,
                        batch,
                        body=body,
                        structure=structure,
                        changed_since=cmd.changed_since,
                        reader_id=reader_id,
                    )
                out: list[bytes] = []
                for message in messages:
                    uid = message.state.uid
                    if asked_flags:  # answered here: no unsolicited FETCH repeats these flags
                        self._reported[uid] = message.state.modseq
                    try:
                        items = fetch_items.render(
                            message.state,
                            cmd.items,
                            raw=message.raw,
                            structure=message.structure,
                            # rfc/7162 §3.2.4: once QRESYNC is on, FLAGS set implicitly carry
                            # the UID.
                            with_uid=cmd.uid or (self.qresync and uid in flags_changed),
                            with_flags=uid in flags_changed,
                            # rfc/7162 §3.1.4.1: CHANGEDSINCE implies MODSEQ; §3.2: so do flag
                            # changes.
                            with_modseq=cmd.changed_since is not None
                            or (self.condstore and uid in flags_changed),
                        )
                    except UnknownEncodingError:
                        # rfc/3516 §4.3: a BINARY item whose encoding we cannot remove fails
                        # the FETCH (the FETCH responses already sent stay valid).
                        self.writer.write(b"".join(out))
                        await self._send(
                            responses.tagged(
                                cmd.tag,
                                "NO",
                                f"unknown content-transfer-encoding in message UID {uid}",
                                responses.UNKNOWN_CTE,
                            )
                        )
                        return
                    out.append(responses.fetch(seq_of[uid], items))
                    sent.append(uid)
                await self._send(*out)
        finally:
            if selected.access is not None:
                self._audit_shared_fetch(selected, cmd, sent)
        await self._refresh(expunge=cmd.uid)  # rfc/3501 §7.4.1: no EXPUNGE during FETCH
        await self._send(responses.tagged(cmd.tag, "OK", "FETCH completed"))

    async def _shared_fetch_seen(self, selected: Selected, cmd: Fetch, uids: list[int]) -> set[int]:
        """The implicit \\Seen of a body FETCH (rfc/3501 §6.4.5) by a grantee: their own."""
        assert self.account is not None and selected.access is not None
        if not fetch_items.sets_seen(cmd.items) or selected.read_only or not uids:
            return set()
        async with self.server.store.session() as session:
            changed = await store_seen.set_seen(
                session, selected.folder_id, self.account.mailbox_id, dict.fromkeys(uids, True)
            )
            if changed:
                await folders_changed(session, [selected.folder_id])
            await session.commit()
        self._reported.update(changed)  # answered by this FETCH: no unsolicited echo
        return set(changed)

    def _reader_id(self) -> int:
        assert self.account is not None
        return self.account.mailbox_id

    def _audit_shared_fetch(self, selected: Selected, cmd: Fetch, uids: Sequence[int]) -> None:
        """A grantee's FETCH returning message content (body, headers, ENVELOPE,
        BODYSTRUCTURE) is audited: one event per command, with the UIDs."""
        assert selected.access is not None
        content = fetch_items.needs_body(cmd.items) or fetch_items.needs_structure(cmd.items)
        if not uids or not content:
            return
        uid_set = ",".join(f"{lo}" if lo == hi else f"{lo}:{hi}" for lo, hi in compress(uids))
        self._audit_shared(selected.access, selected.name, "FETCH", Outcome.OK, uids=uid_set)

    async def _store(self, cmd: Store) -> None:
        selected = self.selected
        assert selected is not None
        if cmd.unchanged_since is not None:
            self.condstore = True  # rfc/7162 §3.1: a CONDSTORE-enabling command
        if selected.read_only:
            await self._send(
                responses.tagged(cmd.tag, "NO", "mailbox is read-only", responses.READ_ONLY)
            )
            return
        uids = self._target_uids(cmd.sequence, cmd.uid)
        # \Recent is the server's (rfc/3501 §2.3.2): a client cannot set or clear it.
        flags = [f for f in cmd.flags if f.lower() != "\\recent"]
        access = selected.access
        if access is not None:
            only_seen = all(f.lower() == shared.SEEN.lower() for f in flags)
            # FLAGS (\Seen) by a read-only grantee replaces their own \Seen alone (shared.py).
            write = None if only_seen else shared.Write.FLAGS
            access = await self._shared_write(cmd.tag, access, write, selected.name)
            if access is None:
                return
        store = self.server.store
        async with store.session() as session:
            try:
                if access is not None:
                    assert self.account is not None
                    result = await shared.store_flags(
                        session,
                        store.cipher,
                        selected.folder_id,
                        self.account.mailbox_id,
                        uids,
                        cmd.action,
                        flags,
                        can_write=access.can_write,
                        unchanged_since=cmd.unchanged_since,
                    )
                else:
                    result = await queries.store_flags(
                        session,
                        selected.folder_id,
                        uids,
                        cmd.action,
                        flags,
                        unchanged_since=cmd.unchanged_since,
                    )
            except ValueError as exc:
                await self._bad(
                    cmd.tag, f"invalid flag: {exc}"[:200].replace("\r", " ").replace("\n", " ")
                )
                return
            if result.changed:
                await folders_changed(session, [selected.folder_id])
            await session.commit()
        # This STORE answers for its own changes (or the client asked .SILENT): not echoed.
        self._reported.update({u: result.modseqs[u] for u in result.changed})
        seq_of = {u: i + 1 for i, u in enumerate(self.uids)}
        for uid in sorted(result.flags):
            items: list[tuple[str, bytes]] = []
            if not cmd.silent:
                items.append(("FLAGS", responses.flag_list(result.flags[uid])))
            # rfc/7162 §3.1.3: with CONDSTORE on, the new MODSEQ goes out, even when .SILENT
            # (then only for the messages this STORE changed).
            if self.condstore and (not cmd.silent or uid in result.changed):
                items.append(("MODSEQ", fetch_items.modseq_value(result.modseqs[uid])))
            if not items:
                continue
            if cmd.uid or self.qresync:  # rfc/7162 §3.2.4: the UID once QRESYNC is on
                items.insert(0, ("UID", responses.number(uid)))
            self.writer.write(responses.fetch(seq_of[uid], items))
        await self._refresh(expunge=cmd.uid)  # rfc/3501 §7.4.1: no EXPUNGE during STORE
        if result.modified:
            # rfc/7162 §3.1.3: the messages refused, as UIDs for UID STORE, else numbers.
            numbers = result.modified if cmd.uid else [seq_of[u] for u in result.modified]
            await self._send(
                responses.tagged(
                    cmd.tag, "OK", "Conditional STORE failed", responses.modified(numbers)
                )
            )
            return
        await self._send(responses.tagged(cmd.tag, "OK", "STORE completed"))

    async def _search(self, cmd: Search) -> None:
        selected = self.selected
        assert selected is not None
        saving = cmd.returns is not None and "SAVE" in cmd.returns
        if cmd.charset is not None and cmd.charset.upper() not in ("US-ASCII", "UTF-8"):
            if saving:
                self.saved = []  # rfc/5182 §2.1: a failed SAVE search empties `$`
            await self._send(
                responses.tagged(
                    cmd.tag,
                    "NO",
                    "unsupported charset",
                    responses.badcharset(("US-ASCII", "UTF-8")),
                )
            )
            return
        account = self.account
        reader = None if selected.access is None or account is None else account.mailbox_id
        ctx = queries.SearchContext(self.uids, reader_id=reader, saved=tuple(self.saved))
        with_modseq = any(_has_modseq(k) for k in cmd.criteria)
        if with_modseq:
            self.condstore = True  # rfc/7162 §3.1: a CONDSTORE-enabling command
        try:
            found = await textsearch.search(
                self.server.store, selected.folder_id, cmd.criteria, ctx
            )
        except queries.UnsupportedError as exc:
            if saving:
                self.saved = []
            await self._no_cannot(cmd.tag, f"{exc}")
            return
        except (StoreError, SQLAlchemyError):
            if saving:
                self.saved = []  # rfc/5182 §2.1; the caller answers NO [UNAVAILABLE]
            raise
        seq_of = {u: i + 1 for i, u in enumerate(self.uids)}
        rows = [(f.uid, f.modseq) for f in found if f.uid in seq_of]
        if cmd.returns is not None or self.rev2:
            # rfc/9051 §6.4.4: an IMAP4rev2 SEARCH always answers ESEARCH (ALL by default).
            await self._esearch(cmd, rows, seq_of, with_modseq=with_modseq)
            return
        found_uids = [uid for uid, _ in rows]
        numbers = found_uids if cmd.uid else [seq_of[u] for u in found_uids]
        # rfc/7162 §3.1.5: with a MODSEQ key, the highest MODSEQ of the messages found
        # (none when nothing is found).
        highest = max((m for _, m in rows), default=None) if with_modseq and numbers else None
        await self._send(responses.search(numbers, modseq=highest))
        await self._refresh(expunge=cmd.uid)  # rfc/3501 §7.4.1: no EXPUNGE during SEARCH
        await self._send(responses.tagged(cmd.tag, "OK", "SEARCH completed"))

    async def _esearch(
        self,
        cmd: Search,
        rows: list[tuple[int, int]],
        seq_of: dict[int, int],
        *,
        with_modseq: bool,
    ) -> None:
        """SEARCH RETURN (…): the `* ESEARCH` answer of rfc/4731 §3.1 and SAVE (rfc/5182)."""
        options = set(cmd.returns or ()) or {"ALL"}  # RETURN () is ALL (rfc/4731 §3.1)
        whole = bool(options & {"ALL", "COUNT"})
        # rfc/4731 §3.1: MIN and MAX alone report (and, rfc/5182 §2.4, save) only those.
        chosen = rows
        if rows and not whole and options & {"MIN", "MAX"}:
            ends = {rows[0]} if "MIN" in options else set()
            if "MAX" in options:
                ends.add(rows[-1])
            chosen = sorted(ends)
        if "SAVE" in options:
            self.saved = [uid for uid, _ in chosen]
        if options == {"SAVE"}:  # rfc/5182 §2.1: SAVE alone sends no ESEARCH
            await self._refresh(expunge=cmd.uid)
            await self._send(responses.tagged(cmd.tag, "OK", "SEARCH completed, result saved"))
            return

        def number(uid: int) -> int:
            return uid if cmd.uid else seq_of[uid]

        # rfc/7162 §3.1.5 (ESEARCH): the highest MODSEQ of the messages reported.
        highest = max((m for _, m in chosen), default=None) if with_modseq else None
        await self._send(
            responses.esearch(
                cmd.tag,
                uid=cmd.uid,
                min_=number(rows[0][0]) if rows and "MIN" in options else None,
                max_=number(rows[-1][0]) if rows and "MAX" in options else None,
                all_=[number(u) for u, _ in rows] if "ALL" in options else None,
                count=len(rows) if "COUNT" in options else None,
                modseq=highest,
            ),
        )
        await self._refresh(expunge=cmd.uid)  # rfc/3501 §7.4.1: no EXPUNGE during SEARCH
        await self._send(responses.tagged(cmd.tag, "OK", "SEARCH completed"))

    async def _expunge(self, cmd: Expunge) -> None:
        selected = self.selected
        assert selected is not None
        if selected.read_only:
            await self._send(
                responses.tagged(cmd.tag, "NO", "mailbox is read-only", responses.READ_ONLY)
            )
            return
        if selected.access is not None and not await self._shared_write(
            cmd.tag, selected.access, shared.Write.EXPUNGE, selected.name
        ):
            return
        only: list[int] | None = None
        if cmd.uids is not None:  # rfc/4315 §2.1: only these UIDs, if \Deleted
            only = self._target_uids(cmd.uids, True)
        await self._remove_deleted(selected, only, announce=True)
        await self._refresh()  # what other sessions changed, before the tagged OK (rfc/3501 §7)
        await self._send(responses.tagged(cmd.tag, "OK", "EXPUNGE completed"))

    async def _remove_deleted(
        self, selected: Selected, only: list[int] | None, *, announce: bool
    ) -> None:
        assert self.account is not None
        async with self.server.store.session() as session:
            gone = await queries.expunge(
                session,
                selected.folder_id,
                self._owner_id(selected),
                only if only is not None else self.uids,
            )
            if gone:
                await folders_changed(session, [selected.folder_id])
            await session.commit()
        # rfc/3501 §7.4.1 EXPUNGE, or VANISHED once QRESYNC is on (rfc/7162 §3.2.10).
        out = updates.removal_lines(self.uids, gone, qresync=self.qresync)
        removed = set(gone)
        self.uids = _snapshot(u for u in self.uids if u not in removed)
        if announce and out:
            await self._send(*out)

    # --- CREATE, DELETE, RENAME, SUBSCRIBE (rfc/3501 §6.3.3 to §6.3.7) -----------------------

    def _own_name(self, raw: str) -> str | None:
        """The stored spelling of a personal folder name a client gives; None if it cannot be
        one (invalid, or in the shared namespace)."""
        try:
            name = store_folders.normalize_folder_name(raw)
        except ValueError:
            return None
        if name == SHARED_PREFIX or name.startswith(SHARED_PREFIX + DELIMITER):
            return None
        return name

    async def _shared_target(
        self, tag: str, raw: str, write: shared.Write
    ) -> tuple[int, str] | None:
        """(owner mailbox id, folder name) of a folder to create or rename to in the shared
        namespace, rights checked. A name under a mailbox the user may not see is answered as
        an invalid name, like one under no mailbox at all."""
        assert self.account is not None
        parts = shared.split(raw.removesuffix(DELIMITER))
        access = None
        if parts is not None:
            async with self.server.store.read_session() as session:
                for candidate in await shared.accesses(session, self.account.mailbox_id):
                    if candidate.owner_address == parts[0]:
                        access = candidate
        if parts is None or access is None:
            self._audit_shared(None, raw, write.value, Outcome.REFUSED, reason="no_access")
            await self._no_cannot(tag, "invalid mailbox name")
            return None
        if not await self._shared_write(tag, access, write, raw):
            return None
        return access.owner_id, parts[1]

    async def _create(self, cmd: Create) -> None:
        assert self.account is not None
        # rfc/3501 §6.3.3: a trailing delimiter says children will be created under it.
        mailbox_id = self.account.mailbox_id
        if shared.in_namespace(cmd.mailbox):
            target = await self._shared_target(cmd.tag, cmd.mailbox, shared.Write.CREATE)
            if target is None:
                return
            mailbox_id, name = target
        else:
            own = self._own_name(cmd.mailbox.removesuffix(DELIMITER))
            if own is None:
                await self._no_cannot(cmd.tag, "invalid mailbox name")
                return
            name = own
        special: SpecialUse | None = None
        if cmd.special_use:
            by_lower = {s.value.lower(): s for s in SpecialUse}
            if len(cmd.special_use) > 1 or cmd.special_use[0].lower() not in by_lower:
                await self._send(
                    responses.tagged(
                        cmd.tag, "NO", "unsupported special-use attribute", responses.USEATTR
                    )
                )
                return
            special = by_lower[cmd.special_use[0].lower()]
        async with self.server.store.session() as session:
            names = {f.name for f in await store_folders.list_folders(session, mailbox_id)}
            if name in names:
                await self._send(
                    responses.tagged(cmd.tag, "NO", "mailbox exists", responses.ALREADYEXISTS)
                )
                return
            try:
                for parent in _parents(name):  # rfc/3501 §6.3.3: create the levels above
                    if parent not in names:
                        await store_folders.create_folder(session, mailbox_id, parent)
                await store_folders.create_folder(session, mailbox_id, name, special_use=special)
            except AlreadyExists:
                await self._send(
                    responses.tagged(cmd.tag, "NO", "mailbox exists", responses.ALREADYEXISTS)
                )
                return
            await session.commit()
        await self._send(responses.tagged(cmd.tag, "OK", "CREATE completed"))

    async def _delete(self, cmd: Delete) -> None:
        assert self.account is not None
        located = await self._locate(cmd.mailbox, "DELETE")
        if located is None:
            await self._nonexistent(cmd.tag)
            return
        folder = located.folder
        if located.access is not None and not await self._shared_write(
            cmd.tag, located.access, shared.Write.DELETE, located.name
        ):
            return
        if folder.name == store_folders.INBOX:
            await self._no_cannot(cmd.tag, "INBOX cannot be deleted")
            return
        siblings = await self._folders(folder.mailbox_id)
        if any(f.name.startswith(folder.name + DELIMITER) for f in siblings):
            # rfc/9051 §6.3.4: we keep no \Noselect folders, so one with children stays.
            await self._send(
                responses.tagged(cmd.tag, "NO", "mailbox has children", responses.HASCHILDREN)
            )
            return
        async with self.server.store.session() as session:
            await queries.delete_folder(session, folder.id, folder.mailbox_id)
            await folders_changed(session, [folder.id])
            await session.commit()
        await self._send(responses.tagged(cmd.tag, "OK", "DELETE completed"))

    async def _rename(self, cmd: Rename) -> None:
        assert self.account is not None
        located = await self._locate(cmd.source, "RENAME")
        if located is None:
            await self._nonexistent(cmd.tag)
            return
        source = located.folder
        mailbox_id = source.mailbox_id
        destination: str | None
        if located.access is None:
            destination = self._own_name(cmd.destination.removesuffix(DELIMITER))
        else:
            # Within the same shared mailbox only: folders do not change hands.
            target = await self._shared_target(cmd.tag, cmd.destination, shared.Write.RENAME)
            if target is None:
                return
            destination = target[1] if target[0] == mailbox_id else None
        if destination is None or destination.startswith(source.name + DELIMITER):
            await self._no_cannot(cmd.tag, "invalid new name")
            return
        if source.name == store_folders.INBOX:
            await self._rename_inbox(cmd.tag, source, destination)
            return
        async with self.server.store.session() as session:
            entries = await store_folders.list_folders(session, mailbox_id)
            moved = [
                (f.id, destination + f.name[len(source.name) :])
                for f in entries
                if f.name == source.name or f.name.startswith(source.name + DELIMITER)
            ]
            staying = {f.name for f in entries} - {
                f.name for f in entries if f.id in {m[0] for m in moved}
            }
            if destination == store_folders.INBOX or any(n in staying for _, n in moved):
                await self._send(
                    responses.tagged(cmd.tag, "NO", "mailbox exists", responses.ALREADYEXISTS)
                )
                return
            await queries.rename_folders(session, moved)
            for parent in _parents(destination):
                if parent not in staying:
                    await store_folders.create_folder(session, mailbox_id, parent)
            await session.commit()
        await self._send(responses.tagged(cmd.tag, "OK", "RENAME completed"))

    async def _rename_inbox(self, tag: str, inbox: store_folders.Folder, destination: str) -> None:
        """rfc/3501 §6.3.5, rfc/9051 §6.3.6: renaming INBOX moves all its messages to a new
        mailbox and leaves INBOX empty; INBOX's inferior names are unaffected. The INBOX folder
        itself (messages, UIDs, UIDVALIDITY) takes the new name, and a new empty INBOX is made
        with a new UIDVALIDITY, in one transaction."""
        async with self.server.store.session() as session:
            names = {f.name for f in await store_folders.list_folders(session, inbox.mailbox_id)}
            if destination in names:
                await self._send(
                    responses.tagged(tag, "NO", "mailbox exists", responses.ALREADYEXISTS)
                )
                return
            await queries.rename_folders(session, [(inbox.id, destination)])
            for parent in _parents(destination):
                if parent not in names:
                    await store_folders.create_folder(session, inbox.mailbox_id, parent)
            await store_folders.create_folder(session, inbox.mailbox_id, store_folders.INBOX)
            await folders_changed(session, [inbox.id])
            await session.commit()
        await self._send(responses.tagged(tag, "OK", "RENAME completed"))

    async def _subscribe(self, cmd: Subscribe | Unsubscribe) -> None:
        verb = type(cmd).__name__.upper()
        located = await self._locate(cmd.mailbox, verb)
        if located is None:
            await self._nonexistent(cmd.tag)
            return
        folder = located.folder
        if located.access is not None:
            # The subscription flag is the owner's: shared folders are always listed as
            # subscribed (shared.py), so SUBSCRIBE has nothing to do and UNSUBSCRIBE cannot.
            if isinstance(cmd, Unsubscribe):
                await self._no_cannot(cmd.tag, "shared folders are always subscribed")
            else:
                await self._send(responses.tagged(cmd.tag, "OK", f"{verb} completed"))
            return
        async with self.server.store.session() as session:
            await queries.set_subscribed(session, folder.id, isinstance(cmd, Subscribe))
            await session.commit()
        await self._send(responses.tagged(cmd.tag, "OK", f"{verb} completed"))

    async def _nonexistent(self, tag: str) -> None:
        await self._send(responses.tagged(tag, "NO", "no such mailbox", responses.NONEXISTENT))

    # --- APPEND, COPY, MOVE -------------------------------------------------------------------

    def _quota_limit(self, usage: queries.Usage) -> int:
        """The mailbox's quota in octets (0: none), as Delivery reckons it."""
        if usage.quota_bytes is not None:
            return usage.quota_bytes
        return self.server.settings.storage.default_quota_bytes

    async def _over_quota(
        self, session: AsyncSession, added: int, mailbox_id: int | None = None
    ) -> bool:
        """Over the quota of `mailbox_id` (the owner's for a shared folder), else the user's."""
        assert self.account is not None
        usage = await queries.mailbox_usage(
            session, self.account.mailbox_id if mailbox_id is None else mailbox_id
        )
        limit = self._quota_limit(usage)
        return limit > 0 and usage.used_bytes + added > limit

    async def _overquota(self, tag: str) -> None:
        # rfc/5530 §3: OVERQUOTA.
        await self._send(responses.tagged(tag, "NO", "over quota", responses.OVERQUOTA))

    async def _appends(self, cmds: Sequence[Append]) -> None:
        """APPEND: rfc/3501 §6.3.11, rfc/3502 (several messages, all or none), rfc/4315
        APPENDUID. `cmds` are APPENDs read together (a client pipelining them with LITERAL+):
        each is checked and sealed in turn, then all are submitted to the process's committer
        together (`appender.py`), so they share one transaction, as if run one after the
        other (in order: UIDs and quota), and are answered in order once it has committed."""
        answers: list[list[bytes]] = [[] for _ in cmds]
        ready: list[tuple[int, Append, store_folders.Folder]] = []
        requests: list[appender.Request] = []
        for index, cmd in enumerate(cmds):
            try:
                prepared = await self._prepare_append(cmd)
            except (StoreError, SQLAlchemyError):
                log.exception("store error in an IMAP command")
                prepared = _unavailable(cmd.tag)
            if isinstance(prepared, bytes):
                answers[index].append(prepared)
            else:
                ready.append((index, cmd, prepared[0]))
                requests.append(prepared[1])
        outcomes = await asyncio.gather(
            *(self.server.appender.submit(r) for r in requests), return_exceptions=True
        )
        stored_into: set[int] = set()
        for (index, cmd, folder), outcome in zip(ready, outcomes, strict=True):
            if isinstance(outcome, StoreError):
                log.warning("APPEND not stored: %s", outcome)
                answers[index].append(_unavailable(cmd.tag))
            elif isinstance(outcome, BaseException):
                raise outcome
            elif outcome is None:
                # rfc/5530 §3: OVERQUOTA.
                answers[index].append(
                    responses.tagged(cmd.tag, "NO", "over quota", responses.OVERQUOTA)
                )
            else:
                stored_into.add(folder.id)
                code = responses.appenduid(folder.uidvalidity, list(outcome))
                answers[index].append(responses.tagged(cmd.tag, "OK", "APPEND completed", code))
        if self.selected is not None and self.selected.folder_id in stored_into:
            await self._refresh()
        await self._send(*(line for lines in answers for line in lines))

    async def _prepare_append(
        self, cmd: Append
    ) -> tuple[store_folders.Folder, appender.Request] | bytes:
        """The checked and sealed APPEND, or the answer refusing it."""
        located = await self._locate(cmd.mailbox, "APPEND")
        if located is None:
            # rfc/3501 §6.3.11: TRYCREATE when creating the mailbox would help.
            return responses.tagged(cmd.tag, "NO", "no such mailbox", responses.TRYCREATE)
        folder = located.folder
        if located.access is not None and not await self._shared_write(
            cmd.tag, located.access, shared.Write.APPEND, located.name
        ):
            return b""  # refused, and answered, by _shared_write
        if any(not m.data for m in cmd.messages):
            return responses.tagged(cmd.tag, "BAD", "empty message")
        flag_lists = [tuple(f for f in m.flags if f.lower() != "\\recent") for m in cmd.messages]
        try:
            for flags in flag_lists:
                store_messages.parse_flags(flags)
        except ValueError as exc:
            text = f"invalid flag: {exc}"[:200].replace("\r", " ").replace("\n", " ")
            return responses.tagged(cmd.tag, "BAD", text)
        cipher = self.server.store.cipher
        datas = [m.data for m in cmd.messages]
        if sum(len(d) for d in datas) > THREAD_THRESHOLD:
            sealed = await asyncio.to_thread(lambda: [seal_message(cipher, d) for d in datas])
        else:  # as Delivery does: a worker thread costs more than sealing a small message
            sealed = [seal_message(cipher, d) for d in datas]
        now = utcnow()
        request = appender.Request(
            folder_id=folder.id,
            owner_id=folder.mailbox_id,
            messages=tuple(
                appender.NewMessage(blob, meta, len(d), m.internal_date or now, flags)
                for (blob, meta), d, m, flags in zip(
                    sealed, datas, cmd.messages, flag_lists, strict=True
                )
            ),
        )
        return folder, request

    async def _copy(self, cmd: Copy | Move) -> None:
        """COPY (rfc/3501 §6.4.7) and MOVE (rfc/6851), with COPYUID (rfc/4315 §3). The body
        blob and its structure are shared; new UIDs are allocated in the target."""
        selected = self.selected
        assert selected is not None and self.account is not None
        move = isinstance(cmd, Move)
        verb = "MOVE" if move else "COPY"
        if move and selected.read_only:
            await self._send(
                responses.tagged(cmd.tag, "NO", "mailbox is read-only", responses.READ_ONLY)
            )
            return
        uids = self._target_uids(cmd.sequence, cmd.uid)
        located = await self._locate(cmd.mailbox, verb)
        if located is None:
            await self._send(
                responses.tagged(cmd.tag, "NO", "no such mailbox", responses.TRYCREATE)
            )
            return
        target = located.folder
        if (
            move
            and selected.access is not None
            and not await self._shared_write(
                cmd.tag, selected.access, shared.Write.MOVE, selected.name
            )
        ):
            return
        if located.access is not None and not await self._shared_write(
            cmd.tag, located.access, shared.Write.COPY_INTO, located.name
        ):
            return
        async with self.server.store.session() as session:
            if move:
                await queries.lock_folders(session, (selected.folder_id, target.id))
            sources = await queries.copy_sources(session, selected.folder_id, uids)
            if selected.access is not None:
                sources = await self._shared_copy_sources(session, selected, sources)
            added = sum(s.size for s in sources)
            # Within one mailbox a MOVE does not change its usage; otherwise the target's
            # owner pays (rfc/9208 would call it the target's quota root).
            same_mailbox = target.mailbox_id == self._owner_id(selected)
            if (
                sources
                and not (move and same_mailbox)
                and await self._over_quota(session, added, target.mailbox_id)
            ):
                await self._overquota(cmd.tag)
                return
            stored = await store_messages.append_messages(
                session,
                [
                    store_messages.NewMessage(
                        folder_id=target.id,
                        blob_id=s.blob_id,
                        size=s.size,
                        internal_date=s.internal_date,
                        flags=s.flags,
                    )
                    for s in sources
                ],
            )
            gone: list[int] = []
            if move:
                gone = await queries.remove_messages(
                    session, selected.folder_id, self._owner_id(selected), [s.uid for s in sources]
                )
            if sources:
                await folders_changed(session, [target.id, *([selected.folder_id] if move else [])])
            await session.commit()
        if not sources:
            await self._send(responses.tagged(cmd.tag, "OK", f"{verb} completed"))
            return
        code = responses.copyuid(
            target.uidvalidity, [s.uid for s in sources], [m.uid for m in stored]
        )
        out: list[bytes] = []
        if move:
            # rfc/6851 §4.3: COPYUID in an untagged OK before the EXPUNGEs.
            out.append(responses.untagged("OK", "moved", code))
            # rfc/6851 §4.4: VANISHED instead of EXPUNGE once QRESYNC is on.
            out += updates.removal_lines(self.uids, gone, qresync=self.qresync)
            removed = set(gone)
            self.uids = _snapshot(u for u in self.uids if u not in removed)
        if out:
            await self._send(*out)
        await self._refresh()  # what changed, the target included when it is this folder
        if move:
            await self._send(responses.tagged(cmd.tag, "OK", "MOVE completed"))
        else:
            await self._send(responses.tagged(cmd.tag, "OK", "COPY completed", code))

    async def _shared_copy_sources(
        self, session: AsyncSession, selected: Selected, sources: list[queries.CopySource]
    ) -> list[queries.CopySource]:
        """A copy out of a shared folder carries the grantee's own \\Seen."""
        assert self.account is not None
        seen = await store_seen.seen_uids(
            session, selected.folder_id, self.account.mailbox_id, compress(s.uid for s in sources)
        )
        out: list[queries.CopySource] = []
        for s in sources:
            others = tuple(f for f in s.flags if f != shared.SEEN)
            flags = (shared.SEEN, *others) if s.uid in seen else others
            out.append(queries.CopySource(s.uid, s.blob_id, s.size, s.internal_date, flags))
        return out

    # --- IDLE (rfc/2177, rfc/9051 §6.3.13) -------------------------------------------------------

    async def _idle(self, cmd: Idle) -> None:
        await self._send(responses.continuation("idling"))
        self._idling = True
        self._queue.extend(self.commands.expect_idle_done(cmd.tag))
        selected = self.selected
        if selected is None:
            return  # rfc/2177: IDLE in the authenticated state has nothing to report
        # No task of its own while nothing happens: the process-wide watcher (notify.py) calls
        # _idle_wake when the folder may have changed.
        self.server.watcher.subscribe(selected.folder_id, self._idle_wake)
        self._idle_wake()  # what changed since the last command

    def _idle_wake(self) -> None:
        if not self._idling:
            return
        if self._idle_task is None or self._idle_task.done():
            self._idle_task = asyncio.create_task(self._idle_report())
        else:
            self._idle_again = True  # the running report re-reads once more

    async def _idle_report(self) -> None:
        """Report new and removed messages of the selected folder (`* n EXISTS`/EXPUNGE)."""
        try:
            while self._idling and self.selected is not None:
                self._idle_again = False
                await self._refresh()
                if not self._idle_again:
                    return
        except Exception:  # a closed connection or an unavailable store: the next wake retries
            log.debug("IDLE report failed", exc_info=True)

    async def _stop_idle(self) -> None:
        if not self._idling:
            return
        self._idling = False
        if self.selected is not None:
            self.server.watcher.unsubscribe(self.selected.folder_id, self._idle_wake)
        task, self._idle_task = self._idle_task, None
        if task is not None:
            with contextlib.suppress(Exception):
                await task

    def abort(self) -> None:
        self.writer.transport.abort()

    async def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.write(responses.bye("Server shutting down"))
        await self.close()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
