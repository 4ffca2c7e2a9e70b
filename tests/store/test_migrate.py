"""Migrations: empty → head, schema check, round trip, and models ≡ migrated schema."""

from __future__ import annotations

from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, Table, inspect, text
from sqlalchemy.engine import Connection

from mssante.operator.store.db import create_engine
from mssante.operator.store.errors import SchemaOutdated, StoreError
from mssante.operator.store.migrate import (
    check_schema,
    current_revision,
    downgrade,
    head_revision,
    upgrade,
)
from mssante.operator.store.schema import Base

TABLES = {
    "domains",
    "mailboxes",
    "credentials",
    "certificate_bindings",
    "grants",
    "folders",
    "blobs",
    "blob_meta",
    "messages",
    "expunged",
    "private_seen",
    "queue_messages",
    "queue_recipients",
    "queue_attempts",
    "dsn_requests",
    "audit_events",
    "directory_entries",
}


def _table_names(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names()) - {"alembic_version"}


async def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_table_names)
    finally:
        await engine.dispose()


async def _diff(url: str, metadata: MetaData) -> list[Any]:
    def compare(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(compare)
    finally:
        await engine.dispose()


def test_head_is_the_queue_and_directory_revision() -> None:
    assert head_revision() == "0005"


async def test_upgrade_from_empty_to_head(store_url: str) -> None:
    assert await current_revision(store_url) is None
    assert await _tables(store_url) == set()
    await upgrade(store_url)
    assert await current_revision(store_url) == head_revision()
    assert await _tables(store_url) == TABLES
    await upgrade(store_url)  # idempotent
    assert await current_revision(store_url) == head_revision()


async def test_check_schema_refuses_empty_database_then_passes(store_url: str) -> None:
    with pytest.raises(SchemaOutdated) as refused:
        await check_schema(store_url)
    message = str(refused.value)
    assert "no mssante schema" in message
    assert head_revision() in message
    assert "mssante db upgrade" in message
    await upgrade(store_url)
    await check_schema(store_url)


async def test_check_schema_names_present_and_expected_revisions(store_url: str) -> None:
    await upgrade(store_url)
    engine = create_engine(store_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = 'f00dbabe'"))
    finally:
        await engine.dispose()
    with pytest.raises(SchemaOutdated) as refused:
        await check_schema(store_url)
    assert "f00dbabe" in str(refused.value)
    assert head_revision() in str(refused.value)
    assert "newer version" in str(refused.value)


async def test_downgrade_then_upgrade_round_trip(store_url: str) -> None:
    await upgrade(store_url)
    await downgrade(store_url, "base")
    assert await current_revision(store_url) is None
    assert await _tables(store_url) == set()
    await upgrade(store_url)
    assert await _tables(store_url) == TABLES
    await check_schema(store_url)


async def test_models_match_migrated_schema(store_url: str) -> None:
    await upgrade(store_url)
    assert await _diff(store_url, Base.metadata) == []


async def test_schema_comparison_sees_differences(store_url: str) -> None:
    # Guards the test above: an empty diff must mean "equal", not "comparison blind".
    await upgrade(store_url)
    drifted = MetaData()
    for table in Base.metadata.sorted_tables:
        table.to_metadata(drifted)
    Table("unexpected", drifted, Column("id", Integer, primary_key=True))
    drifted.tables["blobs"].append_column(Column("extra", Integer))
    diff = await _diff(store_url, drifted)
    kinds = {entry[0] for entry in diff if isinstance(entry, tuple)}
    assert {"add_table", "add_column"} <= kinds


async def test_0005_refuses_to_drop_queue_rows_written_by_hand(store_url: str) -> None:
    # No version before 0005 wrote the queue tables; rows there were put by someone, and the
    # rebuild must not drop them silently.
    await upgrade(store_url, "0004")
    engine = create_engine(store_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO blobs (id, digest, key_id, nonce, ciphertext, size, created_at) "
                    "VALUES (1, 'd', 'k', :n, :c, 1, CURRENT_TIMESTAMP)"
                ),
                {"n": b"\0" * 12, "c": b"x"},
            )
            await conn.execute(
                text(
                    "INSERT INTO queue_messages (id, blob_id, envelope_from, created_at) "
                    "VALUES (1, 1, 'a@x.test', CURRENT_TIMESTAMP)"
                )
            )
    finally:
        await engine.dispose()
    with pytest.raises(StoreError, match="queue_messages, which holds 1 row"):
        await upgrade(store_url)
    assert await current_revision(store_url) == "0004"
