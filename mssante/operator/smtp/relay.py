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

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from mssante.config import Settings
from mssante.operator import policy
from mssante.operator.auditlog import AuditSink
from mssante.operator.delivery import (
    Delivery,
    InboundEnvelope,
    Recipient,
    SessionInfo,
)
from mssante.operator.errors import MailError, temporary_failure
from mssante.operator.smtp.params import parse_mail, parse_rcpt
from mssante.operator.smtp.session import (
    ListenerLimits,
    ListenerMetrics,
    SmtpListener,
    SmtpSession,
    recipient_of,
)
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


@dataclass
class _Transaction:
    params: Any  # MailParams
    recipients: list[Recipient] = field(default_factory=list)


class RelaySMTP(SmtpSession):
    """One peer connection."""

    def __init__(self, relay: RelayServer, *, implicit_tls: bool) -> None:
        super().__init__(
            relay,
            implicit_tls=implicit_tls,
            ident="MSSante relay",
            starttls_context=relay.starttls_context,
        )
        self.relay = relay
        self._transaction: _Transaction | None = None
        self._trust: ValidatedChain | MailError | None = None

    def audit_identity(self) -> dict[str, Any]:
        return {"peer_dn": self.peer_dn()}

    def new_tls_layer(self) -> None:
        self._trust = None  # a new TLS layer: judge its certificate afresh

    # -- TLS and trust -----------------------------------------------------------------------

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
        await self.push_lines(lines)

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
            await self._refuse(exc, command="RCPT", recipient=recipient_of(arg))
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


class RelayServer(SmtpListener):
    """The relay listeners (STARTTLS and, optionally, implicit TLS) and their shared state."""

    actor = "relay"

    def __init__(
        self,
        settings: Settings,
        pki: Pki,
        whitelist: WhitelistStore,
        delivery: Delivery,
        audit_sink: AuditSink,
    ) -> None:
        config = settings.relay
        super().__init__(
            settings,
            audit_sink,
            ListenerLimits(
                max_connections=config.max_connections,
                max_connections_per_ip=config.max_connections_per_peer,
                max_commands=config.max_commands,
                max_line_length=config.max_line_length,
                idle_timeout_seconds=config.idle_timeout_seconds,
            ),
            ListenerMetrics(SESSIONS, ACTIVE, REFUSALS),
            log,
        )
        self.pki = pki
        self.whitelist = whitelist
        self.delivery = delivery
        # Client certificates are requested and verified by OpenSSL against the trust anchors
        # (an unknown CA fails the handshake); dates, usages, revocation and the whitelist are
        # judged after it, so those refusals get an SMTP reply and an audit entry.
        self.starttls_context = pki.server_context("optional", defer_validity_dates=True)

    def session_factory(self, implicit_tls: bool) -> RelaySMTP:
        return RelaySMTP(self, implicit_tls=implicit_tls)

    async def start(self, listen: str, implicit_tls_listen: str) -> dict[str, str]:
        return await self.start_listeners(
            ("relay.listen", "relay.implicit_tls_listen"),
            ("relay", "relay_tls"),
            listen,
            implicit_tls_listen,
            self.starttls_context,
        )
