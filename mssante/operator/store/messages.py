"""Messages in folders: UID and MODSEQ allocation, flags.

UIDs must be strictly ascending in a folder and never reused (RFC 3501 §2.3.1.1); MODSEQs must
grow with every change (RFC 7162 §3.1.1). Both come from counters on the folder row, bumped by
the same UPDATE that reads them back: on PostgreSQL the row lock makes concurrent appends to a
folder take turns until commit, on SQLite the write lock does. A UID is therefore visible only
once every smaller UID of that folder is committed or abandoned, which is what IMAP clients
that fetch "UID n:*" rely on.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import insert, update
from sqlalchemy.ext.asyncio import AsyncSession

from mssante.operator.store.errors import NotFound, StoreError
from mssante.operator.store.schema import FolderRow, MessageRow, utcnow

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
    result = await session.execute(
        update(FolderRow)
        .where(FolderRow.id == folder_id)
        .values(uidnext=FolderRow.uidnext + 1, highest_modseq=FolderRow.highest_modseq + 1)
        .returning(FolderRow.uidnext, FolderRow.highest_modseq)
        .execution_options(synchronize_session=False)
    )
    row = result.one_or_none()
    if row is None:
        raise NotFound(f"folder id {folder_id} does not exist")
    uidnext, modseq = row
    uid = uidnext - 1
    if uid > MAX_UID:
        # The folder needs a new UIDVALIDITY and renumbering (RFC 3501 §2.3.1.1).
        raise StoreError(f"folder id {folder_id}: UID space exhausted")
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
