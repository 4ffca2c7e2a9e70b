"""operator/groupcommit.py on a real store (SQLite and PostgreSQL): items queued together
share one commit, a failing item is retried alone and refused alone, an abandoned item is
dropped, close() drains the queue and later items are refused."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from mssante.operator.groupcommit import GroupCommitter
from mssante.operator.store import domains
from mssante.operator.store.db import Store


class RefusedError(Exception):
    pass


async def _write(session: AsyncSession, names: Sequence[str]) -> list[str]:
    """One domain row per item; an item named bad-… breaks its whole transaction."""
    out = []
    for name in names:
        if name.startswith("bad-"):
            raise ValueError(f"cannot store {name}")
        out.append((await domains.add_domain(session, name)).name)
    return out


def _committer(store: Store, committed: list[int]) -> GroupCommitter[str, str]:
    return GroupCommitter(
        store,
        _write,
        name="test-committer",
        size=len,
        failure=lambda: RefusedError("not stored"),
        committed=lambda items, results: committed.append(len(items)),
    )


async def _stored(store: Store) -> set[str]:
    async with store.read_session() as session:
        return {d.name for d in await domains.list_domains(session)}


async def test_items_queued_together_share_one_commit(store: Store) -> None:
    batches: list[int] = []
    committer = _committer(store, batches)
    names = [f"d{i}.example" for i in range(10)]
    results = await asyncio.gather(*(committer.submit(n) for n in names))
    await committer.close()
    assert results == names
    assert batches == [10]  # all ten were queued before the committer ran
    assert committer.stats.commits == 1 and committer.stats.items == 10
    assert await _stored(store) == set(names)


async def test_a_failing_item_is_refused_alone(store: Store) -> None:
    batches: list[int] = []
    committer = _committer(store, batches)
    names = ["a.example", "bad-b.example", "c.example"]
    results = await asyncio.gather(*(committer.submit(n) for n in names), return_exceptions=True)
    await committer.close()
    assert results[0] == "a.example" and results[2] == "c.example"
    assert isinstance(results[1], RefusedError)
    assert batches == [1, 1]  # the batch failed, then the good ones went one by one
    stats = committer.stats
    assert (stats.split, stats.failures, stats.items) == (1, 1, 2)
    assert await _stored(store) == {"a.example", "c.example"}


async def test_abandoned_item_is_dropped_and_close_drains(store: Store) -> None:
    batches: list[int] = []
    committer = _committer(store, batches)
    kept = asyncio.create_task(committer.submit("kept.example"))
    gone = asyncio.create_task(committer.submit("gone.example"))
    await asyncio.sleep(0)  # both queued, the committer not yet run
    gone.cancel()
    await committer.close()  # commits what is queued
    assert await kept == "kept.example"
    assert gone.cancelled()
    assert await _stored(store) == {"kept.example"}
    with pytest.raises(RefusedError):
        await committer.submit("late.example")
    assert await _stored(store) == {"kept.example"}
