"""The submission listeners: professionals' mail clients and software send mail (RFC 6409).

Checks, in the order a session meets them (docs/submission.md lists every reply):
1. connection limits (total, per client address) → `421 4.7.0` and close;
2. TLS before AUTH and MAIL (STARTTLS on 587, or implicit TLS on 465, RFC 8314);
3. AUTH PLAIN / LOGIN with the IMAP password, or EXTERNAL with a health-PKI client certificate
   (the same `Authenticator` as IMAP: same accounts, same failed-login slow-down) →
   `535 5.7.8` for any failure, whatever the cause (no account enumeration);
4. MAIL: authenticated (`530 5.7.0`), the envelope sender one the identity may send as
   (`policy.submission_sender_refused`, `550 5.7.1`);
5. RCPT: routed by `policy.route_recipient`: a hosted address through local delivery (the
   relay's checks: `550 5.1.1`…), another one in a whitelisted domain (`550 5.7.1`) and, when
   directory checking is on, listed in the directory mirror (`550 5.1.1`), for the outbound
   queue (`operator/outbox.py`);
6. DATA: every From: address one the identity may send as (`550 5.7.1`); our Received field,
   a Sender: when sending for someone else, Message-ID and Date when missing; then local
   delivery (with the copy in Sent) is committed and the remote part durably queued before
   the `250`.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import logging
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from aiosmtpd.smtp import MISSING
from prometheus_client import Counter, Histogram
from sqlalchemy import select

from mssante.config import Settings, SubmissionSettings
from mssante.operator import mime, policy
from mssante.operator.auditlog import AuditSink
from mssante.operator.auth import Authenticator, Login, decode_plain
from mssante.operator.delivery import (
    MAX_PATH,
    Delivery,
    Recipient,
    SessionInfo,
    received_field,
)
from mssante.operator.errors import MailError, temporary_failure
from mssante.operator.policy import Route, SendRights
from mssante.operator.smtp.params import parse_mail, parse_rcpt
from mssante.operator.smtp.session import (
    ListenerLimits,
    ListenerMetrics,
    SmtpListener,
    SmtpSession,
    Transaction,
    recipient_of,
)
from mssante.operator.store import domains, folders, grants
from mssante.operator.store.db import Store
from mssante.operator.store.schema import MailboxRow, MailboxType, Outcome, SpecialUse
from mssante.pki.runtime import Pki
from mssante.pki.tls import peer_identity
from mssante.whitelist.source import WhitelistStore

log = logging.getLogger("mssante.submission")

METRICS = ListenerMetrics.named("submission", "Submission")
ACCEPTED = Counter("mssante_submission_messages_total", "Messages accepted by submission")
ACCEPT_SECONDS = Histogram(
    "mssante_submission_accept_seconds",
    "From end of DATA to the 250 (local commit and outbox enqueue)",
)

T = TypeVar("T")
LOOKUP_TTL_SECONDS = 30.0  # hosted domains and Sent folders, read once per this per process
LOOKUP_CACHE_SIZE = 10_000
MECHANISMS = ("PLAIN", "LOGIN", "EXTERNAL")  # RFC 4616, draft-murchison-sasl-login, RFC 4422
_MAIL_AUTH_PARAM = re.compile(r"\s+AUTH=\S*", re.IGNORECASE)  # RFC 4954 §5, ignored


# --- what submission hands on (operator/outbox.py, mssante/directory) ---------------------------


@dataclass(frozen=True)
class OutboundMessage:
    """A submitted message for remote recipients, handed to the outbound queue."""

    message: bytes  # as it leaves us: our Received, Sender, Message-ID and Date added
    mail_from: str
    recipients: tuple[Recipient, ...]  # remote ones only, with their DSN NOTIFY and ORCPT
    ret: str | None  # RFC 3461 RET
    envid: str | None  # RFC 3461 ENVID
    smtputf8: bool
    body: str  # "7BIT" | "8BITMIME"
    submitter_mailbox_id: int  # the authenticated mailbox, for DSNs and traces
    message_id: str  # the Message-ID field's value, e.g. "<x@y>"


class Outbox(Protocol):
    """The durable outbound queue (operator/queue.py)."""

    async def enqueue(self, message: OutboundMessage) -> None:
        """Return only once the message and its recipients are durably queued."""
        ...


class Directory(Protocol):
    """The national directory mirror (mssante.directory)."""

    async def exists(self, address: str) -> bool: ...


# --- sender rights ----------------------------------------------------------------------------


async def send_rights(store: Store, login: Login) -> SendRights | None:
    """What `login` may send as (policy.SendRights): its own mailbox and the APP mailboxes
    bound to its certificate (`own`); the mailboxes whose grant gives it the send right, a
    delegated PER or an ORG/CAB it is a member of (`on_behalf`). None for a patient's mailbox:
    patients write through the webmail, where the trust space's rules for them apply (a patient
    may not write first to a professional)."""
    account = login.account
    assert account is not None
    own = {account.address}
    async with store.read_session() as session:
        kind = await session.scalar(
            select(MailboxRow.type).where(MailboxRow.id == account.mailbox_id)
        )
        if kind == MailboxType.PATIENT.value:
            return None
        bound_ids = [c.account.mailbox_id for c in login.bound]
        if bound_ids:
            apps = await session.scalars(
                select(MailboxRow.address).where(
                    MailboxRow.id.in_(bound_ids), MailboxRow.type == MailboxType.APP.value
                )
            )
            own.update(apps)
        on_behalf = await grants.send_as_owners(session, account.mailbox_id)
    return SendRights(account.address, frozenset(own), frozenset(on_behalf) - own)


# --- the message as it leaves ------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    data: bytes
    message_id: str
    header_from: tuple[str, ...]


def header_from_addresses(header: mime.Header) -> tuple[str, ...]:
    """The addresses of every From: field (RFC 5322 §3.6.2), lower-cased."""
    values = [f.value for f in header.fields if f.name == "from"]
    return tuple(
        address.strip().lower()
        for _, address in email.utils.getaddresses(values)
        if address.strip()
    )


def prepare_message(
    data: bytes, header: mime.Header, rights: SendRights, received: bytes, hostname: str
) -> Prepared:
    """Our trace field on top, then: `Sender:` naming the identity when it sends for someone
    else (RFC 5322 §3.6.2; a client's own Sender: fields are removed, they would name whoever
    it likes), `Message-ID` and `Date` when the client gave none (RFC 6409 §8.3, §8.2)."""
    from_addresses = header_from_addresses(header)
    added = [received]
    if policy.needs_sender_header(rights, from_addresses):
        added.append(f"Sender: <{rights.identity}>\r\n".encode())
    message_id = (header.first("message-id") or "").strip()
    if not message_id:
        message_id = f"<{secrets.token_hex(16)}@{hostname}>"
        added.append(f"Message-ID: {message_id}\r\n".encode())
    if header.first("date") is None:
        added.append(f"Date: {email.utils.format_datetime(datetime.now(UTC))}\r\n".encode())
    pieces = [b"".join(added)]
    pos = 0
    for f in header.fields:
        if f.name == "sender":
            pieces.append(data[pos : f.start])
            pos = f.end
    pieces.append(data[pos:])
    return Prepared(b"".join(pieces), message_id[:MAX_PATH], from_addresses)


# --- the session --------------------------------------------------------------------------------


class SubmissionSMTP(SmtpSession):
    """One client connection."""

    def __init__(self, server: SubmissionServer, *, implicit_tls: bool) -> None:
        super().__init__(
            server,
            implicit_tls=implicit_tls,
            ident="MSSante submission",
            starttls_context=server.tls_context,
        )
        self.server = server
        self._login: Login | None = None
        self._rights: SendRights | None = None

    def audit_identity(self) -> dict[str, Any]:
        account = self._login.account if self._login is not None else None
        return {"user": account.address} if account is not None else {}

    def new_tls_layer(self) -> None:
        # RFC 3207 §4.2: after STARTTLS the client starts afresh (it cannot be logged in yet).
        self._login = None
        self._rights = None
        self.transaction = None

    # -- commands ----------------------------------------------------------------------------

    def ehlo_offers(self) -> list[str]:
        tls = self._ssl_object()
        if tls is None:
            return ["250-STARTTLS"]  # RFC 3207; AUTH only once TLS is on (RFC 4954 §4)
        if self._login is not None:
            return []
        mechanisms = "PLAIN LOGIN"
        if peer_identity(tls) is not None:
            mechanisms += " EXTERNAL"  # RFC 4422 App. A: a certificate was presented
        return [f"250-AUTH {mechanisms}"]  # RFC 4954

    async def smtp_AUTH(self, arg: str) -> None:
        assert self.session is not None
        if not self.session.host_name:
            await self.push("503 5.5.1 Send EHLO first")
            return
        if self._ssl_object() is None:
            await self._refuse(policy.tls_required(), command="AUTH")
            return
        if self._login is not None:
            await self.push("503 5.5.1 Already authenticated")  # RFC 4954 §4
            return
        if self.transaction is not None:
            await self.push("503 5.5.1 AUTH not permitted during a mail transaction")
            return
        mechanism, _, initial = (arg or "").strip().partition(" ")
        mechanism = mechanism.upper()
        if mechanism not in MECHANISMS:
            await self.push("504 5.5.4 Unrecognized authentication mechanism")
            return
        # LOGIN without an initial response asks for the user name itself (_credentials).
        login_prompt = mechanism == "LOGIN" and not initial.strip()
        response = b"" if login_prompt else await self._initial_response(initial.strip())
        if response is None:
            return  # cancelled or undecodable: aiosmtpd answered 501
        server = self.server
        login: Login
        if mechanism == "EXTERNAL":
            tls = self._ssl_object()
            cert = peer_identity(tls) if tls is not None else None
            login = await server.auth.certificate(
                cert, response.decode("utf-8", "replace"), self.peer_ip
            )
        else:
            credentials = await self._credentials(mechanism, response)
            if credentials is None:
                return
            login = (
                credentials
                if isinstance(credentials, Login)
                else await server.auth.password(*credentials, self.peer_ip)
            )
        try:
            logged_in = await self._logged_in(login, mechanism)
        except MailError as exc:
            await self._refuse(exc, command="AUTH")
            return
        if logged_in:
            await self.push("235 2.7.0 Authentication successful")
        else:
            # RFC 4954 §6: 535 5.7.8 for every failure, the reason only in the audit trail.
            await self.push("535 5.7.8 Authentication credentials invalid")

    async def _logged_in(self, login: Login, mechanism: str) -> bool:
        """Record a login's verdict (audit, send rights): True if logged in, False if refused
        (the caller answers); MailError (451) when the send rights cannot be read."""
        server = self.server
        details: dict[str, object] = {"mechanism": mechanism, **login.details}
        rights: SendRights | None = None
        if login.account is not None:
            try:
                rights = await send_rights(server.store, login)
            except Exception:
                log.exception("send rights lookup failed")
                raise temporary_failure() from None
        if login.account is None or rights is None:
            reason = login.reason or ("auth_failed" if login.account is None else "patient_mailbox")
            METRICS.refusals.labels(reason=reason).inc()
            user = login.account.address if login.account is not None else login.user
            details |= {"user": user, "reason": reason}
            server.audit(self, "smtp.auth", Outcome.REFUSED, details)
            return False
        self._login, self._rights = login, rights
        server.audit(self, "smtp.auth", Outcome.OK, {"user": login.account.address, **details})
        return True

    async def _certificate_login(self) -> SendRights | None:
        """MAIL without AUTH from a client that presented a certificate: the certificate is its
        credential, as with AUTH EXTERNAL without an authorization identity (for clients that
        cannot send AUTH EXTERNAL, e.g. swaks). None when there is none or it maps to nothing."""
        tls = self._ssl_object()
        cert = peer_identity(tls) if tls is not None else None
        if cert is None:
            return None
        login = await self.server.auth.certificate(cert, "", self.peer_ip)
        if not await self._logged_in(login, "certificate"):
            return None
        return self._rights

    async def _initial_response(self, initial: str) -> bytes | None:
        """RFC 4954 §4: the initial response, `=` for an empty one, or a `334` challenge."""
        if initial == "=":
            return b""
        if initial:
            try:
                return base64.b64decode(initial, validate=True)
            except binascii.Error:
                await self.push("501 5.5.2 Cannot decode base64")
                return None
        answer = await self.challenge_auth("")
        return None if answer is MISSING else bytes(answer)

    async def _credentials(self, mechanism: str, first: bytes) -> tuple[str, str] | Login | None:
        """User name and password for PLAIN or LOGIN; a refusal (Login) for PLAIN naming
        another mailbox; None if the exchange ended with a reply already sent."""
        if mechanism == "PLAIN":
            credentials = decode_plain(first)
            if credentials is None:
                await self.push("501 5.5.2 Malformed PLAIN response (RFC 4616)")
                return None
            username, password = credentials.authcid, credentials.password
            if credentials.authzid and credentials.authzid.lower() != username.lower():
                # Acting as another mailbox is the send right of a grant, not a login.
                return Login(username.lower(), None, "authzid_not_allowed")
        else:
            if first:
                user_bytes = first
            else:
                answer = await self.challenge_auth("Username:")
                if answer is MISSING:
                    return None
                user_bytes = bytes(answer)
            answer = await self.challenge_auth("Password:")
            if answer is MISSING:
                return None
            try:
                username = user_bytes.decode("utf-8")
                password = bytes(answer).decode("utf-8")
            except UnicodeDecodeError:
                await self.push("501 5.5.2 Credentials are not UTF-8")
                return None
        return username, password

    async def smtp_MAIL(self, arg: str | None) -> None:
        if not await self.mail_may_start():
            return
        if self._ssl_object() is None:
            await self._refuse(policy.tls_required(), command="MAIL")
            return
        try:
            rights = self._rights or await self._certificate_login()
        except MailError as exc:
            await self._refuse(exc, command="MAIL")
            return
        if rights is None:
            await self._refuse(policy.authentication_required(), command="MAIL")
            return
        try:
            params = parse_mail(
                _MAIL_AUTH_PARAM.sub("", arg or ""), size_limit=self.data_size_limit or 0
            )
        except MailError as exc:
            await self._refuse(exc, command="MAIL")
            return
        refusal = policy.submission_sender_refused(rights, params.sender)
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
            route = await self.server.route(params.recipient)
        except MailError as exc:
            await self._refuse(exc, command="RCPT", recipient=recipient_of(arg))
            return
        except Exception:
            log.exception("recipient check failed")
            await self._refuse(temporary_failure(), command="RCPT")
            return
        recipient = Recipient(params.recipient.lower(), params.notify, params.orcpt)
        (transaction.recipients if route is Route.LOCAL else transaction.remote).append(recipient)
        await self.push("250 2.1.5 Recipient OK")

    async def smtp_DATA(self, arg: str) -> None:
        got = await self.receive_data(arg)
        if got is None:
            return
        transaction, data = got
        started = time.perf_counter()
        rights, login = self._rights, self._login
        assert rights is not None and login is not None and login.account is not None
        header = mime.split_header(data)
        refusal = policy.header_from_refused(rights, header_from_addresses(header))
        if refusal is not None:
            await self._refuse(refusal, command="DATA")
            return
        info = self.session_info(transaction.params.smtputf8, authenticated=True)
        hostname = self.server.settings.operator.hostname
        recipients = [r.address for r in transaction.recipients + transaction.remote]
        received = received_field(info, hostname, recipients, datetime.now(UTC))
        prepared = prepare_message(data, header, rights, received, hostname)
        try:
            await self.server.accept(transaction, prepared, info, login.account.mailbox_id)
        except MailError as exc:
            await self._refuse(exc, command="DATA")
            return
        except Exception:
            log.exception("submission failed")
            await self._refuse(temporary_failure(), command="DATA")
            return
        ACCEPTED.inc()
        ACCEPT_SECONDS.observe(time.perf_counter() - started)
        self.server.audit(
            self,
            "submission.accepted",
            Outcome.OK,
            {
                "sender": transaction.params.sender,
                "from": list(prepared.header_from),
                "message_id": prepared.message_id,
                "local": len(transaction.recipients),
                "remote": len(transaction.remote),
                "size": len(prepared.data),
                "on_behalf": policy.needs_sender_header(rights, prepared.header_from),
            },
        )
        await self.push(f"250 2.0.0 Ok: queued as {self.session_id}")


class SubmissionServer(SmtpListener):
    """The submission listeners (STARTTLS and implicit TLS) and their shared state."""

    actor = "submission"

    def __init__(
        self,
        settings: Settings,
        store: Store,
        pki: Pki,
        whitelist: WhitelistStore,
        delivery: Delivery,
        audit_sink: AuditSink,
        authenticator: Authenticator,
        *,
        outbox: Outbox,
        directory: Directory | None,
    ) -> None:
        config = settings.submission
        super().__init__(
            settings,
            audit_sink,
            ListenerLimits.of(config, config.max_connections_per_ip),
            METRICS,
            log,
        )
        self.store = store
        self.whitelist = whitelist
        self.delivery = delivery
        self.auth = authenticator
        self.outbox = outbox
        # Directory checking needs a directory: without one it is off, and said so at start.
        self.directory = directory if config.check_directory else None
        # A client certificate is asked for, never required (password users have none), for
        # AUTH EXTERNAL; its dates are judged after the handshake, as for IMAP.
        self.tls_context = pki.server_context("optional", defer_validity_dates=True)
        # Read at every RCPT and DATA, changed by an administrator now and then: kept for
        # LOOKUP_TTL_SECONDS (a domain added or a Sent folder renamed is seen within that).
        self._hosted: dict[str, tuple[float, bool]] = {}
        self._sent_folders: dict[str, tuple[float, int | None]] = {}

    @property
    def config(self) -> SubmissionSettings:
        return self.settings.submission

    def session_factory(self, implicit_tls: bool) -> SubmissionSMTP:
        return SubmissionSMTP(self, implicit_tls=implicit_tls)

    async def start(self, listen: str, implicit_tls_listen: str) -> dict[str, str]:
        if self.config.check_directory and self.directory is None:
            log.warning("no directory mirror available: remote recipients are not checked")
        return await self.start_listeners(
            ("submission.listen", "submission.implicit_tls_listen"),
            ("submission", "smtps"),
            listen,
            implicit_tls_listen,
            self.tls_context,
        )

    async def route(self, address: str) -> Route:
        """Where one recipient goes (policy.route_recipient), or MailError."""
        domain = address.rpartition("@")[2].lower().rstrip(".")
        hosted = await self._is_hosted(domain) if domain else False
        snapshot = self.whitelist.current
        route = policy.route_recipient(
            address,
            hosted=lambda _: hosted,
            whitelisted=snapshot.has_domain,
            in_directory=None,  # asked below: the directory lookup is I/O
            patient_domain=self.settings.operator.patient_domain,
        )
        if isinstance(route, MailError):
            raise route
        if route is Route.LOCAL:
            await self.delivery.check_recipient(address)
            return route
        if self.directory is not None and not await self.directory.exists(address.lower()):
            raise policy.not_in_directory(address)
        return route

    async def accept(
        self, transaction: Transaction, prepared: Prepared, info: SessionInfo, submitter: int
    ) -> None:
        """Commit the local part (recipients and the Sent copy), then queue the remote part;
        returns once both are durable. Raising between the two leaves the local copies
        delivered: the client's retry then delivers them twice, never loses them
        (at-least-once, like every SMTP hop)."""
        params = transaction.params
        sent_folder = await self._sent_folder(params.sender) if self.config.save_sent else None
        if transaction.recipients or sent_folder is not None:
            try:
                await self.delivery.deliver(
                    transaction.envelope(),
                    prepared.data,
                    info,
                    traced=True,
                    sent_folder=sent_folder,
                )
            except MailError:
                # The Sent folder may be gone since it was looked up: look again next time.
                self._sent_folders.pop(params.sender.lower(), None)
                raise
        if transaction.remote:
            await self.outbox.enqueue(
                OutboundMessage(
                    message=prepared.data,
                    mail_from=params.sender,
                    recipients=tuple(transaction.remote),
                    ret=params.ret,
                    envid=params.envid,
                    smtputf8=params.smtputf8,
                    body=params.body,
                    submitter_mailbox_id=submitter,
                    message_id=prepared.message_id,
                )
            )

    async def _is_hosted(self, domain: str) -> bool:
        now = time.monotonic()
        cached = self._hosted.get(domain)
        if cached is not None and cached[0] > now:
            return cached[1]
        async with self.store.read_session() as session:
            hosted = await domains.is_hosted(session, domain)
        _remember(self._hosted, domain, (now + LOOKUP_TTL_SECONDS, hosted))
        return hosted

    async def _sent_folder(self, sender: str) -> int | None:
        """The Sent folder of the mailbox the message is sent as (docs/submission.md: the
        holder of a mailbox sees what is sent in its name, by a delegate or a member too).
        None when that mailbox is at or over its quota: the message still goes, without the
        copy (refusing to send because the Sent folder is full would help nobody)."""
        key = sender.lower()
        now = time.monotonic()
        cached = self._sent_folders.get(key)
        if cached is not None and cached[0] > now:
            folder = cached[1]
        else:
            async with self.store.read_session() as session:
                box = await session.scalar(select(MailboxRow.id).where(MailboxRow.address == key))
                folder = (
                    await folders.special_use_folder(session, box, SpecialUse.SENT)
                    if box is not None
                    else None
                )
            _remember(self._sent_folders, key, (now + LOOKUP_TTL_SECONDS, folder))
        if folder is None:
            return None
        try:
            await self.delivery.check_recipient(sender)
        except MailError as exc:
            if exc.reason != "over_quota":
                raise
            log.warning("Sent copy skipped: mailbox over quota", extra={"mailbox": sender})
            return None
        return folder


def _remember(cache: dict[str, tuple[float, T]], key: str, value: tuple[float, T]) -> None:
    if len(cache) >= LOOKUP_CACHE_SIZE:
        cache.pop(next(iter(cache)))  # the oldest entry
    cache[key] = value
