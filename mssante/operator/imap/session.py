"""One IMAP connection: reads bytes, feeds the sans-IO reader, runs its commands over the store.

States are those of rfc/3501 §3: not authenticated, authenticated, selected, logout. Every
response goes through `responses` (byte-exact writers). A command this slice does not run gets
`NO [CANNOT]`, a malformed one `BAD` (the reader's events), and the session goes on.

The session keeps the UIDs of the selected folder as its snapshot: sequence number n is the
n-th UID (rfc/3501 §2.3.1.2). The snapshot changes only at the moments the RFC allows
(§7.4.1: no EXPUNGE during FETCH, STORE or SEARCH): at NOOP and CHECK (new messages: EXISTS;
messages removed by another session: EXPUNGE), at this session's own EXPUNGE or CLOSE, after
its APPEND/COPY/MOVE into the selected folder, and while it idles (rfc/2177: the IDLE watcher
is woken by `notify.FolderNotifier` within the process and polls the folder every 0.5 s for
Delivery and other processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from mssante.logs import event
from mssante.operator import mime
from mssante.operator.imap import auth, queries, responses
from mssante.operator.imap import fetch as fetch_items
from mssante.operator.imap.commands import (
    AndKey,
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
    NotKey,
    OrKey,
    Rename,
    Search,
    SearchKey,
    Select,
    StartTLS,
    Status,
    Store,
    StoreAction,
    Subscribe,
    Unselect,
    Unsubscribe,
)
from mssante.operator.imap.limits import DEFAULT_LIMITS, Limit
from mssante.operator.imap.notify import POLL_SECONDS
from mssante.operator.imap.reader import (
    CommandReader,
    Event,
    IdleDone,
    NeedContinuation,
    ParseError,
    SaslResponse,
    TooBig,
)
from mssante.operator.imap.sequence import SequenceSet
from mssante.operator.passwords import verify_async
from mssante.operator.store import blobmeta, blobs
from mssante.operator.store import folders as store_folders
from mssante.operator.store import messages as store_messages
from mssante.operator.store.crypto import BlobCipher, SealedBlob, SealedRecord
from mssante.operator.store.errors import AlreadyExists, StoreError
from mssante.operator.store.schema import Outcome, SpecialUse, utcnow

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from mssante.operator.imap.server import ImapServer

log = logging.getLogger("mssante.imap")

READ_SIZE: Final = 65536
DELIMITER: Final = "/"
SHARED_PREFIX: Final = "Shared"  # rfc/2342 other users' / shared namespace (issue 4 §5)
PERMANENT_FLAGS: Final = (*fetch_items.SYSTEM_FLAGS, "\\*")
MAX_USERNAME: Final = 320  # rfc/5321 §4.5.3.1: the longest address


class _LogoutError(Exception):
    """The session ends (LOGOUT, idle timeout, a fatal reader error)."""


@dataclass(frozen=True, slots=True)
class Selected:
    folder_id: int
    name: str
    uidvalidity: int
    read_only: bool


def capabilities(
    *, tls: bool, authenticated: bool, append_limit: int = DEFAULT_LIMITS.max_literal
) -> list[str]:
    caps = ["IMAP4rev1"]  # rfc/3501
    if not authenticated:
        if tls:
            caps += ["AUTH=PLAIN", "SASL-IR"]  # rfc/4616, rfc/4959
        else:
            # rfc/3501 §6.2.3 and rfc/8314 §4: no password in clear; TLS first.
            caps += ["STARTTLS", "LOGINDISABLED"]  # rfc/3501 §6.2.1, §7.2.1
    caps += [
        "LITERAL-",  # rfc/7888 (the reader's max_nonsync_literal bound)
        "ID",  # rfc/2971
        "ENABLE",  # rfc/5161 (CONDSTORE is the only extension it enables)
        "NAMESPACE",  # rfc/2342
        "UNSELECT",  # rfc/3691
        "SPECIAL-USE",  # rfc/6154 (\Sent, \Drafts, \Trash, \Junk, \Archive in LIST)
        "CHILDREN",  # rfc/3348 (\HasChildren / \HasNoChildren in every LIST)
        "CREATE-SPECIAL-USE",  # rfc/6154 §3 (CREATE … (USE (\Archive)))
        "UIDPLUS",  # rfc/4315 (APPENDUID, COPYUID, UID EXPUNGE)
        "MOVE",  # rfc/6851
        "IDLE",  # rfc/2177 (in-process wake-ups, plus a poll for other writers: notify.py)
        "MULTIAPPEND",  # rfc/3502 (all messages in one transaction)
        "CONDSTORE",  # rfc/7162 §3.1 (MODSEQ, CHANGEDSINCE, UNCHANGEDSINCE; no QRESYNC)
        f"APPENDLIMIT={append_limit}",  # rfc/7889 (the reader's max_literal)
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
    try:
        structure = mime.parse(data)
    except Exception:  # the parser is fuzzed never to raise; if it does, still store
        log.error("MIME parser failed, storing a minimal structure", exc_info=True)
        structure = mime.fallback(data)
    sealed = cipher.seal(data)
    return sealed, blobmeta.seal_meta(cipher, sealed.digest, mime.to_json(structure))


def _has_modseq(key: SearchKey) -> bool:
    """Whether a search key uses MODSEQ anywhere (rfc/7162 §3.1.5)."""
    if isinstance(key, ModSeqKey):
        return True
    if isinstance(key, NotKey):
        return _has_modseq(key.key)
    if isinstance(key, OrKey):
        return _has_modseq(key.left) or _has_modseq(key.right)
    if isinstance(key, AndKey):
        return any(_has_modseq(k) for k in key.keys)
    return False


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
        self.uids: list[int] = []
        self.condstore = False  # rfc/7162 §3.1: enabled by ENABLE or a CONDSTORE command
        self._queue: deque[Event] = deque()
        self._idle_task: asyncio.Task[None] | None = None
        self._idle_wake = asyncio.Event()
        self._idle_stopping = False
        self._sasl_tag: str | None = None  # an AUTHENTICATE waiting for the client's response

    # --- I/O ---------------------------------------------------------------------------------

    async def _send(self, *chunks: bytes) -> None:
        self.writer.write(b"".join(chunks))
        await self.writer.drain()

    async def run(self) -> None:
        caps = capabilities(
            tls=self.tls, authenticated=False, append_limit=self.server.limits.max_literal
        )
        code = responses.capability_code(caps)
        await self._send(responses.untagged("OK", "MSSante IMAP server ready", code))
        try:
            while True:
                try:
                    data = await asyncio.wait_for(
                        self.stream.read(READ_SIZE), self.server.idle_timeout
                    )
                except TimeoutError:
                    # rfc/9051 §5.4: the autologout timer is at least 30 minutes.
                    await self._send(responses.bye("Autologout; idle for too long"))
                    self.server.audit(self, "imap.timeout", Outcome.REFUSED, {})
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
            if self._idle_task is None:
                await self._bad(ev.tag, "unexpected DONE")
            else:
                await self._stop_idle()
                await self._send(responses.tagged(ev.tag, "OK", "IDLE terminated"))
        else:
            try:
                await self._command(ev)
            except StoreError:
                log.exception("store error in an IMAP command")
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
            # this command newly enabled: CONDSTORE (rfc/7162 §3.1) is the only one offered.
            newly = "CONDSTORE" in cmd.capabilities and not self.condstore
            self.condstore = True if newly else self.condstore
            await self._send(
                responses.enabled(("CONDSTORE",) if newly else ()),
                responses.tagged(tag, "OK", "ENABLE completed"),
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
            await self._append(cmd)
        elif isinstance(cmd, Idle):
            await self._idle(cmd)
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
            if not selected.read_only:
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
        if cmd.mechanism != "PLAIN":
            await self._send(
                responses.tagged(cmd.tag, "NO", "unsupported mechanism", responses.CANNOT)
            )
            self._resume_if_paused()
            return
        if cmd.initial_response is None:
            await self._send(responses.challenge(b""))
            self._sasl_tag = cmd.tag
            self._queue.extend(self.commands.expect_sasl_response(cmd.tag))
            return
        await self._plain(cmd.tag, cmd.initial_response)

    async def _sasl_response(self, ev: SaslResponse) -> None:
        self._sasl_tag = None
        if ev.data is None:
            # rfc/9051 §6.2.2: "*" cancels, answered with BAD.
            await self._bad(ev.tag, "authentication cancelled")
            self._resume_if_paused()
            return
        await self._plain(ev.tag, ev.data)

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
        name = username.strip().lower()[:MAX_USERNAME]
        keys = ("user:" + name, "ip:" + self.peer_ip)
        delay = server.throttle.delay(keys, time.monotonic())
        if delay:
            await asyncio.sleep(delay)
        async with server.store.read_session() as session:
            account = await queries.find_account(session, name)
        stored = account.password_hash if account is not None else None
        # The same argon2 work whether the account exists or not: no enumeration by timing.
        ok = await verify_async(stored or await server.dummy_hash(), password)
        if account is None or stored is None or not ok:
            server.throttle.failed(keys, time.monotonic())
            reason = (
                "unknown_user"
                if account is None
                else "no_password"
                if stored is None
                else "bad_password"
            )
            server.audit(
                self, "imap.login", Outcome.REFUSED,
                {"user": name, "mechanism": mechanism, "reason": reason},
            )  # fmt: skip
            await self._send(
                responses.tagged(tag, "NO", "Authentication failed", responses.AUTHENTICATIONFAILED)
            )
            return
        server.throttle.succeeded(keys[0])
        self.account = account
        server.audit(
            self, "imap.login", Outcome.OK, {"user": account.address, "mechanism": mechanism}
        )
        # rfc/9051 §6.2.3: the capabilities may change at login; say so in the OK.
        caps = capabilities(
            tls=self.tls, authenticated=True, append_limit=self.server.limits.max_literal
        )
        await self._send(responses.tagged(tag, "OK", "Logged in", responses.capability_code(caps)))

    # --- folders ------------------------------------------------------------------------------

    async def _folders(self) -> list[store_folders.Folder]:
        assert self.account is not None
        async with self.server.store.read_session() as session:
            return await store_folders.list_folders(session, self.account.mailbox_id)

    async def _list(
        self,
        tag: str,
        reference: str,
        patterns: Sequence[str],
        cmd: List | None,
        *,
        subscribed_only: bool,
    ) -> None:
        if cmd is not None and (
            cmd.selection - {"SPECIAL-USE", "SUBSCRIBED"} or cmd.return_status is not None
        ):
            await self._no_cannot(tag, "LIST-EXTENDED options are not implemented yet")
            return
        verb: Literal["LIST", "LSUB"] = "LSUB" if subscribed_only else "LIST"
        if all(p == "" for p in patterns):
            # rfc/3501 §6.3.8: the delimiter and the root of the reference.
            out = responses.list_item(["\\Noselect"], DELIMITER, "", command=verb)
            await self._send(out, responses.tagged(tag, "OK", f"{verb} completed"))
            return
        entries = await self._folders()
        names = {f.name for f in entries}
        lines: list[bytes] = []
        special_only = cmd is not None and "SPECIAL-USE" in cmd.selection
        # rfc/5258 §3.1: the SUBSCRIBED selection implies the SUBSCRIBED return option.
        if cmd is not None and "SUBSCRIBED" in cmd.selection:
            subscribed_only = True
        show_subscribed = cmd is not None and (subscribed_only or cmd.return_subscribed)
        for folder in entries:
            if subscribed_only and not folder.subscribed:
                continue
            if special_only and folder.special_use is None:
                continue
            if not any(_wildcard_match(reference + p, folder.name) for p in patterns if p):
                continue
            children = any(n.startswith(folder.name + DELIMITER) for n in names)
            attrs = ["\\HasChildren" if children else "\\HasNoChildren"]
            if folder.special_use is not None:
                attrs.append(folder.special_use.value)
            if show_subscribed and folder.subscribed:
                attrs.append("\\Subscribed")
            lines.append(responses.list_item(attrs, DELIMITER, folder.name, command=verb))
        if not special_only and any(
            _wildcard_match(reference + p, SHARED_PREFIX) for p in patterns if p
        ):
            # The shared namespace's root (rfc/2342): empty until shared mailboxes arrive.
            attrs = ["\\Noselect", "\\HasNoChildren"]
            lines.append(responses.list_item(attrs, DELIMITER, SHARED_PREFIX, command=verb))
        await self._send(*lines, responses.tagged(tag, "OK", f"{verb} completed"))

    async def _find_folder(self, name: str) -> store_folders.Folder | None:
        try:
            wanted = store_folders.normalize_folder_name(name)
        except ValueError:
            return None
        for folder in await self._folders():
            if folder.name == wanted:
                return folder
        return None

    async def _status(self, cmd: Status) -> None:
        unknown = set(cmd.items) - {
            "MESSAGES",
            "RECENT",
            "UIDNEXT",
            "UIDVALIDITY",
            "UNSEEN",
            "DELETED",
            "SIZE",
            "APPENDLIMIT",
            "HIGHESTMODSEQ",  # rfc/7162 §3.1.6
        }
        if unknown:
            await self._no_cannot(cmd.tag, f"STATUS {sorted(unknown)[0]} is not implemented yet")
            return
        folder = await self._find_folder(cmd.mailbox)
        if folder is None:
            await self._send(
                responses.tagged(cmd.tag, "NO", "no such mailbox", responses.NONEXISTENT)
            )
            return
        async with self.server.store.read_session() as session:
            counts = await queries.folder_counts(session, folder.id)
        values = {
            "MESSAGES": counts.messages,
            "RECENT": 0,  # \Recent is not kept (rfc/9051 removed it)
            "UIDNEXT": folder.uidnext,
            "UIDVALIDITY": folder.uidvalidity,
            "UNSEEN": counts.unseen,
            "DELETED": counts.deleted,
            "SIZE": counts.size,
            "APPENDLIMIT": self.server.limits.max_literal,  # rfc/7889 §3: same for every folder
            "HIGHESTMODSEQ": folder.highest_modseq,
        }
        if "HIGHESTMODSEQ" in cmd.items:
            self.condstore = True  # rfc/7162 §3.1: a CONDSTORE-enabling command
        items = [(item, values[item]) for item in cmd.items]
        await self._send(
            responses.status(folder.name, items),
            responses.tagged(cmd.tag, "OK", "STATUS completed"),
        )

    def _deselect(self) -> None:
        self.selected = None
        self.uids = []

    async def _select(self, cmd: Select) -> None:
        self._deselect()  # rfc/3501 §6.3.1: a failed SELECT leaves no mailbox selected
        if cmd.qresync is not None:
            await self._no_cannot(cmd.tag, "QRESYNC is not implemented yet")
            return
        folder = await self._find_folder(cmd.mailbox)
        if folder is None:
            await self._send(
                responses.tagged(cmd.tag, "NO", "no such mailbox", responses.NONEXISTENT)
            )
            return
        async with self.server.store.read_session() as session:
            uids = await queries.folder_uids(session, folder.id)
            first_unseen = await queries.first_unseen_uid(session, folder.id)
            current = await store_folders.get_folder_by_id(session, folder.id)
        self.selected = Selected(folder.id, folder.name, current.uidvalidity, cmd.read_only)
        self.uids = uids
        out = [
            responses.flags(fetch_items.SYSTEM_FLAGS),
            responses.exists(len(uids)),
            responses.recent(0),
        ]
        if first_unseen is not None and first_unseen in uids:
            out.append(
                responses.untagged(
                    "OK", "first unseen", responses.unseen(uids.index(first_unseen) + 1)
                )
            )
        out += [
            responses.untagged("OK", "UIDs valid", responses.uidvalidity(current.uidvalidity)),
            responses.untagged("OK", "predicted next UID", responses.uidnext(current.uidnext)),
            responses.untagged(
                "OK",
                "flags permitted",
                responses.permanentflags(() if cmd.read_only else PERMANENT_FLAGS),
            ),
        ]
        if cmd.condstore:
            self.condstore = True  # rfc/7162 §3.1.8
        if self.condstore:
            # rfc/7162 §3.1.2.1: every message has a MODSEQ here, so never NOMODSEQ.
            out.append(
                responses.untagged("OK", "highest", responses.highestmodseq(current.highest_modseq))
            )
        code = responses.READ_ONLY if cmd.read_only else responses.READ_WRITE
        verb = "EXAMINE" if cmd.read_only else "SELECT"
        out.append(responses.tagged(cmd.tag, "OK", f"{verb} completed", code))
        await self._send(*out)

    async def _refresh(self) -> None:
        """At NOOP/CHECK: report messages removed elsewhere (EXPUNGE) and new ones (EXISTS)."""
        assert self.selected is not None
        async with self.server.store.read_session() as session:
            current = await queries.folder_uids(session, self.selected.folder_id)
        present = set(current)
        out: list[bytes] = []
        for index in range(len(self.uids) - 1, -1, -1):  # descending: numbers stay valid
            if self.uids[index] not in present:
                out.append(responses.expunge(index + 1))
                del self.uids[index]
        last = self.uids[-1] if self.uids else 0
        new = [u for u in current if u > last]
        if new:
            self.uids.extend(new)
            out.append(responses.exists(len(self.uids)))
        if out:
            await self._send(*out)

    # --- messages -----------------------------------------------------------------------------

    def _target_uids(self, sequence: SequenceSet, uid: bool) -> list[int] | None:
        """UIDs a set names in the snapshot; None for `$` (not supported)."""
        if sequence.saved:
            return None
        if not self.uids:
            return []
        if uid:
            runs = sequence.resolve(self.uids[-1])
            return [u for u in self.uids if any(lo <= u <= hi for lo, hi in runs)]
        runs = sequence.resolve(len(self.uids))
        return [self.uids[n - 1] for lo, hi in runs for n in range(lo, min(hi, len(self.uids)) + 1)]

    async def _fetch(self, cmd: Fetch) -> None:
        selected = self.selected
        assert selected is not None
        if cmd.vanished or not fetch_items.supported(cmd.items):
            await self._no_cannot(cmd.tag, "FETCH item or modifier not implemented yet")
            return
        uids = self._target_uids(cmd.sequence, cmd.uid)
        if uids is None:
            await self._no_cannot(cmd.tag, "$ is not implemented yet")
            return
        if not cmd.uid and cmd.sequence.ranges and uids == [] and self.uids == []:
            await self._bad(cmd.tag, "no messages")  # rfc/9051 §6.4.5: invalid sequence numbers
            return
        if cmd.changed_since is not None or any(
            isinstance(i, FetchAttr) and i.name == "MODSEQ" for i in cmd.items
        ):
            self.condstore = True  # rfc/7162 §3.1: a CONDSTORE-enabling command
        store = self.server.store
        flags_changed: set[int] = set()
        if fetch_items.sets_seen(cmd.items) and not selected.read_only and uids:
            async with store.session() as session:
                before = await queries.fetch_messages(
                    session, store.cipher, selected.folder_id, uids, body=False, structure=False
                )
                unseen = [m.state.uid for m in before if "\\Seen" not in m.state.flags]
                if unseen:
                    await queries.store_flags(
                        session, selected.folder_id, unseen, StoreAction.ADD, ("\\Seen",)
                    )
                    await session.commit()
                    flags_changed = set(unseen)
        async with store.read_session() as session:
            messages = await queries.fetch_messages(
                session,
                store.cipher,
                selected.folder_id,
                uids,
                body=fetch_items.needs_body(cmd.items),
                structure=fetch_items.needs_structure(cmd.items),
                changed_since=cmd.changed_since,
            )
        seq_of = {u: i + 1 for i, u in enumerate(self.uids)}
        for message in messages:
            items = fetch_items.render(
                message.state,
                cmd.items,
                raw=message.raw,
                structure=message.structure,
                with_uid=cmd.uid,
                with_flags=message.state.uid in flags_changed,
                # rfc/7162 §3.1.4.1: CHANGEDSINCE implies MODSEQ; §3.2: so do flag changes.
                with_modseq=cmd.changed_since is not None
                or (self.condstore and message.state.uid in flags_changed),
            )
            self.writer.write(responses.fetch(seq_of[message.state.uid], items))
            await self.writer.drain()
        await self._send(responses.tagged(cmd.tag, "OK", "FETCH completed"))

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
        if uids is None:
            await self._no_cannot(cmd.tag, "$ is not implemented yet")
            return
        # \Recent is the server's (rfc/3501 §2.3.2): a client cannot set or clear it.
        flags = [f for f in cmd.flags if f.lower() != "\\recent"]
        store = self.server.store
        async with store.session() as session:
            try:
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
            await session.commit()
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
            if cmd.uid:
                items.insert(0, ("UID", responses.number(uid)))
            self.writer.write(responses.fetch(seq_of[uid], items))
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
        if cmd.returns is not None:
            await self._no_cannot(cmd.tag, "ESEARCH is not implemented yet")
            return
        if cmd.charset is not None and cmd.charset.upper() not in ("US-ASCII", "UTF-8"):
            await self._send(
                responses.tagged(
                    cmd.tag,
                    "NO",
                    "unsupported charset",
                    responses.badcharset(("US-ASCII", "UTF-8")),
                )
            )
            return
        ctx = queries.SearchContext(tuple(self.uids))
        with_modseq = any(_has_modseq(k) for k in cmd.criteria)
        if with_modseq:
            self.condstore = True  # rfc/7162 §3.1: a CONDSTORE-enabling command
        try:
            async with self.server.store.read_session() as session:
                rows = await queries.search_modseqs(session, selected.folder_id, cmd.criteria, ctx)
        except queries.UnsupportedError as exc:
            await self._no_cannot(cmd.tag, f"{exc}")
            return
        found = [uid for uid, _ in rows]
        if cmd.uid:
            numbers = found
        else:
            seq_of = {u: i + 1 for i, u in enumerate(self.uids)}
            numbers = [seq_of[u] for u in found if u in seq_of]
        # rfc/7162 §3.1.5: with a MODSEQ key, the highest MODSEQ of the messages found
        # (none when nothing is found).
        highest = max((m for _, m in rows), default=None) if with_modseq and numbers else None
        await self._send(
            responses.search(numbers, modseq=highest),
            responses.tagged(cmd.tag, "OK", "SEARCH completed"),
        )

    async def _expunge(self, cmd: Expunge) -> None:
        selected = self.selected
        assert selected is not None
        if selected.read_only:
            await self._send(
                responses.tagged(cmd.tag, "NO", "mailbox is read-only", responses.READ_ONLY)
            )
            return
        only: list[int] | None = None
        if cmd.uids is not None:  # rfc/4315 §2.1: only these UIDs, if \Deleted
            only = self._target_uids(cmd.uids, True)
            if only is None:
                await self._no_cannot(cmd.tag, "$ is not implemented yet")
                return
        await self._remove_deleted(selected, only, announce=True)
        await self._send(responses.tagged(cmd.tag, "OK", "EXPUNGE completed"))

    async def _remove_deleted(
        self, selected: Selected, only: list[int] | None, *, announce: bool
    ) -> None:
        assert self.account is not None
        async with self.server.store.session() as session:
            gone = await queries.expunge(
                session,
                selected.folder_id,
                self.account.mailbox_id,
                only if only is not None else self.uids,
            )
            await session.commit()
        if gone:
            self.server.notifier.publish(selected.folder_id)
        removed = set(gone)
        out: list[bytes] = []
        for index in range(len(self.uids) - 1, -1, -1):  # descending: rfc/3501 §7.4.1
            if self.uids[index] in removed:
                out.append(responses.expunge(index + 1))
                del self.uids[index]
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

    async def _create(self, cmd: Create) -> None:
        assert self.account is not None
        # rfc/3501 §6.3.3: a trailing delimiter says children will be created under it.
        name = self._own_name(cmd.mailbox.removesuffix(DELIMITER))
        if name is None:
            await self._no_cannot(cmd.tag, "invalid mailbox name")
            return
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
            names = {
                f.name for f in await store_folders.list_folders(session, self.account.mailbox_id)
            }
            if name in names:
                await self._send(
                    responses.tagged(cmd.tag, "NO", "mailbox exists", responses.ALREADYEXISTS)
                )
                return
            try:
                for parent in _parents(name):  # rfc/3501 §6.3.3: create the levels above
                    if parent not in names:
                        await store_folders.create_folder(session, self.account.mailbox_id, parent)
                await store_folders.create_folder(
                    session, self.account.mailbox_id, name, special_use=special
                )
            except AlreadyExists:
                await self._send(
                    responses.tagged(cmd.tag, "NO", "mailbox exists", responses.ALREADYEXISTS)
                )
                return
            await session.commit()
        await self._send(responses.tagged(cmd.tag, "OK", "CREATE completed"))

    async def _delete(self, cmd: Delete) -> None:
        assert self.account is not None
        folder = await self._find_folder(cmd.mailbox)
        if folder is None:
            await self._nonexistent(cmd.tag)
            return
        if folder.name == store_folders.INBOX:
            await self._no_cannot(cmd.tag, "INBOX cannot be deleted")
            return
        if any(f.name.startswith(folder.name + DELIMITER) for f in await self._folders()):
            # rfc/9051 §6.3.4: we keep no \Noselect folders, so one with children stays.
            await self._send(
                responses.tagged(cmd.tag, "NO", "mailbox has children", responses.HASCHILDREN)
            )
            return
        async with self.server.store.session() as session:
            await queries.delete_folder(session, folder.id, self.account.mailbox_id)
            await session.commit()
        self.server.notifier.publish(folder.id)
        await self._send(responses.tagged(cmd.tag, "OK", "DELETE completed"))

    async def _rename(self, cmd: Rename) -> None:
        assert self.account is not None
        source = await self._find_folder(cmd.source)
        if source is None:
            await self._nonexistent(cmd.tag)
            return
        destination = self._own_name(cmd.destination.removesuffix(DELIMITER))
        if destination is None or destination.startswith(source.name + DELIMITER):
            await self._no_cannot(cmd.tag, "invalid new name")
            return
        if source.name == store_folders.INBOX:
            await self._no_cannot(cmd.tag, "renaming INBOX is not implemented")
            return
        async with self.server.store.session() as session:
            entries = await store_folders.list_folders(session, self.account.mailbox_id)
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
                    await store_folders.create_folder(session, self.account.mailbox_id, parent)
            await session.commit()
        await self._send(responses.tagged(cmd.tag, "OK", "RENAME completed"))

    async def _subscribe(self, cmd: Subscribe | Unsubscribe) -> None:
        folder = await self._find_folder(cmd.mailbox)
        verb = type(cmd).__name__.upper()
        if folder is None:
            await self._nonexistent(cmd.tag)
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

    async def _over_quota(self, session: AsyncSession, added: int) -> bool:
        assert self.account is not None
        usage = await queries.mailbox_usage(session, self.account.mailbox_id)
        limit = self._quota_limit(usage)
        return limit > 0 and usage.used_bytes + added > limit

    async def _overquota(self, tag: str) -> None:
        # rfc/5530 §3: OVERQUOTA.
        await self._send(responses.tagged(tag, "NO", "over quota", responses.OVERQUOTA))

    async def _append(self, cmd: Append) -> None:
        """rfc/3501 §6.3.11, rfc/3502 (several messages, all or none), rfc/4315 APPENDUID."""
        folder = await self._find_folder(cmd.mailbox)
        if folder is None:
            # rfc/3501 §6.3.11: TRYCREATE when creating the mailbox would help.
            await self._send(
                responses.tagged(cmd.tag, "NO", "no such mailbox", responses.TRYCREATE)
            )
            return
        if any(m.binary for m in cmd.messages):
            await self._no_cannot(cmd.tag, "APPEND of a literal8 (BINARY) is not implemented")
            return
        if any(not m.data for m in cmd.messages):
            await self._bad(cmd.tag, "empty message")
            return
        flag_lists = [tuple(f for f in m.flags if f.lower() != "\\recent") for m in cmd.messages]
        try:
            for flags in flag_lists:
                store_messages.parse_flags(flags)
        except ValueError as exc:
            await self._bad(
                cmd.tag, f"invalid flag: {exc}"[:200].replace("\r", " ").replace("\n", " ")
            )
            return
        store = self.server.store
        cipher = store.cipher
        datas = [m.data for m in cmd.messages]
        sealed = await asyncio.to_thread(lambda: [seal_message(cipher, d) for d in datas])
        now = utcnow()
        async with store.session() as session:
            if await self._over_quota(session, sum(len(d) for d in datas)):
                await self._overquota(cmd.tag)
                return
            stored_blobs = await blobs.put_sealed_blobs(
                session, [(blob, len(d)) for (blob, _), d in zip(sealed, datas, strict=True)]
            )
            ids = stored_blobs.ids
            new_metas: dict[int, SealedRecord] = {}
            old_metas: dict[int, SealedRecord] = {}
            for blob, meta in sealed:
                metas = new_metas if blob.digest in stored_blobs.created else old_metas
                metas.setdefault(ids[blob.digest], meta)
            await blobmeta.add_new_blob_meta(session, list(new_metas.items()))
            await blobmeta.put_blob_meta(session, list(old_metas.items()))
            stored = await store_messages.append_messages(
                session,
                [
                    store_messages.NewMessage(
                        folder_id=folder.id,
                        blob_id=ids[blob.digest],
                        size=len(d),
                        internal_date=m.internal_date or now,
                        flags=flags,
                    )
                    for (blob, _), d, m, flags in zip(
                        sealed, datas, cmd.messages, flag_lists, strict=True
                    )
                ],
            )
            await session.commit()
        self.server.notifier.publish(folder.id)
        if self.selected is not None and self.selected.folder_id == folder.id:
            await self._refresh()
        code = responses.appenduid(folder.uidvalidity, [m.uid for m in stored])
        await self._send(responses.tagged(cmd.tag, "OK", "APPEND completed", code))

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
        if uids is None:
            await self._no_cannot(cmd.tag, "$ is not implemented yet")
            return
        target = await self._find_folder(cmd.mailbox)
        if target is None:
            await self._send(
                responses.tagged(cmd.tag, "NO", "no such mailbox", responses.TRYCREATE)
            )
            return
        async with self.server.store.session() as session:
            if move:
                await queries.lock_folders(session, (selected.folder_id, target.id))
            sources = await queries.copy_sources(session, selected.folder_id, uids)
            added = sum(s.size for s in sources)
            if sources and not move and await self._over_quota(session, added):
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
                    session, selected.folder_id, self.account.mailbox_id, [s.uid for s in sources]
                )
            await session.commit()
        if not sources:
            await self._send(responses.tagged(cmd.tag, "OK", f"{verb} completed"))
            return
        self.server.notifier.publish(target.id)
        code = responses.copyuid(
            target.uidvalidity, [s.uid for s in sources], [m.uid for m in stored]
        )
        out: list[bytes] = []
        if move:
            self.server.notifier.publish(selected.folder_id)
            # rfc/6851 §4.3: COPYUID in an untagged OK before the EXPUNGEs.
            out.append(responses.untagged("OK", "moved", code))
            removed = set(gone)
            for index in range(len(self.uids) - 1, -1, -1):
                if self.uids[index] in removed:
                    out.append(responses.expunge(index + 1))
                    del self.uids[index]
        if out:
            await self._send(*out)
        if target.id == selected.folder_id:
            await self._refresh()
        if move:
            await self._send(responses.tagged(cmd.tag, "OK", "MOVE completed"))
        else:
            await self._send(responses.tagged(cmd.tag, "OK", "COPY completed", code))

    # --- IDLE (rfc/2177, rfc/9051 §6.3.13) -------------------------------------------------------

    async def _idle(self, cmd: Idle) -> None:
        await self._send(responses.continuation("idling"))
        self._idle_stopping = False
        self._idle_wake.clear()
        self._idle_task = asyncio.create_task(self._idle_watch())
        self._queue.extend(self.commands.expect_idle_done(cmd.tag))

    async def _stop_idle(self) -> None:
        task = self._idle_task
        if task is None:
            return
        self._idle_stopping = True
        self._idle_wake.set()
        with contextlib.suppress(Exception):
            await task
        self._idle_task = None

    async def _idle_watch(self) -> None:
        """Report new and removed messages of the selected folder while idling: woken by the
        in-process notifier, and polling the folder's (UIDNEXT, HIGHESTMODSEQ) every
        POLL_SECONDS for changes made by Delivery or another process."""
        selected = self.selected
        if selected is None:
            return  # rfc/2177: IDLE in the authenticated state has nothing to report
        notifier = self.server.notifier
        wake = self._idle_wake
        notifier.subscribe(selected.folder_id, wake)
        try:
            marker: tuple[int, int] | None = None
            first = True
            while not self._idle_stopping:
                async with self.server.store.read_session() as session:
                    current = await queries.folder_marker(session, selected.folder_id)
                if (first or current != marker) and not self._idle_stopping:
                    await self._refresh()
                first = False
                marker = current
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), POLL_SECONDS)
                wake.clear()
        except Exception:  # a closed connection or an unavailable store: IDLE just stops
            log.debug("IDLE watcher ended", exc_info=True)
        finally:
            notifier.unsubscribe(selected.folder_id, wake)

    def abort(self) -> None:
        self.writer.transport.abort()

    async def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.write(responses.bye("Server shutting down"))
        await self.close()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
