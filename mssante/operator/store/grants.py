"""Grants: who may read, write or send as a mailbox other than their own.

One table serves both cases MSSanté has: delegation of a nominative (PER) mailbox, e.g. to a
medical secretary, and membership of a shared ORG or CAB mailbox. Whether a given grant is
allowed (which types, which holders) is policy, decided before calling the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from mssante.operator.store import _sql
from mssante.operator.store.errors import NotFound
from mssante.operator.store.mailboxes import get_mailbox
from mssante.operator.store.schema import GrantRow, MailboxRow, MailboxState, utcnow


@dataclass(frozen=True)
class Grant:
    owner: str
    grantee: str
    can_read: bool
    can_write: bool
    can_send_as: bool
    created_at: datetime


_Owner = aliased(MailboxRow, name="owner")
_Grantee = aliased(MailboxRow, name="grantee")


async def _select(session: AsyncSession, *where: ColumnElement[bool]) -> list[Grant]:
    result = await session.execute(
        select(_Owner.address, _Grantee.address, GrantRow)
        .join(_Owner, GrantRow.owner_id == _Owner.id)
        .join(_Grantee, GrantRow.grantee_id == _Grantee.id)
        .where(*where)
        .order_by(_Owner.address, _Grantee.address)
        # An upsert just ran as plain SQL: refresh rows this session may already hold.
        .execution_options(populate_existing=True)
    )
    return [
        Grant(owner, grantee, g.can_read, g.can_write, g.can_send_as, g.created_at)
        for owner, grantee, g in result.tuples()
    ]


async def grant(
    session: AsyncSession,
    owner: str,
    grantee: str,
    read: bool = True,
    write: bool = False,
    send_as: bool = False,
) -> Grant:
    """Give `grantee` these rights on `owner`, replacing any earlier grant between the two."""
    if not (read or write or send_as):
        raise ValueError("a grant without any right: revoke it instead")
    owner_box = await get_mailbox(session, owner)
    grantee_box = await get_mailbox(session, grantee)
    if owner_box.id == grantee_box.id:
        raise ValueError(f"{owner_box.address} cannot be granted access to itself")
    rights = {"can_read": read, "can_write": write, "can_send_as": send_as}
    stmt = _sql.insert(session, GrantRow).values(
        owner_id=owner_box.id, grantee_id=grantee_box.id, created_at=utcnow(), **rights
    )
    # One statement, so two concurrent grants cannot both insert (the unique pair decides).
    await session.execute(
        stmt.on_conflict_do_update(index_elements=["owner_id", "grantee_id"], set_=rights)
    )
    found = await _select(
        session, GrantRow.owner_id == owner_box.id, GrantRow.grantee_id == grantee_box.id
    )
    return found[0]


async def revoke(session: AsyncSession, owner: str, grantee: str) -> None:
    """Remove the grant; NotFound if there was none."""
    owner_box = await get_mailbox(session, owner)
    grantee_box = await get_mailbox(session, grantee)
    result = await session.execute(
        delete(GrantRow)
        .where(GrantRow.owner_id == owner_box.id, GrantRow.grantee_id == grantee_box.id)
        .returning(GrantRow.id)
    )
    if result.scalar_one_or_none() is None:
        raise NotFound(f"{grantee_box.address} has no grant on {owner_box.address}")


async def list_all(session: AsyncSession) -> list[Grant]:
    """Every grant, by owner then grantee."""
    return await _select(session)


async def list_for_owner(session: AsyncSession, owner: str) -> list[Grant]:
    """Who has access to this mailbox."""
    box = await get_mailbox(session, owner)
    return await _select(session, GrantRow.owner_id == box.id)


async def list_for_grantee(session: AsyncSession, grantee: str) -> list[Grant]:
    """Which other mailboxes this mailbox's holder may open."""
    box = await get_mailbox(session, grantee)
    return await _select(session, GrantRow.grantee_id == box.id)


async def send_as_owners(session: AsyncSession, grantee_id: int) -> list[str]:
    """The active mailboxes whose grant lets this mailbox's holder send as them (submission)."""
    rows = await session.scalars(
        select(_Owner.address)
        .join(GrantRow, GrantRow.owner_id == _Owner.id)
        .where(
            GrantRow.grantee_id == grantee_id,
            GrantRow.can_send_as.is_(True),
            _Owner.state == MailboxState.ACTIVE.value,
        )
        .order_by(_Owner.address)
    )
    return list(rows)
