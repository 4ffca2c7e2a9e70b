"""The IMAP listeners (STARTTLS and implicit TLS) and the state their sessions share:
connection limits, the failed-login slow-down, the TLS context, the audit sink."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging

from mssante.config import ImapSettings, Settings
from mssante.logs import bind_session, event, new_session_id
from mssante.operator.auditlog import AuditRecord, AuditSink
from mssante.operator.auth import Authenticator
from mssante.operator.imap import appender, responses
from mssante.operator.imap.limits import DEFAULT_LIMITS, Limits
from mssante.operator.imap.notify import FolderWatcher
from mssante.operator.imap.session import ImapSession
from mssante.operator.store.db import Store
from mssante.operator.store.schema import Outcome
from mssante.pki.runtime import Pki

log = logging.getLogger("mssante.imap")

TLS_HANDSHAKE_TIMEOUT = 30.0
SHUTDOWN_SECONDS = 5.0


class ImapServer:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        pki: Pki,
        audit_sink: AuditSink,
        *,
        idle_timeout: float | None = None,
        authenticator: Authenticator | None = None,
    ) -> None:
        """`authenticator`: the process's, shared with submission (server.py); else our own."""
        self.settings = settings
        self.store = store
        self.audit_sink = audit_sink
        self.limits: Limits = DEFAULT_LIMITS
        config = settings.imap
        # IDLE wake-ups for every session of this process (notify.py).
        self.watcher = FolderWatcher(store, float(config.idle_poll_seconds))
        # APPENDs of every session of this process share transactions (appender.py).
        self.appender = appender.committer(store, settings.storage.default_quota_bytes)
        self.idle_timeout = float(idle_timeout or config.idle_timeout_seconds)
        self.unauthenticated_timeout = float(config.unauthenticated_timeout_seconds)
        self.pki = pki
        # A client certificate is asked for, never required (password users have none), for
        # AUTHENTICATE EXTERNAL (external.py). Its dates are checked after the handshake by
        # Pki.validate, so that an expired certificate gets NO and an audit entry.
        self.tls_context = pki.server_context("optional", defer_validity_dates=True)
        self.auth = authenticator or Authenticator(
            store,
            pki,
            free_failures=config.login_failures_before_delay,
            max_delay=float(config.login_delay_max_seconds),
        )
        self.servers: list[asyncio.Server] = []
        self._per_ip: collections.Counter[str] = collections.Counter()
        self._total = 0
        self._sessions: dict[asyncio.Task[None], ImapSession] = {}

    @property
    def config(self) -> ImapSettings:
        return self.settings.imap

    def audit(
        self, session: ImapSession, name: str, outcome: Outcome, details: dict[str, object]
    ) -> None:
        with bind_session(session.session_id):
            event(log, name, peer_ip=session.peer_ip, outcome=outcome.value, **details)
        user = details.get("user")
        self.audit_sink.record(
            AuditRecord(
                event=name,
                outcome=outcome,
                actor="imap",
                peer_ip=session.peer_ip,
                target=str(user) if user else None,
                details={"session": session.session_id, **details},
            )
        )

    async def _connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, implicit_tls: bool
    ) -> None:
        peer = writer.get_extra_info("peername")
        peer_ip = str(peer[0]) if peer else "-"
        config = self.config
        if self._total >= config.max_connections or self._per_ip[peer_ip] >= (
            config.max_connections_per_ip
        ):
            # rfc/9051 §7.1.5: BYE at connection time refuses the session.
            reason = "total" if self._total >= config.max_connections else "per_ip"
            event(log, "imap connection refused", peer_ip=peer_ip, limit=reason)
            self.audit_sink.record(
                AuditRecord(
                    event="imap.connection",
                    outcome=Outcome.REFUSED,
                    actor="imap",
                    peer_ip=peer_ip,
                    target=None,
                    details={"reason": f"too many connections ({reason})"},
                )
            )
            with contextlib.suppress(Exception):
                writer.write(responses.bye("Too many connections, try again later"))
                await writer.drain()
                writer.close()
            return
        self._total += 1
        self._per_ip[peer_ip] += 1
        task = asyncio.current_task()
        session_id = new_session_id()
        try:
            with bind_session(session_id):
                event(
                    log,
                    "imap session opened",
                    peer_ip=peer_ip,
                    tls="implicit" if implicit_tls else "starttls",
                )
                session = ImapSession(
                    self,
                    reader,
                    writer,
                    session_id=session_id,
                    peer_ip=peer_ip,
                    implicit_tls=implicit_tls,
                )
                if task is not None:
                    self._sessions[task] = session
                try:
                    await session.run()
                except Exception:
                    log.exception("imap session error")
                finally:
                    await session.close()
                    event(log, "imap session closed", peer_ip=peer_ip)
        finally:
            self._total -= 1
            self._per_ip[peer_ip] -= 1
            if self._per_ip[peer_ip] <= 0:
                del self._per_ip[peer_ip]
            if task is not None:
                self._sessions.pop(task, None)

    async def start(self, listen: str, implicit_tls_listen: str) -> dict[str, str]:
        from mssante.server import listen_on  # one way to open a listener

        await self.auth.dummy_hash()
        await self.watcher.start()
        await self.appender.start()
        listeners: dict[str, str] = {}

        async def plain(host: str, port: int) -> asyncio.Server:
            return await asyncio.start_server(
                lambda r, w: self._connection(r, w, False), host, port
            )

        server, where = await listen_on("imap.listen", listen, plain)
        self.servers.append(server)
        listeners["imap"] = where
        if implicit_tls_listen:

            async def implicit(host: str, port: int) -> asyncio.Server:
                return await asyncio.start_server(
                    lambda r, w: self._connection(r, w, True),
                    host,
                    port,
                    ssl=self.tls_context,
                    ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT,
                )

            server, where = await listen_on(
                "imap.implicit_tls_listen", implicit_tls_listen, implicit
            )
            self.servers.append(server)
            listeners["imaps"] = where
        return listeners

    async def close(self) -> None:
        """Stop accepting, then end the open sessions (each gets `* BYE`)."""
        for server in self.servers:
            server.close()
        for session in list(self._sessions.values()):
            # rfc/9051 §7.1.5: BYE when the server is shutting down; closing the stream ends
            # the session's read loop.
            await session.shutdown()
        tasks = list(self._sessions)
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=SHUTDOWN_SECONDS)
            # A TLS peer that does not answer close_notify: drop the connection. (Not
            # task.cancel(): asyncio 3.11's start_server callback logs cancelled tasks.)
            for task in late:
                open_session = self._sessions.get(task)
                if open_session is not None:
                    open_session.abort()
            if late:
                await asyncio.wait(late, timeout=SHUTDOWN_SECONDS)
        await self.appender.close()
        await self.watcher.close()
