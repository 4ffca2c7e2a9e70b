"""The audit trail: every exchange and every access, traced (MSSanté traceability).

Events are appended in the caller's transaction, so the trace of an action commits or rolls
back with the action itself. Much of what is recorded comes from the network (peer DNs,
addresses given in SMTP commands): every field is bounded here so a hostile peer cannot make
a trace fail or grow without limit. Message content is never recorded, only facts about it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from mssante.operator.store.schema import AuditEventRow, Base, Outcome, utcnow

MAX_DETAILS_CHARS = 16_384
MAX_RECENT = 10_000
_AUDIT_EVENTS = Base.metadata.tables["audit_events"]

# Dotted lower-case names: `mailbox.add`, `smtp.reject`, `imap.login`.
_EVENT = re.compile(r"^[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+$")


@dataclass(frozen=True)
class AuditEvent:
    id: int
    at: datetime
    event: str
    outcome: Outcome
    actor: str | None
    peer_ip: str | None
    peer_dn: str | None
    target: str | None
    details: dict[str, Any] | None


def _clip(value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _details_json(details: Mapping[str, object] | None) -> str | None:
    if details is None:
        return None
    # default=str: an odd value (a datetime, an exception) must not make the trace fail.
    text = json.dumps(dict(details), ensure_ascii=False, sort_keys=True, default=str)
    if len(text) > MAX_DETAILS_CHARS:
        text = json.dumps({"truncated": True, "original_chars": len(text)})
    return text


@dataclass(frozen=True)
class Trace:
    """An event to record (`record_many`); the fields mean what `record`'s arguments do."""

    event: str
    outcome: Outcome | str
    actor: str | None = None
    peer_ip: str | None = None
    peer_dn: str | None = None
    target: str | None = None
    details: Mapping[str, object] | None = None


def _row(trace: Trace, at: datetime) -> dict[str, object]:
    event = trace.event
    if len(event) > 64 or not _EVENT.match(event):
        raise ValueError(f"audit event {event!r}: expected a dotted name such as 'mailbox.add'")
    return {
        "at": at,
        "event": event,
        "outcome": Outcome(trace.outcome).value,
        "actor": _clip(trace.actor, 320),
        "peer_ip": _clip(trace.peer_ip, 45),
        "peer_dn": _clip(trace.peer_dn, 1024),
        "target": _clip(trace.target, 1024),
        "details": _details_json(trace.details),
    }


async def record(
    session: AsyncSession,
    event: str,
    outcome: Outcome | str,
    actor: str | None = None,
    peer_ip: str | None = None,
    peer_dn: str | None = None,
    target: str | None = None,
    details: Mapping[str, object] | None = None,
) -> None:
    """Append one event to the trail (in the caller's transaction)."""
    trace = Trace(event, outcome, actor, peer_ip, peer_dn, target, details)
    await session.execute(insert(AuditEventRow).values(**_row(trace, utcnow())))


async def record_many(session: AsyncSession, traces: Sequence[Trace]) -> None:
    """Append several events in one statement (in the caller's transaction)."""
    if not traces:
        return
    now = utcnow()
    rows = [_row(trace, now) for trace in traces]
    await session.execute(insert(_AUDIT_EVENTS), rows)


async def recent(
    session: AsyncSession, limit: int = 100, event: str | None = None
) -> list[AuditEvent]:
    """The latest events, newest first, optionally only those named `event`."""
    if not 1 <= limit <= MAX_RECENT:
        raise ValueError(f"limit must be between 1 and {MAX_RECENT}")
    query = select(AuditEventRow).order_by(AuditEventRow.at.desc(), AuditEventRow.id.desc())
    if event is not None:
        query = query.where(AuditEventRow.event == event)
    result = await session.execute(query.limit(limit))
    return [
        AuditEvent(
            id=row.id,
            at=row.at,
            event=row.event,
            outcome=Outcome(row.outcome),
            actor=row.actor,
            peer_ip=row.peer_ip,
            peer_dn=row.peer_dn,
            target=row.target,
            details=json.loads(row.details) if row.details is not None else None,
        )
        for row in result.scalars()
    ]
