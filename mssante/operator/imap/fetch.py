"""FETCH data items from a stored message, without I/O (rfc/3501 §6.4.5, §7.4.2).

The session reads the rows (and, when an item needs them, the decrypted body and the sealed
structure record written at delivery, `operator.metarecord`) and hands them here; this module
builds the `(NAME value)` pairs `responses.fetch` writes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from mssante.operator import metarecord, mime
from mssante.operator.imap import binary, responses
from mssante.operator.imap.commands import (
    FetchAttr,
    FetchBinary,
    FetchBinarySize,
    FetchBody,
    FetchItem,
    Section,
)

# Items this server answers; anything else in a FETCH gets NO [CANNOT] before any work.
SUPPORTED_ATTRS = frozenset(
    {
        "FLAGS",
        "UID",
        "INTERNALDATE",
        "RFC822.SIZE",
        "ENVELOPE",
        "BODYSTRUCTURE",
        "BODY",
        "RFC822",
        "RFC822.HEADER",
        "RFC822.TEXT",
        "MODSEQ",  # rfc/7162 §3.1.4.1
    }
)
_STRUCTURE_ATTRS = frozenset({"ENVELOPE", "BODYSTRUCTURE", "BODY"})
_BODY_ATTRS = frozenset({"RFC822", "RFC822.HEADER", "RFC822.TEXT"})
# rfc/3501 §6.4.5: RFC822 and RFC822.TEXT set \Seen like BODY[] and BODY[TEXT]; the others
# (RFC822.HEADER is BODY.PEEK[HEADER]) do not.
_SETS_SEEN_ATTRS = frozenset({"RFC822", "RFC822.TEXT"})

SYSTEM_FLAGS = ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")


@dataclass(frozen=True, slots=True)
class MessageState:
    """What a FETCH may report of one message besides its content."""

    uid: int
    size: int
    internal_date: dt.datetime
    flags: tuple[str, ...]
    modseq: int = 0


def supported(items: Sequence[FetchItem]) -> bool:
    return all(
        (isinstance(i, FetchAttr) and i.name in SUPPORTED_ATTRS)
        or isinstance(i, FetchBody | FetchBinary | FetchBinarySize)  # rfc/3516: binary.py
        for i in items
    )


def needs_body(items: Sequence[FetchItem]) -> bool:
    """Whether the decrypted message is needed (header fields and parts are read from it)."""
    return any(
        isinstance(i, FetchBody | FetchBinary | FetchBinarySize)
        or (isinstance(i, FetchAttr) and i.name in _BODY_ATTRS)
        for i in items
    )


def needs_structure(items: Sequence[FetchItem]) -> bool:
    return any(
        isinstance(i, FetchBody | FetchBinary | FetchBinarySize)
        or (isinstance(i, FetchAttr) and i.name in _STRUCTURE_ATTRS)
        for i in items
    )


def sets_seen(items: Sequence[FetchItem]) -> bool:
    """Whether the FETCH marks the messages \\Seen (rfc/3501 §6.4.5: BODY[…] without .PEEK;
    rfc/3516 §4.2: BINARY[…] likewise)."""
    return any(
        (isinstance(i, FetchBody | FetchBinary) and not i.peek)
        or (isinstance(i, FetchAttr) and i.name in _SETS_SEEN_ATTRS)
        for i in items
    )


def _header_fields(raw: bytes, start: int, end: int, names: Sequence[str], keep: bool) -> bytes:
    """HEADER.FIELDS / HEADER.FIELDS.NOT: the matching fields as stored, then the blank line
    (rfc/3501 §6.4.5: the subset keeps the delimiting blank line)."""
    wanted = {n.lower() for n in names}
    header = mime.split_header(raw, start, end)
    out = b"".join(raw[f.start : f.end] for f in header.fields if (f.name in wanted) == keep)
    return out + b"\r\n"


def _message_section(raw: bytes, message_part: mime.Part, section: Section) -> bytes:
    """HEADER, HEADER.FIELDS(.NOT) or TEXT of a message's own entity."""
    if section.text == "HEADER":
        return raw[message_part.header_start : message_part.body_start]
    if section.text == "TEXT":
        return raw[message_part.body_start : message_part.body_end]
    keep = section.text == "HEADER.FIELDS"
    return _header_fields(
        raw, message_part.header_start, message_part.body_start, section.headers, keep
    )


def section_bytes(raw: bytes, structure: mime.Message, section: Section) -> bytes:
    """The octets BODY[section] names (rfc/3501 §6.4.5); b"" for a part that does not exist."""
    if not section.part:
        if section.text is None:
            return raw
        return _message_section(raw, structure.body, section)
    part = mime.find_part(structure, section.part)
    if part is None:
        return b""
    if section.text is None:
        return raw[part.body_start : part.body_end]
    if section.text == "MIME":
        return raw[part.header_start : part.body_start]
    # HEADER, TEXT, HEADER.FIELDS after a part number: the part must be a MESSAGE/RFC822.
    if part.message is None:
        return b""
    return _message_section(raw, part.message.body, section)


def _literal(data: bytes) -> bytes:
    # Literals cannot carry NUL (rfc/3501 §9 CHAR8, rfc/9051 §4.3.1: only BINARY answers may
    # use literal8), so a NUL in a stored message is dropped from BODY[] and RFC822 answers, as
    # `mime.imap_string` does for header values; BINARY[] sends the exact octets.
    return responses.literal(data.replace(b"\x00", b""))


def render(
    state: MessageState,
    items: Sequence[FetchItem],
    *,
    raw: bytes | None,
    structure: metarecord.Record | None,
    with_uid: bool,
    with_flags: bool,
    with_modseq: bool = False,
) -> list[tuple[str, bytes]]:
    """The FETCH response items. `with_uid`: UID FETCH always returns the UID (rfc/3501
    §6.4.8); `with_flags`: the FETCH set \\Seen, so the new flags go out unasked (§6.4.5);
    `with_modseq`: CONDSTORE is on and flags go out, or CHANGEDSINCE was given, so MODSEQ is
    sent too (rfc/7162 §3.1.4.1, §3.2). Raises `binary.UnknownEncodingError` for a BINARY item
    whose part has an encoding this server cannot remove (rfc/3516 §4.3)."""
    out: list[tuple[str, bytes]] = []
    names: set[str] = set()

    def add(name: str, value: bytes) -> None:
        if name not in names:
            names.add(name)
            out.append((name, value))

    if with_uid:
        add("UID", responses.number(state.uid))
    for item in items:
        if isinstance(item, FetchBody):
            assert raw is not None and structure is not None
            data = section_bytes(raw, structure.message, item.section)
            if item.partial is not None:
                data = data[item.partial.offset : item.partial.offset + item.partial.length]
            add(item.reply_name, _literal(data))
            continue
        if isinstance(item, FetchBinary | FetchBinarySize):
            assert raw is not None and structure is not None
            add(item.reply_name, binary.fetch_value(raw, structure.message, item))  # may raise
            continue
        assert isinstance(item, FetchAttr)
        name = item.name
        if name == "UID":
            add("UID", responses.number(state.uid))
        elif name == "FLAGS":
            add("FLAGS", responses.flag_list(state.flags))
        elif name == "MODSEQ":
            add("MODSEQ", modseq_value(state.modseq))
        elif name == "INTERNALDATE":
            add("INTERNALDATE", responses.date_time(state.internal_date))
        elif name == "RFC822.SIZE":
            add("RFC822.SIZE", responses.number(state.size))
        elif name == "ENVELOPE":
            assert structure is not None
            add("ENVELOPE", structure.envelope)
        elif name == "BODYSTRUCTURE":
            assert structure is not None
            add("BODYSTRUCTURE", structure.bodystructure)
        elif name == "BODY":
            assert structure is not None
            add("BODY", structure.body)
        elif name == "RFC822":
            assert raw is not None
            add("RFC822", _literal(raw))
        elif name == "RFC822.HEADER":
            assert raw is not None and structure is not None
            add("RFC822.HEADER", _literal(raw[: structure.message.body.body_start]))
        elif name == "RFC822.TEXT":
            assert raw is not None and structure is not None
            body = structure.message.body
            add("RFC822.TEXT", _literal(raw[body.body_start : body.body_end]))
    if with_flags:
        add("FLAGS", responses.flag_list(state.flags))
    if with_modseq:
        add("MODSEQ", modseq_value(state.modseq))
    return out


def modseq_value(modseq: int) -> bytes:
    """`(n)`, the value of the MODSEQ fetch item (rfc/7162 §3.1.4.1 `fetch-mod-resp`)."""
    return b"(" + responses.number(modseq) + b")"
