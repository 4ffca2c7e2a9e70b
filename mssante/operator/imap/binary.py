"""FETCH BINARY[…], BINARY.PEEK[…] and BINARY.SIZE[…] (rfc/3516 §4.2, rfc/9051 §6.4.5): a
part's content with its Content-Transfer-Encoding removed. Pure functions, no I/O.

Decisions where the RFCs leave room:

- Only leaf parts are decoded (rfc/9051 §6.4.5 defines BINARY for leaf body parts). BINARY[]
  (the whole message) and BINARY[n] of a multipart or MESSAGE/RFC822 part answer the octets as
  stored: those entities may only carry an identity encoding (rfc/2045 §6.4, rfc/2046
  §5.2.1), so there is nothing to remove, and their nested parts are not rewritten.
- Base64 is decoded leniently, as rfc/2045 §6.8 asks of decoders ("characters outside of the
  base64 alphabet are to be ignored"): other octets are skipped, `=` ends a group (blocks
  concatenated with their padding still decode), and a last group of one character, which
  cannot hold an octet, is dropped. Malformed base64 therefore never answers UNKNOWN-CTE:
  the encoding is known, only the data is damaged, and the client gets what can be read.
- Quoted-printable follows rfc/2045 §6.7: white space at the end of a line is removed, `=`
  at the end of a line is a soft line break, `=XX` (either case) an octet, and a `=` not
  followed by two hex digits is kept as it is (the rule 1 advice to decoders).
- 7BIT, 8BIT and BINARY are identities; any other encoding (x-uuencode, a misspelling) is
  `NO [UNKNOWN-CTE]` for the whole FETCH (rfc/3516 §4.3 "MUST fail the request").
- A part that does not exist gives empty data, as BODY[n] does (`fetch.section_bytes`).
"""

from __future__ import annotations

import binascii
import re
from typing import Final

from mssante.operator import mime
from mssante.operator.imap import responses
from mssante.operator.imap.commands import FetchBinary, FetchBinarySize

IDENTITY_ENCODINGS: Final = frozenset({"7BIT", "8BIT", "BINARY"})
DECODED_ENCODINGS: Final = frozenset({"BASE64", "QUOTED-PRINTABLE"})

_BASE64_ALPHABET: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# Every octet that is neither in the alphabet nor the pad "=": deleted before decoding.
_BASE64_NOISE: Final = bytes(b for b in range(256) if b not in _BASE64_ALPHABET + b"=")
_TRAILING_SPACE: Final = re.compile(rb"[ \t]+(?=\r?\n|\Z)")


class UnknownEncodingError(ValueError):
    """The part's Content-Transfer-Encoding is not one this server can remove."""

    def __init__(self, encoding: str) -> None:
        super().__init__(f"unknown content-transfer-encoding {encoding!r}")
        self.encoding = encoding


def decode_base64(data: bytes) -> bytes:
    """rfc/2045 §6.8, leniently (see the module docstring)."""
    out: list[bytes] = []
    for group in data.translate(None, _BASE64_NOISE).split(b"="):
        extra = len(group) % 4
        if extra == 1:
            group = group[:-1]  # six bits: not an octet
        elif extra:
            group += b"=" * (4 - extra)  # 2 or 3 characters still hold 1 or 2 octets
        if group:
            out.append(binascii.a2b_base64(group))
    return b"".join(out)


def decode_quoted_printable(data: bytes) -> bytes:
    """rfc/2045 §6.7: trailing white space dropped, soft line breaks joined, `=XX` decoded."""
    return binascii.a2b_qp(_TRAILING_SPACE.sub(b"", data))


def decode(data: bytes, encoding: str) -> bytes:
    """`data` with the Content-Transfer-Encoding `encoding` (any case) removed."""
    name = encoding.upper()
    if name in IDENTITY_ENCODINGS:
        return data
    if name == "BASE64":
        return decode_base64(data)
    if name == "QUOTED-PRINTABLE":
        return decode_quoted_printable(data)
    raise UnknownEncodingError(encoding)


def section(raw: bytes, structure: mime.Message, part: tuple[int, ...]) -> bytes:
    """The decoded content BINARY[part] names (rfc/3516 §4.2); see the module docstring for
    the whole message, non-leaf parts and parts that do not exist."""
    if not part:
        return raw
    found = mime.find_part(structure, part)
    if found is None:
        return b""
    body = raw[found.body_start : found.body_end]
    if found.parts or found.message is not None:
        return body
    return decode(body, found.encoding)


def value(data: bytes) -> bytes:
    """The BINARY response value: a literal8 only when the data holds NUL, else a literal
    (rfc/3516 §4.3: the server SHOULD send a string when it can)."""
    if b"\x00" in data:
        return responses.literal8(data)
    return responses.literal(data)


def fetch_value(raw: bytes, structure: mime.Message, item: FetchBinary | FetchBinarySize) -> bytes:
    """The value of a BINARY / BINARY.SIZE item; raises `UnknownEncodingError`."""
    data = section(raw, structure, item.part)
    if isinstance(item, FetchBinarySize):
        # rfc/3516 §4.2: the size the matching FETCH BINARY would send (of the whole part).
        return responses.number(len(data))
    if item.partial is not None:
        # rfc/3516 §4.2: the partial range is counted in the decoded data.
        data = data[item.partial.offset : item.partial.offset + item.partial.length]
    return value(data)
