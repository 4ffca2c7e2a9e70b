"""The few SQL constructs that differ between SQLite and PostgreSQL, chosen per session.

Both databases implement `INSERT … ON CONFLICT` with the same meaning; SQLAlchemy only spells it
through dialect-specific constructs, picked here so that repositories stay dialect-free. Bit
tests on a byte string (`MaskSet`) are `get_bit` on PostgreSQL and a function of ours on SQLite.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Integer,
    LargeBinary,
    and_,
    false,
    func,
    literal,
    or_,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.sql.compiler import SQLCompiler

Insert = sqlite.Insert | postgresql.Insert


def dialect_name(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


def insert(session: AsyncSession, model: type[DeclarativeBase]) -> Insert:
    """An INSERT supporting `.on_conflict_do_nothing/do_update` on the session's database."""
    if dialect_name(session) == "postgresql":
        return postgresql.insert(model)
    return sqlite.insert(model)


# --- "every bit of one of these masks is set in a column" ---------------------------------------

SQLITE_MASK_SET = "mss_mask_set"  # registered on every SQLite connection (db.py)


def mask_set(value: bytes | None, *masks: bytes) -> int | None:
    """SQLite's `mss_mask_set(value, mask, …)`: 1 when every bit set in one of the masks is set
    in `value` (big-endian byte strings of one length), else 0; NULL for a NULL value."""
    if value is None:
        return None
    have = int.from_bytes(value, "big")
    for mask in masks:
        wanted = int.from_bytes(mask, "big")
        if have & wanted == wanted:
            return 1
    return 0


class MaskSet(ColumnElement[bool]):
    """True where every bit of at least one of `masks` is set in the byte-string `column` (a
    keyed Bloom filter, `searchfilter`): one call of the registered function per row on
    SQLite, `get_bit` tests on PostgreSQL."""

    type = Boolean()
    inherit_cache = False  # the masks are part of the SQL text on PostgreSQL

    def __init__(self, column: ColumnElement[bytes], *masks: bytes) -> None:
        self.column = column
        self.masks = masks


@compiles(MaskSet, "sqlite")
def _mask_set_sqlite(element: MaskSet, compiler: SQLCompiler, **kw: Any) -> str:
    masks = [literal(m, LargeBinary()) for m in element.masks]
    call = getattr(func, SQLITE_MASK_SET)(element.column, *masks)
    return compiler.process(call == 1, **kw)


@compiles(MaskSet, "postgresql")
def _mask_set_postgresql(element: MaskSet, compiler: SQLCompiler, **kw: Any) -> str:
    # get_bit numbers bits from the least significant bit of the first byte; a mask is a
    # big-endian integer: its bit k is in byte (length - 1 - k // 8), at position k % 8.
    alternatives = []
    for mask in element.masks:
        size, value = len(mask), int.from_bytes(mask, "big")
        positions = [8 * (size - 1 - k // 8) + k % 8 for k in range(size * 8) if value >> k & 1]
        tests = [func.get_bit(element.column, literal(p, Integer())) == 1 for p in positions]
        alternatives.append(and_(element.column.is_not(None), *tests))
    return compiler.process(or_(false(), *alternatives), **kw)
