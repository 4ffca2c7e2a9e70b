"""Per-reader \\Seen in shared and delegated mailboxes (issue 4 §5).

A grantee (a secretary on a PER mailbox, a member of an ORG mailbox) has their own read state
on the messages of the mailbox they were granted: a `private_seen` row says "this reader has
seen this message". The owner's own \\Seen stays in `messages.seen` and is never touched here.

Each function is one or a fixed few statements whatever the number of messages: the set of
messages is given as UID runs, as everywhere in the IMAP queries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlalchemy import ColumnElement, and_, delete, exists, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mssante.operator.store.schema import FolderRow, MessageRow, PrivateSeenRow


def seen_by(reader_id: int) -> ColumnElement[bool]:
    """True for a message (a row of `messages` in the query) this reader has seen."""
    return exists().where(
        PrivateSeenRow.message_id == MessageRow.id, PrivateSeenRow.reader_id == reader_id
    )


def _in_runs(runs: Iterable[tuple[int, int]]) -> ColumnElement[bool]:
    ranges = [MessageRow.uid.between(lo, hi) for lo, hi in runs]
    return or_(*ranges) if ranges else MessageRow.id.is_(None)


async def seen_uids(
    session: AsyncSession, folder_id: int, reader_id: int, runs: Iterable[tuple[int, int]]
) -> set[int]:
    """UIDs among the runs that this reader has seen."""
    result = await session.execute(
        select(MessageRow.uid)
        .join(PrivateSeenRow, PrivateSeenRow.message_id == MessageRow.id)
        .where(
            MessageRow.folder_id == folder_id,
            PrivateSeenRow.reader_id == reader_id,
            _in_runs(runs),
        )
    )
    return {int(uid) for uid in result.scalars()}


async def unseen_count(session: AsyncSession, folder_id: int, reader_id: int) -> int:
    count = await session.scalar(
        select(func.count(MessageRow.id)).where(
            MessageRow.folder_id == folder_id, ~seen_by(reader_id)
        )
    )
    return int(count or 0)


async def first_unseen_uid(session: AsyncSession, folder_id: int, reader_id: int) -> int | None:
    uid = await session.scalar(
        select(func.min(MessageRow.uid)).where(
            MessageRow.folder_id == folder_id, ~seen_by(reader_id)
        )
    )
    return None if uid is None else int(uid)


async def set_seen(
    session: AsyncSession, folder_id: int, reader_id: int, wanted: Mapping[int, bool]
) -> dict[int, int]:
    """Give this reader's \\Seen the value `wanted[uid]` on each message; the new MODSEQ of
    each message whose state changed, by UID.

    A change takes one new MODSEQ from the folder's counter and the changed messages get it
    (rfc/7162 §3.1.1), so a CONDSTORE client of the reader resyncs; the owner's clients see a
    MODSEQ move with no flag change, which rfc/7162 allows (the value only has to grow). The
    caller commits.
    """
    if not wanted:
        return {}
    uids = sorted(wanted)
    rows = (
        await session.execute(
            select(MessageRow.id, MessageRow.uid, seen_by(reader_id)).where(
                MessageRow.folder_id == folder_id,
                MessageRow.uid.between(uids[0], uids[-1]),
            )
        )
    ).all()
    add: list[int] = []
    remove: list[int] = []
    changed: dict[int, int] = {}
    for message_id, uid, seen in rows:
        target = wanted.get(int(uid))
        if target is None or bool(seen) == target:
            continue
        (add if target else remove).append(int(message_id))
        changed[int(uid)] = int(message_id)
    if not changed:
        return {}
    if add:
        await session.execute(
            insert(PrivateSeenRow), [{"message_id": m, "reader_id": reader_id} for m in add]
        )
    if remove:
        await session.execute(
            delete(PrivateSeenRow).where(
                PrivateSeenRow.reader_id == reader_id, PrivateSeenRow.message_id.in_(remove)
            )
        )
    modseq = (
        await session.execute(
            update(FolderRow)
            .where(FolderRow.id == folder_id)
            .values(highest_modseq=FolderRow.highest_modseq + 1)
            .returning(FolderRow.highest_modseq)
            .execution_options(synchronize_session=False)
        )
    ).scalar_one()
    await session.execute(
        update(MessageRow)
        .where(and_(MessageRow.id.in_(list(changed.values()))))
        .values(modseq=modseq)
        .execution_options(synchronize_session=False)
    )
    return dict.fromkeys(changed, int(modseq))
