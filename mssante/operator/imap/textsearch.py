"""SEARCH keys the database cannot answer: header and text keys, SENT* (rfc/3501 §6.4.4).

Bodies and headers are encrypted at rest, so a search runs in three steps:

1. SQL (`queries.search_rows`, one SELECT): the folder's messages that the SQL-able keys
   allow. A key SQL cannot judge counts as "maybe" there, so the WHERE clause is an
   over-approximation; SQL-able keys nested inside a mixed expression (`OR FROM x SEEN`)
   come back as boolean columns, and each row brings its header filter.
2. Filter, in Python on those rows: the expression is evaluated in three-valued logic
   (true, false, unknown). A header key is false when the message's keyed Bloom filter
   (`store.searchfilter`) lacks the search string's trigrams, else unknown; BODY, TEXT,
   SENT* and unindexed HEADER fields are unknown. False rows are dropped, true ones kept.
3. Exact check on the unknown rows, matched on the decoded message: header values RFC
   2047-decoded and case-folded (rfc/3501 §6.4.4: case-insensitive substring), text parts
   decoded from base64/quoted-printable and their charset. A search without BODY or TEXT
   needs only headers: it reads each candidate's structure record (`operator.metarecord`,
   which keeps the message's header; `HEADER_BATCH` records per SELECT) instead of the
   message. Otherwise, and for records older than that, the messages are decrypted in
   batches (`BATCH_BLOBS` blobs or `BATCH_BYTES` octets per SELECT, never the whole mailbox).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.message
import email.policy
import email.utils
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from sqlalchemy import ColumnElement, and_

from mssante.operator import mime
from mssante.operator.imap import queries
from mssante.operator.imap.commands import (
    AndKey,
    DateKey,
    HeaderKey,
    NotKey,
    OrKey,
    SearchKey,
    TextKey,
    any_leaf,
)
from mssante.operator.store import searchfilter
from mssante.operator.store.crypto import BlobCipher
from mssante.operator.store.db import Store
from mssante.operator.store.errors import StoreError

BATCH_BLOBS: Final = 64
HEADER_BATCH: Final = 1000
BATCH_BYTES: Final = 32 * 1024 * 1024
SENT_KEYS: Final = frozenset({"SENTBEFORE", "SENTON", "SENTSINCE"})
_TEXT_FIELDS: Final = {"FROM": "from", "TO": "to", "CC": "cc", "BCC": "bcc", "SUBJECT": "subject"}

Maybe = bool | None  # three-valued: None is "cannot tell without the message"


# --- what SQL answers ---------------------------------------------------------------------------


def is_sql(key: SearchKey) -> bool:
    """Whether the database answers this key alone (flags, sizes, dates, UIDs, MODSEQ…)."""
    if isinstance(key, TextKey | HeaderKey):
        return False
    if isinstance(key, DateKey):
        return key.field not in SENT_KEYS
    if isinstance(key, NotKey):
        return is_sql(key.key)
    if isinstance(key, OrKey):
        return is_sql(key.left) and is_sql(key.right)
    if isinstance(key, AndKey):
        return all(is_sql(k) for k in key.keys)
    return True


def _reads_body(key: SearchKey) -> bool:
    """A leaf reading more than the message's header (BODY, TEXT)."""
    return isinstance(key, TextKey) and key.field in ("BODY", "TEXT")


def _needs_body(key: SearchKey) -> bool:
    return any_leaf(key, _reads_body)


def _indexed(key: SearchKey) -> bool:
    """A leaf on a header field the filters index."""
    if isinstance(key, TextKey):
        return key.field in _TEXT_FIELDS
    if isinstance(key, HeaderKey):
        return key.name.lower() in searchfilter.INDEXED_FIELDS
    return False


def _needs_filter(key: SearchKey) -> bool:
    return any_leaf(key, _indexed)


@dataclass
class Plan:
    """The SQL side of a search: `where` (an over-approximation of the criteria) and the
    SQL-able keys inside mixed expressions, each evaluated as one extra column."""

    where: list[ColumnElement[bool]] = field(default_factory=list)
    columns: list[ColumnElement[bool]] = field(default_factory=list)
    column_of: dict[SearchKey, int] = field(default_factory=dict)
    with_filter: bool = False
    exact: bool = True  # every key is SQL-able: the rows are the answer
    prefiltered: bool = False  # a header key's filter test is in `where`: few rows come back


def plan(
    criteria: Sequence[SearchKey],
    ctx: queries.SearchContext,
    cipher: BlobCipher | None = None,
) -> Plan:
    """UnsupportedError (from `queries.search_predicate`) for what no step can execute. With
    the `cipher`, header keys on indexed fields are also tested against the filters in SQL."""
    result = Plan()
    for key in criteria:
        if is_sql(key):
            result.where.append(queries.search_predicate(key, ctx))
            continue
        result.exact = False
        approx = _over(key, ctx, cipher, result)
        if approx is not None:
            result.where.append(approx)
        _columns(key, ctx, result)
    result.with_filter = any(_needs_filter(k) for k in criteria)
    return result


def _over(
    key: SearchKey, ctx: queries.SearchContext, cipher: BlobCipher | None, into: Plan
) -> ColumnElement[bool] | None:
    """A predicate true at least wherever `key` is; None when SQL can exclude nothing."""
    if is_sql(key):
        return queries.search_predicate(key, ctx)
    if isinstance(key, AndKey):
        parts = [p for p in (_over(k, ctx, cipher, into) for k in key.keys) if p is not None]
        return None if not parts else parts[0] if len(parts) == 1 else and_(*parts)
    if isinstance(key, OrKey):
        left, right = _over(key.left, ctx, cipher, into), _over(key.right, ctx, cipher, into)
        return None if left is None or right is None else left | right
    if isinstance(key, TextKey | HeaderKey) and cipher is not None:
        field_name, needle = key_field_needle(key)
        if field_name in searchfilter.INDEXED_FIELDS:
            into.prefiltered = True
            return queries.filter_predicate(
                {
                    key_id: searchfilter.probe(cipher.search_key(key_id), field_name, needle)
                    for key_id in cipher.key_ids
                }
            )
    return None  # BODY, TEXT, an unindexed field, or NOT of a mixed expression


def _columns(key: SearchKey, ctx: queries.SearchContext, into: Plan) -> None:
    if is_sql(key):
        if key not in into.column_of:
            into.column_of[key] = len(into.columns)
            into.columns.append(queries.search_predicate(key, ctx))
        return
    if isinstance(key, NotKey):
        _columns(key.key, ctx, into)
    elif isinstance(key, OrKey):
        _columns(key.left, ctx, into)
        _columns(key.right, ctx, into)
    elif isinstance(key, AndKey):
        for k in key.keys:
            _columns(k, ctx, into)


# --- the filter step ----------------------------------------------------------------------------


def _needle(value: bytes) -> str:
    # US-ASCII is a subset of UTF-8; other charsets were refused with BADCHARSET before.
    return mime.decode(value).casefold()


def key_field_needle(key: TextKey | HeaderKey) -> tuple[str | None, str]:
    """(lower-case header field, needle) of a header key; field None for BODY and TEXT."""
    if isinstance(key, HeaderKey):
        return key.name.lower(), _needle(key.value)
    return _TEXT_FIELDS.get(key.field), _needle(key.value)


Judge = Callable[[queries.SearchRow], Maybe]


class FilterProbe:
    """Three-valued evaluation of a search on one row, without the message. `compile` turns
    the expression into nested closures once, so a row costs no key lookups."""

    def __init__(self, cipher: BlobCipher) -> None:
        self._cipher = cipher
        self._probes: dict[tuple[str, str, str], searchfilter.Probe | None] = {}

    def _probe(self, key_id: str, field_name: str, needle: str) -> searchfilter.Probe | None:
        cache_key = (key_id, field_name, needle)
        if cache_key not in self._probes:
            try:
                secret = self._cipher.search_key(key_id)
            except StoreError:  # a key no longer configured: cannot judge, keep the row
                self._probes[cache_key] = None
            else:
                self._probes[cache_key] = searchfilter.probe(secret, field_name, needle)
        return self._probes[cache_key]

    def compile(self, key: SearchKey, plan_: Plan) -> Judge:
        index = plan_.column_of.get(key)
        if index is not None:
            return lambda row: row.values[index]
        if isinstance(key, NotKey):
            inner = self.compile(key.key, plan_)

            def negate(row: queries.SearchRow) -> Maybe:
                value = inner(row)
                return None if value is None else not value

            return negate
        if isinstance(key, OrKey):
            left, right = self.compile(key.left, plan_), self.compile(key.right, plan_)

            def either(row: queries.SearchRow) -> Maybe:
                a = left(row)
                if a is True:
                    return True
                b = right(row)
                if b is True:
                    return True
                return None if a is None or b is None else False

            return either
        if isinstance(key, AndKey):
            parts = [self.compile(k, plan_) for k in key.keys]
            return lambda row: _all3(part(row) for part in parts)
        if isinstance(key, TextKey | HeaderKey):
            field_name, needle = key_field_needle(key)
            if field_name is None or field_name not in searchfilter.INDEXED_FIELDS:
                return lambda row: None
            indexed_field = field_name

            def header(row: queries.SearchRow) -> Maybe:
                if row.search_filter is None or row.filter_key_id is None:
                    return None
                probe = self._probe(row.filter_key_id, indexed_field, needle)
                if probe is None or probe.may_match(searchfilter.as_int(row.search_filter)):
                    return None
                return False

            return header
        return lambda row: None  # SENT*: needs the Date: header


def _all3(values: Iterable[Maybe]) -> Maybe:
    unknown = False
    for value in values:
        if value is False:
            return False
        if value is None:
            unknown = True
    return None if unknown else True


# --- exact matching on a decrypted message ------------------------------------------------------


class MessageText:
    """A decrypted message (or its header alone), decoded lazily as the keys need it.
    `indexed`: the indexed fields' values already decoded (`metarecord.Record.indexed`)."""

    def __init__(self, raw: bytes, indexed: dict[str, list[str]] | None = None) -> None:
        self.raw = raw
        self._header: mime.Header | None = None
        self._values: dict[str, list[str]] = {}
        if indexed is not None:
            self._values = {n: indexed.get(n, []) for n in searchfilter.INDEXED_FIELDS}
        self._body: str | None = None

    @property
    def header(self) -> mime.Header:
        if self._header is None:
            self._header = mime.split_header(self.raw)
        return self._header

    def values(self, field_name: str) -> list[str]:
        """Decoded, case-folded values of every occurrence of a field (lower-case name); only
        the fields asked for are decoded."""
        values = self._values.get(field_name)
        if values is None:
            values = [
                searchfilter.normalise(f.value) for f in self.header.fields if f.name == field_name
            ]
            self._values[field_name] = values
        return values

    def all_header_text(self) -> str:
        return "\n".join(f"{f.name}: {searchfilter.normalise(f.value)}" for f in self.header.fields)

    def body_text(self) -> str:
        if self._body is None:
            self._body = "\n".join(text_parts(self.raw)).casefold()
        return self._body

    def sent_date(self) -> dt.date | None:
        return sent_date(self.header.first("date"))


def text_parts(raw: bytes) -> list[str]:
    """The decoded text of every text/* leaf part (transfer encoding and charset undone)."""
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    texts: list[str] = []
    for part in message.walk():
        if part.is_multipart() or part.get_content_maintype() != "text":
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        charset = part.get_content_charset() or "us-ascii"
        try:
            texts.append(payload.decode(charset, "replace"))
        except LookupError:  # an unknown charset: read it as UTF-8, invalid bytes replaced
            texts.append(payload.decode("utf-8", "replace"))
    return texts


def sent_date(value: str | None) -> dt.date | None:
    """The date of a Date: header as written, its time and zone disregarded (rfc/3501
    §6.4.4 SENTBEFORE/SENTON/SENTSINCE); None when absent or unreadable."""
    if value is None:
        return None
    parsed = email.utils.parsedate_tz(value.strip())
    if parsed is None:
        return None
    try:
        return dt.date(parsed[0], parsed[1], parsed[2])
    except ValueError:
        return None


def matches(key: SearchKey, message: MessageText, known: Callable[[SearchKey], bool]) -> bool:
    """Whether the message matches; `known` answers the SQL-able keys (whole subtrees, as
    `plan` registered them: `NOT SEEN` is one column, not SEEN negated here)."""
    if is_sql(key):
        return known(key)
    if isinstance(key, NotKey):
        return not matches(key.key, message, known)
    if isinstance(key, OrKey):
        return matches(key.left, message, known) or matches(key.right, message, known)
    if isinstance(key, AndKey):
        return all(matches(k, message, known) for k in key.keys)
    if isinstance(key, TextKey | HeaderKey):
        return text_matches(key, message)
    if isinstance(key, DateKey) and key.field in SENT_KEYS:
        return sent_matches(key, message.sent_date())
    return known(key)


def text_matches(key: TextKey | HeaderKey, message: MessageText) -> bool:
    field_name, needle = key_field_needle(key)
    if isinstance(key, TextKey) and key.field == "BODY":
        return needle in message.body_text()
    if isinstance(key, TextKey) and key.field == "TEXT":
        return needle in message.all_header_text() or needle in message.body_text()
    assert field_name is not None
    # HEADER name "" matches every message with the field (rfc/3501 §6.4.4), and so does
    # any empty string: it is a substring of every value.
    return any(needle in value for value in message.values(field_name))


def sent_matches(key: DateKey, sent: dt.date | None) -> bool:
    if sent is None:  # no usable Date: header: no SENT* key matches
        return False
    if key.field == "SENTBEFORE":
        return sent < key.date
    if key.field == "SENTON":
        return sent == key.date
    return sent >= key.date  # SENTSINCE


# --- the whole search ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Found:
    uid: int
    modseq: int


async def search(
    store: Store,
    folder_id: int,
    criteria: Sequence[SearchKey],
    ctx: queries.SearchContext,
) -> list[Found]:
    """The snapshot's messages matching every key, ascending by UID.

    Each batch of decrypted messages uses its own read session, so no transaction stays
    open across the whole search.
    """
    if not ctx.uids:
        return []
    the_plan = plan(criteria, ctx, store.cipher)
    header_only = not any(_needs_body(k) for k in criteria)
    # Few rows pass a filter test in SQL: they bring their records along, in the same SELECT.
    with_records = header_only and the_plan.prefiltered
    async with store.read_session() as session:
        rows = await queries.search_rows(
            session,
            folder_id,
            ctx.uids[-1],
            the_plan.where,
            the_plan.columns,
            with_filter=the_plan.with_filter,
            with_records=with_records,
        )
    if the_plan.exact:
        return [Found(r.uid, r.modseq) for r in rows]
    cipher = store.cipher
    rest = AndKey(tuple(k for k in criteria if not is_sql(k)))  # the others are in WHERE
    judge = FilterProbe(cipher).compile(rest, the_plan)
    kept: dict[int, queries.SearchRow] = {}
    unknown: list[queries.SearchRow] = []
    for row in rows:
        verdict = judge(row)
        if verdict is True:
            kept[row.uid] = row
        elif verdict is None:
            unknown.append(row)
    if header_only:
        # Headers are enough: the structure records have them (older records do not: those
        # messages are read whole below).
        without_header: list[queries.SearchRow] = []
        for start in range(0, len(unknown), HEADER_BATCH):
            batch = unknown[start : start + HEADER_BATCH]
            if with_records:
                records = {r.blob_id: r.record for r in batch if r.record is not None}
            else:
                async with store.read_session() as session:
                    records = await queries.sealed_structures(session, [r.blob_id for r in batch])
            matched, missing = await asyncio.to_thread(
                _check_headers, cipher, batch, records, criteria, the_plan
            )
            kept.update((row.uid, row) for row in matched)
            without_header += missing
        unknown = without_header
    for batch in _batches(unknown):
        async with store.read_session() as session:
            sealed = await queries.sealed_blobs(session, [r.blob_id for r in batch])

        def open_body(
            row: queries.SearchRow, sealed: dict[int, queries.SealedBody] = sealed
        ) -> MessageText | None:
            body = sealed.get(row.blob_id)
            # None: expunged since step 1
            return None if body is None else MessageText(body.open(cipher))

        matched, _ = await asyncio.to_thread(_check, batch, open_body, criteria, the_plan)
        kept.update((row.uid, row) for row in matched)
    return [Found(uid, kept[uid].modseq) for uid in sorted(kept)]


def _batches(rows: Sequence[queries.SearchRow]) -> Iterable[list[queries.SearchRow]]:
    batch: list[queries.SearchRow] = []
    size = 0
    for row in rows:
        if batch and (len(batch) >= BATCH_BLOBS or size + row.size > BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(row)
        size += row.size
    if batch:
        yield batch


def _check_headers(
    cipher: BlobCipher,
    batch: Sequence[queries.SearchRow],
    records: dict[int, queries.SealedStructure],
    criteria: Sequence[SearchKey],
    the_plan: Plan,
) -> tuple[list[queries.SearchRow], list[queries.SearchRow]]:
    """`_check` on the headers kept in the structure records."""

    def header(row: queries.SearchRow) -> MessageText | None:
        sealed = records.get(row.blob_id)
        if sealed is None:
            return None
        try:
            record = sealed.open(cipher)
            if record.header is None:
                return None
            return MessageText(record.header, record.indexed)
        except ValueError:  # a broken record: the message itself will tell
            return None

    return _check(batch, header, criteria, the_plan)


def _check(
    batch: Sequence[queries.SearchRow],
    text_of: Callable[[queries.SearchRow], MessageText | None],
    criteria: Sequence[SearchKey],
    the_plan: Plan,
) -> tuple[list[queries.SearchRow], list[queries.SearchRow]]:
    """(matching, unread): the rows of a batch that match exactly, each decrypted by `text_of`
    one at a time, and those it gave nothing for. CPU only: run in a worker thread; only one
    batch's ciphertexts and one plaintext are held at once."""
    matched: list[queries.SearchRow] = []
    unread: list[queries.SearchRow] = []
    for row in batch:
        message = text_of(row)
        if message is None:
            unread.append(row)
            continue

        def known(key: SearchKey, row: queries.SearchRow = row) -> bool:
            # Every SQL-able subtree of a mixed key has its column; top-level SQL-able
            # criteria are not asked (they are in the WHERE clause).
            return row.values[the_plan.column_of[key]]

        if all(matches(k, message, known) for k in criteria if not is_sql(k)):
            matched.append(row)
    return matched, unread
