"""What the relay and submission listeners share: the connection handling around aiosmtpd.

`SmtpListener` holds a listener's shared state (connection counts per client address, the
audit sink, the servers it opened); `SmtpSession` is one connection: the connection limit at
accept, the command count, the idle timeout with its 421, enhanced status codes on every
reply (RFC 2034), the audit of every refusal and of a failed TLS handshake, and the DATA
reader (dot-unstuffing with size and line-length limits). The commands whose meaning differs
(EHLO, AUTH, MAIL, RCPT, DATA) are each listener's own.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from aiosmtpd.smtp import SMTP as AioSMTP
from aiosmtpd.smtp import Session as AioSession
from prometheus_client import Counter, Gauge

from mssante.config import RelaySettings, Settings, SubmissionSettings
from mssante.logs import bind_session, event, new_session_id
from mssante.operator.auditlog import AuditRecord, AuditSink
from mssante.operator.delivery import InboundEnvelope, Recipient, SessionInfo
from mssante.operator.errors import MailError, temporary_failure, too_big
from mssante.operator.smtp.params import MailParams
from mssante.operator.store.schema import Outcome

# RFC 5321 §4.5.3.1.4: a command line is at most 512 octets; the ESMTP extensions we offer
# lengthen MAIL (SIZE +26 RFC 1870, SMTPUTF8 +10 RFC 6531, RET and ENVID +109 RFC 3461 §5)
# and RCPT (NOTIFY and ORCPT +500+ RFC 3461 §5). RFC 4954 §4: an AUTH line up to 12288 octets.
COMMAND_LIMITS = {"MAIL": 512 + 26 + 10 + 9 + 100, "RCPT": 512 + 30 + 600, "AUTH": 12288}

# Enhanced status codes (RFC 3463) for the replies aiosmtpd composes itself.
_DEFAULT_ENHANCED = {
    "221": "2.0.0",
    "235": "2.7.0",
    "250": "2.0.0",
    "251": "2.1.5",
    "252": "2.5.0",
    "421": "4.3.0",
    "450": "4.2.0",
    "451": "4.3.0",
    "452": "4.3.1",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "535": "5.7.8",
    "550": "5.7.1",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.7.1",
    "555": "5.5.4",
}
_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}( |$)")


def with_enhanced_code(line: str) -> str:
    """Add the RFC 3463 code to a reply that lacks one (RFC 2034 §3: every 2xx/4xx/5xx
    reply but the greeting and the EHLO/HELO ones, which callers never pass here)."""
    code = line[:3]
    if _HAS_ENHANCED.match(line) or code not in _DEFAULT_ENHANCED:
        return line
    text = line[4:].removeprefix("Error: ")
    return f"{code}{line[3:4] or ' '}{_DEFAULT_ENHANCED[code]} {text}"


def line_too_long(max_line: int) -> MailError:
    return MailError(
        500,
        "5.5.2",
        f"Line too long (limit {max_line} octets, RFC 5321 §4.5.3.1.6)",
        reason="line_too_long",
    )


def recipient_of(arg: str | None) -> str:
    """The address in a RCPT argument, for the audit trail (bounded, best effort)."""
    if not arg:
        return ""
    start, end = arg.find("<"), arg.find(">")
    return arg[start + 1 : end][:256] if 0 <= start < end else arg[:256]


@dataclass
class Transaction:
    """One mail transaction: MAIL's parameters and the recipients accepted at RCPT (`remote`:
    on submission, those for the outbound queue; `recipients` are delivered locally)."""

    params: MailParams
    recipients: list[Recipient] = field(default_factory=list)
    remote: list[Recipient] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.recipients) + len(self.remote)

    def envelope(self) -> InboundEnvelope:
        """The local part, for `Delivery.deliver`."""
        params = self.params
        return InboundEnvelope(
            mail_from=params.sender,
            recipients=tuple(self.recipients),
            ret=params.ret,
            envid=params.envid,
            smtputf8=params.smtputf8,
            body=params.body,
        )


@dataclass(frozen=True)
class ListenerMetrics:
    sessions: Counter
    active: Gauge
    refusals: Counter  # labelled by reason

    @classmethod
    def named(cls, name: str, title: str) -> ListenerMetrics:
        """`mssante_<name>_sessions_total`, `…_sessions_active`, `…_refusals_total`; once
        per process (at import of the listener's module)."""
        return cls(
            Counter(f"mssante_{name}_sessions_total", f"{title} connections accepted"),
            Gauge(f"mssante_{name}_sessions_active", f"{title} connections open"),
            Counter(f"mssante_{name}_refusals_total", f"{title} refusals", ["reason"]),
        )


@dataclass(frozen=True)
class ListenerLimits:
    max_connections: int
    max_connections_per_ip: int
    max_commands: int
    max_recipients: int
    max_line_length: int
    idle_timeout_seconds: int

    @classmethod
    def of(cls, section: RelaySettings | SubmissionSettings, per_ip: int) -> ListenerLimits:
        return cls(
            max_connections=section.max_connections,
            max_connections_per_ip=per_ip,
            max_commands=section.max_commands,
            max_recipients=section.max_recipients,
            max_line_length=section.max_line_length,
            idle_timeout_seconds=section.idle_timeout_seconds,
        )


class SmtpListener:
    """One kind of SMTP listener (its STARTTLS and implicit-TLS sockets) and its shared state."""

    actor = "smtp"  # the audit trail's actor and the log's session names

    def __init__(
        self,
        settings: Settings,
        audit_sink: AuditSink,
        limits: ListenerLimits,
        metrics: ListenerMetrics,
        logger: logging.Logger,
    ) -> None:
        self.settings = settings
        self.audit_sink = audit_sink
        self.limits = limits
        self.metrics = metrics
        self.log = logger
        self._per_ip: collections.Counter[str] = collections.Counter()
        self._total = 0
        self.servers: list[asyncio.Server] = []

    async def handle_exception(self, error: Exception) -> str:
        """aiosmtpd's hook for an unexpected error in a command: log it, tell the client only
        that it is temporary (never the exception text)."""
        self.log.error(f"{self.actor} session error", exc_info=error)
        return temporary_failure("internal_error").reply

    def admit(self, peer_ip: str) -> MailError | None:
        """Count a new connection, or say why it is refused (RFC 5321 §3.1: 421 and close)."""
        if self._total >= self.limits.max_connections:
            return MailError(
                421, "4.7.0", "Too many connections, try again later", reason="too_many_connections"
            )
        if self._per_ip[peer_ip] >= self.limits.max_connections_per_ip:
            return MailError(
                421,
                "4.7.0",
                "Too many connections from your address",
                reason="too_many_connections_from_peer",
            )
        self._total += 1
        self._per_ip[peer_ip] += 1
        return None

    def release(self, peer_ip: str) -> None:
        self._total -= 1
        self._per_ip[peer_ip] -= 1
        if self._per_ip[peer_ip] <= 0:
            del self._per_ip[peer_ip]

    def refused(self, session: SmtpSession, error: MailError, **details: object) -> None:
        self.metrics.refusals.labels(reason=error.reason).inc()
        self.audit(
            session,
            "smtp.reject",
            Outcome.REFUSED,
            {"reason": error.reason, "reply": error.reply, **details},
        )

    def audit(
        self, session: SmtpSession, name: str, outcome: Outcome, details: dict[str, object]
    ) -> None:
        who = session.audit_identity()
        with bind_session(session.session_id):
            event(self.log, name, peer_ip=session.peer_ip, **(who | details))
        target = details.get("recipient") or details.get("sender") or details.get("user") or ""
        self.audit_sink.record(
            AuditRecord(
                event=name,
                outcome=outcome,
                actor=self.actor,
                peer_ip=session.peer_ip,
                peer_dn=who.get("peer_dn"),
                target=str(target) or None,
                details={"session": session.session_id, **details},
            )
        )

    def session_factory(self, implicit_tls: bool) -> SmtpSession:
        raise NotImplementedError

    async def start_listeners(
        self,
        keys: tuple[str, str],
        names: tuple[str, str],
        listen: str,
        implicit_tls_listen: str,
        context: ssl.SSLContext,
    ) -> dict[str, str]:
        """Open the STARTTLS listener at `listen` and, unless empty, the implicit-TLS one."""
        from mssante.server import listen_on  # one way to open a listener

        loop = asyncio.get_running_loop()
        listeners: dict[str, str] = {}

        async def plain(host: str, port: int) -> asyncio.Server:
            return await loop.create_server(lambda: self.session_factory(False), host, port)

        server, where = await listen_on(keys[0], listen, plain)
        self.servers.append(server)
        listeners[names[0]] = where
        if implicit_tls_listen:

            async def implicit(host: str, port: int) -> asyncio.Server:
                return await loop.create_server(
                    lambda: self.session_factory(True),
                    host,
                    port,
                    ssl=context,
                    ssl_handshake_timeout=30,
                )

            server, where = await listen_on(keys[1], implicit_tls_listen, implicit)
            self.servers.append(server)
            listeners[names[1]] = where
        return listeners

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 10)


class SmtpSession(AioSMTP):
    """One connection to an `SmtpListener`."""

    def __init__(
        self,
        listener: SmtpListener,
        *,
        implicit_tls: bool,
        ident: str,
        starttls_context: ssl.SSLContext,
    ) -> None:
        limits = listener.limits
        settings = listener.settings
        # Read by aiosmtpd's __init__ to size its stream reader (longest line, CRLF included).
        self.line_length_limit = limits.max_line_length + 2
        super().__init__(
            listener,  # handler: only its hooks named handle_* would be used
            data_size_limit=settings.storage.max_message_size,
            enable_SMTPUTF8=True,
            hostname=settings.operator.hostname,
            ident=ident,
            tls_context=None if implicit_tls else starttls_context,
            require_starttls=False,  # checked at MAIL by us, so that the refusal is audited
            timeout=limits.idle_timeout_seconds,
        )
        self.listener = listener
        self.implicit_tls = implicit_tls
        self.command_size_limits = collections.defaultdict(
            lambda: AioSMTP.command_size_limit, COMMAND_LIMITS
        )
        self.session_id = new_session_id()
        self.peer_ip = "-"
        self.transaction: Transaction | None = None
        self._refused_at_connect = False
        self._commands = 0
        # Count every command, whichever method handles it (max_commands).
        self._smtp_methods = {
            name: self._counted(method) for name, method in self._smtp_methods.items()
        }

    # -- hooks --------------------------------------------------------------------------------

    def audit_identity(self) -> dict[str, Any]:
        """Who the client is, for the log and the audit trail (peer_dn, user…)."""
        return {}

    def new_tls_layer(self) -> None:
        """STARTTLS replaced the transport: forget what was judged of the plain one."""

    def ehlo_offers(self) -> list[str]:
        """The EHLO lines that depend on the session's state (STARTTLS, AUTH)."""
        if self._ssl_object() is None and self.tls_context is not None:
            return ["250-STARTTLS"]  # RFC 3207
        return []

    # -- the commands' common part -------------------------------------------------------------

    async def smtp_EHLO(self, hostname: str) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: EHLO hostname")
            return
        self._set_rset_state()  # type: ignore[no-untyped-call]
        self.transaction = None
        assert self.session is not None
        self.session.extended_smtp = True
        self.session.host_name = hostname
        lines = [f"250-{self.hostname} greets {hostname}", *self.ehlo_offers()]
        lines += [
            f"250-SIZE {self.data_size_limit}",  # RFC 1870
            "250-8BITMIME",  # RFC 6152
            "250-SMTPUTF8",  # RFC 6531
            "250-PIPELINING",  # RFC 2920
            "250-ENHANCEDSTATUSCODES",  # RFC 2034
            "250 DSN",  # RFC 3461
        ]
        # One write for the whole reply: PIPELINING clients read it at once anyway.
        self._writer.write(("\r\n".join(lines) + "\r\n").encode())
        await self._writer.drain()

    async def smtp_HELO(self, hostname: str) -> None:
        self.transaction = None
        await super().smtp_HELO(hostname)

    async def smtp_RSET(self, arg: str) -> None:
        self.transaction = None
        await super().smtp_RSET(arg)

    async def mail_may_start(self) -> bool:
        """MAIL's sequence checks (RFC 5321 §4.1.4); False once the refusal is sent."""
        assert self.session is not None
        if not self.session.host_name:
            await self.push("503 5.5.1 Send EHLO first")
            return False
        if self.transaction is not None:
            await self.push("503 5.5.1 Nested MAIL command")
            return False
        return True

    async def rcpt_transaction(self) -> Transaction | None:
        """The transaction a RCPT adds to, None once the refusal is sent."""
        transaction = self.transaction
        if transaction is None:
            await self.push("503 5.5.1 Need MAIL command first")
            return None
        if transaction.count >= self.listener.limits.max_recipients:
            # RFC 5321 §4.5.3.1.10: 452 for "too many recipients"; the client sends the
            # rest in another transaction.
            await self._refuse(
                MailError(452, "4.5.3", "Too many recipients", reason="too_many_recipients")
            )
            return None
        return transaction

    async def receive_data(self, arg: str) -> tuple[Transaction, bytes] | None:
        """DATA up to the final dot: the transaction (ended) and the message, None once the
        refusal is sent."""
        transaction = self.transaction
        if transaction is None or not transaction.count:
            await self.push("503 5.5.1 Need RCPT command first")
            return None
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return None
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        data, problem = await self._read_data()
        self.transaction = None
        if problem is not None:
            await self._refuse(problem)
            return None
        return transaction, data

    def session_info(
        self, smtputf8: bool, *, peer_dn: str | None = None, authenticated: bool = False
    ) -> SessionInfo:
        """What the Received field says of this session (RFC 3848 protocol names)."""
        tls = self._ssl_object()
        assert tls is not None and self.session is not None
        cipher = tls.cipher()
        protocol = "ESMTPSA" if authenticated else "ESMTPS"
        return SessionInfo(
            session_id=self.session_id,
            peer_ip=self.peer_ip,
            helo=self.session.host_name or "",
            protocol=("UTF8SMTP" + protocol[5:]) if smtputf8 else protocol,
            tls_version=tls.version(),
            tls_cipher=cipher[0] if cipher else None,
            peer_dn=peer_dn,
            authenticated=authenticated,
        )

    # -- connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._original_transport is None and self.transport is None
        listener = self.listener
        if first:
            peer = transport.get_extra_info("peername")
            self.peer_ip = str(peer[0]) if peer else "-"
            refusal = listener.admit(self.peer_ip)
            if refusal is not None:
                self._refused_at_connect = True
                cast(asyncio.WriteTransport, transport).write(refusal.reply.encode() + b"\r\n")
                transport.close()
                listener.refused(self, refusal)
                return
            listener.metrics.sessions.inc()
            listener.metrics.active.inc()
            with bind_session(self.session_id):
                event(
                    listener.log,
                    f"{listener.actor} session opened",
                    peer_ip=self.peer_ip,
                    tls="implicit" if self.implicit_tls else "starttls",
                )
        else:
            self.new_tls_layer()
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused_at_connect:
            return
        listener = self.listener
        listener.release(self.peer_ip)
        listener.metrics.active.dec()
        with bind_session(self.session_id):
            event(
                listener.log,
                f"{listener.actor} session closed",
                peer_ip=self.peer_ip,
                commands=self._commands,
            )
        super().connection_lost(error)

    def _create_session(self) -> AioSession:
        return AioSession(self.loop)

    def _timeout_cb(self) -> None:
        # RFC 5321 §4.5.3.2.7: the server may close an idle session; say why first.
        if self.transport is not None and not self.transport.is_closing():
            # uvloop's transports are not asyncio.WriteTransport subclasses, hence the cast.
            cast(asyncio.WriteTransport, self.transport).write(
                b"421 4.4.2 Idle timeout, closing connection\r\n"
            )
        self.listener.audit(self, "smtp.timeout", Outcome.REFUSED, {"reason": "idle_timeout"})
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, bytes):
            status = status.decode("utf-8", "replace")
        await super().push(with_enhanced_code(status))

    def _counted(
        self, method: Callable[[Any], Awaitable[None]]
    ) -> Callable[[Any], Awaitable[None]]:
        async def run(arg: Any) -> None:
            self._commands += 1
            if self._commands > self.listener.limits.max_commands:
                self._close_with(
                    MailError(
                        421,
                        "4.7.0",
                        "Too many commands, closing connection",
                        reason="too_many_commands",
                    )
                )
                return
            with bind_session(self.session_id):
                await method(arg)

        return run

    def _close_with(self, error: MailError) -> None:
        self.listener.refused(self, error)
        if self.transport is not None:
            cast(asyncio.WriteTransport, self.transport).write(error.reply.encode() + b"\r\n")
            self.transport.close()

    async def _refuse(self, error: MailError, **details: object) -> None:
        self.listener.refused(self, error, **details)
        await self.push(error.reply)

    # -- TLS -----------------------------------------------------------------------------------

    def _ssl_object(self) -> ssl.SSLObject | None:
        if self.transport is None:
            return None
        obj = self.transport.get_extra_info("ssl_object")
        return obj if isinstance(obj, ssl.SSLObject) else None

    async def smtp_STARTTLS(self, arg: str) -> None:
        if self._ssl_object() is not None:
            await self.push("503 5.5.1 TLS already active")
            return
        try:
            await super().smtp_STARTTLS(arg)
        except Exception as exc:
            # The handshake failed: OpenSSL refused the certificate (unknown CA, bad
            # signature) or the client's TLS parameters (profile). Trace it, then let
            # aiosmtpd close the connection.
            cause = exc.__cause__ or exc
            self.listener.metrics.refusals.labels(reason="tls_handshake").inc()
            self.listener.audit(
                self,
                "tls.handshake_failed",
                Outcome.REFUSED,
                {"reason": "tls_handshake", "error": str(cause)[:300]},
            )
            raise

    # -- DATA ----------------------------------------------------------------------------------

    async def _read_data(self) -> tuple[bytes, MailError | None]:
        """Read to the lone dot and unstuff (RFC 5321 §4.5.2).

        The data is read in large pieces, each ending at the next `.<CRLF>`, and checked
        with C-level byte operations: line by line in Python costs more than the rest of a
        delivery. Errors are answered after the final dot, so the session stays in step
        (RFC 5321 §4.2.5).
        """
        limit = self.data_size_limit or 0
        max_line = self.listener.limits.max_line_length
        reader = self._reader
        buf = bytearray()
        normal_limit = reader._limit  # type: ignore[attr-defined]
        # Let one read span up to the whole message (plus the terminator) instead of a line.
        reader._limit = (limit or 64 * 1024 * 1024) + 5  # type: ignore[attr-defined]
        try:
            while True:
                try:
                    buf += await reader.readuntil(b".\r\n")
                except asyncio.LimitOverrunError:
                    return await self._discard_data(too_big(limit))
                # The terminator is a dot alone on its line: at the very start, or after CRLF.
                if len(buf) == 3 or buf[-5:-3] == b"\r\n":
                    break
                if limit and len(buf) > limit + 3:
                    return await self._discard_data(too_big(limit))
        finally:
            reader._limit = normal_limit  # type: ignore[attr-defined]
        data = bytes(buf[:-3])
        if data and max(map(len, data.split(b"\r\n"))) > max_line - 2:
            return b"", line_too_long(max_line)
        # Every line the client began with a dot got one more (RFC 5321 §4.5.2): remove it.
        if data.startswith(b"."):
            data = data[1:]
        data = data.replace(b"\r\n.", b"\r\n")
        if limit and len(data) > limit:
            return b"", too_big(limit)
        return data, None

    async def _discard_data(self, problem: MailError) -> tuple[bytes, MailError | None]:
        """Skip the rest of a refused message, line by line, up to the final dot."""
        reader = self._reader
        previous = b"\r\n"
        while True:
            try:
                line = await reader.readuntil(b"\r\n")
            except asyncio.LimitOverrunError as exc:
                await reader.readexactly(exc.consumed)
                previous = b""
                continue
            if line == b".\r\n" and previous.endswith(b"\r\n"):
                return b"", problem
            previous = line
