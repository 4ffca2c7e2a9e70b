"""IDLE wake-ups (rfc/2177), keyed by folder id: ONE watcher per process for every idling
session, so that an idle connection costs a callback in a dict, not a task or a query.

Sources of wake-ups:

- writers of this process (IMAP sessions, Delivery) call `store.notify.folders_changed` in
  their transaction; after the commit the ids reach `FolderWatcher.wake` directly;
- PostgreSQL: the watcher holds one dedicated connection that LISTENs on `mssante_folders`,
  where every writer's transaction NOTIFYs its folder ids at commit — so a message delivered by
  another operator process wakes the sessions idling here. If that connection drops, it
  reconnects with backoff and then wakes every subscriber once (notices may have been missed);
- SQLite (one host; another process may write, e.g. the CLI): one query every
  `imap.idle_poll_seconds` reads `(uidnext, highest_modseq)` of every watched folder and wakes
  the subscribers of those that moved.

A woken session re-reads its folder (`ImapSession._refresh`): a spurious wake costs one query
and sends nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection
from typing import Any, Final

import asyncpg
from sqlalchemy import select

from mssante.operator.store import notify as store_notify
from mssante.operator.store.db import Store
from mssante.operator.store.schema import FolderRow

log = logging.getLogger("mssante.imap")

Wake = Callable[[], None]

RECONNECT_FIRST_SECONDS: Final = 0.5
RECONNECT_MAX_SECONDS: Final = 30.0
KEEPALIVE_SECONDS: Final = 30.0  # a silent half-open TCP connection is found by a ping
CONNECT_TIMEOUT_SECONDS: Final = 10.0
POLL_BATCH: Final = 500  # folder ids per poll query (bounded IN list)


class FolderWatcher:
    def __init__(self, store: Store, poll_seconds: float) -> None:
        self.store = store
        self.poll_seconds = poll_seconds
        self._subscribers: dict[int, set[Wake]] = {}
        self._task: asyncio.Task[None] | None = None
        self._markers: dict[int, tuple[int, int]] = {}
        self.listening = asyncio.Event()  # PostgreSQL: LISTEN is in place (tests wait on it)
        self.reconnects = 0

    # --- subscriptions ------------------------------------------------------------------------

    def subscribe(self, folder_id: int, wake: Wake) -> None:
        self._subscribers.setdefault(folder_id, set()).add(wake)

    def unsubscribe(self, folder_id: int, wake: Wake) -> None:
        wakes = self._subscribers.get(folder_id)
        if wakes is not None:
            wakes.discard(wake)
            if not wakes:
                del self._subscribers[folder_id]
                self._markers.pop(folder_id, None)

    def wake(self, folder_ids: Collection[int]) -> None:
        for folder_id in folder_ids:
            for wake in list(self._subscribers.get(folder_id, ())):
                wake()

    def wake_all(self) -> None:
        self.wake(list(self._subscribers))

    def __len__(self) -> int:
        return sum(len(w) for w in self._subscribers.values())

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        store_notify.listen_local(self.store.engine.url, self.wake)
        if self.store.dialect == "postgresql":
            self._task = asyncio.create_task(self._listen(), name="imap-folder-listen")
        else:
            self._task = asyncio.create_task(self._poll(), name="imap-folder-poll")

    async def close(self) -> None:
        store_notify.unlisten_local(self.store.engine.url, self.wake)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # --- PostgreSQL: LISTEN -------------------------------------------------------------------

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.wake(store_notify.parse_payload(payload))

    async def _listen(self) -> None:
        url = self.store.engine.url
        params: dict[str, Any] = url.translate_connect_args(username="user")
        params.update(url.query)
        delay = RECONNECT_FIRST_SECONDS
        connected_before = False
        while True:
            try:
                conn = await asyncpg.connect(
                    **params,
                    timeout=CONNECT_TIMEOUT_SECONDS,
                    server_settings={"application_name": "mssante-imap-listen"},
                )
            except Exception as exc:  # any failure: retry; IDLE must not lose push for good
                log.warning(
                    "IDLE LISTEN connection failed, retrying",
                    extra={"error": type(exc).__name__, "retry_seconds": delay},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)
                continue
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn, event=lost: event.set())
            try:
                await conn.add_listener(store_notify.CHANNEL, self._notified)
                delay = RECONNECT_FIRST_SECONDS
                if connected_before:
                    self.reconnects += 1
                    # Notices sent while we were away are lost: every idler re-reads once.
                    self.wake_all()
                connected_before = True
                self.listening.set()
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), KEEPALIVE_SECONDS)
                    if not lost.is_set():
                        await conn.execute("SELECT 1", timeout=CONNECT_TIMEOUT_SECONDS)
            except Exception as exc:  # the connection broke while listening or pinging
                log.warning("IDLE LISTEN connection lost", extra={"error": type(exc).__name__})
            finally:
                self.listening.clear()
                with contextlib.suppress(Exception):
                    conn.terminate()
            log.warning("IDLE LISTEN connection closed, reconnecting")

    # --- SQLite: one poll for every watched folder --------------------------------------------

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self._poll_once()
            except Exception:  # an unavailable store: try again at the next tick
                log.warning("IDLE poll failed", exc_info=True)

    async def _poll_once(self) -> None:
        watched = list(self._subscribers)
        if not watched:
            return
        moved: list[int] = []
        async with self.store.read_session() as session:
            for start in range(0, len(watched), POLL_BATCH):
                batch = watched[start : start + POLL_BATCH]
                rows = await session.execute(
                    select(FolderRow.id, FolderRow.uidnext, FolderRow.highest_modseq).where(
                        FolderRow.id.in_(batch)
                    )
                )
                # A folder deleted by another process has no row: its idlers re-read once.
                markers = dict.fromkeys(batch, (-1, -1))
                for folder_id, uidnext, modseq in rows:
                    markers[folder_id] = (int(uidnext), int(modseq))
                for folder_id, marker in markers.items():
                    # First sight wakes too: a change between the session's own read at IDLE
                    # and this poll would otherwise wait for the next one.
                    if self._markers.get(folder_id) != marker:
                        self._markers[folder_id] = marker
                        moved.append(folder_id)
        self.wake(moved)
