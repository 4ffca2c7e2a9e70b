"""BINARY (rfc/3516, rfc/9051 §6.4.5): the decoding functions of `imap/binary.py`, then FETCH
BINARY / BINARY.PEEK / BINARY.SIZE and APPEND of a literal8 through imaplib against the real
operator, on SQLite and PostgreSQL (the fixtures of test_imap_server)."""

from __future__ import annotations

import base64
import imaplib
import re

import pytest
from sqlalchemy import select
from test_imap_server import (  # the shared server fixture and helpers
    PASSWORD,
    USER,
    Imap,
    _in_thread,
    imap,  # noqa: F401 - a fixture
)

from mssante.operator import mime
from mssante.operator.imap import binary
from mssante.operator.imap.commands import FetchBinary, FetchBinarySize, Partial
from mssante.operator.store import blobs
from mssante.operator.store.schema import MessageRow

# Decoded contents of the parts of MIXED: a PDF-like blob without NUL, octets 0..255 (with
# NUL), quoted-printable text, and a part in an encoding nobody decodes.
PDF = b"%PDF-1.4\n\xe2\xe3\xcf\xd3 binary\xff\n%%EOF\n"
ALL_OCTETS = bytes(range(256))
# The CRLF before a boundary belongs to the delimiter (rfc/2046 §5.1.1), not to the text.
TEXT = "Caf\u00e9 = 3 \u20ac, ligne tr\u00e8s longue coup\u00e9e ici.\r\nFin.".encode()


def _wrapped(data: bytes) -> bytes:
    encoded = base64.b64encode(data)
    return b"\r\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76)) + b"\r\n"


MIXED = (
    b"From: Dr Pair <dr.pair@peer.mssante.test>\r\n"
    b"To: <" + USER.encode() + b">\r\n"
    b"Subject: Pieces jointes\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n'
    b"\r\n"
    b"--b1\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Caf=C3=A9 =3D 3 =E2=82=AC, ligne tr=c3=a8s longue coup=C3=A9e =  \r\n"
    b"ici.\r\n"
    b"Fin.\r\n"
    b"--b1\r\n"
    b"Content-Type: application/pdf; name=cr.pdf\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n" + _wrapped(PDF) + b"--b1\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: BASE64\r\n"
    b"\r\n" + _wrapped(ALL_OCTETS) + b"--b1\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: x-uuencode\r\n"
    b"\r\n"
    b"begin 644 x\r\n#86)C\r\n`\r\nend\r\n"
    b"--b1--\r\n"
)


# --- pure functions ---------------------------------------------------------------------------


def test_base64_is_decoded_leniently() -> None:
    assert binary.decode_base64(_wrapped(ALL_OCTETS)) == ALL_OCTETS
    # rfc/2045 §6.8: characters outside the alphabet are ignored.
    assert binary.decode_base64(b"aGVs *!bG8=\r\n") == b"hello"
    # Missing padding: the last 2 or 3 characters still give their octets.
    assert binary.decode_base64(b"aGVsbG8") == b"hello"
    assert binary.decode_base64(b"aGVsbA") == b"hell"
    # A last group of one character cannot hold an octet: dropped.
    assert binary.decode_base64(b"aGVsbG8hX") == b"hello!"
    # Blocks concatenated with their padding decode one after the other.
    assert binary.decode_base64(b"QQ==QkM=") == b"ABC"
    assert binary.decode_base64(b"") == b"" == binary.decode_base64(b"====\r\n")


def test_quoted_printable() -> None:
    decoded = binary.decode_quoted_printable(b"a=3Db=3d c=  \r\nd  \t\r\ne=ZZ f=00 g=\nh\r\nend=")
    # Soft breaks joined (with trailing white space), trailing white space dropped, =XX in
    # either case decoded, a bad escape kept, NUL possible.
    assert decoded == b"a=b= cd\r\ne=ZZ f\x00 gh\r\nend"


def test_decode_by_encoding() -> None:
    assert binary.decode(b"\x00\xff raw", "binary") == b"\x00\xff raw"
    assert binary.decode(b"x", "7BIT") == b"x" == binary.decode(b"x", "8bit")
    assert binary.decode(b"eA==", "Base64") == b"x"
    assert binary.decode(b"=78", "quoted-printable") == b"x"
    with pytest.raises(binary.UnknownEncodingError) as info:
        binary.decode(b"begin 644 x", "x-uuencode")
    assert info.value.encoding == "x-uuencode"


def test_sections_and_values() -> None:
    structure = mime.parse(MIXED)
    assert binary.section(MIXED, structure, ()) == MIXED  # the whole message as stored
    assert binary.section(MIXED, structure, (1,)) == TEXT
    assert binary.section(MIXED, structure, (2,)) == PDF
    assert binary.section(MIXED, structure, (3,)) == ALL_OCTETS
    assert binary.section(MIXED, structure, (9,)) == b""  # no such part
    with pytest.raises(binary.UnknownEncodingError):
        binary.section(MIXED, structure, (4,))
    # A literal unless the data holds NUL (rfc/3516 §4.3).
    assert binary.value(b"ab") == b"{2}\r\nab"
    assert binary.value(b"a\x00") == b"~{2}\r\na\x00"
    item = FetchBinary((3,), peek=True, partial=Partial(250, 10))
    # The range sent decides: no NUL in octets 250..255, so a plain literal.
    assert binary.fetch_value(MIXED, structure, item) == b"{6}\r\n" + ALL_OCTETS[250:]
    assert binary.fetch_value(MIXED, structure, FetchBinarySize((2,))) == str(len(PDF)).encode()


def test_non_leaf_parts_are_sent_as_stored() -> None:
    inner = b"Subject: inner\r\nContent-Transfer-Encoding: base64\r\n\r\neA==\r\n"
    outer = (
        b'Content-Type: multipart/mixed; boundary="z"\r\n\r\n--z\r\n'
        b"Content-Type: message/rfc822\r\n\r\n" + inner + b"--z--\r\n"
    )
    structure = mime.parse(outer)
    assert binary.section(outer, structure, (1,)) == inner[:-2]  # MESSAGE/RFC822: as stored
    assert binary.section(outer, structure, (1, 1)) == b"x"  # its own body part is
    # A single-part message: part 1 is its body, decoded; [] the whole message.
    single = b"Content-Transfer-Encoding: base64\r\n\r\nAAF4\r\n"
    assert binary.section(single, mime.parse(single), (1,)) == b"\x00\x01x"
    assert binary.section(single, mime.parse(single), ()) == single


# --- the server -------------------------------------------------------------------------------


def _login(server: Imap) -> imaplib.IMAP4_SSL:
    client = server.tls()
    client.login(USER, PASSWORD)
    return client


def _append8(client: imaplib.IMAP4, data: bytes) -> bytes:
    """APPEND INBOX ~{N} (rfc/3516 §4.4), which imaplib cannot send; the tagged answer."""
    tag = client._new_tag()
    client.send(tag + b" APPEND INBOX ~{%d}\r\n" % len(data))
    assert client.readline().startswith(b"+ ")
    client.send(data + b"\r\n")
    return client.readline()


def _fetch_raw(client: imaplib.IMAP4, command: bytes) -> bytes:
    """Send `command` with a new tag and return every byte up to the tagged line included (the
    literal markers as sent: `{N}` or `~{N}`)."""
    tag = client._new_tag()
    client.send(tag + b" " + command + b"\r\n")
    out = b""
    while True:
        line = client.readline()
        out += line
        size = re.search(rb"~?\{(\d+)\}\r\n$", line)
        if size:
            out += client.read(int(size[1]))
            continue
        if line.startswith(tag + b" "):
            return out


async def test_fetch_binary_decodes_parts(imap: Imap) -> None:  # noqa: F811
    def scenario() -> None:
        client = _login(imap)
        assert "BINARY" in client.capabilities
        assert client.append("INBOX", None, None, MIXED)[0] == "OK"
        client.select("INBOX")
        # A base64 part without NUL: the exact decoded octets in a normal literal.
        typ, data = client.fetch("1", "(BINARY.PEEK[2] BINARY.SIZE[2])")
        assert typ == "OK"
        head, body = data[0]  # type: ignore[misc]
        assert body == PDF
        assert head.endswith(b"BINARY[2] {%d}" % len(PDF))
        assert data[1] == b" BINARY.SIZE[2] %d)" % len(PDF)
        # Quoted-printable, and a partial counted in the decoded data.
        typ, data = client.fetch("1", "(BINARY.PEEK[1] BINARY.PEEK[1]<5.3> BINARY.SIZE[1])")
        assert data[0][1] == TEXT  # type: ignore[index]
        assert data[1][0].endswith(b"BINARY[1]<5> {3}") and data[1][1] == TEXT[5:8]  # type: ignore[index]
        assert data[2] == b" BINARY.SIZE[1] %d)" % len(TEXT)
        # NUL in the decoded data: a literal8, on the wire.
        raw = _fetch_raw(client, b"FETCH 1 (BINARY.PEEK[3] BINARY.SIZE[3])")
        assert b"* 1 FETCH (BINARY[3] ~{256}\r\n" + ALL_OCTETS + b" BINARY.SIZE[3] 256)\r\n" in raw
        raw = _fetch_raw(client, b"FETCH 1 (BINARY.PEEK[3]<0.4>)")
        assert b"BINARY[3]<0> ~{4}\r\n\x00\x01\x02\x03)" in raw
        # The whole message and a multipart (not a leaf) come as stored.
        typ, data = client.fetch("1", "(BINARY.PEEK[])")
        assert data[0][1] == MIXED  # type: ignore[index]
        # None of those set \Seen; BINARY[] without PEEK does (rfc/3516 §4.2).
        typ, data = client.fetch("1", "(FLAGS)")
        assert data == [b"1 (FLAGS ())"]
        typ, data = client.fetch("1", "(BINARY[2])")
        assert data[0][1] == PDF and data[1] == b" FLAGS (\\Seen))"  # type: ignore[index]
        # rfc/3516 §4.3: an encoding the server cannot remove fails the FETCH.
        typ, data = client._simple_command("FETCH", "1", "(BINARY.PEEK[4])")
        assert (typ, data) == (
            "NO",
            [b"[UNKNOWN-CTE] unknown content-transfer-encoding in message UID 1"],
        )
        typ, data = client._simple_command("UID", "FETCH", "1", "(BINARY.SIZE[4])")
        assert typ == "NO" and data[0].startswith(b"[UNKNOWN-CTE] ")  # type: ignore[union-attr]
        # BODY[4] of the same part is still fine, and the session goes on.
        typ, data = client.fetch("1", "(BODY.PEEK[4])")
        assert data[0][1] == b"begin 644 x\r\n#86)C\r\n`\r\nend"  # type: ignore[index]
        client.logout()

    await _in_thread(scenario)


async def test_append_literal8_keeps_nul(imap: Imap) -> None:  # noqa: F811
    message = (
        b"From: <dr.pair@peer.mssante.test>\r\nSubject: binaire\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n"
        b"\r\n" + ALL_OCTETS + b"\r\n"
    )

    def scenario() -> None:
        client = _login(imap)
        answer = _append8(client, message)
        assert re.fullmatch(rb"\w+ OK \[APPENDUID \d+ 1\] APPEND completed\r\n", answer)
        # A plain literal cannot carry NUL (rfc/9051 §4.3): BAD, and the session goes on.
        tag = client._new_tag()
        client.send(tag + b" APPEND INBOX {3}\r\n")
        assert client.readline().startswith(b"+ ")
        client.send(b"a\x00b\r\n")
        assert client.readline().startswith(tag + b" BAD ")
        client.select("INBOX")
        typ, data = client.fetch("1", "(RFC822.SIZE BINARY.SIZE[] BINARY.SIZE[1])")
        assert data == [
            b"1 (RFC822.SIZE %d BINARY.SIZE[] %d BINARY.SIZE[1] %d)"
            % (len(message), len(message), len(ALL_OCTETS) + 2)
        ]
        raw = _fetch_raw(client, b"FETCH 1 (BINARY.PEEK[])")
        assert b"* 1 FETCH (BINARY[] ~{%d}\r\n" % len(message) + message + b")\r\n" in raw
        # BODY[] is a literal: NUL cannot be sent there and is dropped (rfc/9051 §4.3.1).
        typ, data = client.fetch("1", "(BODY.PEEK[])")
        assert typ == "OK" and data[0][1] == message.replace(b"\x00", b"")  # type: ignore[index]
        # rfc/6855 §4: the UTF8 (…) APPEND form belongs to UTF8=ACCEPT, not offered here.
        tag = client._new_tag()
        client.send(tag + b" APPEND INBOX UTF8 (~{5}\r\n")
        assert client.readline().startswith(b"+ ")
        client.send(b"hello)\r\n")
        assert client.readline() == tag + b" BAD expected the message as a literal\r\n"
        assert client.noop()[0] == "OK"
        client.logout()

    await _in_thread(scenario)
    async with imap.running.store.read_session() as session:
        rows = (await session.execute(select(MessageRow.blob_id, MessageRow.size))).all()
        assert [size for _, size in rows] == [len(message)]
        stored = await blobs.get_blob(session, imap.running.store.cipher, rows[0][0])
    assert stored == message
