"""The sealed structure record of a stored message (ENVELOPE, BODYSTRUCTURE, part offsets,
its header).

Computed once at delivery by `operator.mime` and stored next to the blob, so that IMAP FETCH
of ENVELOPE, BODYSTRUCTURE or a body section does not parse the message again. The plaintext
names the subject and the addresses: it is sealed like the body, and bound to the digest of
its blob, so a row moved to another blob does not open.

The store deals in bytes (`operator.metarecord` writes and reads them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mssante.operator import metarecord
from mssante.operator.store import _sql, searchfilter
from mssante.operator.store.crypto import BlobCipher, SealedRecord
from mssante.operator.store.errors import NotFound
from mssante.operator.store.schema import Base, BlobMetaRow, BlobRow, utcnow


def context(blob_digest: str) -> bytes:
    """The associated data that ties a sealed structure to its blob."""
    return b"blob_meta\x00" + blob_digest.encode("ascii")


@dataclass(frozen=True)
class SealedMeta(SealedRecord):
    """A sealed structure with the message's search filter (`searchfilter`), built under the
    same storage key."""

    search_filter: bytes | None = None


def seal_meta(
    cipher: BlobCipher, blob_digest: str, plaintext: bytes, message: bytes | None = None
) -> SealedRecord:
    """Seal outside any transaction; store with `put_blob_meta`. With the `message` itself,
    its header search filter is built too (same worker thread, same key)."""
    sealed = cipher.seal_record(plaintext, context(blob_digest))
    if message is None:
        return sealed
    key = cipher.search_key(sealed.key_id)
    return SealedMeta(
        sealed.key_id,
        sealed.nonce,
        sealed.ciphertext,
        searchfilter.build_for_message(key, message),
    )


def _filter_of(sealed: SealedRecord) -> bytes | None:
    return sealed.search_filter if isinstance(sealed, SealedMeta) else None


async def put_blob_meta(session: AsyncSession, items: Sequence[tuple[int, SealedRecord]]) -> None:
    """Store the sealed structure of each (blob id, record); a blob that has one keeps it.

    Equal blobs have equal structures, so the first one stored is as good as any later one.
    """
    if not items:
        return
    now = utcnow()
    stmt = _sql.insert(session, BlobMetaRow).on_conflict_do_nothing(index_elements=["blob_id"])
    await session.execute(
        stmt,
        [
            {
                "blob_id": blob_id,
                "key_id": sealed.key_id,
                "nonce": sealed.nonce,
                "ciphertext": sealed.ciphertext,
                "search_filter": _filter_of(sealed),
                "created_at": now,
            }
            for blob_id, sealed in items
        ],
    )


_BLOB_META = Base.metadata.tables["blob_meta"]
_INSERT_META = insert(_BLOB_META)  # built once: compiled once per process


async def add_new_blob_meta(
    session: AsyncSession, items: Sequence[tuple[int, SealedRecord]]
) -> None:
    """`put_blob_meta` for blobs created in this same transaction, which cannot have a
    structure yet: a plain INSERT, which SQLAlchemy compiles once (its `ON CONFLICT` form is
    compiled again at every call)."""
    if not items:
        return
    now = utcnow()
    await session.execute(
        _INSERT_META,
        [
            {
                "blob_id": blob_id,
                "key_id": sealed.key_id,
                "nonce": sealed.nonce,
                "ciphertext": sealed.ciphertext,
                "search_filter": _filter_of(sealed),
                "created_at": now,
            }
            for blob_id, sealed in items
        ],
    )


async def get_blob_meta(session: AsyncSession, cipher: BlobCipher, blob_id: int) -> bytes:
    """The plaintext structure of a blob; NotFound, KeyUnavailable or BlobTampered otherwise."""
    row = (
        await session.execute(
            select(BlobMetaRow.key_id, BlobMetaRow.nonce, BlobMetaRow.ciphertext, BlobRow.digest)
            .join(BlobRow, BlobRow.id == BlobMetaRow.blob_id)
            .where(BlobMetaRow.blob_id == blob_id)
        )
    ).one_or_none()
    if row is None:
        raise NotFound(f"blob {blob_id} has no stored structure")
    key_id, nonce, ciphertext, digest = row
    return cipher.open_record(key_id, nonce, ciphertext, context(digest))


async def rekey_meta(
    session: AsyncSession,
    cipher: BlobCipher,
    old_blob_id: int,
    old_digest: str,
    new_blob_id: int,
    new_digest: str,
    message: bytes | None = None,
) -> None:
    """Re-seal a blob's structure under the current key for its new digest (key rotation).

    The search filter is keyed like the structure: with the blob's plaintext `message` it is
    rebuilt under the current key, else it is dropped (NULL: always a search candidate). With
    the `message`, a record older than `operator.metarecord`'s version 2 is rewritten as one.

    When the blob is merged into a twin (`new_blob_id` differs), the structure is given to
    the twin unless it has one; the old row goes with its blob (ON DELETE CASCADE).
    """
    row = (
        await session.execute(
            select(BlobMetaRow.key_id, BlobMetaRow.nonce, BlobMetaRow.ciphertext).where(
                BlobMetaRow.blob_id == old_blob_id
            )
        )
    ).one_or_none()
    if row is None:
        return
    key_id, nonce, ciphertext = row
    plaintext = cipher.open_record(key_id, nonce, ciphertext, context(old_digest))
    if message is not None:
        plaintext = metarecord.upgrade(plaintext, message)
    sealed = seal_meta(cipher, new_digest, plaintext, message)
    if new_blob_id != old_blob_id:
        await put_blob_meta(session, [(new_blob_id, sealed)])
        return
    await session.execute(
        update(BlobMetaRow)
        .where(BlobMetaRow.blob_id == old_blob_id)
        .values(
            key_id=sealed.key_id,
            nonce=sealed.nonce,
            ciphertext=sealed.ciphertext,
            search_filter=_filter_of(sealed),
        )
        .execution_options(synchronize_session=False)
    )
