"""Lookups in our mirror of the national MSSanté directory (issue 5 §3, issue 6 §3).

Submission refuses at RCPT a recipient of another operator that the national directory does not
list (`550 5.1.1`): a typo in a discharge letter bounces at once instead of after five days of
retries. The mirror is the `directory_entries` table, filled by the LDAP sync and the
extraction-file import (issue 6) through `put_entries` / `remove_entries`; readers go through
the `DirectoryLookup` protocol, whose store-backed implementation keeps a small cache in front
of the indexed, lower-cased address.

The cache holds answers, absent ones included, for `ttl` seconds at most and `size` entries at
most (least recently used first out). A sync that changed the mirror calls `invalidate()` on
the process's `StoreDirectory`; other processes see the change within `ttl`.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Protocol

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from mssante.operator.store import _sql
from mssante.operator.store.db import Store
from mssante.operator.store.schema import DirectoryEntryRow, utcnow

CACHE_SIZE = 10_000
CACHE_TTL_SECONDS = 30.0
MAX_ADDRESS = 320  # RFC 5321 §4.5.3.1: 64 + 1 + 255
MAILBOX_TYPES = frozenset({"PER", "ORG", "APP", "CAB"})
_WRITE_CHUNK = 500  # rows per INSERT: under every driver's parameter limit


def normalize(address: str) -> str | None:
    """The mirror's key for an address: stripped of `<>`, lower-cased; None if it cannot be one.

    The whole address is lower-cased: the directory publishes lower-case addresses, and MSSanté
    local parts are not case-sensitive in practice (RFC 5321 §2.4 lets the receiving host decide).
    """
    value = address.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    local, sep, domain = value.rpartition("@")
    if not sep or not local or not domain or len(value) > MAX_ADDRESS:
        return None
    return value.lower()


@dataclass(frozen=True)
class Entry:
    """One mailbox of the national directory, as the mirror keeps it."""

    address: str
    mailbox_type: str  # PER, ORG, APP or CAB
    national_id_type: str | None = None
    national_id: str | None = None  # 8+RPPS, 0+ADELI for a PER's holder
    civility: str | None = None
    family_name: str | None = None
    given_name: str | None = None
    profession_code: str | None = None
    profession_label: str | None = None
    speciality_code: str | None = None
    speciality_label: str | None = None
    structure_id_type: str | None = None
    structure_id: str | None = None  # 1+FINESS, 3+SIRET
    structure_name: str | None = None
    service: str | None = None
    postal_code: str | None = None
    city: str | None = None
    liste_rouge: bool = False  # never returned by searches, only by exact address
    source: str | None = None


_ENTRY_FIELDS = tuple(f.name for f in fields(Entry))
_COLUMNS = tuple(getattr(DirectoryEntryRow, name) for name in _ENTRY_FIELDS)


class DirectoryLookup(Protocol):
    """What the submission path needs from the directory."""

    async def exists(self, address: str) -> bool:
        """Whether the national directory lists `address` (any case)."""
        ...

    async def lookup(self, address: str) -> Entry | None:
        """The directory entry of `address` (any case), liste rouge or not; None if absent."""
        ...


class StoreDirectory:
    """`DirectoryLookup` over the `directory_entries` table, with a bounded TTL cache."""

    def __init__(
        self,
        store: Store,
        *,
        size: int = CACHE_SIZE,
        ttl: float = CACHE_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if size < 0 or ttl < 0:
            raise ValueError("cache size and TTL must not be negative")
        self._store = store
        self._size = size
        self._ttl = ttl
        self._clock = clock
        self._cache: collections.OrderedDict[str, tuple[float, Entry | None]] = (
            collections.OrderedDict()
        )
        self.reads = 0  # database lookups made (the cache's misses)

    async def exists(self, address: str) -> bool:
        return await self.lookup(address) is not None

    async def lookup(self, address: str) -> Entry | None:
        key = normalize(address)
        if key is None:
            return None
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None:
            if cached[0] > now:
                self._cache.move_to_end(key)
                return cached[1]
            del self._cache[key]
        async with self._store.read_session() as session:
            entry = await get_entry(session, key)
        self.reads += 1
        if self._size and self._ttl:
            self._cache[key] = (now + self._ttl, entry)
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return entry

    def invalidate(self, addresses: Iterable[str] | None = None) -> None:
        """Forget cached answers: all of them, or those of `addresses`."""
        if addresses is None:
            self._cache.clear()
            return
        for address in addresses:
            key = normalize(address)
            if key is not None:
                self._cache.pop(key, None)


async def get_entry(session: AsyncSession, address: str) -> Entry | None:
    """The entry stored under the normalised `address` (one indexed read)."""
    row = (
        await session.execute(select(*_COLUMNS).where(DirectoryEntryRow.address == address))
    ).one_or_none()
    if row is None:
        return None
    return Entry(**dict(zip(_ENTRY_FIELDS, row, strict=True)))


def _checked(entry: Entry) -> dict[str, object]:
    key = normalize(entry.address)
    if key is None:
        raise ValueError(f"directory entry {entry.address!r}: not an address")
    if entry.mailbox_type not in MAILBOX_TYPES:
        raise ValueError(
            f"directory entry {key}: mailbox type {entry.mailbox_type!r}, expected one of "
            f"{', '.join(sorted(MAILBOX_TYPES))}"
        )
    values = asdict(entry)
    values["address"] = key
    return values


async def put_entries(session: AsyncSession, entries: Sequence[Entry]) -> int:
    """Insert or replace entries by address, in the caller's transaction; returns how many.

    The write path of the sync and the import (issue 6), and the test helper of submission.
    ValueError, before anything is written, for an entry that cannot be stored.
    """
    rows = [_checked(entry) for entry in entries]
    now = utcnow()
    updated = {name: name for name in _ENTRY_FIELDS if name != "address"}
    for i in range(0, len(rows), _WRITE_CHUNK):
        chunk = [{**row, "updated_at": now} for row in rows[i : i + _WRITE_CHUNK]]
        stmt = _sql.insert(session, DirectoryEntryRow)
        stmt = stmt.on_conflict_do_update(
            index_elements=["address"],
            set_={
                **{name: getattr(stmt.excluded, column) for name, column in updated.items()},
                "updated_at": stmt.excluded.updated_at,
            },
        )
        await session.execute(stmt, chunk)
    return len(rows)


async def remove_entries(session: AsyncSession, addresses: Iterable[str]) -> int:
    """Delete the entries of `addresses` (any case), in the caller's transaction."""
    keys = sorted({key for key in map(normalize, addresses) if key is not None})
    removed = 0
    for i in range(0, len(keys), _WRITE_CHUNK):
        chunk = keys[i : i + _WRITE_CHUNK]
        result = await session.execute(
            delete(DirectoryEntryRow).where(DirectoryEntryRow.address.in_(chunk))
        )
        removed += getattr(result, "rowcount", 0) or 0
    return removed


async def count_entries(session: AsyncSession) -> int:
    total: int = await session.scalar(select(func.count()).select_from(DirectoryEntryRow)) or 0
    return total


async def add_entries(store: Store, entries: Sequence[Entry]) -> None:
    """`put_entries` in its own transaction: how tests (and one-off tools) fill the mirror."""
    async with store.session() as session, session.begin():
        await put_entries(session, entries)
