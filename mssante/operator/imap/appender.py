"""IMAP APPEND's writes, group-committed across the sessions of a process.

A session seals the messages of an APPEND (or of a MULTIAPPEND, rfc/3502: all or none) in a
worker thread, then hands them to the process's committer (`operator.groupcommit`, as local
delivery does): whatever every session queued meanwhile is written in one transaction, and
each APPEND is answered `OK` only once that transaction has committed. Eight connections
appending at once thus share fsyncs instead of queueing for them, and so do the APPENDs one
client pipelines with LITERAL+ (the session submits those it has read together).

Quota is judged inside the transaction, request by request in queue order, counting what the
requests before it in the batch add: a request that would go over gets `None` (the session
answers `NO [OVERQUOTA]`) and the others in the batch are still stored.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from mssante.operator.groupcommit import GroupCommitter
from mssante.operator.imap import queries
from mssante.operator.store import blobs
from mssante.operator.store import messages as store_messages
from mssante.operator.store.crypto import SealedBlob, SealedRecord
from mssante.operator.store.db import Store
from mssante.operator.store.errors import StoreError
from mssante.operator.store.notify import folders_changed


@dataclass(frozen=True)
class NewMessage:
    blob: SealedBlob
    meta: SealedRecord
    size: int
    internal_date: dt.datetime
    flags: tuple[str, ...]


@dataclass(frozen=True)
class Request:
    """One APPEND command: its messages go into `folder_id` together or not at all, charged
    to `owner_id`'s quota (the owner's for a shared folder)."""

    folder_id: int
    owner_id: int
    messages: tuple[NewMessage, ...]

    @property
    def size(self) -> int:
        return sum(m.size for m in self.messages)


Result = tuple[int, ...] | None  # the new UIDs, in order; None: over quota, nothing stored


class AppendUnavailable(StoreError):  # noqa: N818 - the store errors' naming
    """The APPEND could not be stored (the database failed): nothing of it was written."""


async def write(
    session: AsyncSession, requests: Sequence[Request], default_quota: int
) -> list[Result]:
    """Store the requests in the open transaction (the committer commits); results in order.
    `default_quota`: octets for a mailbox without its own quota (0: none)."""
    added: dict[int, int] = {}
    usage: dict[int, queries.Usage] = {}
    accepted: list[Request] = []
    results: list[Result] = []
    for request in requests:
        owner = request.owner_id
        if owner not in usage:
            usage[owner] = await queries.mailbox_usage(session, owner)
        quota = usage[owner].quota_bytes
        limit = default_quota if quota is None else quota
        after = usage[owner].used_bytes + added.get(owner, 0) + request.size
        if limit > 0 and after > limit:
            results.append(None)
            continue
        added[owner] = added.get(owner, 0) + request.size
        accepted.append(request)
        results.append(())
    if not accepted:
        return results
    ids = await blobs.put_sealed_with_meta(
        session, [(m.blob, m.size, m.meta) for r in accepted for m in r.messages]
    )
    stored = await store_messages.append_messages(
        session,
        [
            store_messages.NewMessage(
                folder_id=r.folder_id,
                blob_id=ids[m.blob.digest],
                size=m.size,
                internal_date=m.internal_date,
                flags=m.flags,
            )
            for r in accepted
            for m in r.messages
        ],
    )
    await folders_changed(session, {r.folder_id for r in accepted})
    position = 0
    for index, result in enumerate(results):
        if result is None:
            continue
        count = len(requests[index].messages)
        results[index] = tuple(m.uid for m in stored[position : position + count])
        position += count
    return results


def committer(store: Store, default_quota: int) -> GroupCommitter[Request, Result]:
    """The process's APPEND committer (one per IMAP server)."""

    async def write_batch(session: AsyncSession, requests: Sequence[Request]) -> list[Result]:
        return await write(session, requests, default_quota)

    return GroupCommitter(
        store,
        write_batch,
        name="imap-append-committer",
        size=lambda r: r.size,
        failure=lambda: AppendUnavailable("APPEND not stored"),
    )
