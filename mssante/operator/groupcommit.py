"""Group commit: one transaction, and one fsync, for every write queued meanwhile.

Writers (a relay delivery, an IMAP APPEND…) prepare their work outside any transaction, then
`submit` it and wait. One committer task per `GroupCommitter` takes whatever is queued, writes
it with the caller's `write` function in a single transaction, commits, and only then hands
each writer its result: nothing is acknowledged before it is durable.

- **Lingering.** A transaction costs about as much for one item as for ten, so the committer
  waits a moment before starting one: until as many items are queued as were in flight when
  the last transaction ended, and at most `linger_seconds`. A lone writer is never kept
  waiting: it is all that was in flight.
- **Isolation of failures.** A batch whose transaction fails is retried one item at a time,
  so one bad item cannot fail the others; when the database does not answer at all, the rest
  are refused at once. Refusals that are part of the answer (over quota…) are results, not
  exceptions: `write` returns them and the others in the batch still commit.
- **Abandoned items.** An item whose writer went away before it was taken (its future was
  cancelled) is dropped: not yet committed, so dropping it loses nothing, and storing it
  would make the client's retry a duplicate.

With SQLite every commit costs an fsync (`synchronous=FULL`), a few milliseconds here, so one
commit per item caps a writer near 200 items a second; a commit for everything queued does
not.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from mssante.operator.store.db import Store

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Stats:
    commits: int  # transactions committed
    items: int  # items written by them
    split: int  # batches retried one item at a time after their transaction failed
    failures: int  # items refused with `failure()` (not stored)


class _Unavailable(Exception):  # noqa: N818 - internal signal, never leaves this module
    """The database could not even be reached: later items need not try."""


@dataclass(frozen=True)
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]


class GroupCommitter(Generic[T, R]):
    """One committer task writing queued items in shared transactions.

    `write(session, items)` stores the items in the open transaction and returns one result
    per item, in order; the committer commits. `size(item)`: octets, to bound a batch.
    `failure()`: the exception a writer gets when its item could not be stored.
    `committed(items, results)`: called after each commit (metrics, caches).
    """

    def __init__(
        self,
        store: Store,
        write: Callable[[AsyncSession, Sequence[T]], Awaitable[list[R]]],
        *,
        name: str,
        size: Callable[[T], int],
        failure: Callable[[], Exception],
        committed: Callable[[Sequence[T], Sequence[R]], None] | None = None,
        failed: Callable[[int], None] | None = None,
        max_items: int = 256,
        max_bytes: int = 64 * 1024 * 1024,
        linger_seconds: float = 0.001,
    ) -> None:
        self._store = store
        self._write_items = write
        self._name = name
        self._size = size
        self._failure = failure
        self._committed = committed
        self._failed = failed
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._linger_seconds = linger_seconds
        self._pending: collections.deque[_Pending[T, R]] = collections.deque()
        self._wake = asyncio.Event()
        self._in_flight = 0  # items committed or queued when the last transaction ended
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._commits = 0
        self._items = 0
        self._split = 0
        self._failures = 0

    @property
    def stats(self) -> Stats:
        return Stats(self._commits, self._items, self._split, self._failures)

    @property
    def closing(self) -> bool:
        return self._closing

    async def start(self) -> None:
        """Start the committer task (`submit` also starts it if needed)."""
        if self._closing:
            raise RuntimeError(f"{self._name} is closed")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self._name)
            self._task.add_done_callback(self._ended)

    async def close(self) -> None:
        """Refuse new items, commit those already queued, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await asyncio.shield(self._task)

    async def submit(self, item: T) -> R:
        """The item's result once its transaction has committed; `failure()` raised if it
        could not be stored (nothing of it is then in the database)."""
        if self._closing:
            raise self._failure()
        if self._task is None:
            await self.start()
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(item, future))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._linger()
            batch = self._take()
            if batch:
                try:
                    await self._commit(batch)
                except Exception:  # a bug here must not leave writers waiting forever
                    log.exception("%s failed", self._name)
                    self._fail(batch)
            self._in_flight = len(batch) + len(self._pending)

    async def _linger(self) -> None:
        target = min(self._in_flight, self._max_items)
        if len(self._pending) >= target or self._closing:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._linger_seconds
        while len(self._pending) < target and not self._closing:
            self._wake.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await self._wake.wait()
            except TimeoutError:
                return

    def _take(self) -> list[_Pending[T, R]]:
        batch: list[_Pending[T, R]] = []
        size = 0
        while self._pending and len(batch) < self._max_items:
            pending = self._pending[0]
            item_size = self._size(pending.item)
            if batch and size + item_size > self._max_bytes:
                break
            self._pending.popleft()
            if pending.future.cancelled():
                continue
            batch.append(pending)
            size += item_size
        return batch

    async def _commit(self, batch: list[_Pending[T, R]]) -> None:
        try:
            await self._write(batch)
        except Exception:
            # Items already resolved were committed (the failure came after the commit,
            # closing the session): retrying them would store them twice.
            batch = [p for p in batch if not p.future.done()]
            if not batch:
                log.warning("%s: error after a commit", self._name, exc_info=True)
                return
            if len(batch) == 1:
                log.warning("%s: not stored", self._name, exc_info=True)
                self._fail(batch)
                return
            self._split += 1
            log.warning(
                "%s: group commit failed, retrying one by one",
                self._name,
                exc_info=True,
                extra={"items": len(batch)},
            )
            for index, pending in enumerate(batch):
                try:
                    await self._write([pending])
                except _Unavailable:
                    refused = len(batch) - index
                    log.warning("%s: database unavailable", self._name, extra={"refused": refused})
                    self._fail(batch[index:])
                    return
                except Exception:
                    log.warning("%s: not stored", self._name, exc_info=True)
                    self._fail([pending])

    async def _write(self, batch: list[_Pending[T, R]]) -> None:
        """Store and commit the batch, then resolve it (before the session is closed: handing
        the connection back to the pool is one more database round trip)."""
        items = [p.item for p in batch]
        async with self._store.session() as session:
            try:
                await session.connection()  # connects and begins (BEGIN IMMEDIATE on SQLite)
            except Exception as exc:
                raise _Unavailable() from exc
            results = await self._write_items(session, items)
            await session.commit()
            self._commits += 1
            if self._committed is not None:
                self._committed(items, results)
            for pending, result in zip(batch, results, strict=True):
                self._items += 1
                if not pending.future.done():
                    pending.future.set_result(result)

    def _fail(self, batch: Sequence[_Pending[T, R]]) -> None:
        self._failures += len(batch)
        if self._failed is not None:
            self._failed(len(batch))
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(self._failure())

    def _ended(self, task: asyncio.Task[None]) -> None:
        # Normally only after close() drained the queue; if the task died, nobody may wait.
        if not task.cancelled() and task.exception() is not None:
            log.error("%s stopped", self._name, exc_info=task.exception())
        pending = list(self._pending)
        self._pending.clear()
        self._fail(pending)
        self._closing = True
