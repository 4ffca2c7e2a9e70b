"""Outbound relay, wired: submission → queue → peer operators, and the DSNs back (issue 5).

Three parts, each over pieces defined elsewhere:

- `QueueOutbox` is submission's `Outbox`: it signs the message with our DKIM key
  (`dkim_sign.py`), seals it and stores it with its recipients in the queue (`queue.py`)
  through a group commit shared by every submission session (one fsync for many 250s), then
  wakes the worker. It returns only once the queue entry is committed.
- `OutboundWorker` runs `[queue] workers` loops, each: claim due recipients → hand each
  destination domain's messages to `OutboundClient` (`outbound.py`) → record the results. At
  start it takes back what a dead process left in flight (`Queue.recover_in_flight`), and it
  does so again every lease period. It sleeps until woken by a new message or `poll_seconds`.
- DSNs (`dsn.py` builds them): the queue's owed failure, delay and relayed reports, and the
  success reports local delivery owes (`store/dsn.py`, NOTIFY=SUCCESS). Each goes from the
  null sender to the original sender: into its INBOX when we host it, else through the queue
  to its operator. A DSN is never answered by another (RFC 3461 §6.2): the null sender sees to
  that, as the queue owes nothing to `<>`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from mssante.config import QueueSettings, Settings
from mssante.logs import event
from mssante.operator import dsn as dsn_rules
from mssante.operator import queue as q
from mssante.operator.auditlog import AuditRecord, AuditSink
from mssante.operator.delivery import Delivery, InboundEnvelope, Recipient, SessionInfo
from mssante.operator.dkim_sign import DkimSigner
from mssante.operator.errors import MailError, temporary_failure
from mssante.operator.groupcommit import GroupCommitter
from mssante.operator.outbound import MessageResult, OutboundClient, RecipientResult, Status
from mssante.operator.outbound import OutboundMessage as WireMessage
from mssante.operator.outbound import OutboundRecipient as WireRecipient
from mssante.operator.retry import RetrySchedule
from mssante.operator.smtp.submission import OutboundMessage
from mssante.operator.store import blobs, domains
from mssante.operator.store import dsn as dsn_store
from mssante.operator.store.db import Store
from mssante.operator.store.errors import NotFound
from mssante.operator.store.schema import DsnState, Outcome, QueueState

log = logging.getLogger("mssante.outbox")

BATCH_MAX_MESSAGES = 256  # queued in one transaction
BATCH_MAX_BYTES = 64 * 1024 * 1024
BATCH_LINGER_SECONDS = 0.001
DSN_BATCH = 100  # reports built per pass
MAX_CODE_TEXT = 2000


def schedule_of(config: QueueSettings) -> RetrySchedule:
    return RetrySchedule(
        delays=tuple(config.retry_delays_seconds),
        then_every=config.retry_every_seconds,
        expire_after=config.expire_after_seconds,
        delay_notice_after=config.delay_notice_after_seconds,
        jitter=config.retry_jitter,
    )


# --- submission → queue -------------------------------------------------------------------------


class QueueOutbox:
    """Submission's `Outbox` over the queue; `wake` tells the worker there is work."""

    def __init__(
        self,
        store: Store,
        queue: q.Queue,
        signer: DkimSigner | None,
        wake: WakeUp | None = None,
    ) -> None:
        self._queue = queue
        self._signer = signer
        self._wake = wake
        self._committer: GroupCommitter[q.PreparedMessage, int] = GroupCommitter(
            store,
            queue.add_many,
            name="outbox-committer",
            size=lambda p: p.size,
            failure=temporary_failure,
            max_items=BATCH_MAX_MESSAGES,
            max_bytes=BATCH_MAX_BYTES,
            linger_seconds=BATCH_LINGER_SECONDS,
        )

    async def start(self) -> None:
        await self._committer.start()

    async def close(self) -> None:
        await self._committer.close()

    async def enqueue(self, message: OutboundMessage) -> None:
        """Signed, sealed and committed in the queue when this returns; MailError(451) if the
        database did not take it (the client then retries; nothing is half-stored)."""
        if self._committer.closing:
            raise temporary_failure("shutting_down")
        data = message.message
        if self._signer is not None:
            data = await self._signer.sign(data)
        envelope = q.OutboundEnvelope(
            mail_from=message.mail_from,
            recipients=tuple(
                q.OutboundRecipient(r.address, _notify(r.notify), r.orcpt)
                for r in message.recipients
            ),
            ret=message.ret,
            envid=message.envid,
            body=message.body,
            smtputf8=message.smtputf8,
            submitter_id=message.submitter_mailbox_id,
            message_id=message.message_id,
        )
        try:
            prepared = await self._queue.prepare(envelope, data)
        except q.QueueError as exc:  # submission checked the envelope: a bug if it comes here
            log.error("message refused by the queue: %s", exc)
            raise MailError(
                554, "5.3.0", "Message cannot be queued", reason="queue_refused"
            ) from None
        await self._committer.submit(prepared)
        if self._wake is not None:
            self._wake.set()


def _notify(keywords: frozenset[str] | None) -> frozenset[str] | None:
    """The SMTP parameter parser gives NOTIFY=NEVER as an empty set; the queue names it."""
    return frozenset({"NEVER"}) if keywords is not None and not keywords else keywords


class WakeUp:
    """What the worker's idle loops wait on: each `set` (a message queued) wakes one loop, not
    all of them — the others would find nothing to claim and only cost the database. A `set`
    with no loop waiting is kept for the next `wait`."""

    def __init__(self) -> None:
        self._sleepers: collections.deque[asyncio.Future[None]] = collections.deque()
        self._kept = False

    def set(self) -> None:
        while self._sleepers:
            sleeper = self._sleepers.popleft()
            if not sleeper.done():
                sleeper.set_result(None)
                return
        self._kept = True

    async def wait(self, seconds: float) -> None:
        """Return when woken or after `seconds`."""
        if self._kept:
            self._kept = False
            return
        sleeper = asyncio.get_running_loop().create_future()
        self._sleepers.append(sleeper)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await sleeper
        finally:
            if sleeper in self._sleepers:
                self._sleepers.remove(sleeper)


# --- queue → peers --------------------------------------------------------------------------


def _split_reply(reply: str) -> tuple[int | None, str]:
    """("550 5.1.1 no such user") → (550, "5.1.1 no such user"); our own refusals carry a
    code too ("451 4.4.1 …")."""
    head, _, rest = reply.partition(" ")
    if len(head) == 3 and head.isdigit():
        return int(head), rest
    return None, reply


def attempt_of(recipient_id: int, result: RecipientResult) -> q.AttemptResult:
    """The queue's view of one recipient's result."""
    code, text = _split_reply(result.reply)
    enhanced = result.enhanced or None
    if enhanced is not None and text.startswith(enhanced):
        text = text[len(enhanced) :].lstrip()
    outcome = {
        Status.DELIVERED: q.AttemptOutcome.DELIVERED,
        Status.DEFERRED: q.AttemptOutcome.DEFERRED,
        Status.FAILED: q.AttemptOutcome.FAILED,
    }[result.status]
    return q.AttemptResult(
        recipient_id=recipient_id,
        outcome=outcome,
        code=code,
        enhanced=enhanced,
        text=text[:MAX_CODE_TEXT] or result.reason,
        host=result.remote_mta,
        peer_took_dsn=result.dsn_passed,
    )


@dataclass(frozen=True)
class PassReport:
    claimed: int
    delivered: int
    deferred: int
    failed: int


class OutboundWorker:
    """Delivers what the queue holds, and the DSNs it owes; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        queue: q.Queue,
        client: OutboundClient,
        delivery: Delivery,
        audit: AuditSink,
        wake: WakeUp | None = None,
    ) -> None:
        self.settings = settings
        self.config = settings.queue
        self._store = store
        self._queue = queue
        self._client = client
        self._delivery = delivery
        self._audit = audit
        self.wake = wake or WakeUp()
        self._tasks: list[asyncio.Task[None]] = []
        self._dsn_lock = asyncio.Lock()
        self._dsn_wanted = True  # a DSN pass is due (set by a pass whose results may owe one)
        self._dsn_next = 0.0  # monotonic time of the next DSN pass in any case
        self._closing = False

    async def start(self) -> None:
        recovered = await self._queue.recover_in_flight()
        if recovered:
            event(log, "in-flight recipients taken back at start", recipients=recovered)
        for number in range(self.config.workers):
            self._tasks.append(asyncio.create_task(self._loop(), name=f"outbound-{number}"))
        self._tasks.append(asyncio.create_task(self._recovery(), name="outbound-recovery"))

    async def close(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self._client.close()

    async def _loop(self) -> None:
        while not self._closing:
            try:
                report = await self.run_once()
                owed = 0
                # DSNs: after a pass that may owe one, and every poll_seconds (the success
                # reports local delivery owes, and anything another process recorded).
                if self._dsn_wanted or time.monotonic() >= self._dsn_next:
                    self._dsn_wanted = False
                    self._dsn_next = time.monotonic() + self.config.poll_seconds
                    owed = await self.send_dsns()
            except asyncio.CancelledError:
                raise
            except Exception:
                # The database is down, most likely: what was claimed stays in flight until
                # its lease passes, then comes back. Wait, then try again.
                log.exception("outbound pass failed")
                await self.wake.wait(self.config.poll_seconds)
                continue
            if report.claimed == 0 and owed == 0:
                await self.wake.wait(self.config.poll_seconds)

    async def _recovery(self) -> None:
        period = max(self.config.lease_seconds / 2, 1.0)
        while not self._closing:
            await asyncio.sleep(period)
            try:
                if await self._queue.recover_in_flight():
                    self.wake.set()
            except Exception:
                log.warning("recovering in-flight recipients failed", exc_info=True)

    async def run_once(self) -> PassReport:
        """Claim one batch, deliver it, record the results; what happened."""
        claim = await self._queue.claim(self.config.claim_batch)
        if not claim.batches:
            return PassReport(0, 0, 0, 0)
        outcomes = await asyncio.gather(*(self._deliver(batch) for batch in claim.batches))
        results = [r for batch in outcomes for r in batch]
        recorded = await self._queue.record(claim.token, results)
        success_asked = {
            r.id
            for b in claim.batches
            for m in b.messages
            for r in m.recipients
            if r.notify is not None and "SUCCESS" in r.notify
        }
        if any(
            r.outcome is not q.AttemptOutcome.DELIVERED
            or (r.recipient_id in success_asked and not r.peer_took_dsn)
            for r in results
        ):
            self._dsn_wanted = True
        states = list(recorded.states.values())
        return PassReport(
            claimed=len(claim.recipient_ids),
            delivered=states.count(QueueState.DELIVERED),
            deferred=states.count(QueueState.DEFERRED),
            failed=len(states)
            - states.count(QueueState.DELIVERED)
            - states.count(QueueState.DEFERRED),
        )

    async def _deliver(self, batch: q.DomainBatch) -> list[q.AttemptResult]:
        wire: list[WireMessage] = []
        ids: list[tuple[int, ...]] = []
        results: list[q.AttemptResult] = []
        contents = await self._queue.contents([m.id for m in batch.messages])
        for message in batch.messages:
            data = contents.get(message.id)
            if data is None:
                # Deleted by an administrator meanwhile: nothing to send, nothing to record.
                continue
            wire.append(
                WireMessage(
                    sender=message.envelope_from,
                    recipients=tuple(
                        WireRecipient(r.address, r.notify, r.orcpt) for r in message.recipients
                    ),
                    data=data,
                    ret=message.ret,
                    envid=message.envid,
                    ref=str(message.id),
                )
            )
            ids.append(tuple(r.id for r in message.recipients))
        sent: list[MessageResult] = await self._client.deliver(batch.domain, wire)
        for recipient_ids, result in zip(ids, sent, strict=True):
            for rid, one in zip(recipient_ids, result.recipients, strict=True):
                results.append(attempt_of(rid, one))
        return results

    # -- DSNs ---------------------------------------------------------------------------------

    async def send_dsns(self) -> int:
        """Build and send what is owed (one pass, bounded); how many reports were handled."""
        async with self._dsn_lock:  # several loops: one sends, the others move on
            handled = 0
            for owed in await self._queue.dsn_due(DSN_BATCH):
                if await self._queue_report(owed):
                    handled += 1
            for request in await self._local_requests():
                if await self._local_report(request):
                    handled += 1
            return handled

    async def _queue_report(self, owed: q.OwedDsn) -> bool:
        ids = [r.id for r in owed.recipients]
        if not owed.envelope_from:  # never owed by the queue; a safety net
            await self._queue.dsn_sent(ids)
            return True
        try:
            original = await self._queue.content(owed.queue_id)
        except NotFound:
            original = b""
        expiry = owed.created_at + timedelta(seconds=self.config.expire_after_seconds)
        report = dsn_rules.Report(
            reporting_mta=self.settings.operator.hostname,
            recipient_of_report=owed.envelope_from,
            arrival_date=owed.created_at,
            envid=owed.envid,
            recipients=tuple(
                dsn_rules.RecipientReport(
                    final_recipient=r.address,
                    action=owed.action,
                    status=r.last_enhanced or _default_status(owed.action),
                    original_recipient=r.orcpt,
                    diagnostic=_diagnostic(r),
                    remote_mta=r.remote_mta,
                    last_attempt=r.updated_at,
                    will_retry_until=expiry if owed.action is dsn_rules.Action.DELAYED else None,
                )
                for r in owed.recipients
            ),
        )
        ret = dsn_rules.Ret(owed.ret) if owed.ret in ("FULL", "HDRS") else None
        if await self._send_report(report, original, ret, ref=f"queue {owed.queue_id}"):
            await self._queue.dsn_sent(ids)
            return True
        return False

    async def _local_requests(self) -> list[dsn_store.DsnRequest]:
        async with self._store.read_session() as session:
            return await dsn_store.list_requests(session, DsnState.PENDING, limit=DSN_BATCH)

    async def _local_report(self, request: dsn_store.DsnRequest) -> bool:
        async with self._store.read_session() as session:
            original = await _blob_or_empty(session, self._store, request.blob_id)
        report = dsn_rules.Report(
            reporting_mta=self.settings.operator.hostname,
            recipient_of_report=request.envelope_from,
            arrival_date=request.created_at,
            envid=request.envid,
            recipients=(
                dsn_rules.RecipientReport(
                    final_recipient=request.recipient,
                    action=dsn_rules.Action.DELIVERED,
                    status="2.0.0",
                    original_recipient=request.orcpt,
                    last_attempt=request.created_at,
                ),
            ),
        )
        ret = dsn_rules.Ret(request.ret.value) if request.ret is not None else None
        if await self._send_report(report, original, ret, ref=f"dsn request {request.id}"):
            async with self._store.session() as session:
                await dsn_store.mark_sent(session, [request.id])
                await session.commit()
            return True
        return False

    async def _send_report(
        self, report: dsn_rules.Report, original: bytes, ret: dsn_rules.Ret | None, *, ref: str
    ) -> bool:
        """Deliver one DSN; True once it is stored (or dropped for good), False to try later."""
        to = report.recipient_of_report
        data = dsn_rules.build(
            report,
            original,
            ret=ret,
            now=self._queue.now(),
            message_id_domain=self.settings.operator.hostname,
        )
        domain = to.rpartition("@")[2].lower()
        async with self._store.read_session() as session:
            hosted = await domains.is_hosted(session, domain)
        action = report.recipients[0].action.value
        try:
            if hosted:
                await self._deliver_local(to, data)
            else:
                await self._queue.enqueue(
                    q.OutboundEnvelope(mail_from="", recipients=(q.OutboundRecipient(to),)), data
                )
                self.wake.set()
        except MailError as exc:
            if exc.code < 500:
                log.warning("DSN not delivered yet (%s): %s", ref, exc)
                return False
            self._trace(Outcome.ERROR, to, ref, action, str(exc))
            return True  # a sender that cannot receive: the report is dropped, never bounced
        except q.QueueError as exc:
            self._trace(Outcome.ERROR, to, ref, action, str(exc))
            return True
        self._trace(Outcome.OK, to, ref, action, "local" if hosted else "queued")
        return True

    async def _deliver_local(self, address: str, data: bytes) -> None:
        try:
            await self._delivery.check_recipient(address)
        except MailError as exc:
            if exc.reason != "over_quota":  # a report about the sender's own mail gets in
                raise
        envelope = InboundEnvelope(
            mail_from="",
            recipients=(Recipient(address.lower(), None, None),),
            ret=None,
            envid=None,
            smtputf8=False,
            body="8BITMIME",
        )
        info = SessionInfo(
            session_id="dsn",
            peer_ip="127.0.0.1",
            helo=self.settings.operator.hostname,
            protocol="LOCAL",
            tls_version=None,
            tls_cipher=None,
            peer_dn=None,
        )
        await self._delivery.deliver(envelope, data, info, traced=True)

    def _trace(self, outcome: Outcome, to: str, ref: str, action: str, detail: str) -> None:
        self._audit.record(
            AuditRecord(
                event="dsn.sent",
                outcome=outcome,
                actor="<>",
                target=to,
                details={"ref": ref, "action": action, "result": detail[:500]},
            )
        )


def _default_status(action: dsn_rules.Action) -> str:
    return {
        dsn_rules.Action.FAILED: "5.0.0",
        dsn_rules.Action.DELAYED: "4.0.0",
        dsn_rules.Action.DELIVERED: "2.0.0",
        dsn_rules.Action.RELAYED: "2.0.0",
    }[action]


def _diagnostic(view: q.RecipientView) -> str | None:
    if view.last_code is None:
        return view.last_text
    parts = [str(view.last_code), view.last_enhanced or "", view.last_text or ""]
    return " ".join(p for p in parts if p)


async def _blob_or_empty(session: AsyncSession, store: Store, blob_id: int | None) -> bytes:
    if blob_id is None:
        return b""
    try:
        return await blobs.get_blob(session, store.cipher, blob_id)
    except Exception:
        log.warning("original of a DSN unreadable", exc_info=True, extra={"blob_id": blob_id})
        return b""
