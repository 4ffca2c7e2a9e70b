"""The outbound queue on SQLite and PostgreSQL: durability, claims, retries, expiry, recovery,
DSNs owed, content release and the administrative operations. Time is an injected clock."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from mssante.operator.queue import (
    AttemptOutcome,
    AttemptResult,
    Claim,
    OutboundEnvelope,
    OutboundRecipient,
    Queue,
    QueueError,
    Selection,
)
from mssante.operator.retry import RetrySchedule
from mssante.operator.store import audit, blobs
from mssante.operator.store.crypto import BlobCipher
from mssante.operator.store.db import Store
from mssante.operator.store.errors import NotFound
from mssante.operator.store.schema import BlobRow, DsnRequestRow, QueueAttemptRow, QueueState

T0 = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
CONTENT = b"From: a@x.test\r\nSubject: t\r\n\r\nCompte rendu QUEUE-PLAINTEXT-MARKER\r\n"
NO_JITTER = 0.5  # RetrySchedule draw that leaves each wait as configured


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


def make_queue(store: Store, clock: Clock, schedule: RetrySchedule | None = None) -> Queue:
    return Queue(store, schedule, clock=clock, draw=lambda: NO_JITTER, lease=timedelta(minutes=5))


def envelope(*addresses: str, sender: str = "dr.a@ours.test", **kw: object) -> OutboundEnvelope:
    notify = kw.pop("notify", None)
    recipients = tuple(
        OutboundRecipient(a, notify=notify, orcpt=f"rfc822;{a}")  # type: ignore[arg-type]
        for a in addresses
    )
    return OutboundEnvelope(sender, recipients, message_id="<m1@ours.test>", **kw)  # type: ignore[arg-type]


def result(rid: int, outcome: AttemptOutcome, **kw: object) -> AttemptResult:
    defaults: dict[str, object] = {
        AttemptOutcome.DELIVERED: {"code": 250, "enhanced": "2.0.0", "text": "ok"},
        AttemptOutcome.DEFERRED: {"code": 451, "enhanced": "4.3.0", "text": "try later"},
        AttemptOutcome.FAILED: {"code": 550, "enhanced": "5.1.1", "text": "no such user"},
    }[outcome]  # type: ignore[assignment]
    return AttemptResult(rid, outcome, host="mx.peer.test", **{**defaults, **kw})  # type: ignore[arg-type]


def ids_of(claim: Claim) -> set[int]:
    return set(claim.recipient_ids)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(store: Store, clock: Clock) -> Queue:
    return make_queue(store, clock)


async def blob_count(store: Store) -> int:
    async with store.read_session() as session:
        return int(await session.scalar(select(func.count()).select_from(BlobRow)) or 0)


# --- enqueue -------------------------------------------------------------------------------------


async def test_enqueue_is_durable_and_encrypted(
    store_url: str, store: Store, cipher: BlobCipher, clock: Clock
) -> None:
    queue_id = await make_queue(store, clock).enqueue(
        envelope("a@peer.test", "B@Peer.Test", ret="HDRS", envid="env-1", body="8BITMIME"),
        CONTENT,
    )
    await store.close()
    async with await Store.open(store_url, cipher) as reopened:
        again = make_queue(reopened, clock)
        rows = await again.list_recipients(Selection(everything=True))
        assert [(r.queue_id, r.address, r.state, r.attempts) for r in rows] == [
            (queue_id, "a@peer.test", QueueState.QUEUED, 0),
            (queue_id, "b@peer.test", QueueState.QUEUED, 0),
        ]
        assert rows[0].next_attempt_at == T0 and rows[0].orcpt == "rfc822;a@peer.test"
        assert await again.content(queue_id) == CONTENT
        shown = await again.show(queue_id)
        assert (shown.ret, shown.envid, shown.body, shown.message_id, shown.size) == (
            "HDRS",
            "env-1",
            "8BITMIME",
            "<m1@ours.test>",
            len(CONTENT),
        )
        async with reopened.read_session() as session:
            stored = (await session.execute(select(BlobRow.ciphertext))).scalars().all()
            events = await audit.recent(session, 10, "queue.enqueue")
        assert len(stored) == 1 and b"QUEUE-PLAINTEXT-MARKER" not in stored[0]
        assert events[0].details == {
            "queue_id": queue_id,
            "recipients": 2,
            "size": len(CONTENT),
            "message_id": "<m1@ours.test>",
        }


async def test_enqueue_many_is_one_transaction(queue: Queue, store: Store) -> None:
    ids = await queue.enqueue_many(
        [(envelope("a@x.test"), CONTENT), (envelope("b@y.test", "c@y.test"), CONTENT + b"2")]
    )
    assert [len((await queue.show(i)).recipients) for i in ids] == [1, 2]
    # The second one fails in the database (no such submitting mailbox): the first goes too.
    unknown_submitter = OutboundEnvelope(
        "a@x.test", (OutboundRecipient("e@x.test"),), submitter_id=999_999
    )
    with pytest.raises(IntegrityError):
        await queue.enqueue_many(
            [(envelope("d@x.test"), CONTENT + b"3"), (unknown_submitter, CONTENT + b"4")]
        )
    assert len(await queue.list_recipients(Selection(everything=True))) == 3
    assert await blob_count(store) == 2


async def test_add_many_belongs_to_the_callers_transaction(queue: Queue, store: Store) -> None:
    prepared = [
        await queue.prepare(envelope("a@x.test"), CONTENT),
        await queue.prepare(envelope("b@x.test"), CONTENT),  # same bytes: one blob
    ]
    async with store.session() as session:
        ids = await queue.add_many(session, prepared)
        await session.rollback()  # e.g. the Sent copy stored with them failed
    assert len(ids) == 2 and await queue.list_recipients(Selection(everything=True)) == []
    assert await blob_count(store) == 0
    async with store.session() as session:
        first, second = await queue.add_many(session, prepared)
        await session.commit()
    assert await queue.content(first) == await queue.content(second) == CONTENT
    assert await blob_count(store) == 1


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (OutboundEnvelope("a@x.test", ()), "no recipient"),
        (OutboundEnvelope("a@x.test", (OutboundRecipient("nobody"),)), "local-part@domain"),
        (OutboundEnvelope("a\r\n@x.test", (OutboundRecipient("b@y.test"),)), "envelope sender"),
        (OutboundEnvelope("a@x.test", (OutboundRecipient("b@y.test"),), ret="ALL"), "RET"),
        (OutboundEnvelope("a@x.test", (OutboundRecipient("b@y.test"),), envid="e" * 101), "ENVID"),
        (OutboundEnvelope("a@x.test", (OutboundRecipient("b@y.test"),), body="BINARY"), "BODY"),
        (
            OutboundEnvelope(
                "a@x.test", (OutboundRecipient("b@y.test", notify=frozenset({"NEVER", "DELAY"})),)
            ),
            "NOTIFY",
        ),
        (
            OutboundEnvelope("a@x.test", (OutboundRecipient("b@y.test", orcpt="x" * 501),)),
            "ORCPT",
        ),
    ],
)
async def test_enqueue_refuses_what_cannot_be_queued(
    queue: Queue, store: Store, bad: OutboundEnvelope, reason: str
) -> None:
    with pytest.raises(QueueError, match=reason):
        await queue.enqueue(bad, CONTENT)
    assert await queue.list_recipients(Selection(everything=True)) == []
    assert await blob_count(store) == 0


# --- claims --------------------------------------------------------------------------------------


async def test_claim_groups_by_domain_then_message(queue: Queue) -> None:
    first = await queue.enqueue(envelope("a@x.test", "c@y.test", "b@x.test"), CONTENT)
    second = await queue.enqueue(envelope("d@x.test"), CONTENT + b"2")
    claim = await queue.claim()
    assert claim.lease_until == T0 + timedelta(minutes=5)
    shape = [
        (b.domain, [(m.id, [r.address for r in m.recipients]) for m in b.messages])
        for b in claim.batches
    ]
    assert shape == [
        ("x.test", [(first, ["a@x.test", "b@x.test"]), (second, ["d@x.test"])]),
        ("y.test", [(first, ["c@y.test"])]),
    ]
    message = claim.batches[0].messages[0]
    assert message.envelope_from == "dr.a@ours.test" and message.message_id == "<m1@ours.test>"
    assert message.recipients[0].orcpt == "rfc822;a@x.test"
    rows = await queue.list_recipients(Selection(everything=True))
    assert {r.state for r in rows} == {QueueState.IN_FLIGHT}
    assert (await queue.claim()).batches == ()  # nothing left to take


async def test_claim_takes_at_most_limit_oldest_first(queue: Queue, clock: Clock) -> None:
    for n in range(5):
        await queue.enqueue(envelope(f"r{n}@x.test"), CONTENT)
        clock.advance(seconds=1)
    claim = await queue.claim(limit=2)
    assert [r.address for b in claim.batches for m in b.messages for r in m.recipients] == [
        "r0@x.test",
        "r1@x.test",
    ]
    assert len(ids_of(await queue.claim(limit=10))) == 3


async def test_concurrent_claimers_never_share_a_recipient(
    store_url: str, store: Store, cipher: BlobCipher, clock: Clock
) -> None:
    queue = make_queue(store, clock)
    total = 60
    for n in range(0, total, 3):
        await queue.enqueue(envelope(f"a{n}@x.test", f"b{n}@y.test", f"c{n}@z.test"), CONTENT)
    # Four workers, each with its own engine (its own connections), as separate processes have.
    stores = [await Store.open(store_url, cipher) for _ in range(4)]
    try:
        workers = [make_queue(s, clock) for s in stores]

        async def drain(worker: Queue) -> list[int]:
            taken: list[int] = []
            while True:
                claim = await worker.claim(limit=4)
                if not claim.batches:
                    return taken
                taken.extend(claim.recipient_ids)
                await asyncio.sleep(0)

        results = await asyncio.gather(*(drain(w) for w in workers))
    finally:
        for s in stores:
            await s.close()
    taken = [rid for r in results for rid in r]
    assert len(taken) == total and len(set(taken)) == total


# SKIP LOCKED is PostgreSQL's; on SQLite a claim holds the write lock, so claims are serial.
@pytest.mark.parametrize(
    "store_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
async def test_postgresql_claim_skips_rows_locked_by_another_worker(
    store_url: str, store: Store, cipher: BlobCipher, clock: Clock
) -> None:
    queue = make_queue(store, clock)
    await queue.enqueue(envelope("a@x.test", "b@x.test", "c@x.test", "d@x.test"), CONTENT)
    async with await Store.open(store_url, cipher) as other, other.session() as holder:
        # Another worker in the middle of its claim: two rows locked, not committed.
        locked = set(
            (
                await holder.execute(
                    text("SELECT id FROM queue_recipients ORDER BY id LIMIT 2 FOR UPDATE")
                )
            ).scalars()
        )
        claim = await asyncio.wait_for(queue.claim(), timeout=60)
        await holder.rollback()
    assert len(locked) == 2 and len(ids_of(claim)) == 2
    assert ids_of(claim).isdisjoint(locked)


# --- results and the retry schedule -------------------------------------------------------------


async def test_deferred_follows_the_schedule_then_delivered(
    queue: Queue, store: Store, clock: Clock
) -> None:
    queue_id = await queue.enqueue(envelope("a@x.test"), CONTENT)
    claim = await queue.claim()
    (rid,) = ids_of(claim)
    clock.advance(seconds=10)
    report = await queue.record(claim.token, [result(rid, AttemptOutcome.DEFERRED)])
    assert report.applied == (rid,) and report.states == {rid: QueueState.DEFERRED}
    (row,) = await queue.list_recipients(Selection(queue_ids=(queue_id,)))
    assert row.state is QueueState.DEFERRED and row.attempts == 1
    assert row.next_attempt_at == T0 + timedelta(seconds=10 + 60)  # first wait: 1 min
    assert (row.last_code, row.last_enhanced, row.remote_mta) == (451, "4.3.0", "mx.peer.test")
    assert row.dsn_owed is None and row.lease_until is None
    clock.advance(seconds=59)
    assert (await queue.claim()).batches == ()  # not due yet
    clock.advance(seconds=1)
    claim = await queue.claim()
    assert ids_of(claim) == {rid}
    await queue.record(claim.token, [result(rid, AttemptOutcome.DEFERRED)])
    (row,) = await queue.list_recipients(Selection(queue_ids=(queue_id,)))
    assert row.next_attempt_at == clock.now + timedelta(minutes=5)  # second wait: 5 min
    clock.advance(minutes=5)
    claim = await queue.claim()
    await queue.record(claim.token, [result(rid, AttemptOutcome.DELIVERED)])
    shown = await queue.show(queue_id)
    assert shown.recipients[0].state is QueueState.DELIVERED
    assert shown.recipients[0].attempts == 3 and shown.recipients[0].next_attempt_at is None
    assert [(a.code, a.host) for a in shown.attempts] == [
        (451, "mx.peer.test"),
        (451, "mx.peer.test"),
        (250, "mx.peer.test"),
    ]
    # Every recipient final, no DSN owed: the content is released and its blob deleted.
    assert not shown.content_held
    assert await blob_count(store) == 0
    with pytest.raises(NotFound):
        await queue.content(queue_id)
    async with store.read_session() as session:
        (event,) = await audit.recent(session, 5, "queue.delivery")
    assert event.target == "a@x.test" and event.details is not None
    assert event.details["state"] == "delivered"


async def test_jitter_spreads_the_wait(store: Store, clock: Clock) -> None:
    queue = Queue(store, clock=clock, draw=lambda: 0.0)  # draw 0: the shortest wait
    await queue.enqueue(envelope("a@x.test"), CONTENT)
    claim = await queue.claim()
    await queue.record(claim.token, [result(claim.recipient_ids[0], AttemptOutcome.DEFERRED)])
    (row,) = await queue.list_recipients(Selection(everything=True))
    assert row.next_attempt_at == T0 + timedelta(seconds=54)  # 60 s − 10 %


async def test_failure_is_final_at_once_and_owes_a_dsn(queue: Queue, store: Store) -> None:
    queue_id = await queue.enqueue(envelope("a@x.test", "b@x.test"), CONTENT)
    claim = await queue.claim()
    a, b = sorted(ids_of(claim))
    await queue.record(
        claim.token, [result(a, AttemptOutcome.FAILED), result(b, AttemptOutcome.DELIVERED)]
    )
    (owed,) = await queue.dsn_due()
    assert owed.queue_id == queue_id and owed.action.value == "failed"
    assert owed.envelope_from == "dr.a@ours.test"
    assert [(r.address, r.last_code, r.last_text) for r in owed.recipients] == [
        ("a@x.test", 550, "no such user")
    ]
    # The content stays while the DSN (which may return it, RET=FULL) is owed.
    assert await queue.content(queue_id) == CONTENT
    await queue.dsn_sent([a])
    assert await queue.dsn_due() == []
    assert not (await queue.show(queue_id)).content_held
    assert await blob_count(store) == 0


@pytest.mark.parametrize(
    ("sender", "notify", "peer_took_dsn", "fail_owed", "success_owed"),
    [
        ("dr.a@ours.test", None, False, "failed", None),
        ("dr.a@ours.test", frozenset({"NEVER"}), False, None, None),
        ("", None, False, None, None),  # never a DSN for a DSN (RFC 3461 §6.2)
        ("dr.a@ours.test", frozenset({"SUCCESS"}), False, None, "relayed"),
        ("dr.a@ours.test", frozenset({"SUCCESS", "FAILURE"}), True, "failed", None),
    ],
)
async def test_which_dsn_is_owed(
    queue: Queue,
    sender: str,
    notify: frozenset[str] | None,
    peer_took_dsn: bool,
    fail_owed: str | None,
    success_owed: str | None,
) -> None:
    await queue.enqueue(envelope("f@x.test", "s@x.test", sender=sender, notify=notify), CONTENT)
    claim = await queue.claim()
    f, s = sorted(ids_of(claim))
    await queue.record(
        claim.token,
        [
            result(f, AttemptOutcome.FAILED),
            result(s, AttemptOutcome.DELIVERED, peer_took_dsn=peer_took_dsn),
        ],
    )
    rows = {r.address: r.dsn_owed for r in await queue.list_recipients(Selection(everything=True))}
    assert rows == {"f@x.test": fail_owed, "s@x.test": success_owed}


async def test_delay_notice_once_then_expiry(store: Store, clock: Clock) -> None:
    schedule = RetrySchedule(
        delays=(60,), then_every=60, expire_after=600, delay_notice_after=120, jitter=0
    )
    queue = make_queue(store, clock, schedule)
    queue_id = await queue.enqueue(envelope("a@x.test"), CONTENT)

    async def defer() -> QueueState:
        claim = await queue.claim()
        assert len(claim.recipient_ids) == 1, clock.now
        report = await queue.record(
            claim.token, [result(claim.recipient_ids[0], AttemptOutcome.DEFERRED)]
        )
        return report.states[claim.recipient_ids[0]]

    assert await defer() == QueueState.DEFERRED  # t=0
    assert await queue.dsn_due() == []
    clock.advance(seconds=60)
    await defer()  # t=60: not yet 120 s
    assert await queue.dsn_due() == []
    clock.advance(seconds=60)
    await defer()  # t=120: the delay notice is owed
    (owed,) = await queue.dsn_due()
    assert owed.action.value == "delayed" and owed.recipients[0].delay_dsn_sent
    await queue.dsn_sent(r.id for r in owed.recipients)
    for _ in range(7):  # t=180 … 540: deferred, no second delay notice
        clock.advance(seconds=60)
        assert await defer() == QueueState.DEFERRED
        assert await queue.dsn_due() == []
    clock.advance(seconds=60)  # t=600: the last attempt, at the expiry itself
    assert await defer() == QueueState.EXPIRED
    (owed,) = await queue.dsn_due()
    assert owed.action.value == "failed" and owed.recipients[0].state is QueueState.EXPIRED
    assert (await queue.show(queue_id)).recipients[0].attempts == 11  # t=0, 60 … 600
    clock.advance(days=1)
    assert (await queue.claim()).batches == ()  # expired is final


# --- crashes -----------------------------------------------------------------------------------


async def test_recover_after_a_crash_and_stale_results_ignored(
    store_url: str, store: Store, cipher: BlobCipher, clock: Clock
) -> None:
    queue = make_queue(store, clock)
    queue_id = await queue.enqueue(envelope("a@x.test", "b@y.test"), CONTENT)
    dead = await queue.claim()  # the worker that took these dies without reporting
    assert len(ids_of(dead)) == 2
    await store.close()
    async with await Store.open(store_url, cipher) as restarted:
        queue = make_queue(restarted, clock)
        clock.advance(minutes=4)
        assert await queue.recover_in_flight() == 0  # the lease still runs: maybe alive
        assert (await queue.claim()).batches == ()
        clock.advance(minutes=1)
        assert await queue.recover_in_flight() == 2
        rows = await queue.list_recipients(Selection(queue_ids=(queue_id,)))
        assert {(r.state, r.attempts) for r in rows} == {(QueueState.QUEUED, 0)}
        again = await queue.claim()
        assert ids_of(again) == ids_of(dead) and again.token != dead.token
        # The dead worker's results, if they ever came, no longer count.
        late = await queue.record(
            dead.token, [result(rid, AttemptOutcome.FAILED) for rid in ids_of(dead)]
        )
        assert late.applied == () and set(late.stale) == ids_of(dead)
        done = await queue.record(
            again.token, [result(rid, AttemptOutcome.DELIVERED) for rid in ids_of(again)]
        )
        assert set(done.applied) == ids_of(dead)
        async with restarted.read_session() as session:
            attempts = await session.scalar(select(func.count()).select_from(QueueAttemptRow))
            (event,) = await audit.recent(session, 5, "queue.recover")
        assert attempts == 2 and event.details is not None and event.details["recipients"] == 2


# --- content shared between messages ------------------------------------------------------------


async def test_shared_content_is_kept_until_its_last_user_is_done(
    queue: Queue, store: Store
) -> None:
    first = await queue.enqueue(envelope("a@x.test"), CONTENT)
    second = await queue.enqueue(envelope("b@y.test"), CONTENT)
    assert await blob_count(store) == 1  # stored once
    claim = await queue.claim()
    by_address = {r.address: r.id for b in claim.batches for m in b.messages for r in m.recipients}
    await queue.record(claim.token, [result(by_address["a@x.test"], AttemptOutcome.DELIVERED)])
    assert not (await queue.show(first)).content_held
    assert await blob_count(store) == 1  # the second message still needs it
    assert await queue.content(second) == CONTENT
    await queue.record(claim.token, [result(by_address["b@y.test"], AttemptOutcome.DELIVERED)])
    assert await blob_count(store) == 0


async def test_content_used_elsewhere_in_the_store_is_kept(queue: Queue, store: Store) -> None:
    queue_id = await queue.enqueue(envelope("a@x.test"), CONTENT)
    async with store.session() as session:
        blob_id = await blobs.put_blob(session, store.cipher, CONTENT)  # the same bytes, found
        session.add(
            DsnRequestRow(
                blob_id=blob_id,
                envelope_from="x@ours.test",
                recipient="y@ours.test",
                state="pending",
            )
        )
        await session.commit()
    claim = await queue.claim()
    await queue.record(claim.token, [result(claim.recipient_ids[0], AttemptOutcome.DELIVERED)])
    assert not (await queue.show(queue_id)).content_held
    assert await blob_count(store) == 1  # still referenced by the DSN request
    async with store.read_session() as session:
        assert await blobs.get_blob(session, store.cipher, blob_id) == CONTENT


async def test_contents_of_several_messages_in_one_read(queue: Queue) -> None:
    first = await queue.enqueue(envelope("a@x.test"), CONTENT)
    second = await queue.enqueue(envelope("b@x.test"), CONTENT + b"second\r\n")
    released = await queue.enqueue(envelope("c@x.test"), b"Subject: c\r\n\r\nc\r\n")
    claim = await queue.claim()
    (last,) = [
        r.id for b in claim.batches for m in b.messages if m.id == released for r in m.recipients
    ]
    await queue.record(claim.token, [result(last, AttemptOutcome.DELIVERED)])
    got = await queue.contents([first, second, released, 999_999])
    assert got == {first: CONTENT, second: CONTENT + b"second\r\n"}  # released, unknown: absent


# --- administration ----------------------------------------------------------------------------


async def test_retry_now_delete_and_purge(queue: Queue, store: Store, clock: Clock) -> None:
    waiting = await queue.enqueue(envelope("a@x.test", "b@y.test"), CONTENT)
    claim = await queue.claim()
    await queue.record(
        claim.token, [result(rid, AttemptOutcome.DEFERRED) for rid in claim.recipient_ids]
    )
    busy = await queue.enqueue(envelope("c@x.test"), CONTENT + b"busy")
    in_flight = await queue.claim()
    assert len(in_flight.recipient_ids) == 1
    with pytest.raises(QueueError, match="select recipients"):
        await queue.retry_now(Selection(), "cli:test")
    assert await queue.retry_now(Selection(domain="X.TEST"), "cli:test") == 1
    due = await queue.claim()
    assert [r.address for b in due.batches for m in b.messages for r in m.recipients] == [
        "a@x.test"
    ]
    await queue.record(due.token, [result(due.recipient_ids[0], AttemptOutcome.DELIVERED)])
    # Delete: the in-flight recipient is kept, the deferred one goes, without a DSN.
    removed, kept = await queue.delete(Selection(everything=True), "cli:test")
    assert (removed, kept) == (2, 1)
    rows = await queue.list_recipients(Selection(everything=True))
    assert [(r.queue_id, r.address) for r in rows] == [(busy, "c@x.test")]
    with pytest.raises(NotFound):
        await queue.show(waiting)
    assert await queue.dsn_due() == []
    # Purge: only finished messages, finished long enough ago.
    await queue.record(in_flight.token, [result(in_flight.recipient_ids[0], AttemptOutcome.FAILED)])
    await queue.dsn_sent(in_flight.recipient_ids)
    clock.advance(hours=1)
    assert await queue.purge_finished(timedelta(days=1), "cli:test") == 0
    assert await queue.purge_finished(timedelta(minutes=30), "cli:test") == 1
    assert await queue.list_recipients(Selection(everything=True)) == []
    assert await blob_count(store) == 0
    async with store.read_session() as session:
        events = {e.event: e for e in reversed(await audit.recent(session, 50))}  # newest wins
    assert events["queue.delete"].actor == "cli:test"
    assert events["queue.delete"].details == {
        "recipients": 2,
        "messages": [waiting],
        "in_flight_kept": 1,
    }
    assert events["queue.retry"].target == "domain x.test"
    assert events["queue.purge"].details == {"messages": 1, "ids": [busy]}


async def test_purge_keeps_messages_owing_a_dsn(queue: Queue) -> None:
    await queue.enqueue(envelope("a@x.test"), CONTENT)
    claim = await queue.claim()
    await queue.record(claim.token, [result(claim.recipient_ids[0], AttemptOutcome.FAILED)])
    assert await queue.purge_finished(timedelta(0), "cli:test") == 0
    await queue.dsn_sent(claim.recipient_ids)
    assert await queue.purge_finished(timedelta(0), "cli:test") == 1


async def test_counts_and_filters(queue: Queue) -> None:
    await queue.enqueue(envelope("a@x.test", "b@y.test"), CONTENT)
    claim = await queue.claim(limit=1)
    await queue.record(claim.token, [result(claim.recipient_ids[0], AttemptOutcome.FAILED)])
    counts = await queue.counts()
    assert counts["failed"] == 1 and counts["queued"] == 1 and sum(counts.values()) == 2
    failed = await queue.list_recipients(Selection(state=QueueState.FAILED))
    assert [r.address for r in failed] == ["a@x.test"]
    assert [r.address for r in await queue.list_recipients(Selection(recipient="B@Y.test"))] == [
        "b@y.test"
    ]
