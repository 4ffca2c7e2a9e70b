"""The directory mirror on SQLite and PostgreSQL: writes, exact lookups in any case, the
bounded TTL cache (with an injected clock) and the table's own checks."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from mssante.directory.mirror import (
    DirectoryLookup,
    Entry,
    StoreDirectory,
    add_entries,
    count_entries,
    normalize,
    put_entries,
    remove_entries,
)
from mssante.operator.store.db import Store

DOCTOR = Entry(
    address="Jean.Dupont@Hopital-X.MSSante.fr",
    mailbox_type="PER",
    national_id_type="8",
    national_id="810001234567",
    civility="DR",
    family_name="DUPONT",
    given_name="Jean",
    profession_code="10",
    profession_label="Médecin",
    speciality_code="SM54",
    speciality_label="Cardiologie",
    structure_id_type="1",
    structure_id="1750712184",
    structure_name="Hôpital X",
    service="Cardiologie",
    postal_code="75012",
    city="PARIS",
    source="test",
)
SERVICE = Entry(address="cardio@hopital-x.mssante.fr", mailbox_type="ORG", liste_rouge=True)


class Ticks:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_lookup_finds_entries_in_any_case(store: Store) -> None:
    await add_entries(store, [DOCTOR, SERVICE])
    directory: DirectoryLookup = StoreDirectory(store)
    found = await directory.lookup("<JEAN.DUPONT@hopital-x.mssante.FR>")
    assert found is not None
    assert found.address == "jean.dupont@hopital-x.mssante.fr"
    assert found == Entry(**{**DOCTOR.__dict__, "address": "jean.dupont@hopital-x.mssante.fr"})
    # Liste rouge: hidden from searches, still found by its exact address.
    assert await directory.exists("Cardio@hopital-x.mssante.fr")
    service = await directory.lookup("cardio@hopital-x.mssante.fr")
    assert service is not None and service.liste_rouge and service.family_name is None
    assert not await directory.exists("jean.dupond@hopital-x.mssante.fr")
    assert not await directory.exists("not an address")
    assert await directory.lookup("") is None


async def test_put_replaces_by_address_and_remove(store: Store) -> None:
    await add_entries(store, [DOCTOR])
    moved = Entry(address="jean.dupont@hopital-x.mssante.fr", mailbox_type="PER", city="LYON")
    await add_entries(store, [moved])
    async with store.session() as session:
        assert await count_entries(session) == 1
    directory = StoreDirectory(store, ttl=0)
    found = await directory.lookup(DOCTOR.address)
    assert found is not None and found.city == "LYON" and found.family_name is None
    async with store.session() as session, session.begin():
        assert await remove_entries(session, ["JEAN.DUPONT@hopital-x.mssante.fr", "x@y"]) == 1
    assert await directory.lookup(DOCTOR.address) is None


async def test_bad_entries_are_refused_before_anything_is_written(store: Store) -> None:
    for bad, reason in (
        (Entry(address="nobody", mailbox_type="PER"), "not an address"),
        (Entry(address="p@x.fr", mailbox_type="PATIENT"), "mailbox type"),
    ):
        with pytest.raises(ValueError, match=reason):
            await add_entries(store, [SERVICE, bad])
    async with store.session() as session:
        assert await count_entries(session) == 0


async def test_the_table_keeps_addresses_lower_case_and_unique(store: Store) -> None:
    await add_entries(store, [SERVICE])
    for statement in (
        "INSERT INTO directory_entries (address, mailbox_type, liste_rouge, updated_at) "
        "VALUES ('Upper@x.fr', 'PER', false, CURRENT_TIMESTAMP)",
        "INSERT INTO directory_entries (address, mailbox_type, liste_rouge, updated_at) "
        "VALUES ('cardio@hopital-x.mssante.fr', 'ORG', false, CURRENT_TIMESTAMP)",
        "INSERT INTO directory_entries (address, mailbox_type, liste_rouge, updated_at) "
        "VALUES ('x@x.fr', 'XXX', false, CURRENT_TIMESTAMP)",
    ):
        with pytest.raises(IntegrityError):
            async with store.session() as session, session.begin():
                await session.execute(text(statement))


async def test_cache_serves_repeats_and_expires(store: Store) -> None:
    ticks = Ticks()
    directory = StoreDirectory(store, size=100, ttl=30, clock=ticks)
    assert not await directory.exists(DOCTOR.address)
    await add_entries(store, [DOCTOR])
    # Within the TTL the cached answer stands, absent included, and costs no database read.
    assert not await directory.exists(DOCTOR.address.upper())
    assert directory.reads == 1
    ticks.now += 30
    assert await directory.exists(DOCTOR.address)
    assert directory.reads == 2
    assert await directory.exists(DOCTOR.address)
    assert directory.reads == 2
    # A sync that changed the mirror invalidates what it changed.
    async with store.session() as session, session.begin():
        await remove_entries(session, [DOCTOR.address])
    directory.invalidate([DOCTOR.address])
    assert not await directory.exists(DOCTOR.address)
    assert directory.reads == 3


async def test_cache_is_bounded_least_recently_used_out(store: Store) -> None:
    entries = [Entry(address=f"p{n}@x.fr", mailbox_type="PER") for n in range(4)]
    await add_entries(store, entries)
    directory = StoreDirectory(store, size=2, ttl=60, clock=Ticks())
    await directory.lookup("p0@x.fr")
    await directory.lookup("p1@x.fr")
    await directory.lookup("p0@x.fr")  # p0 is now the most recently used
    await directory.lookup("p2@x.fr")  # evicts p1
    assert directory.reads == 3
    await directory.lookup("p0@x.fr")
    assert directory.reads == 3
    await directory.lookup("p1@x.fr")
    assert directory.reads == 4
    directory.invalidate()
    await directory.lookup("p0@x.fr")
    assert directory.reads == 5


def test_normalize() -> None:
    assert normalize(" <A.B@X.Fr> ") == "a.b@x.fr"
    assert normalize("a@") is None and normalize("@x") is None and normalize("ab") is None
    assert normalize("a" * 320 + "@x.fr") is None
    with pytest.raises(ValueError):
        StoreDirectory(None, size=-1)  # type: ignore[arg-type]


async def test_many_entries_are_written_in_chunks(store: Store) -> None:
    entries = [Entry(address=f"p{n}@x.fr", mailbox_type="APP") for n in range(1203)]
    async with store.session() as session, session.begin():
        assert await put_entries(session, entries) == 1203
    async with store.session() as session:
        assert await count_entries(session) == 1203
    assert await StoreDirectory(store).exists("p1202@x.fr")
