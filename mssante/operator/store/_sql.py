"""The few SQL constructs that differ between SQLite and PostgreSQL, chosen per session.

Both databases implement `INSERT … ON CONFLICT` with the same meaning; SQLAlchemy only spells it
through dialect-specific constructs, picked here so that repositories stay dialect-free.
"""

from __future__ import annotations

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase

Insert = sqlite.Insert | postgresql.Insert


def dialect_name(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


def insert(session: AsyncSession, model: type[DeclarativeBase]) -> Insert:
    """An INSERT supporting `.on_conflict_do_nothing/do_update` on the session's database."""
    if dialect_name(session) == "postgresql":
        return postgresql.insert(model)
    return sqlite.insert(model)
