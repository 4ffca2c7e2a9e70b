"""The header search filter in the store: written with the sealed structure, keyed like it,
and rebuilt under the new key by `db rekey` (SQLite and PostgreSQL)."""

from __future__ import annotations

from sqlalchemy import select

from mssante.operator.store import blobmeta, blobs, searchfilter
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
