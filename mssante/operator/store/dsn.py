"""DSN parameters of locally delivered recipients (RFC 3461), kept for later receipts.

Local delivery cannot fail once it has committed, so the only notification it can owe is a
"delivered" DSN (RFC 3464 Action: delivered) for a recipient given NOTIFY=SUCCESS. Delivery
writes one row per recipient mailbox, in its transaction, whenever the envelope carried DSN
parameters; the outbound queue later sends what is `pending` and marks it `sent`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mssante.operator.store.schema import Base, DsnRequestRow, DsnRet, DsnState, utcnow

_DSN_REQUESTS = Base.metadata.tables["dsn_requests"]
MAX_LIST = 10_000


@dataclass(frozen=True)
class NewDsnRequest:
    message_id: int
    blob_id: int
    envelope_from: str  # '' for the null reverse-path
    recipient: str
    notify: frozenset[str] | None  # NOTIFY keywords, upper-case; None if not given
    orcpt: str | None
    ret: DsnRet | None
    envid: str | None


@dataclass(frozen=True)
class DsnRequest:
    id: int
    message_id: int | None
    blob_id: int
    envelope_from: str
    recipient: str
    notify: frozenset[str] | None
    orcpt: str | None
    ret: DsnRet | None
    envid: str | None
    state: DsnState
    created_at: datetime


def owed_state(envelope_from: str, notify: frozenset[str] | None) -> DsnState:
    """`pending` when a success DSN is owed: NOTIFY contains SUCCESS (RFC 3461 §4.1) and there
    is a reverse-path to send it to (RFC 5321 §4.5.5: never to the null path)."""
    if notify is not None and "SUCCESS" in notify and envelope_from:
        return DsnState.PENDING
    return DsnState.NOT_REQUESTED


def _notify_text(notify: frozenset[str] | None) -> str | None:
    if notify is None:
        return None
    # A stable order, the one RFC 3461 §4.1 lists them in.
    order = ["NEVER", "SUCCESS", "FAILURE", "DELAY"]
    return ",".join(sorted(notify, key=lambda k: (order.index(k) if k in order else 4, k)))


def _notify_set(text: str | None) -> frozenset[str] | None:
    return None if text is None else frozenset(k for k in text.split(",") if k)


async def record_requests(session: AsyncSession, requests: Sequence[NewDsnRequest]) -> None:
    """Store the parameters (in the caller's transaction)."""
    if not requests:
        return
    now = utcnow()
    await session.execute(
        insert(_DSN_REQUESTS),
        [
            {
                "message_id": r.message_id,
                "blob_id": r.blob_id,
                "envelope_from": r.envelope_from,
                "recipient": r.recipient,
                "orcpt": r.orcpt,
                "notify": _notify_text(r.notify),
                "ret": r.ret.value if r.ret is not None else None,
                "envid": r.envid,
                "state": owed_state(r.envelope_from, r.notify).value,
                "created_at": now,
                "updated_at": now,
            }
            for r in requests
        ],
    )


def _request(row: DsnRequestRow) -> DsnRequest:
    return DsnRequest(
        id=row.id,
        message_id=row.message_id,
        blob_id=row.blob_id,
        envelope_from=row.envelope_from,
        recipient=row.recipient,
        notify=_notify_set(row.notify),
        orcpt=row.orcpt,
        ret=DsnRet(row.ret) if row.ret is not None else None,
        envid=row.envid,
        state=DsnState(row.state),
        created_at=row.created_at,
    )


async def list_requests(
    session: AsyncSession,
    state: DsnState | None = None,
    message_id: int | None = None,
    limit: int = 100,
) -> list[DsnRequest]:
    """Oldest first; `state=PENDING` is the work list of the DSN sender."""
    if not 1 <= limit <= MAX_LIST:
        raise ValueError(f"limit must be between 1 and {MAX_LIST}")
    query = select(DsnRequestRow).order_by(DsnRequestRow.created_at, DsnRequestRow.id)
    if state is not None:
        query = query.where(DsnRequestRow.state == DsnState(state).value)
    if message_id is not None:
        query = query.where(DsnRequestRow.message_id == message_id)
    result = await session.execute(query.limit(limit))
    return [_request(row) for row in result.scalars()]


async def mark_sent(session: AsyncSession, ids: Sequence[int]) -> int:
    """Mark pending requests as sent; returns how many changed (others were not pending)."""
    if not ids:
        return 0
    result = await session.execute(
        update(DsnRequestRow)
        .where(DsnRequestRow.id.in_(list(ids)), DsnRequestRow.state == DsnState.PENDING.value)
        .values(state=DsnState.SENT.value, updated_at=utcnow())
        .returning(DsnRequestRow.id)
        .execution_options(synchronize_session=False)
    )
    return len(result.all())
