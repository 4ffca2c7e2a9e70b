"""The relay listener: peer operators deliver to us over SMTP with mutual TLS.

Checks, in the order a session meets them (docs/relay.md lists every reply):
1. connection limits (total, per peer IP) → `421 4.7.0` and close;
2. TLS before MAIL (STARTTLS, or the implicit-TLS listener) → `530 5.7.0`;
3. a client certificate, validated by the PKI layer (chain, dates, usages, CRL) → `530/550 5.7.x`;
4. at MAIL, the certificate DN listed in the ANS whitelist for the sender's domain → `550 5.7.1`;
5. at RCPT, an active mailbox we host with room → `550 5.1.1`, `550 5.7.1`, `552 5.2.2`…;
6. at DATA, size and line length, then durable delivery → `250` only after the commit.

Built on aiosmtpd's connection handling (command loop, STARTTLS, timeouts); the commands
whose semantics are ours (EHLO, MAIL, RCPT, DATA) are implemented here, and every reply
carries an enhanced status code (RFC 2034) and a short reason. Every refusal is audited.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from aiosmtpd.smtp import SMTP as AioSMTP
from aiosmtpd.smtp import Session as AioSession
from prometheus_client import Counter, Gauge, Histogram

from mssante.config import RelaySettings, Settings
from mssante.logs import bind_session, event, new_session_id
from mssante.operator import policy
from mssante.operator.auditlog import AuditRecord, AuditSink
from mssante.operator.delivery import (
    Delivery,
    InboundEnvelope,
    Recipient,
    SessionInfo,
)
from mssante.operator.errors import MailError, temporary_failure
from mssante.operator.smtp.params import parse_mail, parse_rcpt
from mssante.operator.store.schema import Outcome
from mssante.pki.errors import ValidationError
from mssante.pki.runtime import Pki
from mssante.pki.tls import peer_identity
from mssante.pki.validation import Purpose, ValidatedChain
from mssante.whitelist.source import WhitelistStore

log = logging.getLogger("mssante.relay")

SESSIONS = Counter("mssante_relay_sessions_total", "Relay connections accepted")
ACTIVE = Gauge("mssante_relay_sessions_active", "Relay connections open")
REFUSALS = Counter("mssante_relay_refusals_total", "Relay refusals", ["reason"])
DELIVERED = Counter("mssante_relay_messages_total", "Messages accepted by the relay")
DELIVERY_SECONDS = Histogram(
    "mssante_relay_delivery_seconds", "From end of DATA to the 250 (durable commit)"
)

# RFC 5321 §4.5.3.1.4: a command line is at most 512 octets; the ESMTP extensions we offer
# lengthen MAIL (SIZE +26 RFC 1870, SMTPUTF8 +10 RFC 6531, RET and ENVID +109 RFC 3461 §5)
# and RCPT (NOTIFY and ORCPT +500+ RFC 3461 §5).
COMMAND_LIMITS = {"MAIL": 512 + 26 + 10 + 9 + 100, "RCPT": 512 + 30 + 600}

# Enhanced status codes (RFC 3463) for the replies aiosmtpd composes itself.
_DEFAULT_ENHANCED = {
    "221": "2.0.0",
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


@dataclass
class _Transaction:
    params: Any  # MailParams
    recipients: list[Recipient] = field(default_factory=list)


class RelaySMTP(AioSMTP):
    """One peer connection."""

    def __init__(self, relay: RelayServer, *, implicit_tls: bool) -> None:
        settings = relay.settings.relay
        # Read by aiosmtpd's __init__ to size its stream reader (longest line, CRLF included).
        self.line_length_limit = settings.max_line_length + 2
        super().__init__(
            relay,  # handler: only its hooks named handle_* would be used; we define none
            data_size_limit=relay.settings.storage.max_message_size,
            enable_SMTPUTF8=True,
            hostname=relay.settings.operator.hostname,
            ident="MSSante relay",
            tls_context=None if implicit_tls else relay.starttls_context,
            require_starttls=False,  # checked at MAIL by us, so that the refusal is audited
            timeout=settings.idle_timeout_seconds,
        )
        self.relay = relay
        self.implicit_tls = implicit_tls
        self.command_size_limits = collections.defaultdict(
            lambda: AioSMTP.command_size_limit, COMMAND_LIMITS
        )
        self.session_id = new_session_id()
        self.peer_ip = "-"
        self._refused_at_connect = False
        self._commands = 0
        self._transaction: _Transaction | None = None
        self._trust: ValidatedChain | MailError | None = None
        # Count every command, whichever method handles it (max_commands).
        self._smtp_methods = {
            name: self._counted(method) for name, method in self._smtp_methods.items()
        }

    # -- connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._original_transport is None and self.transport is None
        if first:
            peer = transport.get_extra_info("peername")
            self.peer_ip = str(peer[0]) if peer else "-"
            refusal = self.relay.admit(self.peer_ip)
            if refusal is not None:
                self._refused_at_connect = True
                cast(asyncio.WriteTransport, transport).write(refusal.reply.encode() + b"\r\n")
                transport.close()
                self.relay.refused(self, refusal)
                return
            SESSIONS.inc()
            ACTIVE.inc()
            with bind_session(self.session_id):
                event(
                    log,
                    "relay session opened",
                    peer_ip=self.peer_ip,
                    tls="implicit" if self.implicit_tls else "starttls",
                )
        else:
            self._trust = None  # a new TLS layer: judge its certificate afresh
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused_at_connect:
            return
        self.relay.release(self.peer_ip)
        ACTIVE.dec()
        with bind_session(self.session_id):
            event(log, "relay session closed", peer_ip=self.peer_ip, commands=self._commands)
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
        self.relay.audit(self, "smtp.timeout", Outcome.REFUSED, {"reason": "idle_timeout"})
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
            if self._commands > self.relay.settings.relay.max_commands:
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
        REFUSALS.labels(reason=error.reason).inc()
        self.relay.audit(
            self, "smtp.reject", Outcome.REFUSED, {"reason": error.reason, "reply": error.reply}
        )
        if self.transport is not None:
            cast(asyncio.WriteTransport, self.transport).write(error.reply.encode() + b"\r\n")
            self.transport.close()

    async def _refuse(self, error: MailError, **details: object) -> None:
        REFUSALS.labels(reason=error.reason).inc()
        self.relay.audit(
            self,
            "smtp.reject",
            Outcome.REFUSED,
            {"reason": error.reason, "reply": error.reply, **details},
        )
        await self.push(error.reply)

    # -- TLS and trust -----------------------------------------------------------------------

    def _ssl_object(self) -> ssl.SSLObject | None:
        if self.transport is None:
            return None
        obj = self.transport.get_extra_info("ssl_object")
        return obj if isinstance(obj, ssl.SSLObject) else None

    def _peer_trust(self) -> ValidatedChain | MailError:
        """The verdict on this TLS session's client certificate (computed once)."""
        if self._trust is not None:
            return self._trust
        tls = self._ssl_object()
        if tls is None:
            self._trust = policy.tls_required()
            return self._trust
        cert = peer_identity(tls)
        if cert is None:
            self._trust = policy.client_certificate_missing()
            return self._trust
        try:
            self._trust = self.relay.pki.validate(cert, Purpose.PEER_OPERATOR)
        except ValidationError as exc:
            self._trust = policy.client_certificate_refused(exc)
            self.relay.audit(
                self,
                "tls.peer_refused",
                Outcome.REFUSED,
                {"reason": exc.reason, "subject": exc.subject},
            )
        return self._trust

    def peer_dn(self) -> str | None:
        trust = self._trust
        return trust.identity.subject_dn if isinstance(trust, ValidatedChain) else None

    async def smtp_STARTTLS(self, arg: str) -> None:
        if self._ssl_object() is not None:
            await self.push("503 5.5.1 TLS already active")
            return
        try:
            await super().smtp_STARTTLS(arg)
        except Exception as exc:
            # The handshake failed: OpenSSL refused the certificate (unknown CA, bad
            # signature) or the peer's TLS parameters (profile). Trace it, then let
            # aiosmtpd close the connection.
            cause = exc.__cause__ or exc
            REFUSALS.labels(reason="tls_handshake").inc()
            self.relay.audit(
                self,
                "tls.handshake_failed",
                Outcome.REFUSED,
                {"reason": "tls_handshake", "error": str(cause)[:300]},
            )
            raise

    # -- commands ----------------------------------------------------------------------------

    async def smtp_EHLO(self, hostname: str) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: EHLO hostname")
            return
        self._set_rset_state()  # type: ignore[no-untyped-call]
        self._transaction = None
        assert self.session is not None
        self.session.extended_smtp = True
        self.session.host_name = hostname
        lines = [f"250-{self.hostname} greets {hostname}"]
        if self._ssl_object() is None and self.tls_context is not None:
            lines.append("250-STARTTLS")  # RFC 3207
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

    async def smtp_AUTH(self, arg: str) -> None:
        # Peers authenticate with their certificate; passwords belong to submission.
        await self.push("502 5.5.1 AUTH not available on the relay")

    async def smtp_HELO(self, hostname: str) -> None:
        self._transaction = None
        await super().smtp_HELO(hostname)

    async def smtp_RSET(self, arg: str) -> None:
        self._transaction = None
        await super().smtp_RSET(arg)

    async def smtp_MAIL(self, arg: str | None) -> None:
        assert self.session is not None
        if not self.session.host_name:
            await self.push("503 5.5.1 Send EHLO first")
            return
        if self._transaction is not None:
            await self.push("503 5.5.1 Nested MAIL command")
            return
        trust = self._peer_trust()
        if isinstance(trust, MailError):
            await self._refuse(trust)
            return
        try:
            params = parse_mail(arg, size_limit=self.data_size_limit or 0)
        except MailError as exc:
            await self._refuse(exc, command="MAIL")
            return
        refusal = policy.peer_may_send_from(
            self.relay.whitelist.current, trust.identity.subject_dn, params.sender
        )
        if refusal is not None:
            await self._refuse(refusal, sender=params.sender)
            return
        self._transaction = _Transaction(params)
        await self.push("250 2.1.0 Sender OK")

    async def smtp_RCPT(self, arg: str | None) -> None:
        transaction = self._transaction
        if transaction is None:
            await self.push("503 5.5.1 Need MAIL command first")
            return
        if len(transaction.recipients) >= self.relay.settings.relay.max_recipients:
            # RFC 5321 §4.5.3.1.10: 452 for "too many recipients"; the client sends the
            # rest in another transaction.
            await self._refuse(
                MailError(452, "4.5.3", "Too many recipients", reason="too_many_recipients")
            )
            return
        try:
            params = parse_rcpt(arg, smtputf8=transaction.params.smtputf8)
            await self.relay.delivery.check_recipient(params.recipient)
        except MailError as exc:
            await self._refuse(exc, command="RCPT", recipient=_recipient_of(arg))
            return
        except Exception:
            log.exception("recipient check failed")
            await self._refuse(temporary_failure(), command="RCPT")
            return
        transaction.recipients.append(
            Recipient(params.recipient.lower(), params.notify, params.orcpt)
        )
        await self.push("250 2.1.5 Recipient OK")

    async def smtp_DATA(self, arg: str) -> None:
        transaction = self._transaction
        if transaction is None or not transaction.recipients:
            await self.push("503 5.5.1 Need RCPT command first")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        data, problem = await self._read_data()
        self._transaction = None
        if problem is not None:
            await self._refuse(problem)
            return
        started = time.perf_counter()
        tls = self._ssl_object()
        assert tls is not None and self.session is not None
        cipher = tls.cipher()
        info = SessionInfo(
            session_id=self.session_id,
            peer_ip=self.peer_ip,
            helo=self.session.host_name or "",
            protocol="UTF8SMTPS" if transaction.params.smtputf8 else "ESMTPS",
            tls_version=tls.version(),
            tls_cipher=cipher[0] if cipher else None,
            peer_dn=self.peer_dn(),
        )
        envelope = InboundEnvelope(
            mail_from=transaction.params.sender,
            recipients=tuple(transaction.recipients),
            ret=transaction.params.ret,
            envid=transaction.params.envid,
            smtputf8=transaction.params.smtputf8,
            body=transaction.params.body,
        )
        try:
            report = await self.relay.delivery.deliver(envelope, data, info)
        except MailError as exc:
            await self._refuse(exc, command="DATA")
            return
        except Exception:
            log.exception("delivery failed")
            await self._refuse(temporary_failure(), command="DATA")
            return
        DELIVERED.inc()
        DELIVERY_SECONDS.observe(time.perf_counter() - started)
        await self.push(f"250 2.0.0 Ok: delivered as {self.session_id}-{report.blob_id}")

    async def _read_data(self) -> tuple[bytes, MailError | None]:
        """Read to the lone dot and unstuff (RFC 5321 §4.5.2).

        The data is read in large pieces, each ending at the next `.<CRLF>`, and checked
        with C-level byte operations: line by line in Python costs more than the rest of a
        delivery. Errors are answered after the final dot, so the session stays in step
        (RFC 5321 §4.2.5).
        """
        limit = self.data_size_limit or 0
        max_line = self.relay.settings.relay.max_line_length
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
                    return await self._discard_data(_too_big(limit))
                # The terminator is a dot alone on its line: at the very start, or after CRLF.
                if len(buf) == 3 or buf[-5:-3] == b"\r\n":
                    break
                if limit and len(buf) > limit + 3:
                    return await self._discard_data(_too_big(limit))
        finally:
            reader._limit = normal_limit  # type: ignore[attr-defined]
        data = bytes(buf[:-3])
        if data and max(map(len, data.split(b"\r\n"))) > max_line - 2:
            return b"", _line_too_long(max_line)
        # Every line the client began with a dot got one more (RFC 5321 §4.5.2): remove it.
        if data.startswith(b"."):
            data = data[1:]
        data = data.replace(b"\r\n.", b"\r\n")
        if limit and len(data) > limit:
            return b"", _too_big(limit)
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


def _too_big(limit: int) -> MailError:
    return MailError(552, "5.3.4", f"Message too big (limit {limit} bytes)", reason="too_big")


def _line_too_long(max_line: int) -> MailError:
    return MailError(
        500,
        "5.5.2",
        f"Line too long (limit {max_line} octets, RFC 5321 §4.5.3.1.6)",
        reason="line_too_long",
    )


def _recipient_of(arg: str | None) -> str:
    """The address in a RCPT argument, for the audit trail (bounded, best effort)."""
    if not arg:
        return ""
    start, end = arg.find("<"), arg.find(">")
    return arg[start + 1 : end][:256] if 0 <= start < end else arg[:256]


class RelayServer:
    """The relay listeners (STARTTLS and, optionally, implicit TLS) and their shared state."""

    def __init__(
        self,
        settings: Settings,
        pki: Pki,
        whitelist: WhitelistStore,
        delivery: Delivery,
        audit_sink: AuditSink,
    ) -> None:
        self.settings = settings
        self.pki = pki
        self.whitelist = whitelist
        self.delivery = delivery
        self.audit_sink = audit_sink
        # Client certificates are requested and verified by OpenSSL against the trust anchors
        # (an unknown CA fails the handshake); dates, usages, revocation and the whitelist are
        # judged after it, so those refusals get an SMTP reply and an audit entry.
        self.starttls_context = pki.server_context("optional", defer_validity_dates=True)
        self._per_peer: collections.Counter[str] = collections.Counter()
        self._total = 0
        self.servers: list[asyncio.Server] = []

    async def handle_exception(self, error: Exception) -> str:
        """aiosmtpd's hook for an unexpected error in a command: log it, tell the peer only
        that it is temporary (never the exception text)."""
        log.error("relay session error", exc_info=error)
        return temporary_failure("internal_error").reply

    @property
    def limits(self) -> RelaySettings:
        return self.settings.relay

    def admit(self, peer_ip: str) -> MailError | None:
        """Count a new connection, or say why it is refused (RFC 5321 §3.1: 421 and close)."""
        if self._total >= self.limits.max_connections:
            return MailError(
                421, "4.7.0", "Too many connections, try again later", reason="too_many_connections"
            )
        if self._per_peer[peer_ip] >= self.limits.max_connections_per_peer:
            return MailError(
                421,
                "4.7.0",
                "Too many connections from your address",
                reason="too_many_connections_from_peer",
            )
        self._total += 1
        self._per_peer[peer_ip] += 1
        return None

    def release(self, peer_ip: str) -> None:
        self._total -= 1
        self._per_peer[peer_ip] -= 1
        if self._per_peer[peer_ip] <= 0:
            del self._per_peer[peer_ip]

    def refused(self, session: RelaySMTP, error: MailError) -> None:
        REFUSALS.labels(reason=error.reason).inc()
        self.audit(
            session, "smtp.reject", Outcome.REFUSED, {"reason": error.reason, "reply": error.reply}
        )

    def audit(
        self, session: RelaySMTP, name: str, outcome: Outcome, details: dict[str, object]
    ) -> None:
        with bind_session(session.session_id):
            event(log, name, peer_ip=session.peer_ip, peer_dn=session.peer_dn(), **details)
        self.audit_sink.record(
            AuditRecord(
                event=name,
                outcome=outcome,
                actor="relay",
                peer_ip=session.peer_ip,
                peer_dn=session.peer_dn(),
                target=str(details.get("recipient") or details.get("sender") or "") or None,
                details={"session": session.session_id, **details},
            )
        )

    async def start(self, listen: str, implicit_tls_listen: str) -> dict[str, str]:
        from mssante.server import listen_on  # one way to open a listener

        loop = asyncio.get_running_loop()
        listeners: dict[str, str] = {}

        async def plain(host: str, port: int) -> asyncio.Server:
            return await loop.create_server(lambda: RelaySMTP(self, implicit_tls=False), host, port)

        server, where = await listen_on("relay.listen", listen, plain)
        self.servers.append(server)
        listeners["relay"] = where
        if implicit_tls_listen:
            context = self.starttls_context

            async def implicit(host: str, port: int) -> asyncio.Server:
                return await loop.create_server(
                    lambda: RelaySMTP(self, implicit_tls=True),
                    host,
                    port,
                    ssl=context,
                    ssl_handshake_timeout=30,
                )

            server, where = await listen_on(
                "relay.implicit_tls_listen", implicit_tls_listen, implicit
            )
            self.servers.append(server)
            listeners["relay_tls"] = where
        return listeners

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 10)
