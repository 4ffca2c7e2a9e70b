"""A keyed Bloom filter per stored message over the header fields clients search.

Header SEARCH (rfc/3501 §6.4.4: FROM, TO, CC, BCC, SUBJECT, HEADER) is a case-insensitive
substring match on decoded values, but headers are encrypted at rest, so the database cannot
match them. Each blob gets a fixed-size Bloom filter instead: for every indexed field, the
decoded, case-folded value is cut into 3-character windows and `field:window` is hashed into
the filter with a keyed BLAKE2b. A search hashes the trigrams of its string the same way and
keeps only the messages whose filter has all their bits; those few are then decrypted and
matched exactly (`imap.textsearch`). A filter never forgets a value, so no message is lost;
it only lets some non-matching ones through.

Sizes: `FILTER_BITS` = 2048 bits (256 octets), `HASHES` = 3. With n entries the chance that
one absent entry looks present is p = (1 - e^(-3n/2048))^3: about 0.5 % for n = 150 (a
usual header: From, To, Subject, Message-ID), 4.5 % for n = 300; a search string of t
trigrams needs all t, so "dupont" (4 trigrams) passes a non-matching 150-entry filter with
probability about 0.5 %^4, i.e. never in practice. Long fields (over `MAX_FIELD_CHARS`, a
long References chain) are not cut into trigrams: the filter records "overflow" for that
field (with `OVERFLOW_HASHES` = 10 bits, so that a false overflow, about p^(10/3), stays far
rarer than a false trigram) and every search on it treats the message as a candidate.

What the filter reveals to someone holding only the disk: nothing readable (the hash key is
derived from the storage key, `crypto.BlobCipher.search_key`), but equal headers give equal
filters under one key, and the number of bits set grows with the header's length.

Key rotation: a filter is built under the storage key that seals its `blob_meta` row
(`blob_meta.key_id`); `db rekey` re-seals that row and rebuilds the filter from the
plaintext it decrypts anyway (`blobmeta.rekey_meta`), so old keys can still be removed.
Rows stored before filters existed have none (NULL): they are always candidates.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from typing import Any, Final

from mssante.operator import mime

FILTER_BITS: Final = 2048
FILTER_BYTES: Final = FILTER_BITS // 8
HASHES: Final = 3
OVERFLOW_HASHES: Final = 10  # bits of the "field too long" mark (at most 11 in 128 bits)
MAX_FIELD_CHARS: Final = 512  # longer occurrences are marked overflow, not cut into trigrams
WINDOW: Final = 3

# The fields a client searches: those of FROM/TO/CC/BCC/SUBJECT and the usual HEADER ones
# (threading and list headers). Any other HEADER search decrypts every candidate.
INDEXED_FIELDS: Final = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "subject",
        "reply-to",
        "sender",
        "message-id",
        "in-reply-to",
        "references",
        "list-id",
    }
)


def normalise(value: str) -> str:
    """A header value as searched: RFC 2047 encoded words decoded (rfc/2047 §6), unfolded,
    stripped and case-folded. Undecodable input is kept as it is."""
    text = value.replace("\r", "").replace("\n", "").strip()
    if "=?" in text:
        with contextlib.suppress(HeaderParseError, LookupError, UnicodeError, ValueError):
            text = str(make_header(decode_header(text)))
    return text.casefold()


def _entries(field: str, value: str) -> Iterable[str]:
    yield f"{field}\x00"  # the field is present (HEADER name "" and short strings)
    if len(value) > MAX_FIELD_CHARS:
        return  # `build` marks the field as overflowing
    for i in range(len(value) - WINDOW + 1):
        yield f"{field}:{value[i : i + WINDOW]}"


def _hasher(key: bytes) -> Any:
    """The keyed hash, its key block absorbed once: each entry then costs a copy and one
    compression (`_bits`) instead of two."""
    return hashlib.blake2b(key=key, digest_size=16)


def _bits(keyed: Any, entry: str, hashes: int = HASHES) -> int:
    h = keyed.copy()
    h.update(mime.encode(entry))
    word = int.from_bytes(h.digest(), "big")
    mask = 0
    for i in range(hashes):
        mask |= 1 << ((word >> (i * 11)) % FILTER_BITS)  # 11 bits: one position in 2048
    return mask


def _overflow(keyed: Any, field: str) -> int:
    # More bits than an entry: a false "overflow" would let a message through whatever
    # the needle, so it must be far rarer than one trigram's false positive.
    return _bits(keyed, f"{field}\x01", OVERFLOW_HASHES)


def indexed_values(header: mime.Header) -> dict[str, list[str]]:
    """The indexed fields of a header section as searched (`normalise`d), by lower-case name,
    each with its values in order of appearance."""
    values: dict[str, list[str]] = {}
    for field in header.fields:
        if field.name in INDEXED_FIELDS:
            values.setdefault(field.name, []).append(normalise(field.value))
    return values


def build(key: bytes, header: mime.Header) -> bytes:
    """The filter of a message's header section (`mime.split_header` of the whole message)."""
    keyed = _hasher(key)
    value = 0
    seen: set[str] = set()
    for name, texts in indexed_values(header).items():
        for text in texts:
            if len(text) > MAX_FIELD_CHARS:
                value |= _overflow(keyed, name)
            for entry in _entries(name, text):
                if entry not in seen:
                    seen.add(entry)
                    value |= _bits(keyed, entry)
    return value.to_bytes(FILTER_BYTES, "big")


def build_for_message(key: bytes, message: bytes) -> bytes:
    return build(key, mime.split_header(message))


@dataclass(frozen=True, slots=True)
class Probe:
    """What a search for `needle` in `field` needs from a filter: `required` bits (presence
    and every trigram), or else the field's presence and overflow bits."""

    required: int
    overflow: int

    def may_match(self, filter_value: int) -> bool:
        if filter_value & self.required == self.required:
            return True
        return filter_value & self.overflow == self.overflow


def probe(key: bytes, field: str, needle: str) -> Probe:
    """The probe for a case-folded `needle` in the lower-case `field`. A needle shorter than
    a window (or empty) can only ask whether the field is present."""
    keyed = _hasher(key)
    presence = _bits(keyed, f"{field}\x00")
    required = presence
    for i in range(len(needle) - WINDOW + 1):
        required |= _bits(keyed, f"{field}:{needle[i : i + WINDOW]}")
    return Probe(required, presence | _overflow(keyed, field))


def as_int(filter_bytes: bytes) -> int:
    return int.from_bytes(filter_bytes, "big")


def false_positive_rate(entries: int, bits: int = FILTER_BITS, hashes: int = HASHES) -> float:
    """The textbook chance that one absent entry has all its bits set after `entries` entries."""
    return float((1 - math.exp(-hashes * entries / bits)) ** hashes)
