"""The SMTP client to peer operators: mutual TLS, the whitelist checked, a result per recipient.

`OutboundClient.deliver(domain, messages)` hands messages for one destination domain to the
operator that receives for it, and says for every recipient what happened
(docs/outbound.md). In order:

1. the destination: `[outbound] routes` for the domain, else the MX records (RFC 5321 §5.1:
   by preference, equal ones in random order; no MX → the domain's own address; a null MX,
   RFC 7505 → refused for good);
2. per host, until one takes the mail: connect, EHLO, STARTTLS — required, there is no
   plaintext path — presenting our operator certificate (mutual TLS);
3. the peer's certificate: OpenSSL verifies the chain to our trust anchors at the handshake;
   then `Pki.validate` (dates, serverAuth, CRL) and the ANS whitelist: its DN must be listed
   for the recipient's domain (`policy.peer_may_receive_for`). Otherwise nothing is sent:
   every recipient is deferred, with the reason, and the refusal is audited;
4. per message MAIL, RCPT per recipient, DATA, with the DSN parameters (RFC 3461) when the
   peer advertises DSN — else the result says we kept DSN responsibility;
5. the results: 2xx delivered (with the remote host), 4xx deferred, 5xx failed, a lost
   connection or a timeout deferred.

Several messages share a connection (up to `max_messages_per_connection`), and at most
`max_connections_per_destination` connections are open to one destination host at a time,
whatever the number of callers. The queue decides what to do with deferred recipients; this
module keeps no state between calls but those limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import aiosmtplib
import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver
from prometheus_client import Counter

from mssante.config import Settings, parse_host_port
from mssante.logs import event
from mssante.operator import policy
from mssante.operator.auditlog import AuditRecord, AuditSink
from mssante.operator.errors import MailError
from mssante.operator.smtp.params import encode_xtext
from mssante.operator.store.schema import Outcome
from mssante.pki.errors import ValidationError
from mssante.pki.runtime import Pki
from mssante.pki.tls import peer_identity
from mssante.pki.validation import Purpose
from mssante.whitelist.source import WhitelistStore

log = logging.getLogger("mssante.outbound")

MAX_MX_HOSTS = 10  # bound the hosts tried for one domain (Postfix: smtp_mx_address_limit)

RECIPIENTS = Counter("mssante_outbound_recipients_total", "Outbound recipient results", ["status"])
CONNECTIONS = Counter("mssante_outbound_connections_total", "Outbound connections opened")
PEER_REFUSALS = Counter(
    "mssante_outbound_peer_refusals_total", "Peers we refused to send to", ["reason"]
)


class Status(StrEnum):
    DELIVERED = "delivered"
    DEFERRED = "deferred"  # try again later (the queue's retry schedule)
    FAILED = "failed"  # permanent: a failure DSN is owed


@dataclass(frozen=True)
class OutboundRecipient:
    address: str
    notify: frozenset[str] | None = None  # RFC 3461 NOTIFY; frozenset() is NEVER
    orcpt: str | None = None  # RFC 3461 ORCPT, decoded: "rfc822;x@y"


@dataclass(frozen=True)
class OutboundMessage:
    sender: str  # "" for the null reverse-path (a DSN)
    recipients: tuple[OutboundRecipient, ...]
    data: bytes  # the message, CRLF line ends, already DKIM-signed
    ret: str | None = None  # RFC 3461 RET: FULL | HDRS
    envid: str | None = None  # RFC 3461 ENVID, decoded
    ref: str = ""  # the caller's reference (queue id), for logs and audit


@dataclass(frozen=True)
class RecipientResult:
    recipient: str
    status: Status
    reply: str  # the peer's reply ("550 5.1.1 …") or ours ("451 4.4.1 …"), one line
    enhanced: str  # RFC 3463 status, for the DSN's Status field
    reason: str  # short tag for audit and metrics
    remote_mta: str | None = None  # the host that answered, when one did (DSN Remote-MTA)
    from_remote: bool = False  # `reply` came from the peer (DSN Diagnostic-Code: smtp; …)
    dsn_passed: bool = False  # DSN parameters passed on: the peer now owes the DSNs


@dataclass(frozen=True)
class MessageResult:
    ref: str
    recipients: tuple[RecipientResult, ...]
    connection: int | None = None  # sequence number of the connection used; None: none was


@dataclass(frozen=True)
class Target:
    host: str
    port: int


@dataclass(frozen=True)
class Resolution:
    targets: tuple[Target, ...]
    error: MailError | None = None  # set when there is no target: 4xx retry, 5xx never


# --- destination ------------------------------------------------------------------------------


def order_mx(records: Sequence[tuple[int, str]], rng: random.Random | None = None) -> list[str]:
    """Hosts by ascending preference, equal preferences shuffled (RFC 5321 §5.1)."""
    rng = rng or random.Random()  # noqa: S311 - load spreading, not security
    by_pref: dict[int, list[str]] = {}
    for preference, host in records:
        by_pref.setdefault(preference, []).append(host)
    ordered: list[str] = []
    for preference in sorted(by_pref):
        hosts = by_pref[preference]
        rng.shuffle(hosts)
        ordered += hosts
    return ordered


def _dns_failure(domain: str) -> MailError:
    return MailError(
        451, "4.4.3", f"DNS lookup for {domain} failed, will retry", reason="dns_failure"
    )


async def resolve_destination(
    domain: str,
    settings: Settings,
    resolver: dns.asyncresolver.Resolver,
) -> Resolution:
    """Where mail for `domain` goes: the static route, else MX, else the domain's address."""
    out = settings.outbound
    routes = {d.lower().rstrip("."): t for d, t in out.routes.items()}
    if domain in routes:
        host, port = parse_host_port(routes[domain], f"outbound.routes.{domain}")
        return Resolution((Target(host, port),))
    timeout = out.dns_timeout_seconds
    try:
        answer = await resolver.resolve(
            dns.name.from_text(domain), "MX", lifetime=timeout, search=False
        )
    except dns.resolver.NXDOMAIN:
        return Resolution(
            (), MailError(550, "5.1.2", f"Domain {domain} does not exist", reason="no_such_domain")
        )
    except dns.resolver.NoAnswer:
        # RFC 5321 §5.1: no MX, the domain itself is the host if it has an address.
        return await _implicit_mx(domain, settings, resolver)
    except (dns.exception.DNSException, OSError):
        return Resolution((), _dns_failure(domain))
    records: list[tuple[int, str]] = []
    for rdata in answer:
        exchange = rdata.exchange.to_text(omit_final_dot=True).lower()
        records.append((int(rdata.preference), exchange))
    if any(host in ("", ".") for _, host in records):
        # RFC 7505 §3: a null MX says the domain accepts no mail; 556 5.1.10 (§4.1).
        return Resolution(
            (),
            MailError(
                556, "5.1.10", f"Domain {domain} accepts no mail (null MX)", reason="null_mx"
            ),
        )
    hosts = order_mx(records)[:MAX_MX_HOSTS]
    return Resolution(tuple(Target(host, out.mx_port) for host in hosts))


async def _implicit_mx(
    domain: str, settings: Settings, resolver: dns.asyncresolver.Resolver
) -> Resolution:
    timeout = settings.outbound.dns_timeout_seconds
    for rdtype in ("A", "AAAA"):
        try:
            await resolver.resolve(
                dns.name.from_text(domain), rdtype, lifetime=timeout, search=False
            )
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            continue
        except (dns.exception.DNSException, OSError):
            return Resolution((), _dns_failure(domain))
        return Resolution((Target(domain, settings.outbound.mx_port),))
    return Resolution(
        (),
        MailError(550, "5.1.2", f"Domain {domain} has no MX and no address", reason="no_mail_host"),
    )


# --- one connection ------------------------------------------------------------------------------


class _ConnectionLostError(Exception):
    """The session ended under us (disconnect, timeout, 421): what is unfinished is deferred."""


@dataclass
class _Peer:
    """The capabilities the peer advertised after STARTTLS (RFC 3207 §4.2: only those count)."""

    dsn: bool
    size: int | None  # RFC 1870 limit; None: not advertised or no limit
    eight_bit: bool
    smtputf8: bool


def _reply(code: int, message: str) -> str:
    text = " ".join(message.split())[:400]
    return f"{code} {text}".rstrip()


def _enhanced_of(code: int, message: str) -> str:
    """The enhanced code the peer gave (RFC 2034), else the basic one for its class."""
    first = message.split(maxsplit=1)[0] if message.split() else ""
    parts = first.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts) and first[0] == str(code)[0]:
        return first
    return {2: "2.0.0", 4: "4.0.0"}.get(code // 100, "5.0.0")


def _status_of(code: int) -> Status:
    if 200 <= code < 300:
        return Status.DELIVERED
    if 400 <= code < 500:
        return Status.DEFERRED
    return Status.FAILED


def _local(address: str, error: MailError, *, remote_mta: str | None = None) -> RecipientResult:
    """A result decided on our side (no reply from the peer for this recipient)."""
    return RecipientResult(
        recipient=address,
        status=Status.DEFERRED if error.temporary else Status.FAILED,
        reply=error.reply,
        enhanced=error.enhanced,
        reason=error.reason,
        remote_mta=remote_mta,
    )


def mail_parameters(message: OutboundMessage, peer: _Peer) -> list[str]:
    """ESMTP parameters of MAIL FROM for this peer (RFC 1870, 6152, 6531, 3461 §4.3-4.4)."""
    params: list[str] = []
    if peer.size is not None:
        params.append(f"SIZE={len(message.data)}")
    if peer.eight_bit and not message.data.isascii():
        params.append("BODY=8BITMIME")
    if peer.smtputf8 and _needs_smtputf8(message):
        params.append("SMTPUTF8")
    if peer.dsn:
        if message.ret is not None:
            params.append(f"RET={message.ret}")
        if message.envid is not None:
            params.append(f"ENVID={encode_xtext(message.envid)}")
    return params


def rcpt_parameters(recipient: OutboundRecipient, peer: _Peer) -> list[str]:
    """NOTIFY and ORCPT (RFC 3461 §4.1-4.2) when the peer takes them; nothing otherwise."""
    if not peer.dsn:
        return []
    params: list[str] = []
    if recipient.notify is not None:
        params.append("NOTIFY=" + (",".join(sorted(recipient.notify)) or "NEVER"))
    if recipient.orcpt is not None:
        addr_type, _, address = recipient.orcpt.partition(";")
        params.append(f"ORCPT={addr_type};{encode_xtext(address)}")
    return params


def _peer_ip(smtp: aiosmtplib.SMTP) -> str | None:
    """The address we are connected to (the audit trail's peer_ip), when connected."""
    try:
        peer = smtp.get_transport_info("peername")
    except aiosmtplib.SMTPException:
        return None
    return str(peer[0]) if peer else None


# A path we put on the wire: no white space, controls or angle brackets (RFC 5321 §4.1.2), one
# @ with something on both sides, at most 256 octets (§4.5.3.1.3). The queue gives only
# validated addresses; this keeps a bad one from ever reaching a command line.
def _bad_path(address: str, *, null_ok: bool) -> bool:
    if address == "":
        return not null_ok
    local, at, domain = address.rpartition("@")
    return (
        not at
        or not local
        or not domain
        or len(address.encode("utf-8")) > 256
        or any(c in "<>" or c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in address)
    )


def _needs_smtputf8(message: OutboundMessage) -> bool:
    return not message.sender.isascii() or any(not r.address.isascii() for r in message.recipients)


class _Connection:
    def __init__(self, smtp: aiosmtplib.SMTP, target: Target, number: int, peer: _Peer) -> None:
        self.smtp = smtp
        self.target = target
        self.number = number
        self.peer = peer
        self.peer_ip = _peer_ip(smtp)
        self.sent = 0  # messages sent on this connection, over every use

    @property
    def alive(self) -> bool:
        return self.smtp.is_connected

    async def command(self, verb: bytes, *args: str) -> tuple[int, str]:
        try:
            response = await self.smtp.execute_command(verb, *(a.encode("utf-8") for a in args))
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            raise _ConnectionLostError(type(exc).__name__) from None
        if response.code == 421:
            raise _ConnectionLostError(_reply(response.code, response.message))
        return response.code, response.message

    async def data(self, data: bytes, seconds: float) -> tuple[int, str]:
        try:
            response = await self.smtp.data(data, timeout=seconds)
        except aiosmtplib.SMTPDataError as exc:
            if exc.code == 421:
                raise _ConnectionLostError(_reply(exc.code, exc.message)) from None
            return exc.code, exc.message
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            raise _ConnectionLostError(type(exc).__name__) from None
        return response.code, response.message

    async def close(self) -> None:
        if self.smtp.is_connected:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await self.smtp.quit(timeout=5)
        self.smtp.close()


# --- the client -----------------------------------------------------------------------------


class OutboundClient:
    """Delivers to peer operators; one instance per process (it holds the per-host limits)."""

    def __init__(
        self,
        settings: Settings,
        pki: Pki,
        whitelist: WhitelistStore,
        audit: AuditSink,
        resolver: dns.asyncresolver.Resolver | None = None,
    ) -> None:
        self.settings = settings
        self.pki = pki
        self.whitelist = whitelist
        self.audit_sink = audit
        self._resolver = resolver
        # Verifies the peer's chain to our anchors at the handshake (an unknown CA never gets
        # a byte of mail); the host name is not matched: peers are known by their whitelisted
        # DN, and an MX name need not be in the certificate (pki/tls.py client_context).
        self._tls = pki.client_context(present_certificate=True, check_hostname=False)
        self._limits: dict[Target, asyncio.Semaphore] = {}
        self._numbers = itertools.count(1)
        # Connections kept open after a delivery, for the next one to the same destination:
        # keyed by domain too, since the peer was judged acceptable for that domain only.
        self._idle: dict[tuple[str, Target], list[_Connection]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            self._resolver = dns.asyncresolver.Resolver()  # reads resolv.conf now, not at import
        return self._resolver

    async def deliver(
        self, domain: str, messages: Sequence[OutboundMessage]
    ) -> list[MessageResult]:
        """Send `messages`, whose recipients are all in `domain`; one result per message, in
        order. Never raises for network or peer problems: they are results."""
        domain = domain.lower().rstrip(".")
        if not messages:
            return []
        resolution = await resolve_destination(domain, self.settings, self.resolver)
        if resolution.error is not None:
            return [self._all(m, resolution.error, None) for m in messages]
        out = self.settings.outbound
        limit = self._limits.setdefault(
            resolution.targets[0], asyncio.Semaphore(out.max_connections_per_destination)
        )
        pending: deque[tuple[int, OutboundMessage]] = deque(enumerate(messages))
        results: dict[int, MessageResult] = {}
        failure: list[MailError] = []  # set once no host of the destination can be used

        async def worker() -> None:
            while pending and not failure:
                async with limit:
                    if not pending or failure:
                        return
                    reused = await self._reuse(domain, resolution.targets)
                    opened = reused or await self._open(domain, resolution.targets)
                    if isinstance(opened, MailError):
                        failure.append(opened)
                        return
                    sent = 0
                    try:
                        while (
                            pending
                            and opened.sent < out.max_messages_per_connection
                            and opened.alive
                        ):
                            index, message = pending.popleft()
                            results[index] = await self._send(domain, opened, message)
                            opened.sent += 1
                            sent += 1
                    finally:
                        await self._park(domain, opened)
                    if sent == 0 and pending:
                        # A peer that closes at once after TLS: no reconnection loop.
                        failure.append(_connection_lost("the peer closed the connection"))

        workers = min(len(messages), out.max_connections_per_destination)
        await asyncio.gather(*(worker() for _ in range(workers)))
        error = failure[0] if failure else _connection_lost("no connection")
        for index, message in pending:
            results[index] = self._all(message, error, None)
        return [results[i] for i in range(len(messages))]

    def _all(self, message: OutboundMessage, error: MailError, host: str | None) -> MessageResult:
        recipients = tuple(_local(r.address, error, remote_mta=host) for r in message.recipients)
        for result in recipients:
            self._record(message, result)
        return MessageResult(message.ref, recipients)

    # -- connection reuse ------------------------------------------------------------------

    async def _reuse(self, domain: str, targets: Sequence[Target]) -> _Connection | None:
        """A connection left open by an earlier delivery to this domain, checked with RSET
        (the peer may have closed it meanwhile); None when there is none."""
        for target in targets:
            idle = self._idle.get((domain, target))
            while idle:
                conn = idle.pop()
                if not conn.alive:
                    self._close_later(conn)
                    continue
                try:
                    code, _ = await conn.command(b"RSET")
                except _ConnectionLostError:
                    code = 0
                if code == 250:
                    return conn
                self._close_later(conn)
        return None

    async def _park(self, domain: str, conn: _Connection) -> None:
        """Keep `conn` for the next delivery to `domain` for `connection_cache_seconds`, or
        close it (cache off, connection lost, or its message allowance used up)."""
        out = self.settings.outbound
        if (
            out.connection_cache_seconds <= 0
            or not conn.alive
            or conn.sent >= out.max_messages_per_connection
        ):
            await conn.close()
            return
        key = (domain, conn.target)
        self._idle.setdefault(key, []).append(conn)
        asyncio.get_running_loop().call_later(out.connection_cache_seconds, self._expire, key, conn)

    def _expire(self, key: tuple[str, Target], conn: _Connection) -> None:
        idle = self._idle.get(key)
        if idle and conn in idle:  # still unused since it was parked
            idle.remove(conn)
            self._close_later(conn)

    def _close_later(self, conn: _Connection) -> None:
        task = asyncio.get_running_loop().create_task(conn.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Close the connections kept for reuse (at shutdown)."""
        for idle in self._idle.values():
            for conn in idle:
                self._close_later(conn)
        self._idle.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # -- connecting ------------------------------------------------------------------------

    async def _open(self, domain: str, targets: Sequence[Target]) -> _Connection | MailError:
        """The first host that speaks TLS with an acceptable certificate, or the last error."""
        last: MailError = _connection_lost("no host")
        for target in targets:
            opened = await self._open_one(domain, target)
            if isinstance(opened, _Connection):
                return opened
            last = opened
        return last

    async def _open_one(self, domain: str, target: Target) -> _Connection | MailError:
        out = self.settings.outbound
        smtp = aiosmtplib.SMTP(
            hostname=target.host,
            port=target.port,
            local_hostname=self.settings.operator.hostname,
            timeout=out.connect_timeout_seconds,
            start_tls=False,  # done below, required, with our context
            use_tls=False,
        )
        where = f"{target.host}:{target.port}"
        try:
            await smtp.connect()
            CONNECTIONS.inc()
            smtp.timeout = out.command_timeout_seconds
            await smtp.ehlo()
            if not smtp.supports_extension("starttls"):
                peer_ip = _peer_ip(smtp)
                smtp.close()
                return self._refused(
                    domain,
                    target,
                    None,
                    MailError(
                        451,
                        "4.7.10",
                        f"{where} does not offer STARTTLS; mail is never sent in clear",
                        reason="no_starttls",
                    ),
                    peer_ip,
                )
        except aiosmtplib.SMTPResponseException as exc:  # a greeting or EHLO refusal
            smtp.close()
            return _connection_lost(f"{where} answered {_reply(exc.code, exc.message)}")
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            smtp.close()
            return _connection_lost(f"cannot connect to {where}: {type(exc).__name__} {exc}"[:300])
        peer_ip = _peer_ip(smtp)
        try:
            await smtp.starttls(tls_context=self._tls, server_hostname=target.host)
        except aiosmtplib.SMTPResponseException as exc:
            smtp.close()
            return _connection_lost(f"{where} refused STARTTLS: {_reply(exc.code, exc.message)}")
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            # OpenSSL refused the peer's chain (unknown CA, expired…) or the peer refused ours
            # or our TLS profile: either way no mail goes there. ssl.SSLError is an OSError.
            smtp.close()
            cause = exc.__cause__ or exc
            return self._refused(
                domain,
                target,
                None,
                MailError(
                    451,
                    "4.7.5",  # RFC 3463: cryptographic failure
                    f"TLS with {where} failed: {type(cause).__name__} {cause}"[:300],
                    reason="tls_handshake",
                ),
                peer_ip,
            )
        judged = self._judge_peer(domain, target, smtp)
        if isinstance(judged, MailError):
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await smtp.quit(timeout=5)
            smtp.close()
            return judged
        try:
            await smtp.ehlo()  # RFC 3207 §4.2: capabilities again, over TLS
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            smtp.close()
            return _connection_lost(f"{where}: EHLO after STARTTLS failed: {exc}"[:300])
        size_text = smtp.esmtp_extensions.get("size", "")
        peer = _Peer(
            dsn=smtp.supports_extension("dsn"),
            size=int(size_text) if size_text.isdigit() and int(size_text) > 0 else None,
            eight_bit=smtp.supports_extension("8bitmime"),
            smtputf8=smtp.supports_extension("smtputf8"),
        )
        number = next(self._numbers)
        event(
            log,
            "outbound connection",
            connection=number,
            host=where,
            domain=domain,
            peer_dn=judged,
            dsn=peer.dsn,
        )
        return _Connection(smtp, target, number, peer)

    def _judge_peer(self, domain: str, target: Target, smtp: aiosmtplib.SMTP) -> str | MailError:
        """The peer's verified DN, or why we will not send to it (audited)."""
        peer_ip = _peer_ip(smtp)
        ssl_object = smtp.get_transport_info("ssl_object")
        cert = peer_identity(ssl_object) if ssl_object is not None else None
        if cert is None:
            return self._refused(
                domain,
                target,
                None,
                MailError(451, "4.7.5", "The peer presented no certificate", reason="no_cert"),
                peer_ip,
            )
        try:
            chain = self.pki.validate(cert, Purpose.SERVER)
        except ValidationError as exc:
            return self._refused(
                domain,
                target,
                exc.subject,
                MailError(
                    451,
                    "4.7.5",
                    f"Peer certificate refused ({exc.reason.replace('_', ' ')})",
                    reason=f"certificate_{exc.reason}",
                ),
                peer_ip,
            )
        dn = chain.identity.subject_dn
        refusal = policy.peer_may_receive_for(self.whitelist.current, dn, domain)
        if refusal is not None:
            return self._refused(domain, target, dn, refusal, peer_ip)
        return dn

    def _refused(
        self,
        domain: str,
        target: Target,
        dn: str | None,
        error: MailError,
        peer_ip: str | None = None,
    ) -> MailError:
        PEER_REFUSALS.labels(reason=error.reason).inc()
        details = {"reason": error.reason, "reply": error.reply, "host": target.host}
        event(log, "outbound.peer_refused", domain=domain, port=target.port, peer_dn=dn, **details)
        self.audit_sink.record(
            AuditRecord(
                event="outbound.peer_refused",
                outcome=Outcome.REFUSED,
                actor="outbound",
                peer_ip=peer_ip,
                peer_dn=dn,
                target=domain,
                details={**details, "port": target.port},
            )
        )
        return error

    # -- one message -----------------------------------------------------------------------------

    async def _send(
        self, domain: str, conn: _Connection, message: OutboundMessage
    ) -> MessageResult:
        host = conn.target.host
        done: dict[str, RecipientResult] = {}
        try:
            await self._transaction(conn, message, done)
        except _ConnectionLostError as exc:
            # Replies already received stand (a 550 at RCPT stays a failure); every other
            # recipient is deferred: without the reply to the final dot nothing is delivered.
            # (`done` never holds a delivery here: the reply to the dot is the last step.)
            lost = _connection_lost(f"connection to {host} lost: {exc}")
            for r in message.recipients:
                if r.address not in done:
                    done[r.address] = _local(r.address, lost, remote_mta=host)
            conn.smtp.close()
        results = tuple(done[r.address] for r in message.recipients)
        for result in results:
            self._record(message, result, conn.peer_ip)
        return MessageResult(message.ref, results, conn.number)

    async def _transaction(
        self, conn: _Connection, message: OutboundMessage, done: dict[str, RecipientResult]
    ) -> None:
        """One MAIL/RCPT/DATA transaction; fills `done` as replies arrive."""
        peer = conn.peer
        host = conn.target.host
        addresses = [r.address for r in message.recipients]

        def everyone(error: MailError) -> None:
            done.update({a: _local(a, error, remote_mta=host) for a in addresses})

        if _bad_path(message.sender, null_ok=True):
            everyone(MailError(553, "5.1.7", "Invalid sender address", reason="bad_address"))
            return
        bad = [a for a in addresses if _bad_path(a, null_ok=False)]
        for address in bad:
            done[address] = _local(
                address, MailError(553, "5.1.3", "Invalid recipient address", reason="bad_address")
            )
        if len(bad) == len(addresses):
            return

        if _needs_smtputf8(message) and not peer.smtputf8:
            # RFC 6531 §3.2: a non-ASCII address cannot go to a server without SMTPUTF8.
            everyone(
                MailError(553, "5.6.7", f"{host} does not take non-ASCII addresses", reason="utf8")
            )
            return
        if not message.data.isascii() and not peer.eight_bit:
            # RFC 6152: 8-bit content only to a server announcing 8BITMIME; we do not downgrade.
            everyone(MailError(554, "5.6.3", f"{host} does not take 8-bit content", reason="8bit"))
            return
        if peer.size is not None and len(message.data) > peer.size:
            everyone(
                MailError(
                    552,
                    "5.3.4",
                    f"Message of {len(message.data)} bytes over the limit of {host} ({peer.size})",
                    reason="too_big",
                )
            )
            return
        code, text = await conn.command(
            b"MAIL", f"FROM:<{message.sender}>", *mail_parameters(message, peer)
        )
        if code >= 300:
            done.update({a: self._remote(a, code, text, conn) for a in addresses})
            await conn.command(b"RSET")
            return
        accepted: list[str] = []
        for recipient in message.recipients:
            if recipient.address in done:
                continue  # refused above
            code, text = await conn.command(
                b"RCPT", f"TO:<{recipient.address}>", *rcpt_parameters(recipient, peer)
            )
            if 200 <= code < 300:
                accepted.append(recipient.address)
            else:
                done[recipient.address] = self._remote(recipient.address, code, text, conn)
        if not accepted:
            await conn.command(b"RSET")
            return
        code, text = await conn.data(message.data, self.settings.outbound.data_timeout_seconds)
        for address in accepted:
            done[address] = self._remote(address, code, text, conn)

    def _remote(self, address: str, code: int, text: str, conn: _Connection) -> RecipientResult:
        status = _status_of(code)
        enhanced = _enhanced_of(code, text)
        return RecipientResult(
            recipient=address,
            status=status,
            reply=_reply(code, text),
            enhanced=enhanced,
            reason="remote_" + status.value,
            remote_mta=conn.target.host,
            from_remote=True,
            dsn_passed=conn.peer.dsn and status is Status.DELIVERED,
        )

    def _record(
        self, message: OutboundMessage, result: RecipientResult, peer_ip: str | None = None
    ) -> None:
        RECIPIENTS.labels(status=result.status.value).inc()
        outcome = {
            Status.DELIVERED: Outcome.OK,
            Status.FAILED: Outcome.REFUSED,
            Status.DEFERRED: Outcome.ERROR,
        }[result.status]
        details = {
            "ref": message.ref,
            "reply": result.reply,
            "reason": result.reason,
            "remote_mta": result.remote_mta,
            "dsn_passed": result.dsn_passed,
        }
        event(log, f"outbound.{result.status.value}", recipient=result.recipient, **details)
        self.audit_sink.record(
            AuditRecord(
                event=f"outbound.{result.status.value}",
                outcome=outcome,
                actor=message.sender or "<>",
                peer_ip=peer_ip,
                target=result.recipient,
                details=details,
            )
        )


def _connection_lost(text: str) -> MailError:
    # RFC 3463 X.4.1 "no answer from host", X.4.2 "bad connection".
    return MailError(451, "4.4.1", text, reason="connection_failed")
