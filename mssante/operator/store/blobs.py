"""Encrypted, deduplicated message bodies, and their re-encryption when the key changes.

A body delivered to ten local recipients, or kept in Sent and in the outbound queue, is stored
once: messages and queue entries reference a blob. Blobs are looked up by their keyed digest
(see crypto.py), so deduplication works without any plaintext hash on disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from mssante.operator.store import _sql, blobmeta
from mssante.operator.store.crypto import BlobCipher, SealedBlob, SealedRecord
from mssante.operator.store.db import Store
from mssante.operator.store.errors import NotFound, StoreError
from mssante.operator.store.schema import (
    Base,
    BlobRow,
    DsnRequestRow,
    MessageRow,
    QueueMessageRow,
    utcnow,
)

REKEY_RETRIES = 5
_IN_CHUNK = 500  # digests per `IN (…)`: well under every driver's parameter limit


async def _find(session: AsyncSession, digest: str) -> int | None:
    blob_id: int | None = await session.scalar(select(BlobRow.id).where(BlobRow.digest == digest))
    return blob_id


async def put_blob(session: AsyncSession, cipher: BlobCipher, data: bytes) -> int:
    """Store `data` encrypted, or find it already stored; returns the blob id.

    Safe against a concurrent store of the same content: `ON CONFLICT DO NOTHING` lets the
    unique digest decide (on PostgreSQL it waits for the other transaction), then the winner's
    row is read back. The caller commits.
    """
    existing = await _find(session, cipher.digest(data))
    if existing is not None:
        return existing
    sealed = cipher.seal(data)
    stmt = (
        _sql.insert(session, BlobRow)
        .values(
            digest=sealed.digest,
            key_id=sealed.key_id,
            nonce=sealed.nonce,
            ciphertext=sealed.ciphertext,
            size=len(data),
            created_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["digest"])
        .returning(BlobRow.id)
    )
    blob_id = (await session.execute(stmt)).scalar_one_or_none()
    if blob_id is None:
        blob_id = await _find(session, sealed.digest)
        if blob_id is None:  # the conflicting row was there, then vanished: not for us to guess
            raise StoreError("blob stored concurrently and removed before it could be read")
    return blob_id


_BLOBS = Base.metadata.tables["blobs"]
# Built once, of a fixed shape: compiled once per process (see put_sealed_blobs).
_IDS_BY_DIGEST = select(_BLOBS.c.digest, _BLOBS.c.id).where(
    _BLOBS.c.digest.in_(bindparam("digests", expanding=True))
)
_INSERT_BLOBS = insert(_BLOBS).returning(_BLOBS.c.digest, _BLOBS.c.id)


async def _ids_by_digest(session: AsyncSession, digests: Sequence[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for i in range(0, len(digests), _IN_CHUNK):
        rows = await session.execute(_IDS_BY_DIGEST, {"digests": digests[i : i + _IN_CHUNK]})
        found.update({digest: blob_id for digest, blob_id in rows.tuples()})
    return found


class StoredBlobs(NamedTuple):
    ids: dict[str, int]  # {digest: blob id}
    created: frozenset[str]  # digests of the blobs this call inserted


async def put_sealed_blobs(
    session: AsyncSession, blobs: Sequence[tuple[SealedBlob, int]]
) -> StoredBlobs:
    """Store blobs sealed beforehand (`BlobCipher.seal`, outside the transaction), or find
    them already stored. `blobs` are (sealed, plaintext size).

    The batch form of `put_blob`, for group commit: one lookup of the contents already stored,
    then one INSERT of the others; both statements have a fixed shape, so they are compiled
    once per process (SQLAlchemy 2.0 cannot cache `ON CONFLICT` statements, and compiling one
    for every batch costs more than the lookup). The unique digest still decides under
    concurrency: on SQLite the transaction holds the write lock, so nothing can come between
    the lookup and the insert; on PostgreSQL a concurrent transaction storing the same content
    makes the insert fail, and the caller's retry then finds that blob. The caller commits.
    """
    unique: dict[str, tuple[SealedBlob, int]] = {}
    for sealed, size in blobs:
        unique.setdefault(sealed.digest, (sealed, size))
    if not unique:
        return StoredBlobs({}, frozenset())
    ids = await _ids_by_digest(session, list(unique))
    missing = [digest for digest in unique if digest not in ids]
    if missing:
        now = utcnow()
        rows = await session.execute(
            _INSERT_BLOBS,
            [
                {
                    "digest": digest,
                    "key_id": unique[digest][0].key_id,
                    "nonce": unique[digest][0].nonce,
                    "ciphertext": unique[digest][0].ciphertext,
                    "size": unique[digest][1],
                    "created_at": now,
                }
                for digest in missing
            ],
        )
        ids.update({digest: blob_id for digest, blob_id in rows.tuples()})
    return StoredBlobs(ids, frozenset(missing))


async def put_sealed_with_meta(
    session: AsyncSession, items: Sequence[tuple[SealedBlob, int, SealedRecord]]
) -> dict[str, int]:
    """`put_sealed_blobs` for (sealed blob, plaintext size, sealed structure record), storing
    each blob's record too (a blob stored before may already have one: it is kept). Blob ids
    by digest; the caller commits."""
    stored = await put_sealed_blobs(session, [(blob, size) for blob, size, _ in items])
    ids = stored.ids
    new_metas: dict[int, SealedRecord] = {}
    old_metas: dict[int, SealedRecord] = {}
    for blob, _, meta in items:
        metas = new_metas if blob.digest in stored.created else old_metas
        metas.setdefault(ids[blob.digest], meta)
    await blobmeta.add_new_blob_meta(session, list(new_metas.items()))
    await blobmeta.put_blob_meta(session, list(old_metas.items()))
    return ids


async def get_blob(session: AsyncSession, cipher: BlobCipher, blob_id: int) -> bytes:
    """The plaintext of a blob; NotFound, KeyUnavailable or BlobTampered otherwise."""
    result = await session.execute(
        select(BlobRow.key_id, BlobRow.nonce, BlobRow.ciphertext, BlobRow.digest).where(
            BlobRow.id == blob_id
        )
    )
    row = result.one_or_none()
    if row is None:
        raise NotFound(f"blob {blob_id} does not exist")
    key_id, nonce, ciphertext, digest = row
    return cipher.open(key_id, nonce, ciphertext, digest)


async def _rekey_batch(store: Store, after_id: int, batch_size: int) -> tuple[int, int]:
    """Re-encrypt one batch of blobs with ids above `after_id`; (count, last id seen)."""
    cipher = store.cipher
    async with store.session() as session:
        rows = (
            await session.execute(
                select(
                    BlobRow.id, BlobRow.key_id, BlobRow.nonce, BlobRow.ciphertext, BlobRow.digest
                )
                .where(BlobRow.key_id != cipher.current_key_id, BlobRow.id > after_id)
                .order_by(BlobRow.id)
                .limit(batch_size)
            )
        ).all()
        for blob_id, key_id, nonce, ciphertext, digest in rows:
            plaintext = cipher.open(key_id, nonce, ciphertext, digest)
            sealed = cipher.seal(plaintext)
            twin = await _find(session, sealed.digest)
            if twin is not None:
                # The same content was stored again under the new key before this rotation:
                # keep that copy, point every reference at it, drop this one.
                await blobmeta.rekey_meta(
                    session, cipher, blob_id, digest, twin, sealed.digest, plaintext
                )
                for model in (MessageRow, QueueMessageRow, DsnRequestRow):
                    await session.execute(
                        update(model)
                        .where(model.blob_id == blob_id)
                        .values(blob_id=twin)
                        .execution_options(synchronize_session=False)
                    )
                await session.execute(delete(BlobRow).where(BlobRow.id == blob_id))
            else:
                await blobmeta.rekey_meta(
                    session, cipher, blob_id, digest, blob_id, sealed.digest, plaintext
                )
                await session.execute(
                    update(BlobRow)
                    .where(BlobRow.id == blob_id)
                    .values(
                        key_id=sealed.key_id,
                        nonce=sealed.nonce,
                        ciphertext=sealed.ciphertext,
                        digest=sealed.digest,
                    )
                    .execution_options(synchronize_session=False)
                )
        await session.commit()
    return len(rows), (rows[-1][0] if rows else after_id)


async def rekey(store: Store, batch_size: int = 100) -> int:
    """Re-encrypt every blob not under the current key; returns how many were re-encrypted.

    Runs in batches, each its own transaction, so a long rotation makes progress, holds locks
    briefly and can be interrupted and resumed. Every old key must still be configured
    (KeyUnavailable otherwise); once this returns, old keys can be removed from the settings.
    The digest changes with the key, so a blob whose content is already stored under the new
    key is merged into that copy.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    total = 0
    after_id = 0
    retries = 0
    while True:
        try:
            count, after_id = await _rekey_batch(store, after_id, batch_size)
        except IntegrityError as exc:
            # PostgreSQL only: a concurrent put_blob stored one of this batch's contents under
            # the new key between our lookup and our update. The batch rolled back; redo it.
            retries += 1
            if retries > REKEY_RETRIES:
                raise StoreError(f"rekey: batch after blob {after_id} keeps conflicting") from exc
            continue
        retries = 0
        if count == 0:
            return total
        total += count
