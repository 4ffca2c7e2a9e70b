"""Messages in folders: UID and MODSEQ allocation, flags.

UIDs must be strictly ascending in a folder and never reused (RFC 3501 §2.3.1.1); MODSEQs must
grow with every change (RFC 7162 §3.1.1). Both come from counters on the folder row, bumped by
the same UPDATE that reads them back: on PostgreSQL the row lock makes concurrent appends to a
folder take turns until commit, on SQLite the write lock does. A UID is therefore visible only
once every smaller UID of that folder is committed or abandoned, which is what IMAP clients
that fetch "UID n:*" rely on.

Every append also adds the message's size to its mailbox's `used_bytes`, in the same
transaction, so the quota counter never disagrees with the messages (removals must subtract).
Locks are taken folders first, then mailboxes, each in ascending id order, so concurrent
appenders never wait on each other in a cycle.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mssante.operator.store.errors import NotFound, StoreError
from mssante.operator.store.schema import Base, FolderRow, MessageRow, utcnow

MAX_UID = 0xFFFFFFFF  # RFC 3501 §9: nz-number is unsigned 32-bit
MAX_KEYWORDS = 64  # per message: bounds what one client can make every later FETCH carry
MAX_KEYWORD_LENGTH = 128

# RFC 3501 §2.3.2 system flags that a message can carry; \Recent is session state, not stored.
SYSTEM_FLAGS = {
    "\\seen": "seen",
    "\\answered": "answered",
    "\\flagged": "flagged",
    "\\deleted": "deleted",
    "\\draft": "draft",
}
# flag-keyword = atom: no atom-specials "(" ")" "{" SP CTL "%" "*" '"' "\" "]" (RFC 3501 §9).
_KEYWORD = re.compile(r"^[\x21-\x7e]+$")
_ATOM_SPECIALS = set('(){%*"\\]')


class Appended(NamedTuple):
    uid: int
    modseq: int


@dataclass(frozen=True)
class Flags:
    seen: bool = False
    answered: bool = False
    flagged: bool = False
    deleted: bool = False
    draft: bool = False
    keywords: tuple[str, ...] = ()


def parse_flags(flags: Iterable[str]) -> Flags:
    """System flags and keywords from IMAP flag names; ValueError for one we cannot store.

    Flags are case-insensitive (RFC 3501 §2.3.2): system flags are matched so, keywords are
    de-duplicated so, keeping the first spelling.
    """
    system: dict[str, bool] = {}
    keywords: dict[str, str] = {}
    for flag in flags:
        lowered = flag.lower()
        if lowered in SYSTEM_FLAGS:
            system[SYSTEM_FLAGS[lowered]] = True
        elif flag.startswith("\\"):
            raise ValueError(f"flag {flag!r}: not a system flag that can be stored")
        elif (
            not _KEYWORD.match(flag)
            or _ATOM_SPECIALS.intersection(flag)
            or len(flag) > MAX_KEYWORD_LENGTH
        ):
            raise ValueError(f"flag {flag!r}: not a valid keyword (an IMAP atom)")
        else:
            keywords.setdefault(lowered, flag)
    if len(keywords) > MAX_KEYWORDS:
        raise ValueError(f"more than {MAX_KEYWORDS} keywords on one message")
    return Flags(keywords=tuple(keywords.values()), **system)


async def append_message(
    session: AsyncSession,
    folder_id: int,
    blob_id: int,
    size: int,
    internal_date: datetime,
    flags: Iterable[str] = (),
) -> Appended:
    """Add a message (its body already stored as `blob_id`) to a folder; (uid, modseq).

    The caller commits; once committed, the message is durable (SQLite `synchronous=FULL`,
    PostgreSQL's WAL flush at commit).
    """
    parsed = parse_flags(flags)
    if size < 0:
        raise ValueError("size must not be negative")
    if internal_date.tzinfo is None or internal_date.utcoffset() is None:
        raise ValueError("internal_date must be timezone-aware (RFC 3501 INTERNALDATE has a zone)")
    uid, modseq, mailbox_id = await _allocate(session, folder_id, 1)
    await _add_used_bytes(session, {mailbox_id: size})
    await session.execute(
        insert(MessageRow).values(
            folder_id=folder_id,
            uid=uid,
            blob_id=blob_id,
            size=size,
            internal_date=internal_date,
            modseq=modseq,
            seen=parsed.seen,
            answered=parsed.answered,
            flagged=parsed.flagged,
            deleted=parsed.deleted,
            draft=parsed.draft,
            keywords=" ".join(parsed.keywords),
            created_at=utcnow(),
        )
    )
    return Appended(uid=uid, modseq=modseq)


_MESSAGES = Base.metadata.tables["messages"]
_MAILBOXES = Base.metadata.tables["mailboxes"]
_FOLDERS = Base.metadata.tables["folders"]

# Batch statements built once: their shape does not depend on the batch, so SQLAlchemy
# compiles each once per process and afterwards only binds parameters.
_LOCK_FOLDERS = (
    select(_FOLDERS.c.id, _FOLDERS.c.uidnext, _FOLDERS.c.highest_modseq, _FOLDERS.c.mailbox_id)
    .where(_FOLDERS.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(_FOLDERS.c.id)
    .with_for_update()
)
_BUMP_FOLDER = (
    update(_FOLDERS)
    .where(_FOLDERS.c.id == bindparam("folder"))
    .values(
        uidnext=_FOLDERS.c.uidnext + bindparam("step"),
        highest_modseq=_FOLDERS.c.highest_modseq + bindparam("step"),
    )
)
_ADD_USED_BYTES = (
    update(_MAILBOXES)
    .where(_MAILBOXES.c.id == bindparam("mailbox"))
    .values(used_bytes=_MAILBOXES.c.used_bytes + bindparam("added"))
)
_INSERT_MESSAGES = insert(_MESSAGES).returning(
    _MESSAGES.c.id, _MESSAGES.c.folder_id, _MESSAGES.c.uid
)


async def _allocate(session: AsyncSession, folder_id: int, count: int) -> tuple[int, int, int]:
    """Reserve `count` consecutive UIDs and MODSEQs in a folder: (first uid, first modseq,
    mailbox id)."""
    result = await session.execute(
        update(FolderRow)
        .where(FolderRow.id == folder_id)
        .values(uidnext=FolderRow.uidnext + count, highest_modseq=FolderRow.highest_modseq + count)
        .returning(FolderRow.uidnext, FolderRow.highest_modseq, FolderRow.mailbox_id)
        .execution_options(synchronize_session=False)
    )
    row = result.one_or_none()
    if row is None:
        raise NotFound(f"folder id {folder_id} does not exist")
    uidnext, highest, mailbox_id = row
    if uidnext - 1 > MAX_UID:
        # The folder needs a new UIDVALIDITY and renumbering (RFC 3501 §2.3.1.1).
        raise StoreError(f"folder id {folder_id}: UID space exhausted")
    return uidnext - count, highest - count + 1, mailbox_id


async def _allocate_many(
    session: AsyncSession, counts: dict[int, int]
) -> dict[int, tuple[int, int, int]]:
    """`_allocate` for several folders at once: {folder id: (first uid, first modseq,
    mailbox id)}.

    Two statements whatever the number of folders, each of a fixed shape so that it is
    compiled once (a CASE over the folders would be a new statement for every batch size):
    the counters are read with the rows locked, in id order so that two batches over the same
    folders cannot deadlock (PostgreSQL `FOR UPDATE`; on SQLite the write lock the transaction
    holds), then bumped by one UPDATE per folder, sent as one executemany.
    """
    ids = sorted(counts)
    result = await session.execute(_LOCK_FOLDERS, {"ids": ids})
    reserved: dict[int, tuple[int, int, int]] = {}
    for folder_id, uidnext, highest, mailbox_id in result.tuples():
        count = counts[folder_id]
        if uidnext + count - 1 > MAX_UID:
            raise StoreError(f"folder id {folder_id}: UID space exhausted")
        reserved[folder_id] = (uidnext, highest + 1, mailbox_id)
    missing = [f for f in ids if f not in reserved]
    if missing:
        raise NotFound(f"folder id {missing[0]} does not exist")
    await session.execute(
        _BUMP_FOLDER, [{"folder": folder_id, "step": counts[folder_id]} for folder_id in ids]
    )
    return reserved


async def _add_used_bytes(session: AsyncSession, added: dict[int, int]) -> None:
    if not added:
        return
    # Ascending ids: the lock order every appender follows (module docstring).
    await session.execute(
        _ADD_USED_BYTES,
        [{"mailbox": mailbox_id, "added": added[mailbox_id]} for mailbox_id in sorted(added)],
    )


@dataclass(frozen=True)
class NewMessage:
    """A message to append (its body already stored as `blob_id`)."""

    folder_id: int
    blob_id: int
    size: int
    internal_date: datetime
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class StoredMessage:
    id: int
    folder_id: int
    mailbox_id: int
    uid: int
    modseq: int


async def append_messages(session: AsyncSession, new: Sequence[NewMessage]) -> list[StoredMessage]:
    """Append several messages at once; results in the order of `new`.

    The batch form of `append_message`, with the same guarantees: each folder reserves a run of
    UIDs and MODSEQs (ascending within the run, in the order given), all folders together
    (`_allocate_many`); then one INSERT adds every message, and one executemany adds to the
    mailboxes' `used_bytes`. Every statement is compiled once per process.
    """
    if not new:
        return []
    by_folder: dict[int, list[int]] = defaultdict(list)
    rows: list[dict[str, object]] = []
    for index, item in enumerate(new):
        parsed = parse_flags(item.flags)
        if item.size < 0:
            raise ValueError("size must not be negative")
        if item.internal_date.tzinfo is None or item.internal_date.utcoffset() is None:
            raise ValueError("internal_date must be timezone-aware")
        by_folder[item.folder_id].append(index)
        rows.append(
            {
                "folder_id": item.folder_id,
                "blob_id": item.blob_id,
                "size": item.size,
                "internal_date": item.internal_date,
                "seen": parsed.seen,
                "answered": parsed.answered,
                "flagged": parsed.flagged,
                "deleted": parsed.deleted,
                "draft": parsed.draft,
                "keywords": " ".join(parsed.keywords),
            }
        )
    mailbox_of: dict[int, int] = {}
    uids = [0] * len(new)
    modseqs = [0] * len(new)
    added: dict[int, int] = defaultdict(int)
    reserved = await _allocate_many(session, {f: len(i) for f, i in by_folder.items()})
    for folder_id, indexes in by_folder.items():
        first_uid, first_modseq, mailbox_id = reserved[folder_id]
        mailbox_of[folder_id] = mailbox_id
        for offset, index in enumerate(indexes):
            uids[index] = first_uid + offset
            modseqs[index] = first_modseq + offset
            added[mailbox_id] += new[index].size
    now = utcnow()
    for index, row in enumerate(rows):
        row.update(uid=uids[index], modseq=modseqs[index], created_at=now)
    result = await session.execute(_INSERT_MESSAGES, rows)
    ids = {(folder_id, uid): message_id for message_id, folder_id, uid in result.tuples()}
    await _add_used_bytes(session, added)
    return [
        StoredMessage(
            id=ids[(item.folder_id, uids[i])],
            folder_id=item.folder_id,
            mailbox_id=mailbox_of[item.folder_id],
            uid=uids[i],
            modseq=modseqs[i],
        )
        for i, item in enumerate(new)
    ]
