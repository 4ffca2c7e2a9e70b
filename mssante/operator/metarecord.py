"""The plaintext of a message's structure record (sealed by `store.blobmeta`).

Written once when a message is stored (relay delivery, IMAP APPEND), read by every FETCH and
SEARCH that needs more than flags and sizes. Version 2 carries, besides the structure itself
(`mime.to_json`: part offsets for BODY[section] and BINARY), what a mail client asks for most,
ready to send:

- the ENVELOPE, BODYSTRUCTURE and BODY responses exactly as `mime.imap_envelope` and
  `mime.imap_body` render them (they depend on the message only, never on the session), so a
  header FETCH of a large mailbox decrypts one small record per message and renders nothing;
- the message's own header as stored (up to and with its blank line), and the values of the
  fields SEARCH indexes (`store.searchfilter.INDEXED_FIELDS`) already decoded and case-folded,
  so a SEARCH on header fields checks its candidates without decrypting whole messages or
  decoding their headers again.

Layout: `MSR2`, five big-endian 32-bit lengths (envelope, bodystructure, body, header, indexed
values as JSON `{"field": ["value", …]}`), those five byte strings, then the structure JSON.
Records written before version 2 are the bare JSON (they start with `{`); they are read as
such, their responses rendered on demand and their header absent, and `db rekey` rewrites
them as version 2.
"""

from __future__ import annotations

import json
import logging
import struct
from typing import Final

from mssante.operator import mime
from mssante.operator.store import searchfilter

log = logging.getLogger(__name__)

MAGIC: Final = b"MSR2"
_LENGTHS: Final = struct.Struct(">5I")
_START: Final = len(MAGIC) + _LENGTHS.size


def parse(raw: bytes) -> mime.Message:
    """The structure of a message about to be stored; never raises (the parser is fuzzed not
    to, and if it ever did the message is still stored, with a minimal structure)."""
    try:
        return mime.parse(raw)
    except Exception:
        log.error("MIME parser failed, storing a minimal structure", exc_info=True)
        return mime.fallback(raw)


def build(message: mime.Message, raw: bytes) -> bytes:
    """The version 2 record of `raw`, whose structure is `message`."""
    header = raw[: message.body.body_start]
    indexed = searchfilter.indexed_values(mime.split_header(header))
    rendered = (
        mime.imap_envelope(message.envelope),
        mime.imap_body(message.body, True),
        mime.imap_body(message.body, False),
        header,
        json.dumps(indexed, separators=(",", ":")).encode("ascii"),
    )
    return b"".join(
        (MAGIC, _LENGTHS.pack(*(len(r) for r in rendered)), *rendered, mime.to_json(message))
    )


class Record:
    """A structure record as read back; each part is decoded or rendered only when asked."""

    __slots__ = (
        "_body",
        "_bodystructure",
        "_envelope",
        "_header",
        "_indexed",
        "_indexed_json",
        "_json",
        "_message",
    )

    def __init__(
        self,
        structure: bytes | None,
        *,
        message: mime.Message | None = None,
        envelope: bytes | None = None,
        bodystructure: bytes | None = None,
        body: bytes | None = None,
        header: bytes | None = None,
        indexed: bytes | None = None,
    ) -> None:
        self._json = structure
        self._indexed_json = indexed
        self._indexed: dict[str, list[str]] | None = None
        self._message = message
        self._envelope = envelope
        self._bodystructure = bodystructure
        self._body = body
        self._header = header

    @property
    def message(self) -> mime.Message:
        """The structure (part offsets); ValueError for a broken record."""
        if self._message is None:
            assert self._json is not None
            self._message = mime.from_json(self._json)
        return self._message

    @property
    def envelope(self) -> bytes:
        """The ENVELOPE value (rfc/3501 §7.4.2)."""
        if self._envelope is None:
            self._envelope = mime.imap_envelope(self.message.envelope)
        return self._envelope

    @property
    def bodystructure(self) -> bytes:
        """The BODYSTRUCTURE value, with extension data (rfc/3501 §7.4.2)."""
        if self._bodystructure is None:
            self._bodystructure = mime.imap_body(self.message.body, True)
        return self._bodystructure

    @property
    def body(self) -> bytes:
        """The BODY value: BODYSTRUCTURE without extension data."""
        if self._body is None:
            self._body = mime.imap_body(self.message.body, False)
        return self._body

    @property
    def header(self) -> bytes | None:
        """The message's header as stored, with its blank line; None in a version 1 record."""
        return self._header

    @property
    def indexed(self) -> dict[str, list[str]] | None:
        """The values of the indexed header fields as searched (`searchfilter.normalise`),
        by lower-case name; None when the record does not keep them (version 1)."""
        if self._indexed is None and self._indexed_json is not None:
            try:
                loaded = json.loads(self._indexed_json)
            except ValueError:
                raise ValueError("broken message structure record: indexed values") from None
            if not isinstance(loaded, dict):
                raise ValueError("broken message structure record: indexed values")
            self._indexed = loaded
        return self._indexed


def of_message(message: mime.Message, raw: bytes) -> Record:
    """The record of a message parsed just now (one stored before records were kept)."""
    return Record(None, message=message, header=raw[: message.body.body_start])


def read(plain: bytes) -> Record:
    """A decrypted record, version 2 or 1; ValueError when it is neither."""
    if not plain.startswith(MAGIC):
        return Record(plain)  # version 1: the JSON alone, checked when first decoded
    if len(plain) < _START:
        raise ValueError("broken message structure record: truncated")
    lengths = _LENGTHS.unpack_from(plain, len(MAGIC))
    ends = []
    end = _START
    for n in lengths:
        end += n
        ends.append(end)
    if end > len(plain):
        raise ValueError("broken message structure record: lengths beyond its end")
    return Record(
        plain[end:],
        envelope=plain[_START : ends[0]],
        bodystructure=plain[ends[0] : ends[1]],
        body=plain[ends[1] : ends[2]],
        header=plain[ends[2] : ends[3]],
        indexed=plain[ends[3] : ends[4]],
    )


def upgrade(plain: bytes, raw: bytes) -> bytes:
    """A record as version 2, given the message it describes (`db rekey` has it decrypted)."""
    if plain.startswith(MAGIC):
        return plain
    try:
        message = mime.from_json(plain)
    except ValueError:  # not ours to judge here: a reader reports it as it does now
        return plain
    return build(message, raw)
