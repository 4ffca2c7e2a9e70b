"""Folders (IMAP mailboxes) and the allocation of their UIDVALIDITY.

"Mailbox" is kept for the account (a BAL); what IMAP calls a mailbox is a folder here.
Names are full paths with '/' as the hierarchy delimiter, in UTF-8; the IMAP layer converts to
and from modified UTF-7 for clients that did not enable UTF8=ACCEPT (RFC 6855).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from sqlalchemy import case, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from mssante.operator.store.errors import AlreadyExists, NotFound, StoreError
from mssante.operator.store.schema import FolderRow, MailboxRow, SpecialUse

DELIMITER = "/"
INBOX = "INBOX"
MAX_NAME_BYTES = 1024  # the column's size; also bounds what a client can make us store
MAX_UIDVALIDITY = 0xFFFFFFFF  # RFC 3501 §9: nz-number, unsigned 32-bit

# Created with every mailbox, RFC 6154 attributes on all but INBOX.
STANDARD_FOLDERS: tuple[tuple[str, SpecialUse | None], ...] = (
    (INBOX, None),
    ("Sent", SpecialUse.SENT),
    ("Drafts", SpecialUse.DRAFTS),
    ("Trash", SpecialUse.TRASH),
    ("Junk", SpecialUse.JUNK),
    ("Archive", SpecialUse.ARCHIVE),
)


@dataclass(frozen=True)
class Folder:
    id: int
    mailbox_id: int
    name: str
    special_use: SpecialUse | None
    subscribed: bool
    uidvalidity: int
    uidnext: int
    highest_modseq: int


def _folder(row: FolderRow) -> Folder:
    return Folder(
        id=row.id,
        mailbox_id=row.mailbox_id,
        name=row.name,
        special_use=SpecialUse(row.special_use) if row.special_use is not None else None,
        subscribed=row.subscribed,
        uidvalidity=row.uidvalidity,
        uidnext=row.uidnext,
        highest_modseq=row.highest_modseq,
    )


def normalize_folder_name(name: str) -> str:
    """The stored spelling of a folder name; ValueError for names we will not store.

    INBOX is case-insensitive (RFC 3501 §5.1), including as the first level of a path, so it is
    stored upper-case. Wildcards are refused: a name containing `*` or `%` cannot be listed
    unambiguously (RFC 3501 §5.1).
    """
    if not name:
        raise ValueError("folder name is empty")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise ValueError(f"folder name longer than {MAX_NAME_BYTES} bytes")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name) or "*" in name or "%" in name:
        raise ValueError(f"folder name {name!r}: control characters, '*' and '%' are not allowed")
    parts = name.split(DELIMITER)
    if any(part == "" for part in parts):
        raise ValueError(f"folder name {name!r}: empty hierarchy level")
    if parts[0].upper() == INBOX:
        parts[0] = INBOX
    return DELIMITER.join(parts)


# Floor shared by the folders created in this process: values are then distinct across
# mailboxes too, which makes logs and client caches easier to reason about. Correctness does
# not rest on it (see `next_uidvalidity`).
_floor_lock = threading.Lock()
_uidvalidity_floor = 0


async def next_uidvalidity(session: AsyncSession, mailbox_id: int) -> int:
    """A UIDVALIDITY greater than any this mailbox's folders ever had (RFC 3501 §2.3.1.1).

    Time-based, as RFC 3501 suggests, and pushed past the mailbox's last value, which is
    updated in the same statement: the row lock (PostgreSQL) or the write lock (SQLite) makes
    concurrent creations take turns, and a folder deleted then re-created gets a new value.
    """
    global _uidvalidity_floor
    with _floor_lock:
        candidate = max(int(time.time()), _uidvalidity_floor + 1)
    last = MailboxRow.last_uidvalidity
    result = await session.execute(
        update(MailboxRow)
        .where(MailboxRow.id == mailbox_id)
        .values(
            last_uidvalidity=case((last >= candidate, last + 1), else_=candidate),
            # Bookkeeping, not a change an administrator made: keep the mailbox's updated_at.
            updated_at=MailboxRow.updated_at,
        )
        .returning(MailboxRow.last_uidvalidity)
        .execution_options(synchronize_session=False)
    )
    value = result.scalar_one_or_none()
    if value is None:
        raise NotFound(f"mailbox id {mailbox_id} does not exist")
    if value > MAX_UIDVALIDITY:
        raise StoreError(f"mailbox id {mailbox_id}: UIDVALIDITY space exhausted")
    with _floor_lock:
        _uidvalidity_floor = max(_uidvalidity_floor, value)
    return value


async def _row(session: AsyncSession, mailbox_id: int, name: str) -> FolderRow | None:
    result = await session.execute(
        select(FolderRow).where(FolderRow.mailbox_id == mailbox_id, FolderRow.name == name)
    )
    return result.scalar_one_or_none()


async def create_folder(
    session: AsyncSession,
    mailbox_id: int,
    name: str,
    special_use: SpecialUse | None = None,
    subscribed: bool = True,
) -> Folder:
    """Create a folder with a fresh UIDVALIDITY; AlreadyExists if the name is taken."""
    value = normalize_folder_name(name)
    if await _row(session, mailbox_id, value) is not None:
        raise AlreadyExists(f"folder {value!r} already exists")
    row = FolderRow(
        mailbox_id=mailbox_id,
        name=value,
        special_use=special_use.value if special_use is not None else None,
        subscribed=subscribed,
        uidvalidity=await next_uidvalidity(session, mailbox_id),
        uidnext=1,
        highest_modseq=1,
    )
    try:
        async with session.begin_nested():
            session.add(row)
    except IntegrityError:
        if await _row(session, mailbox_id, value) is not None:
            raise AlreadyExists(f"folder {value!r} already exists") from None
        raise
    return _folder(row)


async def get_folder(session: AsyncSession, mailbox_id: int, name: str) -> Folder:
    value = normalize_folder_name(name)
    row = await _row(session, mailbox_id, value)
    if row is None:
        raise NotFound(f"folder {value!r} does not exist")
    return _folder(row)


async def get_folder_by_id(session: AsyncSession, folder_id: int) -> Folder:
    row = await session.get(FolderRow, folder_id, populate_existing=True)
    if row is None:
        raise NotFound(f"folder id {folder_id} does not exist")
    return _folder(row)


async def list_folders(session: AsyncSession, mailbox_id: int) -> list[Folder]:
    result = await session.execute(
        select(FolderRow).where(FolderRow.mailbox_id == mailbox_id).order_by(FolderRow.name)
    )
    return [_folder(row) for row in result.scalars()]


async def special_use_folder(session: AsyncSession, mailbox_id: int, use: SpecialUse) -> int | None:
    """The id of the mailbox's folder with this special use (RFC 6154), the first by name if
    a client marked several, None if it has none."""
    found = await session.scalars(
        select(FolderRow.id)
        .where(FolderRow.mailbox_id == mailbox_id, FolderRow.special_use == use.value)
        .order_by(FolderRow.name)
        .limit(1)
    )
    return found.first()
