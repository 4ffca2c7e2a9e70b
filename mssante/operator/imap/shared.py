"""Shared and delegated mailboxes over IMAP (issue 4 §5): who sees what, with which rights.

A grantee — a secretary delegated on a PER mailbox, a member of an ORG mailbox (the ORG itself
never logs in) — with `can_read` or `can_write` on mailbox M sees M's folders in the shared
namespace (rfc/2342) as `Shared/<M's address>/<folder>`. Rights come from the `grants` row:

- `can_write`: read-write, as the owner (flags, APPEND, COPY/MOVE in and out, EXPUNGE,
  CREATE/DELETE/RENAME of folders other than INBOX);
- `can_read` only: the messages can be read and the grantee's own \\Seen kept; any other
  change is refused with `NO [NOPERM]` (rfc/5530 §3).

A mailbox the user holds no grant on does not exist for them: every name under it answers as
a missing name does. \\Seen is kept per reader for grantees (`store.seen`); the owner's own
\\Seen stays on the message. Writes into a shared mailbox count against the owner's quota.

The rights are read at SELECT and read again before every write: a revoked grant refuses the
next write and the next SELECT, while reads of an already selected folder go on until then.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from sqlalchemy import Select, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from mssante.operator.imap import queries
from mssante.operator.imap.commands import StoreAction
from mssante.operator.store import folders as store_folders
from mssante.operator.store import seen as store_seen
from mssante.operator.store.crypto import BlobCipher
from mssante.operator.store.errors import NotFound
from mssante.operator.store.messages import parse_flags
from mssante.operator.store.schema import GrantRow, MailboxRow, MailboxState

PREFIX: Final = "Shared"  # rfc/2342 §5 shared namespace, "Shared/" with "/" as delimiter
DELIMITER: Final = "/"
SEEN: Final = "\\Seen"


@dataclass(frozen=True, slots=True)
class Access:
    """A grantee's access to another mailbox."""

    owner_id: int
    owner_address: str
    can_write: bool


@dataclass(frozen=True, slots=True)
class Located:
    """A folder a client named: the folder, its name as this client sees it, and the access
    it is reached through (None: the user's own folder)."""

    folder: store_folders.Folder
    name: str
    access: Access | None


class Write(StrEnum):
    """Changes to a shared mailbox that need `can_write`."""

    FLAGS = "STORE"  # any flag but \Seen
    EXPUNGE = "EXPUNGE"
    APPEND = "APPEND"
    COPY_INTO = "COPY"
    MOVE = "MOVE"
    CREATE = "CREATE"
    DELETE = "DELETE"
    RENAME = "RENAME"


def refusal(access: Access | None, write: Write) -> str | None:
    """The text of the NO [NOPERM] for this write, or None when it is allowed."""
    if access is None or access.can_write:
        return None
    return f"{write.value} refused: read-only access to {access.owner_address}"


def in_namespace(name: str) -> bool:
    # Case-sensitive, as the session's check that keeps personal folders out of it.
    return name == PREFIX or name.startswith(PREFIX + DELIMITER)


def split(name: str) -> tuple[str, str] | None:
    """`Shared/<address>/<folder>` as (address lower-cased, stored folder name); None when the
    name is not one (the namespace root, an address alone, an invalid folder name)."""
    if not in_namespace(name):
        return None
    parts = name.split(DELIMITER, 2)
    if len(parts) < 3 or not parts[1] or not parts[2]:
        return None
    try:
        folder = store_folders.normalize_folder_name(parts[2])
    except ValueError:
        return None
    return parts[1].lower(), folder


def visible_name(owner_address: str, folder_name: str) -> str:
    return DELIMITER.join((PREFIX, owner_address, folder_name))


def _grants_query(grantee_id: int) -> Select[tuple[int, str, bool]]:
    return (
        select(MailboxRow.id, MailboxRow.address, GrantRow.can_write)
        .join(GrantRow, GrantRow.owner_id == MailboxRow.id)
        .where(
            GrantRow.grantee_id == grantee_id,
            or_(GrantRow.can_read.is_(True), GrantRow.can_write.is_(True)),
            # A disabled or closed mailbox is not served, to its owner or to anyone else.
            MailboxRow.state == MailboxState.ACTIVE.value,
        )
    )


async def accesses(session: AsyncSession, grantee_id: int) -> list[Access]:
    """Every mailbox this user may open besides their own, by address."""
    rows = (await session.execute(_grants_query(grantee_id).order_by(MailboxRow.address))).all()
    return [Access(int(r[0]), str(r[1]), bool(r[2])) for r in rows]


async def access_to(session: AsyncSession, grantee_id: int, owner_id: int) -> Access | None:
    """This user's current access to that mailbox (re-read before each write)."""
    row = (
        await session.execute(_grants_query(grantee_id).where(MailboxRow.id == owner_id))
    ).one_or_none()
    return None if row is None else Access(int(row[0]), str(row[1]), bool(row[2]))


async def access_by_address(session: AsyncSession, grantee_id: int, address: str) -> Access | None:
    """This user's access to the mailbox at `address` (lower-case), if any."""
    row = (
        await session.execute(_grants_query(grantee_id).where(MailboxRow.address == address))
    ).one_or_none()
    return None if row is None else Access(int(row[0]), str(row[1]), bool(row[2]))


async def locate(session: AsyncSession, grantee_id: int, name: str) -> Located | None:
    """The shared folder a client name designates, if this user may see it."""
    parts = split(name)
    if parts is None:
        return None
    address, folder_name = parts
    access = await access_by_address(session, grantee_id, address)
    if access is None:
        return None
    try:
        folder = await store_folders.get_folder(session, access.owner_id, folder_name)
    except NotFound:
        return None
    return Located(folder, visible_name(access.owner_address, folder.name), access)


async def listing(session: AsyncSession, grantee_id: int) -> list[Located]:
    """Every shared folder this user sees, by owner then folder name."""
    out: list[Located] = []
    for access in await accesses(session, grantee_id):
        for folder in await store_folders.list_folders(session, access.owner_id):
            out.append(Located(folder, visible_name(access.owner_address, folder.name), access))
    return out


# --- per-reader \Seen ---------------------------------------------------------------------


async def store_flags(
    session: AsyncSession,
    cipher: BlobCipher,
    folder_id: int,
    reader_id: int,
    uids: Sequence[int],
    action: StoreAction,
    flags: Sequence[str],
    *,
    can_write: bool,
    unchanged_since: int | None = None,
) -> queries.StoredFlags:
    """STORE by a grantee: \\Seen goes to the reader's own state, the other flags to the
    message with the owner's \\Seen kept. Without `can_write` only \\Seen changes (the caller
    refused any other flag; FLAGS (\\Seen) then replaces the reader's \\Seen alone). The
    result is what the reader sees. ValueError for an invalid flag. The caller commits."""
    parse_flags(flags)
    seen_named = any(f.lower() == SEEN.lower() for f in flags)
    others = [f for f in flags if f.lower() != SEEN.lower()]
    refused: set[int] = set()
    if unchanged_since is not None:
        # rfc/7162 §3.1.3: a message changed since the client's value is left alone; decided
        # before either write, as both give the message a new MODSEQ.
        before = await queries.fetch_messages(
            session, cipher, folder_id, uids, body=False, structure=False
        )
        refused = {m.state.uid for m in before if m.state.modseq > unchanged_since}
    allowed = [u for u in uids if u not in refused]
    changed: set[int] = set()
    if can_write and (others or action is StoreAction.REPLACE):
        shared = await queries.store_flags(
            session, folder_id, allowed, action, others, keep_seen=True
        )
        changed |= shared.changed
    wanted: dict[int, bool] = {}
    if action is StoreAction.REPLACE or seen_named:
        wanted = dict.fromkeys(allowed, action is not StoreAction.REMOVE and seen_named)
    changed |= set(await store_seen.set_seen(session, folder_id, reader_id, wanted))
    fetched = await queries.fetch_messages(
        session, cipher, folder_id, allowed, body=False, structure=False, reader_id=reader_id
    )
    states = [m.state for m in fetched]
    return queries.StoredFlags(
        flags={s.uid: s.flags for s in states},
        modseqs={s.uid: s.modseq for s in states},
        modified=sorted(refused),
        changed=frozenset(changed),
    )
