"""Hosted mail domains: the domains under which this operator holds mailboxes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from mssante.operator.store.errors import AlreadyExists, NotFound
from mssante.operator.store.schema import DomainRow


@dataclass(frozen=True)
class Domain:
    id: int
    name: str
    created_at: datetime


def _domain(row: DomainRow) -> Domain:
    return Domain(id=row.id, name=row.name, created_at=row.created_at)


def normalize_domain(name: str) -> str:
    """Lower-case, without the root dot; ValueError for what cannot be a domain name.

    Full syntax checks belong to `operator.addresses`; this only guarantees one spelling per
    domain in the table (DNS names are case-insensitive, RFC 4343).
    """
    value = name.strip().lower().rstrip(".")
    if not value or len(value) > 253:
        raise ValueError(f"domain {name!r}: expected 1 to 253 characters")
    if not value.isascii() or any(c.isspace() or c in "@/\\" for c in value):
        raise ValueError(
            f"domain {name!r}: not a host name (internationalised names go in their xn-- form)"
        )
    return value


async def _row(session: AsyncSession, name: str) -> DomainRow | None:
    result = await session.execute(select(DomainRow).where(DomainRow.name == name))
    return result.scalar_one_or_none()


async def add_domain(session: AsyncSession, name: str) -> Domain:
    """Host a new domain; AlreadyExists if it is hosted already."""
    value = normalize_domain(name)
    if await _row(session, value) is not None:
        raise AlreadyExists(f"domain {value} is already hosted")
    row = DomainRow(name=value)
    try:
        # A savepoint keeps the caller's transaction usable if a concurrent add wins the race.
        async with session.begin_nested():
            session.add(row)
    except IntegrityError:
        if await _row(session, value) is not None:
            raise AlreadyExists(f"domain {value} is already hosted") from None
        raise
    return _domain(row)


async def get_domain(session: AsyncSession, name: str) -> Domain:
    value = normalize_domain(name)
    row = await _row(session, value)
    if row is None:
        raise NotFound(f"domain {value} is not hosted by this operator")
    return _domain(row)


async def is_hosted(session: AsyncSession, name: str) -> bool:
    """Whether we hold mailboxes under `name` (already normalised)."""
    found = await session.scalar(select(DomainRow.id).where(DomainRow.name == name))
    return found is not None


async def list_domains(session: AsyncSession) -> list[Domain]:
    result = await session.execute(select(DomainRow).order_by(DomainRow.name))
    return [_domain(row) for row in result.scalars()]
