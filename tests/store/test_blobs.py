"""Encrypted blobs in the database: dedup, nothing readable at rest, tampering, key rotation."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from mssante.operator.store import blobs, domains, folders, mailboxes, messages
from mssante.operator.store.crypto import BlobCipher
from mssante.operator.store.db import Store, database_url
from mssante.operator.store.errors import BlobTampered, KeyUnavailable, NotFound
from mssante.operator.store.schema import BlobRow, MailboxType, MessageRow

KEY_1 = bytes(range(32))  # the `cipher` fixture's key "k1"
KEY_2 = bytes(range(100, 132))
DOMAIN = "hopital-x.mssante.fr"


def _letter(tag: str = "") -> bytes:
    # Distinctive and long enough that a plaintext fragment on disk could not be a coincidence.
    marker = f"Compte-rendu-Dupont-oncologie-{tag}-{secrets.token_hex(8)}"
    return (f"Subject: {marker}\r\n\r\n" + f"{marker} stade IIb, RCP du 12/03.\r\n" * 200).encode()


async def _count(store: Store) -> int:
    async with store.read_session() as session:
        return await session.scalar(select(func.count()).select_from(BlobRow)) or 0


async def _put(store: Store, data: bytes) -> int:
    async with store.session() as session:
        blob_id = await blobs.put_blob(session, store.cipher, data)
        await session.commit()
    return blob_id


async def _get(store: Store, blob_id: int) -> bytes:
    async with store.read_session() as session:
        return await blobs.get_blob(session, store.cipher, blob_id)


async def _inbox(store: Store, local: str) -> int:
    async with store.session() as session:
        if not await domains.list_domains(session):
            await domains.add_domain(session, DOMAIN)
        box = await mailboxes.create_mailbox(session, f"{local}@{DOMAIN}", MailboxType.PER)
        inbox = await folders.get_folder(session, box.id, "INBOX")
        await session.commit()
    return inbox.id


async def test_round_trip_and_not_found(store: Store) -> None:
    data = _letter()
    blob_id = await _put(store, data)
    assert await _get(store, blob_id) == data
    assert await _get(store, await _put(store, b"")) == b""
    async with store.session() as session:
        size = await session.scalar(select(BlobRow.size).where(BlobRow.id == blob_id))
        with pytest.raises(NotFound):
            await blobs.get_blob(session, store.cipher, 999_999)
    assert size == len(data)


async def test_same_content_stored_once_and_shared_by_messages(store: Store) -> None:
    data = _letter("dedup")
    first_inbox, second_inbox = await _inbox(store, "a"), await _inbox(store, "b")
    ids = [await _put(store, data) for _ in range(3)]
    assert len(set(ids)) == 1
    assert await _count(store) == 1
    async with store.session() as session:
        for folder_id in (first_inbox, second_inbox):
            await messages.append_message(session, folder_id, ids[0], len(data), datetime.now(UTC))
        await session.commit()
    async with store.session() as session:
        refs = (await session.scalars(select(MessageRow.blob_id))).all()
    assert refs == [ids[0], ids[0]]
    assert await _get(store, ids[0]) == data
    assert await _put(store, data + b"!") != ids[0]
    assert await _count(store) == 2


async def test_concurrent_puts_of_the_same_content_store_one_blob(store: Store) -> None:
    data = _letter("race")
    ids = await asyncio.gather(*(_put(store, data) for _ in range(10)))
    assert len(set(ids)) == 1
    assert await _count(store) == 1
    distinct = await asyncio.gather(*(_put(store, _letter(str(i))) for i in range(10)))
    assert len(set(distinct)) == 10


async def test_no_plaintext_in_the_database(store: Store) -> None:
    data = _letter("columns")
    fragment = data[9:60]
    blob_id = await _put(store, data)
    async with store.session() as session:
        row = (await session.execute(select(BlobRow).where(BlobRow.id == blob_id))).scalar_one()
    stored = row.ciphertext + row.nonce + row.digest.encode() + row.key_id.encode()
    assert data not in stored
    assert fragment not in stored
    assert row.digest != hashlib.sha256(data).hexdigest()


async def _postgresql_files(store: Store) -> bytes:
    """The bytes PostgreSQL has on disk for the blobs table, its TOAST and the current WAL.

    Read through the server (`pg_read_binary_file`, superuser) so that it works whether the
    server is our throwaway cluster or one given by MSSANTE_TEST_POSTGRES_URL.
    """
    async with store.engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("CHECKPOINT"))  # flush shared buffers to the relation files
        paths = (
            await conn.execute(
                text(
                    "SELECT pg_relation_filepath(c.oid) FROM pg_class c"
                    " WHERE c.oid = 'blobs'::regclass"
                    " OR c.oid = (SELECT reltoastrelid FROM pg_class WHERE oid = 'blobs'::regclass)"
                    " UNION ALL SELECT 'pg_wal/' || pg_walfile_name(pg_current_wal_lsn())"
                )
            )
        ).scalars()
        chunks = [
            (await conn.execute(text("SELECT pg_read_binary_file(:p)"), {"p": p})).scalar_one()
            for p in paths
        ]
    return b"".join(chunks)


async def test_nothing_readable_on_disk(store_url: str, store: Store) -> None:
    data = _letter("disk")
    fragment = data[9:60]
    plain_hash = hashlib.sha256(data).hexdigest().encode()
    await _put(store, data)
    async with store.session() as session:
        ciphertext = await session.scalar(select(BlobRow.ciphertext))
    assert ciphertext is not None

    def assert_absent(raw: bytes) -> None:
        # The files read are the right ones: the stored ciphertext is in them.
        assert ciphertext[:64] in raw
        assert data not in raw
        assert fragment not in raw
        assert fragment.decode().encode("utf-16-le") not in raw
        assert plain_hash not in raw

    if store.dialect == "postgresql":
        assert_absent(await _postgresql_files(store))
        return
    path = Path(str(database_url(store_url).database))
    files = [path, path.with_name(path.name + "-wal")]
    assert files[1].exists()  # the commit is in the WAL: check it while it is there
    assert_absent(b"".join(f.read_bytes() for f in files if f.exists()))
    await store.close()
    assert_absent(b"".join(f.read_bytes() for f in files if f.exists()))


async def test_tampered_rows_are_detected(store: Store) -> None:
    first, second = await _put(store, _letter("one")), await _put(store, _letter("two"))
    async with store.session() as session:
        row = (await session.execute(select(BlobRow).where(BlobRow.id == first))).scalar_one()
        flipped = bytes([row.ciphertext[0] ^ 0x80]) + row.ciphertext[1:]
        await session.execute(
            text("UPDATE blobs SET ciphertext = :c WHERE id = :id"), {"c": flipped, "id": first}
        )
        await session.commit()
    with pytest.raises(BlobTampered):
        await _get(store, first)
    # A sound ciphertext moved into another row (with that row's digest) does not open either.
    async with store.session() as session:
        await session.execute(
            text(
                "UPDATE blobs SET ciphertext = (SELECT ciphertext FROM blobs WHERE id = :src),"
                " nonce = (SELECT nonce FROM blobs WHERE id = :src) WHERE id = :dst"
            ),
            {"src": second, "dst": first},
        )
        await session.commit()
    with pytest.raises(BlobTampered):
        await _get(store, first)
    assert await _get(store, second)  # the original row still opens
    async with store.session() as session:
        await session.execute(
            text("UPDATE blobs SET digest = :d WHERE id = :id"), {"d": "0" * 64, "id": second}
        )
        await session.commit()
    with pytest.raises(BlobTampered):
        await _get(store, second)


async def test_missing_or_wrong_key(store: Store) -> None:
    blob_id = await _put(store, _letter("key"))
    without = Store(store.engine, BlobCipher({"k2": KEY_2}, "k2"))
    with pytest.raises(KeyUnavailable, match="k1"):
        await _get(without, blob_id)
    impostor = Store(store.engine, BlobCipher({"k1": KEY_2}, "k1"))
    with pytest.raises(BlobTampered):
        await _get(impostor, blob_id)


async def test_rekey_moves_every_blob_to_the_current_key(store: Store) -> None:
    contents = [_letter(f"rotate{i}") for i in range(5)]
    ids = [await _put(store, c) for c in contents]
    rotated = Store(store.engine, BlobCipher({"k1": KEY_1, "k2": KEY_2}, "k2"))
    assert await blobs.rekey(rotated, batch_size=2) == 5
    assert await blobs.rekey(rotated, batch_size=2) == 0
    async with store.session() as session:
        assert set((await session.scalars(select(BlobRow.key_id))).all()) == {"k2"}
    only_new = Store(store.engine, BlobCipher({"k2": KEY_2}, "k2"))
    assert [await _get(only_new, i) for i in ids] == contents
    # Dedup keeps working under the new key.
    assert await _put(only_new, contents[0]) == ids[0]
    with pytest.raises(KeyUnavailable):
        await _get(store, ids[0])


async def test_rekey_merges_content_already_stored_under_the_new_key(store: Store) -> None:
    data = _letter("merge")
    inbox = await _inbox(store, "m")
    old_id = await _put(store, data)
    rotated = Store(store.engine, BlobCipher({"k1": KEY_1, "k2": KEY_2}, "k2"))
    new_id = await _put(rotated, data)  # digests differ across keys: not deduplicated yet
    assert new_id != old_id
    async with store.session() as session:
        await messages.append_message(session, inbox, old_id, len(data), datetime.now(UTC))
        await messages.append_message(session, inbox, new_id, len(data), datetime.now(UTC))
        await session.commit()
    assert await blobs.rekey(rotated) == 1
    assert await _count(store) == 1
    async with store.session() as session:
        refs = (await session.scalars(select(MessageRow.blob_id))).all()
    assert refs == [new_id, new_id]
    assert await _get(rotated, new_id) == data


async def test_rekey_without_the_old_key_fails_clearly(store: Store) -> None:
    await _put(store, _letter("lost"))
    lost = Store(store.engine, BlobCipher({"k2": KEY_2}, "k2"))
    with pytest.raises(KeyUnavailable, match="k1"):
        await blobs.rekey(lost)
    with pytest.raises(ValueError, match="batch_size"):
        await blobs.rekey(lost, batch_size=0)
