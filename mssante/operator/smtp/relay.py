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
from typing import Any

from prometheus_client import Counter, Histogram

from mssante.config import Settings
from mssante.operator import policy
from mssante.operator.auditlog import AuditSink
from mssante.operator.delivery import (
    Delivery,
    Recipient,
)
from mssante.operator.errors import MailError, temporary_failure
from mssante.operator.smtp.params import parse_mail, parse_rcpt
from mssante.operator.smtp.session import (
    ListenerLimits,
    ListenerMetrics,
    SmtpListener,
    SmtpSession,
    Transaction,
    recipient_of,
)
from mssante.operator.store.schema import Outcome
from mssante.pki.errors import ValidationError
from mssante.pki.runtime import Pki
from mssante.pki.tls import peer_identity
from mssante.pki.validation import Purpose, ValidatedChain
from mssante.whitelist.source import WhitelistStore

log = logging.getLogger("mssante.relay")

METRICS = ListenerMetrics.named("relay", "Relay")
DELIVERED = Counter("mssante_relay_messages_total", "Messages accepted by the relay")
DELIVERY_SECONDS = Histogram(
    "mssante_relay_delivery_seconds", "From end of DATA to the 250 (durable commit)"
)


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

    async def smtp_AUTH(self, arg: str) -> None:
        # Peers authenticate with their certificate; passwords belong to submission.
        await self.push("502 5.5.1 AUTH not available on the relay")

    async def smtp_MAIL(self, arg: str | None) -> None:
        if not await self.mail_may_start():
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
        self.transaction = Transaction(params)
        await self.push("250 2.1.0 Sender OK")

    async def smtp_RCPT(self, arg: str | None) -> None:
        transaction = await self.rcpt_transaction()
        if transaction is None:
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
        received = await self.receive_data(arg)
        if received is None:
            return
        transaction, data = received
        started = time.perf_counter()
        info = self.session_info(transaction.params.smtputf8, peer_dn=self.peer_dn())
        try:
            report = await self.relay.delivery.deliver(transaction.envelope(), data, info)
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
            ListenerLimits.of(config, config.max_connections_per_peer),
            METRICS,
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
