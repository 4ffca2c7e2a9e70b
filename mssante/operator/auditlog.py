"""Audit events from the network side, written in batches off the session's path.

A refused peer must leave a trace, but a flood of refusals must not become a flood of
synchronous database commits: sessions hand events to `AuditSink.record` (never blocks) and
one task writes whatever accumulated in one transaction. The buffer is bounded; past it,
events are counted as dropped and logged, never allowed to exhaust memory.
Deliveries write their own audit rows inside their transaction (they must be atomic with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client import Counter

from mssante.operator.store import audit
from mssante.operator.store.db import Store
from mssante.operator.store.schema import Outcome

log = logging.getLogger("mssante.audit")

MAX_BUFFER = 10_000
FLUSH_INTERVAL = 0.2

DROPPED = Counter("mssante_audit_dropped_total", "Audit events dropped: buffer full or DB down")


@dataclass(frozen=True)
class AuditRecord:
    event: str
    outcome: Outcome
    actor: str | None = None
    peer_ip: str | None = None
    peer_dn: str | None = None
    target: str | None = None
    details: Mapping[str, object] | None = None


class AuditSink:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._buffer: list[AuditRecord] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # One write at a time: a flush() that finds the buffer empty must still wait for the
        # batch the background task is writing (callers rely on flush() meaning "written").
        self._writing = asyncio.Lock()

    def record(self, item: AuditRecord) -> None:
        if len(self._buffer) >= MAX_BUFFER:
            DROPPED.inc()
            log.warning("audit buffer full, event dropped", extra={"event": item.event})
            return
        self._buffer.append(item)
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-sink")

    async def close(self) -> None:
        """Write what is buffered, then stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()

    async def flush(self) -> None:
        async with self._writing:
            await self._write()

    async def _write(self) -> None:
        batch, self._buffer = self._buffer, []
        if not batch:
            return
        try:
            traces = [
                audit.Trace(
                    item.event,
                    item.outcome,
                    item.actor,
                    item.peer_ip,
                    item.peer_dn,
                    item.target,
                    item.details,
                )
                for item in batch
            ]
            async with self._store.session() as session, session.begin():
                await audit.record_many(session, traces)  # one statement for the batch
        except Exception:
            # The database is down: keep the events for the next try, within the bound.
            room = MAX_BUFFER - len(self._buffer)
            kept = batch[:room]
            DROPPED.inc(len(batch) - len(kept))
            self._buffer[:0] = kept
            self._wake.set()  # retry at the next flush interval
            log.warning(
                "audit events not written, will retry",
                exc_info=True,
                extra={"pending": len(self._buffer)},
            )

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(FLUSH_INTERVAL)  # gather a batch
            await self.flush()
