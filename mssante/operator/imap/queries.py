"""The store queries the IMAP session runs, over the schema models.

Each command is a fixed, small number of statements whatever the number of messages it
touches (issue 4: "a FETCH or SEARCH over many messages is one query, not one per message"):
FETCH reads the message rows, their sealed bodies and structures in one joined SELECT; STORE
reads the rows, bumps the folder's MODSEQ once and updates the rows in one executemany;
EXPUNGE deletes and records the removals (rfc/7162 §3.2.10 needs them later) in three.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, delete, false, func, insert, or_, select
from sqlalchemy import update as sql_update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.expression import case

from mssante.operator import metarecord, mime
from mssante.operator.imap import fetch as fetch_items
from mssante.operator.imap.commands import (
    AndKey,
    DateKey,
    FlagKey,
    KeywordKey,
    ModSeqKey,
    NotKey,
    OrKey,
    SearchKey,
    SeqKey,
    SizeKey,
    StoreAction,
    UidKey,
)
from mssante.operator.imap.sequence import compress
from mssante.operator.store import _sql, blobmeta, searchfilter
from mssante.operator.store import seen as store_seen
from mssante.operator.store.crypto import BlobCipher
from mssante.operator.store.messages import parse_flags
from mssante.operator.store.schema import (
    Base,
    BlobMetaRow,
    BlobRow,
    CredentialRow,
    ExpungedRow,
    FolderRow,
    MailboxRow,
    MailboxState,
    MessageRow,
)

MAX_SQL_RANGES = 100  # OR-ed UID ranges in one predicate; beyond, a bounding range + filter

_MESSAGES = Base.metadata.tables["messages"]
_MAILBOXES = Base.metadata.tables["mailboxes"]
_BLOB_META = Base.metadata.tables["blob_meta"]
_BLOBS = Base.metadata.tables["blobs"]


class UnsupportedError(Exception):
    """A search key or set this slice does not execute; the session answers NO [CANNOT]."""


@dataclass(frozen=True, slots=True)
class Account:
    mailbox_id: int
    address: str
    password_hash: str | None


async def find_account(session: AsyncSession, address: str) -> Account | None:
    """The active mailbox at `address` (already lower-cased) and its password hash."""
    row = (
        await session.execute(
            select(MailboxRow.id, MailboxRow.address, CredentialRow.password_hash)
            .outerjoin(CredentialRow, CredentialRow.mailbox_id == MailboxRow.id)
            .where(MailboxRow.address == address, MailboxRow.state == MailboxState.ACTIVE.value)
        )
    ).one_or_none()
    if row is None:
        return None
    return Account(mailbox_id=row[0], address=row[1], password_hash=row[2])


@dataclass(frozen=True, slots=True)
class FolderCounts:
    messages: int
    unseen: int
    deleted: int
    size: int


async def folder_counts(session: AsyncSession, folder_id: int) -> FolderCounts:
    row = (
        await session.execute(
            select(
                func.count(MessageRow.id),
                func.count(MessageRow.id).filter(MessageRow.seen == false()),
                func.count(MessageRow.id).filter(MessageRow.deleted.is_(True)),
                func.coalesce(func.sum(MessageRow.size), 0),
            ).where(MessageRow.folder_id == folder_id)
        )
    ).one()
    return FolderCounts(int(row[0]), int(row[1]), int(row[2]), int(row[3]))


async def folder_uids(session: AsyncSession, folder_id: int) -> list[int]:
    result = await session.execute(
        select(MessageRow.uid).where(MessageRow.folder_id == folder_id).order_by(MessageRow.uid)
    )
    return list(result.scalars())


async def first_unseen_uid(session: AsyncSession, folder_id: int) -> int | None:
    uid: int | None = await session.scalar(
        select(func.min(MessageRow.uid)).where(
            MessageRow.folder_id == folder_id, MessageRow.seen == false()
        )
    )
    return uid


def uid_predicate(runs: Sequence[tuple[int, int]]) -> ColumnElement[bool]:
    """`uid` within the (low, high) runs; an empty list matches nothing."""
    if not runs:
        return false()
    if len(runs) > MAX_SQL_RANGES:
        # A long OR chain is a deep expression tree (SQLite caps it at 1000); the caller
        # filters the rows of the bounding range in Python.
        return MessageRow.uid.between(runs[0][0], runs[-1][1])
    return or_(*(MessageRow.uid.between(lo, hi) for lo, hi in runs))


def flag_columns(reader_id: int | None = None) -> list[Any]:
    """The columns `flags_of` reads, in its order; `reader_id`: a grantee of a shared folder,
    whose \\Seen is their own (store.seen)."""
    return [
        MessageRow.seen if reader_id is None else store_seen.seen_by(reader_id),
        MessageRow.answered,
        MessageRow.flagged,
        MessageRow.deleted,
        MessageRow.draft,
        MessageRow.keywords,
    ]


def flags_of(row: Sequence[object]) -> tuple[str, ...]:
    """Flag names of (seen, answered, flagged, deleted, draft, keywords): `flag_columns`."""
    names = [f for f, on in zip(fetch_items.SYSTEM_FLAGS, row[:5], strict=True) if on]
    keywords = str(row[5] or "")
    return (*names, *keywords.split())


@dataclass(frozen=True, slots=True)
class FetchedMessage:
    state: fetch_items.MessageState
    raw: bytes | None
    structure: metarecord.Record | None


async def message_sizes(
    session: AsyncSession, folder_id: int, uids: Sequence[int]
) -> dict[int, int]:
    """RFC822.SIZE of these messages, by UID, in one SELECT (FETCH batches bodies by size)."""
    if not uids:
        return {}
    wanted = set(uids)
    rows = await session.execute(
        select(MessageRow.uid, MessageRow.size).where(
            MessageRow.folder_id == folder_id, uid_predicate(compress(wanted))
        )
    )
    return {int(u): int(n) for u, n in rows if int(u) in wanted}


async def fetch_messages(
    session: AsyncSession,
    cipher: BlobCipher,
    folder_id: int,
    uids: Sequence[int],
    *,
    body: bool,
    structure: bool,
    changed_since: int | None = None,
    reader_id: int | None = None,
) -> list[FetchedMessage]:
    """The messages with these UIDs, ascending, in one SELECT (blob and structure joined in
    only when asked for; both decrypted here). `changed_since`: only those whose MODSEQ is
    greater (rfc/7162 §3.1.4.1 CHANGEDSINCE). `reader_id`: a grantee, whose own \\Seen is
    shown (store.seen)."""
    if not uids:
        return []
    wanted = set(uids)
    runs = compress(wanted)
    columns: list[object] = [
        MessageRow.uid,
        MessageRow.size,
        MessageRow.internal_date,
        *flag_columns(reader_id),
        MessageRow.modseq,
    ]
    need_blob = body or structure
    if need_blob:
        columns += [MessageRow.blob_id, BlobRow.key_id, BlobRow.nonce, BlobRow.digest]
        columns += [BlobRow.ciphertext] if body else []
    if structure:
        columns += [BlobMetaRow.key_id, BlobMetaRow.nonce, BlobMetaRow.ciphertext]
    query = select(*columns).where(MessageRow.folder_id == folder_id, uid_predicate(runs))  # type: ignore[call-overload]
    if changed_since is not None:
        query = query.where(MessageRow.modseq > changed_since)
    if need_blob:
        query = query.join(BlobRow, BlobRow.id == MessageRow.blob_id)
    if structure:
        query = query.outerjoin(BlobMetaRow, BlobMetaRow.blob_id == MessageRow.blob_id)
    rows = (await session.execute(query.order_by(MessageRow.uid))).all()
    out: list[FetchedMessage] = []
    for row in rows:
        uid = int(row[0])
        if uid not in wanted:
            continue
        state = fetch_items.MessageState(
            uid=uid,
            size=int(row[1]),
            internal_date=row[2],
            flags=flags_of(row[3:9]),
            modseq=int(row[9]),
        )
        raw: bytes | None = None
        parsed: metarecord.Record | None = None
        i = 10
        if need_blob:
            blob_id, key_id, nonce, digest = row[i : i + 4]
            i += 4
            if body:
                raw = cipher.open(key_id, nonce, row[i], digest)
                i += 1
            if structure:
                m_key, m_nonce, m_ciphertext = row[i : i + 3]
                if m_key is not None:
                    plain = cipher.open_record(
                        m_key, m_nonce, m_ciphertext, blobmeta.context(digest)
                    )
                    parsed = metarecord.read(plain)
                else:
                    # A message stored before structures were kept: parse it now.
                    if raw is None:
                        raw = await _blob(session, cipher, int(blob_id))
                    parsed = metarecord.of_message(mime.parse(raw), raw)
        out.append(FetchedMessage(state, raw, parsed))
    return out


async def _blob(session: AsyncSession, cipher: BlobCipher, blob_id: int) -> bytes:
    row = (
        await session.execute(
            select(BlobRow.key_id, BlobRow.nonce, BlobRow.ciphertext, BlobRow.digest).where(
                BlobRow.id == blob_id
            )
        )
    ).one()
    return cipher.open(row[0], row[1], row[2], row[3])


# --- SEARCH (rfc/3501 §6.4.4) ---------------------------------------------------------------

_FLAG_COLUMNS = {
    "SEEN": MessageRow.seen,
    "ANSWERED": MessageRow.answered,
    "FLAGGED": MessageRow.flagged,
    "DELETED": MessageRow.deleted,
    "DRAFT": MessageRow.draft,
}


def _midnight(day: dt.date) -> dt.datetime:
    # The internal date is stored in UTC; dates are compared as UTC days.
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class SearchContext:
    """The session's view: `uids` is its snapshot, ascending (sequence number n is uids[n-1])."""

    uids: Sequence[int]
    reader_id: int | None = None  # a grantee: SEEN is their own \\Seen (store.seen)
    saved: Sequence[int] = ()  # the `$` of rfc/5182 (UIDs, ascending)


def _keyword_predicate(key: KeywordKey) -> ColumnElement[bool]:
    # `keywords` is space-separated: match the whole word, case-insensitively (flags are,
    # rfc/3501 §2.3.2), with LIKE's own wildcards escaped (`_` is valid in an atom).
    word = key.keyword.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    padded = func.lower(" " + func.coalesce(MessageRow.keywords, "") + " ")
    found = padded.like(f"% {word} %", escape="\\")
    return ~found if key.negated else found


def search_predicate(key: SearchKey, ctx: SearchContext) -> ColumnElement[bool]:
    """One search key as SQL; UnsupportedError for keys this slice leaves out."""
    if isinstance(key, FlagKey):
        name = key.name
        if name in ("ALL", "OLD"):  # no message is \Recent here (not kept, rfc/9051 drops it)
            return MessageRow.id.is_not(None)
        if name in ("RECENT", "NEW"):
            return false()
        negated = name.startswith("UN")
        column = _FLAG_COLUMNS.get(name[2:] if negated else name)
        if column is None:
            raise UnsupportedError(f"search key {name}")
        if ctx.reader_id is not None and column is MessageRow.seen:
            mine = store_seen.seen_by(ctx.reader_id)
            return ~mine if negated else mine
        return column == false() if negated else column.is_(True)
    if isinstance(key, SizeKey):
        if key.field == "LARGER":
            return MessageRow.size > key.size
        return MessageRow.size < key.size
    if isinstance(key, DateKey):
        start = _midnight(key.date)
        end = start + dt.timedelta(days=1)
        if key.field == "SINCE":
            return MessageRow.internal_date >= start
        if key.field == "BEFORE":
            return MessageRow.internal_date < start
        if key.field == "ON":
            return and_(MessageRow.internal_date >= start, MessageRow.internal_date < end)
        raise UnsupportedError(f"search key {key.field} (Date: header) is not supported yet")
    if isinstance(key, KeywordKey):
        return _keyword_predicate(key)
    if isinstance(key, UidKey | SeqKey):
        sequence = key.uids if isinstance(key, UidKey) else key.sequence
        if sequence.saved:  # rfc/5182 §2.1: `$` holds UIDs, whether used as UIDs or numbers
            return _runs_predicate(compress(ctx.saved), ctx)
    if isinstance(key, UidKey):
        largest = ctx.uids[-1] if ctx.uids else 0
        runs = key.uids.resolve(largest) if largest else []
        return _runs_predicate(runs, ctx)
    if isinstance(key, SeqKey):
        if not ctx.uids:
            return false()
        runs = key.sequence.resolve(len(ctx.uids))
        uids = [ctx.uids[n - 1] for lo, hi in runs for n in range(lo, min(hi, len(ctx.uids)) + 1)]
        return _runs_predicate(compress(uids), ctx)
    if isinstance(key, ModSeqKey):
        # rfc/7162 §3.1.5: a MODSEQ greater than or equal to the value. Per-flag entries
        # are not kept apart: every entry name is matched against the message's MODSEQ
        # (allowed by §3.1.5, a server without per-flag mod-sequences).
        return MessageRow.modseq >= key.modseq
    if isinstance(key, NotKey):
        return ~search_predicate(key.key, ctx)
    if isinstance(key, OrKey):
        return or_(search_predicate(key.left, ctx), search_predicate(key.right, ctx))
    if isinstance(key, AndKey):
        return and_(*(search_predicate(k, ctx) for k in key.keys))
    raise UnsupportedError(f"search key {type(key).__name__} is not supported yet")


def _runs_predicate(runs: Sequence[tuple[int, int]], ctx: SearchContext) -> ColumnElement[bool]:
    if len(runs) <= MAX_SQL_RANGES:
        return uid_predicate(runs)
    # Many ranges: the snapshot's UIDs within them, as one IN list of literal integers
    # (rendered into the statement: no bound-parameter limit, SQLite's is 32766).
    uids = [u for u in ctx.uids if _within(u, runs)]
    if not uids:
        return false()
    return MessageRow.uid.in_(bindparam(None, uids, expanding=True, literal_execute=True))


def _within(uid: int, runs: Sequence[tuple[int, int]]) -> bool:
    lo_index, hi_index = 0, len(runs)  # runs are ascending and disjoint (`resolve`, `compress`)
    while lo_index < hi_index:
        mid = (lo_index + hi_index) // 2
        lo, hi = runs[mid]
        if uid < lo:
            hi_index = mid
        elif uid > hi:
            lo_index = mid + 1
        else:
            return True
    return False


async def search_uids(
    session: AsyncSession, folder_id: int, criteria: Sequence[SearchKey], ctx: SearchContext
) -> list[int]:
    """UIDs of the snapshot's messages matching every key, ascending, in one SELECT."""
    return [uid for uid, _ in await search_modseqs(session, folder_id, criteria, ctx)]


async def search_modseqs(
    session: AsyncSession, folder_id: int, criteria: Sequence[SearchKey], ctx: SearchContext
) -> list[tuple[int, int]]:
    """(UID, MODSEQ) of the snapshot's messages matching every key, ascending by UID."""
    if not ctx.uids:
        return []
    predicate = and_(*(search_predicate(k, ctx) for k in criteria))
    result = await session.execute(
        select(MessageRow.uid, MessageRow.modseq)
        .where(MessageRow.folder_id == folder_id, MessageRow.uid <= ctx.uids[-1], predicate)
        .order_by(MessageRow.uid)
    )
    return [(int(r[0]), int(r[1])) for r in result.all()]


@dataclass(frozen=True, slots=True)
class SealedStructure:
    key_id: str
    nonce: bytes
    ciphertext: bytes
    digest: str  # of its blob, which the record is bound to

    def open(self, cipher: BlobCipher) -> metarecord.Record:
        plain = cipher.open_record(
            self.key_id, self.nonce, self.ciphertext, blobmeta.context(self.digest)
        )
        return metarecord.read(plain)


@dataclass(frozen=True, slots=True)
class SearchRow:
    """A message a SEARCH may return: `values` are the extra boolean columns asked for,
    `search_filter` and `filter_key_id` its header filter (`store.searchfilter`), if any."""

    uid: int
    modseq: int
    blob_id: int
    size: int
    search_filter: bytes | None
    filter_key_id: str | None
    values: tuple[bool, ...]
    record: SealedStructure | None = None  # its structure record, when asked for


def filter_predicate(probes: dict[str, searchfilter.Probe]) -> ColumnElement[bool]:
    """True where a message's keyed header filter may hold what a probe looks for, given the
    probe under each configured storage key: an over-approximation of a header key that the
    database evaluates (`_sql.MaskSet`), so that rows the filter rules out are never read.
    Messages without a filter, or with one under a key no longer configured, stay in."""
    meta = _BLOB_META.c

    def mask(bits: int) -> bytes:
        return bits.to_bytes(searchfilter.FILTER_BYTES, "big")

    return or_(
        meta.search_filter.is_(None),
        meta.key_id.not_in(sorted(probes)),
        *(
            and_(
                meta.key_id == key_id,
                _sql.MaskSet(meta.search_filter, mask(p.required), mask(p.overflow)),
            )
            for key_id, p in sorted(probes.items())
        ),
    )


async def search_rows(
    session: AsyncSession,
    folder_id: int,
    last_uid: int,
    where: Sequence[ColumnElement[bool]],
    columns: Sequence[ColumnElement[bool]],
    *,
    with_filter: bool,
    with_records: bool = False,
) -> list[SearchRow]:
    """The folder's messages up to `last_uid` matching `where`, ascending by UID, with each of
    `columns` evaluated (the parts of a search that SQL answers inside a larger expression),
    and the header filter when asked, and the sealed structure record (`with_records`, which
    implies `with_filter`): one SELECT (rfc/3501 §6.4.4 over the store)."""
    # Table columns, not ORM attributes: the rows come back without the ORM's per-row work
    # (a third of the time of a 10,000-message header search).
    m, meta, blob = _MESSAGES.c, _BLOB_META.c, _BLOBS.c
    with_filter = with_filter or with_records
    extra = [case((c, True), else_=False) for c in columns]
    head: list[Any] = [m.uid, m.modseq, m.blob_id, m.size]
    if with_filter:
        head += [meta.search_filter, meta.key_id]
    if with_records:
        head += [meta.nonce, meta.ciphertext, blob.digest]
    stmt = select(*head, *extra).where(m.folder_id == folder_id, m.uid <= last_uid, *where)
    if with_filter:
        stmt = stmt.outerjoin(_BLOB_META, meta.blob_id == m.blob_id)
    if with_records:
        stmt = stmt.join(_BLOBS, blob.id == m.blob_id)
    rows = (await session.execute(stmt.order_by(m.uid))).all()
    n = len(head)
    out: list[SearchRow] = []
    for r in rows:
        record = None
        if with_records and r[7] is not None:
            record = SealedStructure(r[5], r[6], r[7], r[8])
        out.append(
            SearchRow(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4] if with_filter else None,
                r[5] if with_filter else None,
                tuple(map(bool, r[n:])),
                record,
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class SealedBody:
    key_id: str
    nonce: bytes
    ciphertext: bytes
    digest: str

    def open(self, cipher: BlobCipher) -> bytes:
        return cipher.open(self.key_id, self.nonce, self.ciphertext, self.digest)


async def sealed_blobs(session: AsyncSession, blob_ids: Sequence[int]) -> dict[int, SealedBody]:
    """The sealed bodies of these blobs, read in one SELECT (a SEARCH batch); the caller
    decrypts them off the event loop."""
    if not blob_ids:
        return {}
    rows = (
        await session.execute(
            select(
                BlobRow.id, BlobRow.key_id, BlobRow.nonce, BlobRow.ciphertext, BlobRow.digest
            ).where(BlobRow.id.in_(sorted(set(blob_ids))))
        )
    ).all()
    return {int(r[0]): SealedBody(r[1], r[2], r[3], r[4]) for r in rows}


async def sealed_structures(
    session: AsyncSession, blob_ids: Sequence[int]
) -> dict[int, SealedStructure]:
    """The sealed structure records of these blobs (a few hundred octets each, with the
    message's header: a header SEARCH batch), in one SELECT; blobs without one are absent."""
    if not blob_ids:
        return {}
    rows = (
        await session.execute(
            select(
                BlobMetaRow.blob_id,
                BlobMetaRow.key_id,
                BlobMetaRow.nonce,
                BlobMetaRow.ciphertext,
                BlobRow.digest,
            )
            .join(BlobRow, BlobRow.id == BlobMetaRow.blob_id)
            .where(BlobMetaRow.blob_id.in_(sorted(set(blob_ids))))
        )
    ).all()
    return {int(r[0]): SealedStructure(r[1], r[2], r[3], r[4]) for r in rows}


# --- STORE (rfc/3501 §6.4.6) and EXPUNGE (§6.4.3) --------------------------------------------

_UPDATE_FLAGS = (
    sql_update(_MESSAGES)
    .where(_MESSAGES.c.id == bindparam("b_id"))
    .values(
        seen=bindparam("b_seen"),
        answered=bindparam("b_answered"),
        flagged=bindparam("b_flagged"),
        deleted=bindparam("b_deleted"),
        draft=bindparam("b_draft"),
        keywords=bindparam("b_keywords"),
        modseq=bindparam("b_modseq"),
    )
)


def _new_flags(current: tuple[str, ...], action: StoreAction, flags: Sequence[str]) -> list[str]:
    if action is StoreAction.REPLACE:
        return list(flags)
    lowered = {f.lower() for f in flags}
    if action is StoreAction.REMOVE:
        return [f for f in current if f.lower() not in lowered]
    have = {f.lower() for f in current}
    return [*current, *(f for f in flags if f.lower() not in have)]


@dataclass(frozen=True, slots=True)
class StoredFlags:
    """What a STORE did: `flags` and `modseqs` of every message still there and not refused,
    `modified` the UIDs refused by UNCHANGEDSINCE (rfc/7162 §3.1.3), ascending, `changed`
    those whose flags (and MODSEQ) did change."""

    flags: dict[int, tuple[str, ...]]
    modseqs: dict[int, int]
    modified: list[int]
    changed: frozenset[int] = frozenset()


async def store_flags(
    session: AsyncSession,
    folder_id: int,
    uids: Sequence[int],
    action: StoreAction,
    flags: Sequence[str],
    *,
    unchanged_since: int | None = None,
    keep_seen: bool = False,
) -> StoredFlags:
    """Change the flags of these messages (with `keep_seen`, all but \\Seen: a grantee's
    \\Seen is their own, `shared.store_flags`).

    Changed messages get one new MODSEQ, taken from the folder's counter (rfc/7162 §3.1.1:
    greater than any before in the folder). With `unchanged_since`, a message whose MODSEQ
    is greater is left alone and listed in `modified` (rfc/7162 §3.1.3). ValueError for a
    flag that cannot be stored. The caller commits.
    """
    parse_flags(flags)  # refuse an invalid flag before anything changes
    wanted = set(uids)
    if not wanted:
        return StoredFlags({}, {}, [])
    # Read the flags under the folder's lock: two STOREs at once on PostgreSQL would otherwise
    # both start from the same flags and the second would undo the first's change.
    await lock_folders(session, (folder_id,))
    rows = (
        await session.execute(
            select(
                MessageRow.id,
                MessageRow.uid,
                MessageRow.seen,
                MessageRow.answered,
                MessageRow.flagged,
                MessageRow.deleted,
                MessageRow.draft,
                MessageRow.keywords,
                MessageRow.modseq,
            ).where(MessageRow.folder_id == folder_id, uid_predicate(compress(wanted)))
        )
    ).all()
    result: dict[int, tuple[str, ...]] = {}
    modseqs: dict[int, int] = {}
    modified: list[int] = []
    changes: list[dict[str, object]] = []
    changed_uids: list[int] = []
    for row in rows:
        uid = int(row[1])
        if uid not in wanted:
            continue
        if unchanged_since is not None and int(row[8]) > unchanged_since:
            modified.append(uid)
            continue
        current = flags_of(row[2:8])
        next_flags = _new_flags(current, action, flags)
        if keep_seen:
            next_flags = [f for f in next_flags if f.lower() != "\\seen"]
            next_flags += ["\\Seen"] * bool(row[2])
        parsed = parse_flags(next_flags)
        new = flags_of(
            (parsed.seen, parsed.answered, parsed.flagged, parsed.deleted, parsed.draft,
             " ".join(parsed.keywords))
        )  # fmt: skip
        result[uid] = new
        modseqs[uid] = int(row[8])
        if new != current:
            changed_uids.append(uid)
            changes.append(
                {
                    "b_id": row[0],
                    "b_seen": parsed.seen,
                    "b_answered": parsed.answered,
                    "b_flagged": parsed.flagged,
                    "b_deleted": parsed.deleted,
                    "b_draft": parsed.draft,
                    "b_keywords": " ".join(parsed.keywords),
                }
            )
    if changes:
        modseq = await _bump_modseq(session, folder_id)
        for change in changes:
            change["b_modseq"] = modseq
        for uid in changed_uids:
            modseqs[uid] = modseq
        await session.execute(_UPDATE_FLAGS, changes)
    return StoredFlags(result, modseqs, sorted(modified), frozenset(changed_uids))


async def _bump_modseq(session: AsyncSession, folder_id: int) -> int:
    value = (
        await session.execute(
            sql_update(FolderRow)
            .where(FolderRow.id == folder_id)
            .values(highest_modseq=FolderRow.highest_modseq + 1)
            .returning(FolderRow.highest_modseq)
            .execution_options(synchronize_session=False)
        )
    ).scalar_one()
    return int(value)


async def expunge(
    session: AsyncSession, folder_id: int, mailbox_id: int, uids: Sequence[int]
) -> list[int]:
    """Remove the messages among `uids` flagged \\Deleted; their UIDs, ascending.

    The removals are recorded with a new MODSEQ (`expunged`, for QRESYNC later) and the
    mailbox's `used_bytes` goes down by their size, in the caller's transaction. Blobs stay:
    other messages or the queue may use them.
    """
    return await _remove(session, folder_id, mailbox_id, uids, MessageRow.deleted.is_(True))


async def remove_messages(
    session: AsyncSession, folder_id: int, mailbox_id: int, uids: Sequence[int]
) -> list[int]:
    """Remove these messages whatever their flags (MOVE's source side, rfc/6851 §3.3); their
    UIDs, ascending. Recorded and accounted like `expunge`; the caller commits."""
    return await _remove(session, folder_id, mailbox_id, uids)


async def _remove(
    session: AsyncSession,
    folder_id: int,
    mailbox_id: int,
    uids: Sequence[int],
    *where: ColumnElement[bool],
) -> list[int]:
    wanted = set(uids)
    if not wanted:
        return []
    # Under the folder's lock: two sessions removing the same message at once on PostgreSQL
    # would otherwise both count it (used_bytes lowered twice, `expunged` recorded twice).
    await lock_folders(session, (folder_id,))
    rows = (
        await session.execute(
            select(MessageRow.id, MessageRow.uid, MessageRow.size).where(
                MessageRow.folder_id == folder_id, uid_predicate(compress(wanted)), *where
            )
        )
    ).all()
    gone = [(int(r[0]), int(r[1]), int(r[2])) for r in rows if int(r[1]) in wanted]
    if not gone:
        return []
    modseq = await _bump_modseq(session, folder_id)
    await session.execute(delete(MessageRow).where(MessageRow.id.in_([g[0] for g in gone])))
    await session.execute(
        insert(ExpungedRow), [{"folder_id": folder_id, "uid": g[1], "modseq": modseq} for g in gone]
    )
    await session.execute(
        sql_update(_MAILBOXES)
        .where(_MAILBOXES.c.id == mailbox_id)
        .values(used_bytes=_MAILBOXES.c.used_bytes - sum(g[2] for g in gone))
    )
    return sorted(g[1] for g in gone)


# --- APPEND, COPY, MOVE (rfc/3501 §6.3.11, §6.4.7; rfc/6851) ---------------------------------


@dataclass(frozen=True, slots=True)
class Usage:
    used_bytes: int
    quota_bytes: int | None  # None: the configured default


async def mailbox_usage(session: AsyncSession, mailbox_id: int) -> Usage:
    row = (
        await session.execute(
            select(MailboxRow.used_bytes, MailboxRow.quota_bytes).where(MailboxRow.id == mailbox_id)
        )
    ).one()
    return Usage(int(row[0]), None if row[1] is None else int(row[1]))


@dataclass(frozen=True, slots=True)
class CopySource:
    uid: int
    blob_id: int
    size: int
    internal_date: dt.datetime
    flags: tuple[str, ...]


async def copy_sources(
    session: AsyncSession, folder_id: int, uids: Sequence[int]
) -> list[CopySource]:
    """The rows COPY/MOVE duplicate (the body blob is shared, not copied), ascending UIDs."""
    wanted = set(uids)
    if not wanted:
        return []
    rows = (
        await session.execute(
            select(
                MessageRow.uid,
                MessageRow.blob_id,
                MessageRow.size,
                MessageRow.internal_date,
                MessageRow.seen,
                MessageRow.answered,
                MessageRow.flagged,
                MessageRow.deleted,
                MessageRow.draft,
                MessageRow.keywords,
            )
            .where(MessageRow.folder_id == folder_id, uid_predicate(compress(wanted)))
            .order_by(MessageRow.uid)
        )
    ).all()
    return [
        CopySource(int(r[0]), int(r[1]), int(r[2]), r[3], flags_of(r[4:10]))
        for r in rows
        if int(r[0]) in wanted
    ]


async def lock_folders(session: AsyncSession, folder_ids: Sequence[int]) -> None:
    """Lock these folder rows in id order (PostgreSQL `FOR UPDATE`; SQLite serialises writers
    anyway). MOVE writes two folders and then the mailbox row: taking both folder locks first,
    in the order `messages._allocate_many` uses, keeps every writer on the order "folders by
    id, then the mailbox", so a MOVE cannot deadlock with an APPEND or EXPUNGE of its source."""
    await session.execute(
        select(FolderRow.id)
        .where(FolderRow.id.in_(sorted(set(folder_ids))))
        .order_by(FolderRow.id)
        .with_for_update()
    )


async def folder_marker(session: AsyncSession, folder_id: int) -> tuple[int, int] | None:
    """(UIDNEXT, HIGHESTMODSEQ) of a folder: any APPEND, STORE or EXPUNGE changes it. A
    session's refresh reads this cheap row first and stops there when nothing moved."""
    row = (
        await session.execute(
            select(FolderRow.uidnext, FolderRow.highest_modseq).where(FolderRow.id == folder_id)
        )
    ).one_or_none()
    return None if row is None else (int(row[0]), int(row[1]))


# --- CREATE, DELETE, RENAME, SUBSCRIBE (rfc/3501 §6.3.3 to §6.3.7) -----------------------------


async def delete_folder(session: AsyncSession, folder_id: int, mailbox_id: int) -> None:
    """Delete a folder and its messages (their size leaves `used_bytes`); the caller commits."""
    size = await session.scalar(
        select(func.coalesce(func.sum(MessageRow.size), 0)).where(MessageRow.folder_id == folder_id)
    )
    await session.execute(delete(MessageRow).where(MessageRow.folder_id == folder_id))
    await session.execute(delete(ExpungedRow).where(ExpungedRow.folder_id == folder_id))
    await session.execute(delete(FolderRow).where(FolderRow.id == folder_id))
    await session.execute(
        sql_update(_MAILBOXES)
        .where(_MAILBOXES.c.id == mailbox_id)
        .values(used_bytes=_MAILBOXES.c.used_bytes - int(size or 0))
    )


async def rename_folders(session: AsyncSession, renames: Sequence[tuple[int, str]]) -> None:
    """Give each folder id its new name; the caller commits."""
    for folder_id, name in renames:
        await session.execute(
            sql_update(FolderRow)
            .where(FolderRow.id == folder_id)
            .values(name=name)
            .execution_options(synchronize_session=False)
        )


async def set_subscribed(session: AsyncSession, folder_id: int, subscribed: bool) -> None:
    await session.execute(
        sql_update(FolderRow)
        .where(FolderRow.id == folder_id)
        .values(subscribed=subscribed)
        .execution_options(synchronize_session=False)
    )
