"""Appending messages: UID/MODSEQ allocation under concurrency, flags, durability."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from mssante.operator.store import blobs, domains, folders, mailboxes, messages
from mssante.operator.store.db import Store
from mssante.operator.store.errors import NotFound
from mssante.operator.store.schema import MailboxType, MessageRow

DOMAIN = "hopital-x.mssante.fr"
BODY = b"Subject: hello\r\n\r\nbody\r\n"
WHEN = datetime(2025, 3, 12, 9, 30, tzinfo=timezone(timedelta(hours=1)))


@pytest.fixture
async def inbox(store: Store) -> tuple[int, int]:
    """(folder id, blob id) of an INBOX and a stored body."""
    async with store.session() as session:
        await domains.add_domain(session, DOMAIN)
        box = await mailboxes.create_mailbox(session, f"jean@{DOMAIN}", MailboxType.PER)
        folder = await folders.get_folder(session, box.id, "INBOX")
        blob_id = await blobs.put_blob(session, store.cipher, BODY)
        await session.commit()
    return folder.id, blob_id


async def _rows(store: Store, folder_id: int) -> list[MessageRow]:
    async with store.read_session() as session:
        result = await session.scalars(
            select(MessageRow).where(MessageRow.folder_id == folder_id).order_by(MessageRow.uid)
        )
        return list(result)


async def test_append_allocates_uid_and_modseq(store: Store, inbox: tuple[int, int]) -> None:
    folder_id, blob_id = inbox
    async with store.session() as session:
        first = await messages.append_message(session, folder_id, blob_id, len(BODY), WHEN)
        second = await messages.append_message(session, folder_id, blob_id, len(BODY), WHEN)
        await session.commit()
    assert first == (1, 2)  # HIGHESTMODSEQ of an empty folder is 1
    assert (second.uid, second.modseq) == (2, 3)
    async with store.session() as session:
        folder = await folders.get_folder_by_id(session, folder_id)
    assert (folder.uidnext, folder.highest_modseq) == (3, 3)
    rows = await _rows(store, folder_id)
    assert [(r.uid, r.modseq, r.size) for r in rows] == [(1, 2, len(BODY)), (2, 3, len(BODY))]
    assert rows[0].internal_date == WHEN
    assert rows[0].internal_date.tzinfo == UTC


async def test_flags_are_stored(store: Store, inbox: tuple[int, int]) -> None:
    folder_id, blob_id = inbox
    async with store.session() as session:
        await messages.append_message(
            session,
            folder_id,
            blob_id,
            len(BODY),
            WHEN,
            ["\\SEEN", "\\Flagged", "$Label1", "nonjunk", "NonJunk", "\\Seen"],
        )
        await messages.append_message(session, folder_id, blob_id, len(BODY), WHEN, ["\\Draft"])
        await session.commit()
    flagged, draft = await _rows(store, folder_id)
    assert (flagged.seen, flagged.flagged, flagged.answered, flagged.deleted) == (
        True,
        True,
        False,
        False,
    )
    assert flagged.keywords == "$Label1 nonjunk"
    assert (draft.draft, draft.seen, draft.keywords) == (True, False, "")


@pytest.mark.parametrize("bad", ["\\Recent", "\\Important", "a b", "x(y", "q]", "", "é"])
async def test_unstorable_flags_are_refused(store: Store, inbox: tuple[int, int], bad: str) -> None:
    folder_id, blob_id = inbox
    async with store.session() as session:
        with pytest.raises(ValueError, match="flag"):
            await messages.append_message(session, folder_id, blob_id, 1, WHEN, [bad])


async def test_refusals(store: Store, inbox: tuple[int, int]) -> None:
    folder_id, blob_id = inbox
    async with store.session() as session:
        with pytest.raises(NotFound):
            await messages.append_message(session, 999_999, blob_id, 1, WHEN)
        with pytest.raises(ValueError, match="timezone"):
            await messages.append_message(session, folder_id, blob_id, 1, datetime(2025, 1, 1))
        too_many = [f"k{i}" for i in range(messages.MAX_KEYWORDS + 1)]
        with pytest.raises(ValueError, match="keywords"):
            await messages.append_message(session, folder_id, blob_id, 1, WHEN, too_many)


@pytest.mark.parametrize("kind", ["session", "read_session"])
async def test_concurrent_appends_get_distinct_ascending_uids(
    store: Store, inbox: tuple[int, int], kind: str
) -> None:
    # append_message writes first, so it is safe even in a deferred (read) session on SQLite.
    folder_id, blob_id = inbox
    new_session = store.session if kind == "session" else store.read_session

    async def append() -> messages.Appended:
        async with new_session() as session:
            appended = await messages.append_message(session, folder_id, blob_id, 1, WHEN)
            await asyncio.sleep(0)  # let the others run while this transaction is open
            await session.commit()
            return appended

    results = await asyncio.gather(*(append() for _ in range(20)))
    assert sorted(r.uid for r in results) == list(range(1, 21))
    assert sorted(r.modseq for r in results) == list(range(2, 22))
    rows = await _rows(store, folder_id)
    assert [r.uid for r in rows] == list(range(1, 21))
    # Each message keeps the MODSEQ allocated with its UID: both grow together.
    assert [r.modseq for r in rows] == list(range(2, 22))


async def test_rolled_back_append_leaves_no_trace(store: Store, inbox: tuple[int, int]) -> None:
    folder_id, blob_id = inbox
    async with store.session() as session:
        await messages.append_message(session, folder_id, blob_id, 1, WHEN)
        await session.rollback()
    async with store.session() as session:
        folder = await folders.get_folder_by_id(session, folder_id)
    assert (folder.uidnext, folder.highest_modseq) == (1, 1)
    assert await _rows(store, folder_id) == []


async def test_committed_append_survives_reopening(
    store_url: str, store: Store, inbox: tuple[int, int]
) -> None:
    folder_id, blob_id = inbox
    async with store.session() as session:
        uid, _ = await messages.append_message(session, folder_id, blob_id, len(BODY), WHEN)
        await session.commit()
    await store.close()
    reopened = await Store.open(store_url, store.cipher)
    try:
        async with reopened.session() as session:
            row = await session.scalar(
                select(MessageRow).where(MessageRow.folder_id == folder_id, MessageRow.uid == uid)
            )
            assert row is not None
            assert await blobs.get_blob(session, reopened.cipher, row.blob_id) == BODY
    finally:
        await reopened.close()
