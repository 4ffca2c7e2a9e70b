"""The header search filter in the store: written with the sealed structure, keyed like it,
and rebuilt under the new key by `db rekey` (SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib
import random

from sqlalchemy import select, update

from mssante.operator.store import _sql, blobmeta, blobs, searchfilter
from mssante.operator.store.crypto import BlobCipher
from mssante.operator.store.db import Store
from mssante.operator.store.schema import BlobMetaRow

KEY_1 = bytes(range(32))
KEY_2 = bytes(range(100, 132))
MESSAGE = b"From: Anne Petit <anne.petit@peer.test>\r\nSubject: Bilan sanguin\r\n\r\nbody\r\n"


def _finds(cipher: BlobCipher, key_id: str, value: bytes, field: str, needle: str) -> bool:
    probe = searchfilter.probe(cipher.search_key(key_id), field, needle)
    return probe.may_match(searchfilter.as_int(value))


async def test_filter_stored_and_rebuilt_by_rekey(store: Store) -> None:
    old = BlobCipher({"k1": KEY_1}, "k1")
    first = Store(store.engine, old)
    async with first.session() as session:
        blob_id = await blobs.put_blob(session, old, MESSAGE)
        await blobmeta.put_blob_meta(
            session, [(blob_id, blobmeta.seal_meta(old, old.digest(MESSAGE), b"{}", MESSAGE))]
        )
        await session.commit()
    async with first.read_session() as session:
        key_id, value = (
            await session.execute(select(BlobMetaRow.key_id, BlobMetaRow.search_filter))
        ).one()
    assert key_id == "k1" and len(value) == searchfilter.FILTER_BYTES
    assert _finds(old, "k1", value, "subject", "bilan")
    assert _finds(old, "k1", value, "from", "anne.petit")

    rotated = Store(store.engine, BlobCipher({"k1": KEY_1, "k2": KEY_2}, "k2"))
    assert await blobs.rekey(rotated) == 1
    only_new = BlobCipher({"k2": KEY_2}, "k2")
    async with store.read_session() as session:
        key_id, rebuilt = (
            await session.execute(select(BlobMetaRow.key_id, BlobMetaRow.search_filter))
        ).one()
    assert key_id == "k2" and rebuilt != value  # another key, other bits
    assert _finds(only_new, "k2", rebuilt, "subject", "bilan sanguin")
    assert _finds(only_new, "k2", rebuilt, "from", "anne.petit")


def test_seal_meta_without_the_message_has_no_filter() -> None:
    cipher = BlobCipher({"k1": KEY_1}, "k1")
    sealed = blobmeta.seal_meta(cipher, cipher.digest(MESSAGE), b"{}")
    assert not isinstance(sealed, blobmeta.SealedMeta)
    with_filter = blobmeta.seal_meta(cipher, cipher.digest(MESSAGE), b"{}", MESSAGE)
    assert isinstance(with_filter, blobmeta.SealedMeta)
    assert with_filter.search_filter == searchfilter.build_for_message(
        cipher.search_key("k1"), MESSAGE
    )


async def test_filter_test_in_sql_agrees_with_python(store: Store) -> None:
    """`_sql.MaskSet` (SQLite: our registered function; PostgreSQL: get_bit) gives the answer
    `Probe.may_match` gives, on stored filters, and keeps NULL filters out of its own answer."""
    rng = random.Random(7)
    values: dict[int, bytes | None] = {}
    async with store.session() as session:
        for n in range(24):
            body = f"Subject: filtre {n}\r\n\r\nx\r\n".encode()
            blob_id = await blobs.put_blob(session, store.cipher, body)
            # Sparse and dense filters, and one without any.
            bits = 0 if n == 0 else sum(1 << rng.randrange(2048) for _ in range(40 * (n % 5)))
            value = None if n == 23 else bits.to_bytes(searchfilter.FILTER_BYTES, "big")
            sealed = blobmeta.seal_meta(store.cipher, store.cipher.digest(body), b"{}")
            await blobmeta.put_blob_meta(session, [(blob_id, sealed)])
            await session.execute(
                update(BlobMetaRow)
                .where(BlobMetaRow.blob_id == blob_id)
                .values(search_filter=value)
            )
            values[blob_id] = value
        await session.commit()
    for _ in range(12):
        masks = [
            sum(1 << rng.randrange(2048) for _ in range(rng.choice((0, 1, 2, 8)))) for _ in range(2)
        ]
        as_bytes = [m.to_bytes(searchfilter.FILTER_BYTES, "big") for m in masks]
        column = BlobMetaRow.__table__.c.search_filter
        async with store.read_session() as session:
            found = set(
                (
                    await session.scalars(
                        select(BlobMetaRow.blob_id).where(_sql.MaskSet(column, *as_bytes))
                    )
                ).all()
            )
        expected = {
            blob_id
            for blob_id, value in values.items()
            if value is not None
            and searchfilter.Probe(masks[0], masks[1]).may_match(searchfilter.as_int(value))
        }
        assert found == expected
    assert _sql.mask_set(None, b"\x01") is None
    assert _sql.mask_set(b"\x03", b"\x04", b"\x02") == 1
    assert _sql.mask_set(b"\x03", b"\x04") == 0


def test_entry_bits_are_the_keyed_blake2b_of_the_entry() -> None:
    """Filters stored earlier stay valid: an entry's bits come from BLAKE2b-128 keyed with the
    search key over the UTF-8 entry, whatever the hashing code's shape."""
    key = bytes(range(32))
    entry = "subject:bil"
    word = int.from_bytes(hashlib.blake2b(entry.encode(), key=key, digest_size=16).digest(), "big")
    expected = 0
    for i in range(searchfilter.HASHES):
        expected |= 1 << ((word >> (i * 11)) % searchfilter.FILTER_BITS)
    assert searchfilter._bits(searchfilter._hasher(key), entry) == expected
