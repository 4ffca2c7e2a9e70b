"""Local delivery: from "message accepted" to "message durably in every recipient's INBOX".

One path, used by the relay listener and by submission for local recipients:

1. `check_recipient` at RCPT: the address must be an active mailbox we host, not over quota.
2. `deliver` at the end of DATA prepares everything outside any transaction: splits the
   header, verifies DKIM (recorded, never enforced), prepends `Authentication-Results`
   (RFC 8601) and `Received` (RFC 5321 §4.4), parses the MIME structure IMAP will need
   (`operator.mime`), seals the message and its structure with the storage key.
3. The prepared delivery goes to one committer task, which writes whatever is queued in one
   transaction (group commit): the blob once, one message per recipient mailbox with its UID
   and MODSEQ, the structure, the DSN parameters, the quota counters and the audit trail.
4. Only once that transaction has committed does `deliver` return; the caller then sends 250
   (RFC 5321 §6.1: from then on the message is ours to keep). A storage failure gives 451 4.3.0
   and leaves nothing half-stored.

Group commit (`operator.groupcommit`, shared with IMAP APPEND) is what makes durability
affordable: one transaction, and one fsync, for every delivery that arrived meanwhile. A batch
whose transaction fails is retried one delivery at a time, so one bad delivery cannot fail the
others; when the database does not answer at all, the rest are refused at once.

Recipient lookups are cached for `CACHE_TTL_SECONDS` (2 s), successful ones only: a mailbox
created a moment ago is found at once, a mailbox disabled is refused at most 2 s later.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import format_datetime

from prometheus_client import Counter, Histogram
from sqlalchemy.ext.asyncio import AsyncSession

from mssante.config import Settings
from mssante.operator import metarecord, mime
from mssante.operator.dkim import NO_SIGNATURE, DkimVerdict, DkimVerifier, result_clauses
from mssante.operator.errors import (
    MailError,
    mailbox_disabled,
    over_quota,
    relay_denied,
    temporary_failure,
    too_big,
    unknown_user,
)
from mssante.operator.groupcommit import GroupCommitter
from mssante.operator.store import audit, blobmeta, blobs, domains, dsn, mailboxes, messages
from mssante.operator.store.crypto import BlobCipher, SealedBlob, SealedRecord
from mssante.operator.store.db import Store
from mssante.operator.store.mailboxes import DeliveryTarget
from mssante.operator.store.notify import folders_changed
from mssante.operator.store.schema import DsnRet, MailboxState, Outcome

log = logging.getLogger("mssante.delivery")

CACHE_TTL_SECONDS = 2.0  # how stale a recipient's state and quota may be at RCPT
CACHE_SIZE = 10_000
BATCH_MAX_MESSAGES = 256  # deliveries per transaction
BATCH_MAX_BYTES = 64 * 1024 * 1024  # stored octets per transaction (one big message may exceed)
BATCH_LINGER_SECONDS = 0.001  # longest wait for the senders of the last batch (module doc)
THREAD_THRESHOLD = 256 * 1024  # bytes: above this, parsing and sealing run in a worker thread
MAX_DN_CHARS = 512  # of the peer DN copied into Received

# RFC 3461 limits, also the widths of the dsn_requests columns.
MAX_ENVID = 100  # §4.4
MAX_ORCPT = 500  # §4.2
MAX_PATH = 320  # RFC 5321 §4.5.3.1: 64 + 1 + 255
NOTIFY_KEYWORDS = frozenset({"SUCCESS", "FAILURE", "DELAY", "NEVER"})

DELIVERED = Counter(
    "mssante_delivery_messages_total", "Messages stored by local delivery, one per mailbox"
)
COMMITS = Counter("mssante_delivery_commits_total", "Transactions committed by local delivery")
FAILURES = Counter(
    "mssante_delivery_failures_total", "Deliveries answered 451 after a storage failure"
)
BATCH_SIZE = Histogram(
    "mssante_delivery_batch_deliveries",
    "Deliveries written per transaction (group commit)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)


@dataclass(frozen=True)
class Recipient:
    address: str  # normalised, as accepted at RCPT
    notify: frozenset[str] | None  # RFC 3461 NOTIFY (SUCCESS/FAILURE/DELAY/NEVER) or None
    orcpt: str | None  # RFC 3461 ORCPT, e.g. "rfc822;x@y"


@dataclass(frozen=True)
class InboundEnvelope:
    mail_from: str  # "" for the null sender <>
    recipients: tuple[Recipient, ...]
    ret: str | None  # RFC 3461 RET: "FULL" | "HDRS" | None
    envid: str | None
    smtputf8: bool
    body: str  # "7BIT" | "8BITMIME"


@dataclass(frozen=True)
class SessionInfo:
    session_id: str
    peer_ip: str
    helo: str
    protocol: str  # RFC 3848 with-protocol: "ESMTPS", "ESMTPSA"…
    tls_version: str | None
    tls_cipher: str | None
    peer_dn: str | None  # verified peer certificate subject DN
    authenticated: bool = False  # an authenticated submission (named "authenticated" only)


@dataclass(frozen=True)
class DeliveryReport:
    message_ids: tuple[int, ...]  # one stored message row per recipient mailbox
    blob_id: int
    size: int
    dkim: str  # "pass" | "fail" | "none" | "temperror" | "permerror" …


@dataclass(frozen=True)
class DeliveryStats:
    """Counters since this `Delivery` was created."""

    commits: int  # transactions committed
    deliveries: int  # deliveries committed (one per `deliver` call)
    split_batches: int  # batch transactions that failed and were retried one by one
    failures: int  # deliveries answered 451 after a storage failure


# --- header fields we add ---------------------------------------------------------------------

_ATOM_CHARS = re.compile(r"[^A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.]")
_TLS_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_HELO = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
    r"|\[(?:IPv6:)?[0-9A-Fa-f:.]{2,45}\])$"
)


def _address_literal(ip: str) -> str | None:
    """RFC 5321 §4.1.3 address literal: `[192.0.2.1]`, `[IPv6:2001:db8::1]`."""
    try:
        parsed = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return f"[{parsed.ipv4_mapped}]"
        return f"[IPv6:{parsed.compressed}]"
    return f"[{parsed}]"


def _dn_in_comment(dn: str) -> str:
    """The DN, ASCII only, fit for a quoted string inside an RFC 5322 comment.

    Non-ASCII is written as RFC 4514 §2.4 hex pairs (`\\C3\\A9`), still a valid DN string;
    then every backslash, quote and parenthesis is escaped so that reading the comment back
    (RFC 5322 §3.2.2 quoted-pair) gives that DN string again.
    """
    ascii_dn = "".join(
        c if c.isascii() else "".join(f"\\{b:02X}" for b in c.encode("utf-8")) for c in dn
    )
    printable = "".join(c for c in ascii_dn if " " <= c <= "~")[:MAX_DN_CHARS]
    return re.sub(r'([\\()"])', r"\\\1", printable)


def received_field(
    info: SessionInfo, hostname: str, recipients: Sequence[str], when: datetime
) -> bytes:
    """The Received trace field we prepend (RFC 5321 §4.4, with RFC 3848 protocol names).

    No reverse DNS is looked up (it would cost a query per message and proves nothing in a
    space where peers are identified by certificate): the TCP-info is the address literal.
    `for` is given only for a single recipient: the stored copy is shared by all recipients
    and must not reveal the others (RFC 5321 §7.2).
    """
    lines = _received_lines(info, hostname)
    stamp = _received_stamp(when.astimezone(UTC).replace(microsecond=0))
    recipient = recipients[0] if len(recipients) == 1 else ""
    if recipient and not re.search(r"[\x00-\x20<>\x7f]", recipient) and len(recipient) <= MAX_PATH:
        text = "\r\n".join(lines) + f"\r\n\tfor <{recipient}>; {stamp}\r\n"
    else:
        text = "\r\n".join(lines) + f"; {stamp}\r\n"
    return text.encode("utf-8")


@functools.lru_cache(maxsize=1024)
def _received_lines(info: SessionInfo, hostname: str) -> tuple[str, ...]:
    """The lines of the Received field that depend only on the session: every message of a
    connection shares them, so they are composed once per connection."""
    literal = _address_literal(info.peer_ip) or "[unknown]"
    helo = info.helo.strip()
    from_domain = helo if helo and len(helo) <= 255 and _HELO.match(helo) else literal
    lines = [f"Received: from {from_domain} ({literal})"]
    comment: list[str] = []
    if info.tls_version:
        tls = "using " + _TLS_CHARS.sub("", info.tls_version)[:32]
        if info.tls_cipher:
            tls += " with cipher " + _TLS_CHARS.sub("", info.tls_cipher)[:64]
        comment.append(tls)
    if info.peer_dn:
        comment.append(f'peer DN "{_dn_in_comment(info.peer_dn)}"')
    if info.authenticated:
        # RFC 3848 ESMTPSA says it too; who logged in stays in the audit trail (RFC 6409 §8).
        comment.append("authenticated")
    if comment:
        lines.append("\t(" + "; ".join(comment) + ")")
    protocol = info.protocol if re.fullmatch(r"[A-Za-z0-9-]{1,32}", info.protocol) else "SMTP"
    session_id = _ATOM_CHARS.sub("", info.session_id)[:64] or "unknown"
    lines.append(f"\tby {hostname} with {protocol} id {session_id}")
    return tuple(lines)


@functools.lru_cache(maxsize=4)
def _received_stamp(when: datetime) -> str:
    """RFC 5322 §3.3 date-time, to the second (so the messages of one second share it)."""
    return format_datetime(when)


def authentication_results_field(hostname: str, verdict: DkimVerdict | None) -> bytes:
    """Our Authentication-Results field (RFC 8601 §2.2); `none` when nothing was checked."""
    if verdict is None:
        return f"Authentication-Results: {hostname}; none\r\n".encode("ascii")
    clauses = result_clauses(verdict)
    return (f"Authentication-Results: {hostname}; " + ";\r\n\t".join(clauses) + "\r\n").encode(
        "ascii"
    )


def _authserv_id(value: str) -> str:
    """The authserv-id that starts an Authentication-Results value (RFC 8601 §2.2)."""
    text = re.sub(r"\([^()]*\)", " ", value).strip()
    head = re.split(r"[;\s]", text, maxsplit=1)[0]
    return head.strip('"').lower()


def assemble(prefix: bytes, data: bytes, header: mime.Header, hostname: str) -> bytes:
    """The message as stored: our fields on top, then the message as received, except:

    - Authentication-Results fields claiming to come from us are removed: RFC 8601 §5 asks
      the border MTA to, so that a peer cannot forge our verdict;
    - a header section that does not end with a blank line gets one where the body starts,
      so that every reader splits header and body where the precomputed structure does.
    """
    pieces = [prefix]
    pos = 0
    ours = hostname.lower()
    for field in header.fields:
        if field.name == "authentication-results" and _authserv_id(field.value) == ours:
            pieces.append(data[pos : field.start])
            pos = field.end
    if header.separator:
        pieces.append(data[pos:])
    else:
        cut = max(header.body_start, pos)
        pieces.append(data[pos:cut])
        if cut > 0 and data[cut - 1] != 0x0A:
            pieces.append(b"\r\n")  # the last field had no line break (end of data)
        pieces.append(b"\r\n")
        pieces.append(data[cut:])
    return b"".join(pieces)


def _assemble_and_seal(
    cipher: BlobCipher, prefix: bytes, data: bytes, header: mime.Header, hostname: str
) -> tuple[SealedBlob, int, SealedRecord]:
    """The CPU part of preparing a delivery; pure, safe to run in a worker thread."""
    final = assemble(prefix, data, header, hostname)
    record = metarecord.build(metarecord.parse(final), final)
    sealed = cipher.seal(final)
    meta = blobmeta.seal_meta(cipher, sealed.digest, record, final)
    return sealed, len(final), meta


# --- the committer ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Prepared:
    envelope: InboundEnvelope
    session: SessionInfo
    targets: tuple[tuple[Recipient, DeliveryTarget], ...]  # one per mailbox
    sent_folder: int | None  # submission: the sender's Sent folder, for a \Seen copy
    blob: SealedBlob
    size: int
    meta: SealedRecord
    dkim: str
    received_at: datetime


async def _store_batch(session: AsyncSession, items: Sequence[_Prepared]) -> list[DeliveryReport]:
    """Write prepared deliveries in the caller's transaction; reports in the same order."""
    ids = await blobs.put_sealed_with_meta(session, [(p.blob, p.size, p.meta) for p in items])
    new: list[messages.NewMessage] = []
    for p in items:
        new += [
            messages.NewMessage(
                folder_id=target.inbox_id or 0,
                blob_id=ids[p.blob.digest],
                size=p.size,
                internal_date=p.received_at,
            )
            for _, target in p.targets
        ]
        if p.sent_folder is not None:
            new.append(
                messages.NewMessage(
                    folder_id=p.sent_folder,
                    blob_id=ids[p.blob.digest],
                    size=p.size,
                    internal_date=p.received_at,
                    flags=("\\Seen",),
                )
            )
    stored = await messages.append_messages(session, new)
    # IDLE sessions of every process learn of the new messages at commit (store/notify.py).
    await folders_changed(session, {m.folder_id for m in stored})
    reports: list[DeliveryReport] = []
    requests: list[dsn.NewDsnRequest] = []
    traces: list[audit.Trace] = []
    position = 0
    for p in items:
        blob_id = ids[p.blob.digest]
        envelope = p.envelope
        mine = stored[position : position + len(p.targets)]
        position += len(p.targets) + (p.sent_folder is not None)
        for (recipient, target), message in zip(p.targets, mine, strict=True):
            if (
                recipient.notify is not None
                or recipient.orcpt is not None
                or envelope.ret is not None
                or envelope.envid is not None
            ):
                requests.append(
                    dsn.NewDsnRequest(
                        message_id=message.id,
                        blob_id=blob_id,
                        envelope_from=envelope.mail_from,
                        recipient=target.address,
                        notify=recipient.notify,
                        orcpt=recipient.orcpt,
                        ret=DsnRet(envelope.ret) if envelope.ret is not None else None,
                        envid=envelope.envid,
                    )
                )
            traces.append(
                audit.Trace(
                    event="delivery.ok",
                    outcome=Outcome.OK,
                    actor=envelope.mail_from or "<>",
                    peer_ip=p.session.peer_ip,
                    peer_dn=p.session.peer_dn,
                    target=target.address,
                    details={
                        "session": p.session.session_id,
                        "message_id": message.id,
                        "uid": message.uid,
                        "blob_id": blob_id,
                        "size": p.size,
                        "dkim": p.dkim,
                        "mailbox_type": target.type.value,
                        "recipients": len(envelope.recipients),
                    },
                )
            )
        reports.append(DeliveryReport(tuple(m.id for m in mine), blob_id, p.size, p.dkim))
    await dsn.record_requests(session, requests)
    await audit.record_many(session, traces)
    return reports


class Delivery:
    """Local delivery into the store, with one group-commit task per process."""

    def __init__(
        self, store: Store, settings: Settings, *, cache_ttl: float = CACHE_TTL_SECONDS
    ) -> None:
        """`cache_ttl`: seconds a successful recipient lookup is reused (see the module doc)."""
        self._store = store
        self._cache_ttl = cache_ttl
        self._settings = settings
        self._hostname = settings.operator.hostname
        self._dkim = DkimVerifier(settings.dkim) if settings.dkim.verify else None
        self._cache: dict[str, tuple[float, DeliveryTarget]] = {}
        self._committer: GroupCommitter[_Prepared, DeliveryReport] = GroupCommitter(
            store,
            _store_batch,
            name="delivery-committer",
            size=lambda p: p.size,
            failure=temporary_failure,
            committed=self._account,
            failed=FAILURES.inc,
            max_items=BATCH_MAX_MESSAGES,
            max_bytes=BATCH_MAX_BYTES,
            linger_seconds=BATCH_LINGER_SECONDS,
        )

    @property
    def stats(self) -> DeliveryStats:
        s = self._committer.stats
        return DeliveryStats(s.commits, s.items, s.split, s.failures)

    async def start(self) -> None:
        """Start the committer task (`deliver` also starts it if needed)."""
        await self._committer.start()

    async def close(self) -> None:
        """Refuse new deliveries, commit those already queued, then stop."""
        await self._committer.close()

    # --- RCPT ---------------------------------------------------------------------------------

    async def check_recipient(self, address: str) -> None:
        """At RCPT: MailError unless `address` is an active mailbox we host with room.

        relay_denied (550 5.7.1) if the domain is not hosted; unknown_user (550 5.1.1);
        mailbox_disabled (550 5.2.1) for disabled/closed/pending mailboxes; over_quota
        (552 5.2.2) when already at or over quota; temporary_failure (451 4.3.0) when the
        database does not answer.
        """
        target = await self._target(address)
        if target.state is not MailboxState.ACTIVE:
            raise mailbox_disabled(target.address)
        limit = self._quota(target)
        if limit and target.used_bytes >= limit:
            raise over_quota(target.address)

    def _quota(self, target: DeliveryTarget) -> int:
        """The mailbox's quota in octets; 0 means none."""
        if target.quota_bytes is not None:
            return target.quota_bytes
        return self._settings.storage.default_quota_bytes

    async def _target(self, address: str) -> DeliveryTarget:
        try:
            normalized = mailboxes.normalize_address(address)
        except ValueError:
            raise unknown_user(address[:MAX_PATH]) from None
        now = time.monotonic()
        cached = self._cache.get(normalized)
        if cached is not None and cached[0] > now:
            return cached[1]
        domain = normalized.rpartition("@")[2]
        try:
            async with self._store.read_session() as session:
                target = await mailboxes.delivery_target(session, normalized)
                hosted = target is not None or await domains.is_hosted(session, domain)
        except Exception:
            log.warning("recipient lookup failed: database unavailable", exc_info=True)
            raise temporary_failure() from None
        if target is None:
            raise unknown_user(normalized) if hosted else relay_denied(normalized)
        if len(self._cache) >= CACHE_SIZE:
            self._cache.pop(next(iter(self._cache)))
        self._cache[normalized] = (now + self._cache_ttl, target)
        return target

    # --- DATA ---------------------------------------------------------------------------------

    async def deliver(
        self,
        envelope: InboundEnvelope,
        data: bytes,
        session: SessionInfo,
        *,
        traced: bool = False,
        sent_folder: int | None = None,
    ) -> DeliveryReport:
        """`data` is the message as received (CRLF lines, dot-unstuffed). Returns only once
        the delivery is committed durably (then the caller sends 250). MailError(451 4.3.0)
        on a database failure (nothing half-stored), MailError for anything else refused.

        Submission passes `traced` (its message already carries our Received field, and
        there is no DKIM verdict to give on our own user's message) and `sent_folder`, where
        a copy marked \\Seen is stored in the same transaction; its envelope may then have
        no local recipient at all."""
        if self._committer.closing:
            raise temporary_failure("shutting_down")
        _check_envelope(envelope, allow_empty=sent_folder is not None)
        limit = self._settings.storage.max_message_size
        if len(data) > limit:
            raise too_big(limit)
        targets: list[tuple[Recipient, DeliveryTarget]] = []
        seen: set[int] = set()
        for recipient in envelope.recipients:
            # State and quota were judged at RCPT: what was accepted there is delivered.
            target = await self._target(recipient.address)
            if target.inbox_id is None:
                log.error("mailbox without INBOX", extra={"mailbox_id": target.mailbox_id})
                raise temporary_failure("no_inbox")
            if target.mailbox_id not in seen:
                seen.add(target.mailbox_id)
                targets.append((recipient, target))
        prepared = await self._prepare(
            envelope, data, session, tuple(targets), traced=traced, sent_folder=sent_folder
        )
        if self._committer.closing:  # close() was called while this one was being prepared
            raise temporary_failure("shutting_down")
        return await self._committer.submit(prepared)

    async def _prepare(
        self,
        envelope: InboundEnvelope,
        data: bytes,
        info: SessionInfo,
        targets: tuple[tuple[Recipient, DeliveryTarget], ...],
        *,
        traced: bool,
        sent_folder: int | None,
    ) -> _Prepared:
        header = mime.split_header(data)
        verdict: DkimVerdict | None = None
        if self._dkim is not None and not traced:
            signatures = [f.value for f in header.fields if f.name == "dkim-signature"]
            verdict = await self._dkim.verify(data, signatures) if signatures else NO_SIGNATURE
        received_at = datetime.now(UTC)
        prefix = (
            b""
            if traced
            else authentication_results_field(self._hostname, verdict)
            + received_field(
                info, self._hostname, [r.address for r in envelope.recipients], received_at
            )
        )
        work = functools.partial(
            _assemble_and_seal, self._store.cipher, prefix, data, header, self._hostname
        )
        if len(data) > THREAD_THRESHOLD:
            sealed, size, meta = await asyncio.to_thread(work)
        else:
            sealed, size, meta = work()
        return _Prepared(
            envelope=envelope,
            session=info,
            targets=targets,
            sent_folder=sent_folder,
            blob=sealed,
            size=size,
            meta=meta,
            dkim=verdict.summary if verdict is not None else "none",
            received_at=received_at,
        )

    def _account(self, items: Sequence[_Prepared], reports: Sequence[DeliveryReport]) -> None:
        """After a commit: metrics, and cached quota counters kept close to the truth."""
        COMMITS.inc()
        BATCH_SIZE.observe(len(items))
        for p in items:
            for _, target in p.targets:
                DELIVERED.inc()
                cached = self._cache.get(target.address)
                if cached is not None:
                    expires, entry = cached
                    self._cache[target.address] = (
                        expires,
                        replace(entry, used_bytes=entry.used_bytes + p.size),
                    )


def _check_envelope(envelope: InboundEnvelope, *, allow_empty: bool = False) -> None:
    """Refuse what the listener should already have refused; the columns have these widths."""
    if not envelope.recipients and not allow_empty:
        raise MailError(554, "5.5.1", "No valid recipients", reason="no_recipients")
    bad = MailError(501, "5.5.4", "Invalid envelope parameters", reason="bad_envelope")
    if len(envelope.mail_from) > MAX_PATH or re.search(r"[\x00-\x1f]", envelope.mail_from):
        raise bad
    if envelope.ret is not None and envelope.ret not in ("FULL", "HDRS"):
        raise bad
    if envelope.envid is not None and len(envelope.envid) > MAX_ENVID:
        raise bad
    for recipient in envelope.recipients:
        if recipient.orcpt is not None and len(recipient.orcpt) > MAX_ORCPT:
            raise bad
        if recipient.notify is not None and not recipient.notify <= NOTIFY_KEYWORDS:
            raise bad
