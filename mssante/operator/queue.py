"""The durable outbound queue: messages for other operators, one state per recipient (issue 5 §5).

The store side of outbound delivery. Submission calls `enqueue` before it answers 250; the
outbound worker loops on `claim` → deliver (`operator/outbound.py`) → `record`; DSNs owed are
read with `dsn_due` and acknowledged with `dsn_sent`; `mssante queue …` uses the rest. Every
operation is one transaction.

States of a recipient (`QueueState`):

    queued ──claim──▶ in_flight ──record──▶ delivered | failed | deferred | expired
      ▲                  │                                           │
      └── lease passed ──┘ (recover_in_flight)      deferred ──claim─┘ when next_attempt_at

- `claim` takes due recipients (queued or deferred, `next_attempt_at` reached), marks them
  in_flight under a random claim token and a lease, and hands them out grouped by destination
  domain, then by message (one SMTP transaction per message and domain). On PostgreSQL the
  rows are picked with `SELECT … FOR UPDATE SKIP LOCKED`, so several worker processes never
  take the same recipient; on SQLite the claim's transaction holds the database's write lock.
- `record` applies a worker's results, only to recipients still held under its token (a
  result that comes after the lease passed and the recipient was taken again is ignored and
  reported as stale): `2xx` delivered, `5xx` failed at once, `4xx` or no answer deferred to
  the next time of the `RetrySchedule`, or expired when that would come after the expiry.
  Each result is also an attempt row (the history) and, for a final state, an audit trace.
- `recover_in_flight` gives back recipients whose lease has passed: their worker died before
  reporting. They are tried again, so delivery is at-least-once; the Message-ID recorded with
  the message makes a duplicate visible.
- The sealed content (a blob, like every stored message body) is released once every
  recipient of the message is final and no DSN is owed any more: the message forgets it, and
  the blob is deleted if nothing else (a Sent copy, a DSN request) references it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Select,
    bindparam,
    delete,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from mssante.operator import dsn as dsn_rules
from mssante.operator.retry import RetrySchedule
from mssante.operator.store import audit, blobs
from mssante.operator.store.crypto import SealedBlob
from mssante.operator.store.db import Store
from mssante.operator.store.errors import NotFound
from mssante.operator.store.mailboxes import normalize_address
from mssante.operator.store.schema import (
    Base,
    BlobRow,
    DsnRequestRow,
    MailboxRow,
    MessageRow,
    Outcome,
    QueueAttemptRow,
    QueueDsn,
    QueueMessageRow,
    QueueRecipientRow,
    QueueState,
)

log = logging.getLogger("mssante.queue")

LEASE = timedelta(minutes=10)  # longer than any delivery of one claimed batch may take
THREAD_THRESHOLD = 256 * 1024  # bytes: above this, sealing runs in a worker thread
STORE_RETRIES = 3  # of an enqueue whose transaction hit a unique-digest race
MAX_PATH = 320  # RFC 5321 §4.5.3.1: 64 + 1 + 255
MAX_ENVID = 100  # RFC 3461 §4.4
MAX_ORCPT = 500  # RFC 3461 §4.2
MAX_MESSAGE_ID = 998  # RFC 5322 §2.1.1
MAX_TEXT = 2000  # of a remote reply kept per attempt
MAX_HOST = 253
NOTIFY_KEYWORDS = frozenset({"SUCCESS", "FAILURE", "DELAY", "NEVER"})
FINAL_STATES = frozenset({QueueState.DELIVERED, QueueState.FAILED, QueueState.EXPIRED})
DUE_STATES = (QueueState.QUEUED.value, QueueState.DEFERRED.value)
_FINAL = tuple(s.value for s in FINAL_STATES)
_IN_CHUNK = 500
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")  # RFC 3463 §2

_RECIPIENTS = Base.metadata.tables["queue_recipients"]
_ATTEMPTS = Base.metadata.tables["queue_attempts"]
_MESSAGES = Base.metadata.tables["queue_messages"]
# Built once (compiled once per process); ids come back in the order of the rows given.
_INSERT_MESSAGES = _MESSAGES.insert().returning(_MESSAGES.c.id, sort_by_parameter_order=True)


class QueueError(ValueError):
    """Something handed to the queue that it cannot take; the message says what."""


# --- values in ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutboundRecipient:
    address: str
    notify: frozenset[str] | None = None  # RFC 3461 §4.1; None: not given
    orcpt: str | None = None  # RFC 3461 §4.2, as given: "rfc822;x@y"


@dataclass(frozen=True)
class OutboundEnvelope:
    mail_from: str  # "" for the null reverse-path <> (a DSN we relay)
    recipients: tuple[OutboundRecipient, ...]
    ret: str | None = None  # RFC 3461 §4.3: "FULL" | "HDRS" | None
    envid: str | None = None  # RFC 3461 §4.4
    body: str | None = None  # RFC 6152: "7BIT" | "8BITMIME" | None
    smtputf8: bool = False  # RFC 6531
    submitter_id: int | None = None  # the authenticated mailbox that submitted it
    message_id: str | None = None  # the Message-ID field's value, to make duplicates visible


class AttemptOutcome(StrEnum):
    DELIVERED = "delivered"  # the peer answered 2xx to the data
    DEFERRED = "deferred"  # 4xx, no answer, TLS or whitelist refusal: try again later
    FAILED = "failed"  # 5xx: never again


@dataclass(frozen=True)
class AttemptResult:
    """What happened to one claimed recipient."""

    recipient_id: int
    outcome: AttemptOutcome
    code: int | None = None  # the SMTP reply code, None when there was no reply
    enhanced: str | None = None  # RFC 3463 x.y.z
    text: str | None = None  # the reply text or our reason ("peer DN not whitelisted")
    host: str | None = None  # the remote MTA tried
    # The peer advertised DSN and took the parameters (RFC 3461 §4): success DSNs are then
    # its job; otherwise a NOTIFY=SUCCESS recipient is owed a "relayed" DSN by us.
    peer_took_dsn: bool = False


@dataclass(frozen=True)
class PreparedMessage:
    """A message checked and sealed by `Queue.prepare`, ready for `Queue.add_many`."""

    envelope: OutboundEnvelope
    sealed: SealedBlob
    size: int
    recipients: tuple[tuple[OutboundRecipient, str, str], ...]  # (given, address, domain)


# --- values out --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimedRecipient:
    id: int
    address: str
    notify: frozenset[str] | None
    orcpt: str | None
    attempts: int  # attempts before this one


@dataclass(frozen=True)
class ClaimedMessage:
    id: int
    envelope_from: str
    size: int
    ret: str | None
    envid: str | None
    body: str | None
    smtputf8: bool
    message_id: str | None
    created_at: datetime
    recipients: tuple[ClaimedRecipient, ...]


@dataclass(frozen=True)
class DomainBatch:
    """Recipients of one destination domain: one connection, one transaction per message."""

    domain: str
    messages: tuple[ClaimedMessage, ...]


@dataclass(frozen=True)
class Claim:
    token: str
    lease_until: datetime
    batches: tuple[DomainBatch, ...]

    @property
    def recipient_ids(self) -> tuple[int, ...]:
        return tuple(r.id for b in self.batches for m in b.messages for r in m.recipients)


@dataclass(frozen=True)
class RecordReport:
    applied: tuple[int, ...]  # recipient ids whose result was recorded
    stale: tuple[int, ...]  # not held under this token any more: ignored
    states: dict[int, QueueState] = field(default_factory=dict)  # new state per applied id


@dataclass(frozen=True)
class RecipientView:
    id: int
    queue_id: int
    address: str
    domain: str
    state: QueueState
    attempts: int
    next_attempt_at: datetime | None
    last_code: int | None
    last_enhanced: str | None
    last_text: str | None
    remote_mta: str | None
    orcpt: str | None
    notify: str | None
    dsn_owed: str | None
    delay_dsn_sent: bool
    lease_until: datetime | None
    updated_at: datetime
    envelope_from: str
    created_at: datetime
    size: int
    message_id: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "queue_id": self.queue_id,
            "address": self.address,
            "domain": self.domain,
            "state": self.state.value,
            "attempts": self.attempts,
            "next_attempt_at": _iso(self.next_attempt_at),
            "last_reply": _reply(self.last_code, self.last_enhanced, self.last_text),
            "remote_mta": self.remote_mta,
            "orcpt": self.orcpt,
            "notify": self.notify,
            "dsn_owed": self.dsn_owed,
            "delay_dsn_sent": self.delay_dsn_sent,
            "lease_until": _iso(self.lease_until),
            "updated_at": _iso(self.updated_at),
            "envelope_from": self.envelope_from,
            "created_at": _iso(self.created_at),
            "size": self.size,
            "message_id": self.message_id,
        }


@dataclass(frozen=True)
class AttemptView:
    recipient_id: int
    at: datetime
    host: str | None
    code: int | None
    enhanced: str | None
    text: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "recipient_id": self.recipient_id,
            "at": _iso(self.at),
            "host": self.host,
            "reply": _reply(self.code, self.enhanced, self.text),
        }


@dataclass(frozen=True)
class MessageView:
    id: int
    envelope_from: str
    submitter: str | None
    message_id: str | None
    size: int
    ret: str | None
    envid: str | None
    body: str | None
    smtputf8: bool
    created_at: datetime
    content_held: bool  # False once released
    recipients: tuple[RecipientView, ...]
    attempts: tuple[AttemptView, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "envelope_from": self.envelope_from,
            "submitter": self.submitter,
            "message_id": self.message_id,
            "size": self.size,
            "ret": self.ret,
            "envid": self.envid,
            "body": self.body,
            "smtputf8": self.smtputf8,
            "created_at": _iso(self.created_at),
            "content_held": self.content_held,
            "recipients": [
                {k: v for k, v in r.as_json().items() if k not in _MESSAGE_KEYS}
                for r in self.recipients
            ],
            "attempts": [a.as_json() for a in self.attempts],
        }


_MESSAGE_KEYS = frozenset({"queue_id", "envelope_from", "created_at", "size", "message_id"})


@dataclass(frozen=True)
class OwedDsn:
    """Recipients of one message owed one kind of DSN (`operator/dsn.py` builds it)."""

    queue_id: int
    action: dsn_rules.Action
    envelope_from: str
    envid: str | None
    ret: str | None
    created_at: datetime
    recipients: tuple[RecipientView, ...]


@dataclass(frozen=True)
class Selection:
    """Which recipients an administrative command acts on; fields combine with AND."""

    queue_ids: tuple[int, ...] = ()
    state: QueueState | None = None
    recipient: str | None = None  # exact address, any case
    domain: str | None = None  # destination domain, any case
    everything: bool = False  # needed when nothing else is given

    @property
    def empty(self) -> bool:
        return not (self.queue_ids or self.state or self.recipient or self.domain)

    def describe(self) -> str:
        parts = []
        if self.queue_ids:
            parts.append("id " + ",".join(str(i) for i in self.queue_ids[:20]))
        if self.state is not None:
            parts.append(f"state {self.state.value}")
        if self.recipient:
            parts.append(f"recipient {self.recipient.lower()}")
        if self.domain:
            parts.append(f"domain {self.domain.lower()}")
        return ", ".join(parts) or "all"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _reply(code: int | None, enhanced: str | None, text: str | None) -> str | None:
    if code is None and enhanced is None and text is None:
        return None
    return " ".join(str(p) for p in (code, enhanced, text) if p is not None)


def _clip(value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    cleaned = _CONTROL.sub(" ", value)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def _notify_text(notify: frozenset[str] | None) -> str | None:
    return ",".join(sorted(notify)) if notify is not None else None


def _notify_set(text: str | None) -> frozenset[str] | None:
    if text is None:
        return None
    return frozenset(n for n in text.split(",") if n)


# --- checks ------------------------------------------------------------------------------------


def _check(envelope: OutboundEnvelope) -> list[tuple[OutboundRecipient, str, str]]:
    """The recipients as (given, normalised address, domain), duplicates removed; QueueError
    for anything the columns or the RFCs do not allow (the listener refused it already)."""
    if len(envelope.mail_from) > MAX_PATH or _CONTROL.search(envelope.mail_from):
        raise QueueError("envelope sender: too long or with control characters")
    if envelope.ret is not None and envelope.ret not in ("FULL", "HDRS"):
        raise QueueError(f"RET={envelope.ret!r}: expected FULL or HDRS")
    if envelope.envid is not None and (
        len(envelope.envid) > MAX_ENVID or _CONTROL.search(envelope.envid)
    ):
        raise QueueError("ENVID: longer than 100 characters or with control characters")
    if envelope.body is not None and envelope.body not in ("7BIT", "8BITMIME"):
        raise QueueError(f"BODY={envelope.body!r}: expected 7BIT or 8BITMIME")
    if envelope.message_id is not None and len(envelope.message_id) > MAX_MESSAGE_ID:
        raise QueueError("Message-ID: longer than a header line may be")
    if not envelope.recipients:
        raise QueueError("no recipient")
    seen: set[str] = set()
    out: list[tuple[OutboundRecipient, str, str]] = []
    for recipient in envelope.recipients:
        try:
            address = normalize_address(recipient.address)
        except ValueError as exc:
            raise QueueError(str(exc)) from None
        if len(address) > MAX_PATH or _CONTROL.search(address):
            raise QueueError(f"recipient {address!r}: too long or with control characters")
        if recipient.orcpt is not None and (
            len(recipient.orcpt) > MAX_ORCPT or _CONTROL.search(recipient.orcpt)
        ):
            raise QueueError(f"ORCPT of {address}: too long or with control characters")
        if recipient.notify is not None and (
            not recipient.notify
            or not recipient.notify <= NOTIFY_KEYWORDS
            or ("NEVER" in recipient.notify and len(recipient.notify) > 1)  # RFC 3461 §4.1
        ):
            raise QueueError(f"NOTIFY of {address}: {sorted(recipient.notify)}")
        if address in seen:
            continue
        seen.add(address)
        out.append((recipient, address, address.rpartition("@")[2]))
    return out


# --- the queue ---------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


class Queue:
    """The outbound queue over a store. `clock` and `draw` are injected so that tests move
    time instead of waiting; `schedule` is the retry schedule (data, issue 5 §5)."""

    def __init__(
        self,
        store: Store,
        schedule: RetrySchedule | None = None,
        *,
        clock: Callable[[], datetime] = _now,
        draw: Callable[[], float] = random.random,
        lease: timedelta = LEASE,
    ) -> None:
        if lease <= timedelta(0):
            raise ValueError("the lease must be positive")
        self._store = store
        self.schedule = schedule or RetrySchedule()
        self._clock = clock
        self._draw = draw
        self.lease = lease

    def now(self) -> datetime:
        value = self._clock()
        if value.tzinfo is None:
            raise ValueError("the queue's clock must give timezone-aware datetimes")
        return value

    # -- enqueue --------------------------------------------------------------------------------

    async def prepare(self, envelope: OutboundEnvelope, content: bytes) -> PreparedMessage:
        """Check the envelope and seal the content with the storage key, outside any
        transaction. QueueError for an envelope that cannot be queued."""
        checked = tuple(_check(envelope))
        cipher = self._store.cipher
        if len(content) > THREAD_THRESHOLD:
            sealed = await asyncio.to_thread(cipher.seal, content)
        else:
            sealed = cipher.seal(content)
        return PreparedMessage(envelope, sealed, len(content), checked)

    async def enqueue(self, envelope: OutboundEnvelope, content: bytes) -> int:
        """Queue `content` (the message as it goes out: signed, with our trace fields) for
        every recipient; returns the queue id. Returns only once committed: the caller may
        then answer 250. QueueError for an envelope that cannot be queued."""
        (queue_id,) = await self.enqueue_many([(envelope, content)])
        return queue_id

    async def enqueue_many(self, items: Sequence[tuple[OutboundEnvelope, bytes]]) -> list[int]:
        """`enqueue` for several messages in one transaction (all or none): for a submission
        committer grouping what arrived meanwhile, as local delivery does (one fsync for
        many 250s). Queue ids in the order given."""
        prepared = [await self.prepare(envelope, content) for envelope, content in items]
        for attempt in range(STORE_RETRIES):
            try:
                async with self._store.session() as session:
                    ids = await self.add_many(session, prepared)
                    await session.commit()
                return ids
            except IntegrityError:
                # PostgreSQL: another transaction stored the same content between our lookup
                # of its digest and our insert; the next try finds it. Anything else (an
                # unknown submitter) fails again and is raised.
                if attempt == STORE_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    async def add_many(
        self, session: AsyncSession, prepared: Sequence[PreparedMessage]
    ) -> list[int]:
        """Write prepared messages in the caller's transaction (submission storing the Sent
        copy and the queue entries together); the caller commits. Queue ids in order."""
        if not prepared:
            return []
        now = self.now()
        stored = await blobs.put_sealed_blobs(session, [(p.sealed, p.size) for p in prepared])
        ids = list(
            (
                await session.execute(
                    _INSERT_MESSAGES,
                    [
                        {
                            "blob_id": stored.ids[p.sealed.digest],
                            "size": p.size,
                            "envelope_from": p.envelope.mail_from,
                            "submitter_id": p.envelope.submitter_id,
                            "message_id": p.envelope.message_id,
                            "ret": p.envelope.ret,
                            "envid": p.envelope.envid,
                            "body": p.envelope.body,
                            "smtputf8": p.envelope.smtputf8,
                            "created_at": now,
                        }
                        for p in prepared
                    ],
                )
            ).scalars()
        )
        await session.execute(
            _RECIPIENTS.insert(),
            [
                {
                    "queue_message_id": queue_id,
                    "address": address,
                    "domain": domain,
                    "orcpt": given.orcpt,
                    "notify": _notify_text(given.notify),
                    "state": QueueState.QUEUED.value,
                    "attempts": 0,
                    "next_attempt_at": now,
                    "delay_dsn_sent": False,
                    "updated_at": now,
                }
                for queue_id, p in zip(ids, prepared, strict=True)
                for given, address, domain in p.recipients
            ],
        )
        await audit.record_many(
            session,
            [
                audit.Trace(
                    event="queue.enqueue",
                    outcome=Outcome.OK,
                    actor=p.envelope.mail_from or "<>",
                    target=",".join(sorted({domain for _, _, domain in p.recipients})),
                    details={
                        "queue_id": queue_id,
                        "recipients": len(p.recipients),
                        "size": p.size,
                        "message_id": p.envelope.message_id,
                    },
                )
                for queue_id, p in zip(ids, prepared, strict=True)
            ],
        )
        return ids

    # -- the worker's side ----------------------------------------------------------------------

    async def claim(self, limit: int = 100) -> Claim:
        """Take up to `limit` due recipients for delivery; see the module docstring."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        now = self.now()
        token = secrets.token_hex(16)
        lease_until = now + self.lease
        async with self._store.session() as session:
            due = (
                select(QueueRecipientRow.id)
                .where(
                    QueueRecipientRow.state.in_(DUE_STATES),
                    QueueRecipientRow.next_attempt_at <= now,
                )
                .order_by(QueueRecipientRow.next_attempt_at, QueueRecipientRow.id)
                .limit(limit)
                # PostgreSQL: rows another worker is claiming are skipped, not waited for;
                # SQLite renders no FOR UPDATE: its write lock already serialises claims.
                .with_for_update(skip_locked=True)
            )
            ids = list((await session.execute(due)).scalars())
            if not ids:
                await session.commit()
                return Claim(token, lease_until, ())
            await session.execute(
                update(QueueRecipientRow)
                .where(QueueRecipientRow.id.in_(ids))
                .values(
                    state=QueueState.IN_FLIGHT.value,
                    claim_token=token,
                    lease_until=lease_until,
                    updated_at=now,
                )
                .execution_options(synchronize_session=False)
            )
            rows = (
                await session.execute(
                    select(QueueRecipientRow, QueueMessageRow)
                    .join(QueueMessageRow, QueueMessageRow.id == QueueRecipientRow.queue_message_id)
                    .where(QueueRecipientRow.claim_token == token)
                    .order_by(QueueRecipientRow.domain, QueueMessageRow.id, QueueRecipientRow.id)
                )
            ).all()
            await session.commit()
        return Claim(token, lease_until, _group(rows))

    async def content(self, queue_id: int) -> bytes:
        """The message to send, decrypted; NotFound once released or deleted."""
        async with self._store.read_session() as session:
            blob_id = await session.scalar(
                select(QueueMessageRow.blob_id).where(QueueMessageRow.id == queue_id)
            )
            if blob_id is None:
                raise NotFound(f"queued message {queue_id}: no content (released or deleted)")
            return await blobs.get_blob(session, self._store.cipher, blob_id)

    async def contents(self, queue_ids: Sequence[int]) -> dict[int, bytes]:
        """`content` of several messages in one read; released or deleted ones are left out."""
        out: dict[int, bytes] = {}
        async with self._store.read_session() as session:
            for i in range(0, len(queue_ids), _IN_CHUNK):
                rows = await session.execute(
                    select(QueueMessageRow.id, QueueMessageRow.blob_id).where(
                        QueueMessageRow.id.in_(queue_ids[i : i + _IN_CHUNK]),
                        QueueMessageRow.blob_id.is_not(None),
                    )
                )
                for queue_id, blob_id in rows.all():
                    out[queue_id] = await blobs.get_blob(session, self._store.cipher, blob_id)
        return out

    async def record(self, token: str, results: Sequence[AttemptResult]) -> RecordReport:
        """Apply the results of the recipients claimed under `token`, in one transaction."""
        now = self.now()
        by_id = {r.recipient_id: r for r in results}
        async with self._store.session() as session:
            rows = (
                await session.execute(
                    select(
                        QueueRecipientRow.id,
                        QueueRecipientRow.queue_message_id,
                        QueueRecipientRow.address,
                        QueueRecipientRow.attempts,
                        QueueRecipientRow.notify,
                        QueueRecipientRow.delay_dsn_sent,
                        QueueRecipientRow.dsn_owed,
                        QueueMessageRow.created_at,
                        QueueMessageRow.envelope_from,
                    )
                    .join(QueueMessageRow, QueueMessageRow.id == QueueRecipientRow.queue_message_id)
                    .where(
                        QueueRecipientRow.id.in_(list(by_id)),
                        QueueRecipientRow.claim_token == token,
                        QueueRecipientRow.state == QueueState.IN_FLIGHT.value,
                    )
                    .with_for_update(of=QueueRecipientRow)
                )
            ).all()
            updates: list[dict[str, object]] = []
            attempts: list[dict[str, object]] = []
            traces: list[audit.Trace] = []
            states: dict[int, QueueState] = {}
            for (
                rid,
                queue_id,
                address,
                tried,
                notify_text,
                delay_sent,
                owed,
                created_at,
                sender,
            ) in rows:
                result = by_id[rid]
                notify = _notify_set(notify_text)
                state, next_at, owed, delay_sent = self._decide(
                    result, tried + 1, created_at, now, sender, notify, owed, delay_sent
                )
                states[rid] = state
                text = _clip(result.text, MAX_TEXT)
                enhanced = (
                    result.enhanced
                    if result.enhanced and _ENHANCED.match(result.enhanced)
                    else None
                )
                host = _clip(result.host, MAX_HOST)
                updates.append(
                    {
                        "b_id": rid,
                        "state": state.value,
                        "attempts": tried + 1,
                        "next_attempt_at": next_at,
                        "last_code": result.code,
                        "last_enhanced": enhanced,
                        "last_text": text,
                        "remote_mta": host,
                        "delay_dsn_sent": delay_sent,
                        "dsn_owed": owed.value if owed is not None else None,
                        "updated_at": now,
                    }
                )
                attempts.append(
                    {
                        "recipient_id": rid,
                        "at": now,
                        "host": host,
                        "code": result.code,
                        "enhanced": enhanced,
                        "text": text,
                    }
                )
                if state in FINAL_STATES:
                    traces.append(
                        audit.Trace(
                            event="queue.delivery",
                            outcome=Outcome.OK if state is QueueState.DELIVERED else Outcome.ERROR,
                            actor=sender or "<>",
                            target=address,
                            details={
                                "queue_id": queue_id,
                                "state": state.value,
                                "attempts": tried + 1,
                                "remote_mta": host,
                                "reply": _reply(result.code, enhanced, text),
                            },
                        )
                    )
            if updates:
                await session.execute(
                    update(_RECIPIENTS)
                    .where(_RECIPIENTS.c.id == bindparam("b_id"))
                    .values(
                        state=bindparam("state"),
                        attempts=bindparam("attempts"),
                        next_attempt_at=bindparam("next_attempt_at"),
                        claim_token=None,
                        lease_until=None,
                        last_code=bindparam("last_code"),
                        last_enhanced=bindparam("last_enhanced"),
                        last_text=bindparam("last_text"),
                        remote_mta=bindparam("remote_mta"),
                        delay_dsn_sent=bindparam("delay_dsn_sent"),
                        dsn_owed=bindparam("dsn_owed"),
                        updated_at=bindparam("updated_at"),
                    ),
                    updates,
                )
                await session.execute(_ATTEMPTS.insert(), attempts)
                await audit.record_many(session, traces)
                await _release(session, {row[1] for row in rows})
            await session.commit()
        applied = tuple(row[0] for row in rows)
        stale = tuple(rid for rid in by_id if rid not in states)
        if stale:
            log.warning("stale queue results ignored", extra={"recipients": list(stale)})
        return RecordReport(applied, stale, states)

    def _decide(
        self,
        result: AttemptResult,
        attempts: int,
        created_at: datetime,
        now: datetime,
        sender: str,
        notify: frozenset[str] | None,
        owed: str | None,
        delay_sent: bool,
    ) -> tuple[QueueState, datetime | None, QueueDsn | None, bool]:
        """(state, next attempt, DSN owed, delay DSN sent) after one attempt."""
        current = QueueDsn(owed) if owed is not None else None

        def wanted(action: dsn_rules.Action) -> bool:
            return dsn_rules.sender_is_reportable(
                sender, sorted(notify) if notify is not None else None, action
            )

        if result.outcome is AttemptOutcome.DELIVERED:
            relayed = not result.peer_took_dsn and wanted(dsn_rules.Action.RELAYED)
            return QueueState.DELIVERED, None, QueueDsn.RELAYED if relayed else None, delay_sent
        if result.outcome is AttemptOutcome.FAILED:
            failed = QueueDsn.FAILED if wanted(dsn_rules.Action.FAILED) else current
            return QueueState.FAILED, None, failed, delay_sent
        at = self.schedule.next_attempt(created_at, attempts, now, self._draw())
        if at is None:
            failed = QueueDsn.FAILED if wanted(dsn_rules.Action.FAILED) else current
            return QueueState.EXPIRED, None, failed, delay_sent
        if self.schedule.delay_notice_due(created_at, now, delay_sent) and wanted(
            dsn_rules.Action.DELAYED
        ):
            return QueueState.DEFERRED, at, QueueDsn.DELAYED, True
        return QueueState.DEFERRED, at, current, delay_sent

    async def recover_in_flight(self) -> int:
        """Give back the recipients whose lease has passed (their worker died); how many.

        Called at start-up and periodically by the worker: a recipient held by a live worker
        of another process keeps its lease and is left alone.
        """
        now = self.now()
        async with self._store.session() as session:
            ids = list(
                (
                    await session.execute(
                        update(QueueRecipientRow)
                        .where(
                            QueueRecipientRow.state == QueueState.IN_FLIGHT.value,
                            QueueRecipientRow.lease_until <= now,
                        )
                        .values(
                            state=QueueState.QUEUED.value,
                            claim_token=None,
                            lease_until=None,
                            next_attempt_at=now,
                            updated_at=now,
                        )
                        .returning(QueueRecipientRow.id)
                        .execution_options(synchronize_session=False)
                    )
                ).scalars()
            )
            if ids:
                await audit.record(
                    session,
                    "queue.recover",
                    Outcome.OK,
                    actor="queue",
                    details={"recipients": len(ids), "ids": ids[:100]},
                )
            await session.commit()
        if ids:
            log.warning(
                "in-flight recipients recovered after a lease passed", extra={"n": len(ids)}
            )
        return len(ids)

    # -- DSNs owed ------------------------------------------------------------------------------

    async def dsn_due(self, limit: int = 100) -> list[OwedDsn]:
        """DSNs to send: recipients owing one, grouped by message and action."""
        async with self._store.read_session() as session:
            rows = (
                await session.execute(
                    _view_query()
                    .where(QueueRecipientRow.dsn_owed.is_not(None))
                    .order_by(QueueRecipientRow.queue_message_id, QueueRecipientRow.id)
                    .limit(limit)
                )
            ).all()
        groups: dict[tuple[int, str], list[Any]] = {}
        for row in rows:
            groups.setdefault((row[0].queue_message_id, row[0].dsn_owed), []).append(row)
        out: list[OwedDsn] = []
        for (queue_id, action), members in groups.items():
            message: QueueMessageRow = members[0][1]
            out.append(
                OwedDsn(
                    queue_id=queue_id,
                    action=dsn_rules.Action(action),
                    envelope_from=message.envelope_from,
                    envid=message.envid,
                    ret=message.ret,
                    created_at=message.created_at,
                    recipients=tuple(_view(r, m) for r, m in members),
                )
            )
        return out

    async def dsn_sent(self, recipient_ids: Iterable[int]) -> None:
        """The DSNs of these recipients went out (or were dropped on purpose)."""
        ids = sorted(set(recipient_ids))
        if not ids:
            return
        async with self._store.session() as session:
            queue_ids: set[int] = set()
            for i in range(0, len(ids), _IN_CHUNK):
                queue_ids.update(
                    (
                        await session.execute(
                            update(QueueRecipientRow)
                            .where(QueueRecipientRow.id.in_(ids[i : i + _IN_CHUNK]))
                            .values(dsn_owed=None, updated_at=self.now())
                            .returning(QueueRecipientRow.queue_message_id)
                            .execution_options(synchronize_session=False)
                        )
                    ).scalars()
                )
            await _release(session, queue_ids)
            await session.commit()

    # -- administration -------------------------------------------------------------------------

    async def list_recipients(self, selection: Selection, limit: int = 1000) -> list[RecipientView]:
        async with self._store.read_session() as session:
            query = _select(_view_query(), selection).order_by(
                QueueRecipientRow.queue_message_id, QueueRecipientRow.id
            )
            rows = (await session.execute(query.limit(limit))).all()
        return [_view(r, m) for r, m in rows]

    async def show(self, queue_id: int) -> MessageView:
        async with self._store.read_session() as session:
            message = await session.get(QueueMessageRow, queue_id)
            if message is None:
                raise NotFound(f"no queued message {queue_id}")
            submitter = (
                await session.scalar(
                    select(MailboxRow.address).where(MailboxRow.id == message.submitter_id)
                )
                if message.submitter_id is not None
                else None
            )
            rows = (
                await session.execute(
                    _view_query()
                    .where(QueueRecipientRow.queue_message_id == queue_id)
                    .order_by(QueueRecipientRow.id)
                )
            ).all()
            tries = (
                await session.execute(
                    select(QueueAttemptRow)
                    .join(QueueRecipientRow, QueueRecipientRow.id == QueueAttemptRow.recipient_id)
                    .where(QueueRecipientRow.queue_message_id == queue_id)
                    .order_by(QueueAttemptRow.at, QueueAttemptRow.id)
                )
            ).scalars()
            return MessageView(
                id=message.id,
                envelope_from=message.envelope_from,
                submitter=submitter,
                message_id=message.message_id,
                size=message.size,
                ret=message.ret,
                envid=message.envid,
                body=message.body,
                smtputf8=message.smtputf8,
                created_at=message.created_at,
                content_held=message.blob_id is not None,
                recipients=tuple(_view(r, m) for r, m in rows),
                attempts=tuple(
                    AttemptView(a.recipient_id, a.at, a.host, a.code, a.enhanced, a.text)
                    for a in tries
                ),
            )

    async def retry_now(self, selection: Selection, actor: str) -> int:
        """Make the selected waiting recipients (queued, deferred) due now; how many."""
        _refuse_unbounded(selection)
        now = self.now()
        async with self._store.session() as session:
            ids = await _selected_ids(session, selection, DUE_STATES)
            for i in range(0, len(ids), _IN_CHUNK):
                await session.execute(
                    update(QueueRecipientRow)
                    .where(QueueRecipientRow.id.in_(ids[i : i + _IN_CHUNK]))
                    .values(next_attempt_at=now, updated_at=now)
                    .execution_options(synchronize_session=False)
                )
            await audit.record(
                session,
                "queue.retry",
                Outcome.OK,
                actor=actor,
                target=selection.describe(),
                details={"recipients": len(ids), "ids": ids[:100]},
            )
            await session.commit()
        return len(ids)

    async def delete(self, selection: Selection, actor: str) -> tuple[int, int]:
        """Remove the selected recipients, except those in flight, without any DSN; messages
        left without recipients go, and their content is released. (removed, in flight kept)."""
        _refuse_unbounded(selection)
        async with self._store.session() as session:
            ids = await _selected_ids(session, selection, None)
            busy = await _selected_ids(session, selection, (QueueState.IN_FLIGHT.value,))
            doomed = sorted(set(ids) - set(busy))
            queue_ids = await _remove_recipients(session, doomed)
            await audit.record(
                session,
                "queue.delete",
                Outcome.OK,
                actor=actor,
                target=selection.describe(),
                details={
                    "recipients": len(doomed),
                    "messages": sorted(queue_ids)[:100],
                    "in_flight_kept": len(busy),
                },
            )
            await session.commit()
        return len(doomed), len(busy)

    async def purge_finished(self, older_than: timedelta, actor: str) -> int:
        """Remove the messages whose every recipient is final (delivered, failed, expired)
        and owes no DSN, finished before `older_than` ago, with their history; how many."""
        cutoff = self.now() - older_than
        async with self._store.session() as session:
            unfinished = (
                select(QueueRecipientRow.id)
                .where(
                    QueueRecipientRow.queue_message_id == QueueMessageRow.id,
                    or_(
                        QueueRecipientRow.state.not_in(_FINAL),
                        QueueRecipientRow.dsn_owed.is_not(None),
                        QueueRecipientRow.updated_at > cutoff,
                    ),
                )
                .exists()
            )
            queue_ids = list(
                (await session.execute(select(QueueMessageRow.id).where(~unfinished))).scalars()
            )
            blob_ids = await _delete_messages(session, queue_ids)
            await _drop_unreferenced(session, blob_ids)
            await audit.record(
                session,
                "queue.purge",
                Outcome.OK,
                actor=actor,
                target=f"finished before {cutoff.isoformat()}",
                details={"messages": len(queue_ids), "ids": queue_ids[:100]},
            )
            await session.commit()
        return len(queue_ids)

    async def counts(self) -> dict[str, int]:
        """Recipients per state (every state present, 0 when none)."""
        async with self._store.read_session() as session:
            rows = await session.execute(
                select(QueueRecipientRow.state, func.count()).group_by(QueueRecipientRow.state)
            )
            found = {state: n for state, n in rows.tuples()}
        return {s.value: found.get(s.value, 0) for s in QueueState}


# --- helpers -----------------------------------------------------------------------------------


def _group(rows: Sequence[Any]) -> tuple[DomainBatch, ...]:
    """Claimed rows (ordered by domain, message, recipient) as batches per domain."""
    batches: list[DomainBatch] = []
    domain: str | None = None
    messages: list[ClaimedMessage] = []
    current: QueueMessageRow | None = None
    recipients: list[ClaimedRecipient] = []

    def close_message() -> None:
        if current is not None and recipients:
            messages.append(
                ClaimedMessage(
                    id=current.id,
                    envelope_from=current.envelope_from,
                    size=current.size,
                    ret=current.ret,
                    envid=current.envid,
                    body=current.body,
                    smtputf8=current.smtputf8,
                    message_id=current.message_id,
                    created_at=current.created_at,
                    recipients=tuple(recipients),
                )
            )

    for recipient, message in rows:
        if recipient.domain != domain:
            close_message()
            if domain is not None:
                batches.append(DomainBatch(domain, tuple(messages)))
            domain, messages, current, recipients = recipient.domain, [], None, []
        if current is None or message.id != current.id:
            close_message()
            current, recipients = message, []
        recipients.append(
            ClaimedRecipient(
                id=recipient.id,
                address=recipient.address,
                notify=_notify_set(recipient.notify),
                orcpt=recipient.orcpt,
                attempts=recipient.attempts,
            )
        )
    close_message()
    if domain is not None:
        batches.append(DomainBatch(domain, tuple(messages)))
    return tuple(batches)


def _view_query() -> Select[tuple[QueueRecipientRow, QueueMessageRow]]:
    return select(QueueRecipientRow, QueueMessageRow).join(
        QueueMessageRow, QueueMessageRow.id == QueueRecipientRow.queue_message_id
    )


def _view(r: QueueRecipientRow, m: QueueMessageRow) -> RecipientView:
    return RecipientView(
        id=r.id,
        queue_id=r.queue_message_id,
        address=r.address,
        domain=r.domain,
        state=QueueState(r.state),
        attempts=r.attempts,
        next_attempt_at=r.next_attempt_at,
        last_code=r.last_code,
        last_enhanced=r.last_enhanced,
        last_text=r.last_text,
        remote_mta=r.remote_mta,
        orcpt=r.orcpt,
        notify=r.notify,
        dsn_owed=r.dsn_owed,
        delay_dsn_sent=r.delay_dsn_sent,
        lease_until=r.lease_until,
        updated_at=r.updated_at,
        envelope_from=m.envelope_from,
        created_at=m.created_at,
        size=m.size,
        message_id=m.message_id,
    )


def _refuse_unbounded(selection: Selection) -> None:
    if selection.empty and not selection.everything:
        raise QueueError("select recipients (ids, state, recipient or domain), or ask for all")


def _select(query: Select[Any], selection: Selection) -> Select[Any]:
    if selection.queue_ids:
        query = query.where(QueueRecipientRow.queue_message_id.in_(selection.queue_ids))
    if selection.state is not None:
        query = query.where(QueueRecipientRow.state == selection.state.value)
    if selection.recipient:
        query = query.where(QueueRecipientRow.address == selection.recipient.strip().lower())
    if selection.domain:
        query = query.where(QueueRecipientRow.domain == selection.domain.strip().lower())
    return query


async def _selected_ids(
    session: AsyncSession, selection: Selection, states: Sequence[str] | None
) -> list[int]:
    query = _select(select(QueueRecipientRow.id), selection)
    if states is not None:
        query = query.where(QueueRecipientRow.state.in_(states))
    return sorted((await session.execute(query.with_for_update())).scalars())


async def _remove_recipients(session: AsyncSession, ids: Sequence[int]) -> set[int]:
    """Delete recipients; then their messages left empty; release the content of the rest
    if they are now finished. Returns the messages touched."""
    queue_ids: set[int] = set()
    for i in range(0, len(ids), _IN_CHUNK):
        queue_ids.update(
            (
                await session.execute(
                    delete(QueueRecipientRow)
                    .where(QueueRecipientRow.id.in_(ids[i : i + _IN_CHUNK]))
                    .returning(QueueRecipientRow.queue_message_id)
                    .execution_options(synchronize_session=False)
                )
            ).scalars()
        )
    if not queue_ids:
        return queue_ids
    empty = list(
        (
            await session.execute(
                select(QueueMessageRow.id).where(
                    QueueMessageRow.id.in_(sorted(queue_ids)),
                    ~exists().where(QueueRecipientRow.queue_message_id == QueueMessageRow.id),
                )
            )
        ).scalars()
    )
    blob_ids = await _delete_messages(session, empty)
    await _drop_unreferenced(session, blob_ids)
    await _release(session, queue_ids - set(empty))
    return queue_ids


async def _delete_messages(session: AsyncSession, queue_ids: Sequence[int]) -> set[int]:
    """Delete queue messages (recipients and attempts cascade); their blob ids."""
    blob_ids: set[int] = set()
    for i in range(0, len(queue_ids), _IN_CHUNK):
        chunk = queue_ids[i : i + _IN_CHUNK]
        blob_ids.update(
            b
            for b in (
                await session.execute(
                    delete(QueueMessageRow)
                    .where(QueueMessageRow.id.in_(chunk))
                    .returning(QueueMessageRow.blob_id)
                    .execution_options(synchronize_session=False)
                )
            ).scalars()
            if b is not None
        )
    return blob_ids


async def _release(session: AsyncSession, queue_ids: Iterable[int]) -> None:
    """Forget the content of the messages among `queue_ids` that no longer need it (every
    recipient final, no DSN owed), and delete those blobs nothing else uses."""
    ids = sorted(set(queue_ids))
    if not ids:
        return
    pending = (
        select(QueueRecipientRow.id)
        .where(
            QueueRecipientRow.queue_message_id == QueueMessageRow.id,
            or_(QueueRecipientRow.state.not_in(_FINAL), QueueRecipientRow.dsn_owed.is_not(None)),
        )
        .exists()
    )
    blob_ids: set[int] = set()
    for i in range(0, len(ids), _IN_CHUNK):
        # RETURNING would give the new value (NULL): read the references first.
        done = (
            await session.execute(
                select(QueueMessageRow.id, QueueMessageRow.blob_id).where(
                    QueueMessageRow.id.in_(ids[i : i + _IN_CHUNK]),
                    QueueMessageRow.blob_id.is_not(None),
                    ~pending,
                )
            )
        ).all()
        if not done:
            continue
        await session.execute(
            update(QueueMessageRow)
            .where(QueueMessageRow.id.in_([queue_id for queue_id, _ in done]))
            .values(blob_id=None)
            .execution_options(synchronize_session=False)
        )
        blob_ids.update(blob_id for _, blob_id in done)
    await _drop_unreferenced(session, blob_ids)


async def _drop_unreferenced(session: AsyncSession, blob_ids: Iterable[int]) -> None:
    """Delete the blobs among `blob_ids` that no message, DSN request or queue entry uses.

    The delete runs in a savepoint: on PostgreSQL a delivery committing at this moment may
    have just referenced the same content (found by its digest); the foreign key then refuses
    the delete, which only means a blob is still needed: they are then tried one by one.
    """
    candidates = sorted(set(blob_ids))
    for i in range(0, len(candidates), _IN_CHUNK):
        chunk = candidates[i : i + _IN_CHUNK]
        used: set[int] = set()
        for column in (MessageRow.blob_id, DsnRequestRow.blob_id, QueueMessageRow.blob_id):
            rows = await session.execute(select(column).where(column.in_(chunk)).distinct())
            used.update(b for b in rows.scalars() if b is not None)
        free = [blob_id for blob_id in chunk if blob_id not in used]
        if not free:
            continue
        try:
            async with session.begin_nested():
                await _delete_blobs(session, free)
        except IntegrityError:
            for blob_id in free:
                try:
                    async with session.begin_nested():
                        await _delete_blobs(session, [blob_id])
                except IntegrityError:
                    log.info("blob kept: referenced concurrently", extra={"blob_id": blob_id})


async def _delete_blobs(session: AsyncSession, blob_ids: Sequence[int]) -> None:
    await session.execute(
        delete(BlobRow).where(BlobRow.id.in_(blob_ids)).execution_options(synchronize_session=False)
    )
