"""Folder change notices: the one helper every write path calls when it changes a folder's
messages or flags, so that IDLE sessions (imap/notify.py) learn of it.

`folders_changed(session, ids)` is awaited inside the writing transaction:

- on PostgreSQL it issues `pg_notify('mssante_folders', '<id>,<id>…')`, which the server sends
  to every LISTENing connection only when the transaction commits (and never if it rolls
  back): operator processes sharing the database hear it;
- on both databases, once the transaction has committed, the ids are handed to the callbacks
  registered in this process for that database (`listen_local`), so that a writer of this
  process (Delivery, an IMAP session) wakes its IDLE sessions at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any, Final

from sqlalchemy import event, func, select
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

log = logging.getLogger("mssante.store")

CHANNEL: Final = "mssante_folders"
# PostgreSQL refuses payloads of 8000 bytes or more (NOTIFY); stay clear of it.
MAX_PAYLOAD: Final = 7900

_PENDING: Final = "mssante.folders_changed"

Callback = Callable[[Collection[int]], None]
_local: dict[str, set[Callback]] = {}


def database_key(url: URL) -> str:
    """Which database a callback listens to: the URL without the driver and password."""
    return url.set(drivername=url.get_backend_name(), password=None).render_as_string()


def listen_local(url: URL, callback: Callback) -> None:
    _local.setdefault(database_key(url), set()).add(callback)


def unlisten_local(url: URL, callback: Callback) -> None:
    key = database_key(url)
    callbacks = _local.get(key)
    if callbacks is not None:
        callbacks.discard(callback)
        if not callbacks:
            del _local[key]


def payloads(folder_ids: Iterable[int]) -> Iterator[str]:
    """Comma-separated ids, each payload under MAX_PAYLOAD bytes."""
    chunk: list[str] = []
    size = 0
    for folder_id in sorted(set(folder_ids)):
        text = str(folder_id)
        if chunk and size + len(text) + 1 > MAX_PAYLOAD:
            yield ",".join(chunk)
            chunk, size = [], 0
        chunk.append(text)
        size += len(text) + 1
    if chunk:
        yield ",".join(chunk)


def parse_payload(payload: str) -> list[int]:
    """The ids of a payload; anything else in it (another program's NOTIFY) is ignored."""
    ids = []
    for piece in payload.split(",")[: MAX_PAYLOAD // 2]:
        if piece.isdigit() and len(piece) <= 19:
            ids.append(int(piece))
    return ids


async def folders_changed(session: AsyncSession, folder_ids: Iterable[int]) -> None:
    """Within a write transaction: these folders changed (new, removed or re-flagged messages,
    a folder deleted). Notices go out only if the transaction commits."""
    ids = set(folder_ids)
    if not ids:
        return
    sync_session = session.sync_session
    pending: set[int] | None = sync_session.info.get(_PENDING)
    if pending is None:
        pending = sync_session.info[_PENDING] = set()
        event.listen(sync_session, "after_commit", _committed)
        event.listen(sync_session, "after_rollback", _rolled_back)
    pending |= ids
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        for payload in payloads(ids):
            # PostgreSQL (NOTIFY): a notice issued in a transaction is sent when it commits.
            await session.execute(select(func.pg_notify(CHANNEL, payload)))


def _committed(sync_session: Session) -> None:
    pending: set[int] = sync_session.info.get(_PENDING, set())
    if not pending:
        return
    ids = frozenset(pending)
    pending.clear()
    bind: Any = sync_session.get_bind()
    for callback in list(_local.get(database_key(bind.url), ())):
        try:
            callback(ids)
        except Exception:
            # The transaction has committed: a failing listener must not look like a failed
            # write to the writer (Delivery would retry a delivery already stored).
            log.exception("folder change listener failed")


def _rolled_back(sync_session: Session) -> None:
    pending: set[int] | None = sync_session.info.get(_PENDING)
    if pending is not None:
        pending.clear()
