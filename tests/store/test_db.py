"""Engines and the Store: URL handling, connection settings, readable connection errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import make_url, text

from mssante.operator.store.crypto import BlobCipher
from mssante.operator.store.db import (
    SQLITE_BUSY_TIMEOUT_MS,
    Store,
    create_engine,
    database_url,
    mask_url,
)
from mssante.operator.store.errors import StoreError
from mssante.operator.store.migrate import upgrade
from mssante.operator.store.schema import DomainRow


@pytest.mark.parametrize(
    ("given", "driver"),
    [
        ("sqlite:///data/mssante.db", "sqlite+aiosqlite"),
        ("sqlite+aiosqlite:////var/lib/mssante/mssante.db", "sqlite+aiosqlite"),
        ("postgresql://u:p@db.example/mssante", "postgresql+asyncpg"),
        ("postgres://u:p@db.example/mssante", "postgresql+asyncpg"),
        ("postgresql+asyncpg://u:p@db.example/mssante", "postgresql+asyncpg"),
    ],
)
def test_urls_map_to_the_async_drivers(given: str, driver: str) -> None:
    parsed = database_url(given)
    assert parsed.drivername == driver
    assert parsed.database == make_url(given).database


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("mysql://u:hunter2@db/x", "unsupported database URL scheme 'mysql'"),
        ("sqlite://", "in-memory SQLite is not supported"),
        ("sqlite:///:memory:", "in-memory SQLite is not supported"),
        ("not a url hunter2", "invalid database URL"),
    ],
)
def test_unusable_urls_are_refused_without_the_password(given: str, expected: str) -> None:
    with pytest.raises(StoreError, match=expected) as refused:
        database_url(given)
    assert "hunter2" not in str(refused.value)


def test_mask_url_hides_the_password() -> None:
    masked = mask_url("postgresql://mssante:hunter2@db.example:5432/mssante")
    assert masked == "postgresql://mssante:***@db.example:5432/mssante"
    assert mask_url("sqlite:///data/mssante.db") == "sqlite:///data/mssante.db"
    assert "hunter2" not in mask_url("::hunter2::")


async def test_sqlite_file_and_parent_directories_are_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "mssante.db"
    async with await Store.open(f"sqlite:///{path}", BlobCipher({"k": bytes(32)}, "k")) as store:
        assert store.dialect == "sqlite"
    assert path.exists()


async def test_connection_settings(store_url: str) -> None:
    engine = create_engine(store_url)
    try:
        async with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
                # 2 = FULL: the WAL is synced at every commit, so an acknowledged message
                # survives power loss (NORMAL, 1, may lose the last transactions).
                assert (await conn.exec_driver_sql("PRAGMA synchronous")).scalar() == 2
                assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
                timeout = (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar()
                assert timeout == SQLITE_BUSY_TIMEOUT_MS
            else:
                assert engine.dialect.name == "postgresql"
                assert engine.dialect.driver == "asyncpg"
                name = (await conn.execute(text("SHOW application_name"))).scalar()
                assert name == "mssante"
    finally:
        await engine.dispose()


async def test_foreign_keys_are_enforced(store_url: str, cipher: BlobCipher) -> None:
    await upgrade(store_url)
    async with await Store.open(store_url, cipher) as store, store.session() as session:
        with pytest.raises(Exception, match=r"(?i)foreign key"):
            await session.execute(
                text(
                    "INSERT INTO folders (mailbox_id, name, subscribed, uidvalidity, uidnext,"
                    " highest_modseq, created_at) VALUES (4242, 'INBOX', true, 1, 1, 1,"
                    " CURRENT_TIMESTAMP)"
                )
            )


async def test_unreachable_postgresql_is_a_readable_store_error() -> None:
    url = "postgresql://mssante:hunter2@127.0.0.1:1/mssante"
    with pytest.raises(StoreError) as refused:
        await Store.open(url, BlobCipher({"k": bytes(32)}, "k"))
    message = str(refused.value)
    assert "hunter2" not in message
    assert "postgresql+asyncpg://mssante:***@127.0.0.1:1/mssante" in message
    assert "cannot connect" in message


@pytest.mark.postgres
async def test_missing_postgresql_database_is_a_readable_store_error(
    postgres_admin_url: str,
) -> None:
    url = make_url(postgres_admin_url).set(
        drivername="postgresql", password="hunter2", database="no_such_database_here"
    )
    with pytest.raises(StoreError) as refused:
        await Store.open(
            url.render_as_string(hide_password=False), BlobCipher({"k": bytes(32)}, "k")
        )
    message = str(refused.value)
    assert "no_such_database_here" in message
    assert "does not exist" in message
    assert "hunter2" not in message


async def test_unopenable_sqlite_file_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot create the directory"):
        await Store.open(f"sqlite:///{blocker}/mssante.db", BlobCipher({"k": bytes(32)}, "k"))
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreError, match="is a directory"):
        await Store.open(f"sqlite:///{tmp_path / 'dir.db'}", BlobCipher({"k": bytes(32)}, "k"))


async def test_read_sessions_do_not_wait_for_a_writer(store_url: str, cipher: BlobCipher) -> None:
    await upgrade(store_url)
    async with await Store.open(store_url, cipher) as store:
        async with store.session() as writer:
            writer.add(DomainRow(name="a.example"))
            await writer.flush()
            # The writer holds its lock, uncommitted; a reader sees the last committed state.
            async with store.read_session() as reader:
                count = await asyncio.wait_for(
                    reader.scalar(text("SELECT count(*) FROM domains")), timeout=5
                )
                assert count == 0
            await writer.commit()
        async with store.read_session() as reader:
            assert await reader.scalar(text("SELECT count(*) FROM domains")) == 1


async def test_sqlite_writers_of_one_process_take_turns(tmp_path: Path, cipher: BlobCipher) -> None:
    """Write sessions queue on the process's turn (not on SQLite's sleeping busy handler), in
    order, and every one commits; a write session opened inside another fails at once."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'turns.db'}"
    await upgrade(url)
    async with await Store.open(url, cipher) as store:
        order: list[int] = []

        async def write(n: int) -> None:
            async with store.session() as session:
                order.append(n)
                session.add(DomainRow(name=f"d{n}.example"))
                await asyncio.sleep(0)  # hand the loop to the others while holding the turn
                await session.commit()
                order.append(n)

        await asyncio.gather(*(write(n) for n in range(20)))
        # Each session ran alone: its two marks are adjacent.
        assert all(order[i] == order[i + 1] for i in range(0, len(order), 2))
        async with store.read_session() as reader:
            assert await reader.scalar(text("SELECT count(*) FROM domains")) == 20
        async with store.session() as outer:
            with pytest.raises(RuntimeError, match="inside another"):
                async with store.session():
                    pass
            await outer.commit()
        async with store.session() as after:  # the turn was given back
            after.add(DomainRow(name="after.example"))
            await after.commit()
