"""The structure record stored with each message (operator/metarecord.py): version 2 carries
the rendered ENVELOPE / BODYSTRUCTURE / BODY and the header; version 1 (bare JSON) still reads."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mssante.operator import metarecord, mime
from mssante.operator.store import searchfilter

MESSAGE = (
    b"From: =?utf-8?q?Dr_Andr=C3=A9?= <andre@hopital-x.mssante.fr>\r\n"
    b"To: secretariat@clinique.mssante.fr, patient@patient.mssante.fr\r\n"
    b"Subject: =?utf-8?q?Compte_rendu_cr=C3=A9atinine?=\r\n"
    b"Message-ID: <cr-1@hopital-x>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=b\r\n"
    b"\r\n"
    b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nVoir PJ.\r\n"
    b"--b\r\nContent-Type: application/pdf; name=cr.pdf\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n"
)


def _expected(raw: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    message = mime.parse(raw)
    return (
        mime.imap_envelope(message.envelope),
        mime.imap_body(message.body, True),
        mime.imap_body(message.body, False),
        raw[: message.body.body_start],
    )


def test_version_2_round_trip() -> None:
    plain = metarecord.build(mime.parse(MESSAGE), MESSAGE)
    assert plain.startswith(metarecord.MAGIC)
    record = metarecord.read(plain)
    assert (record.envelope, record.bodystructure, record.body, record.header) == _expected(MESSAGE)
    assert record.header is not None and record.header.endswith(b"boundary=b\r\n\r\n")
    assert record.message == mime.parse(MESSAGE)
    # The indexed fields, decoded and case-folded as SEARCH compares them.
    assert record.indexed == searchfilter.indexed_values(mime.split_header(MESSAGE))
    assert record.indexed is not None
    assert record.indexed["subject"] == ["compte rendu créatinine"]
    assert record.indexed["from"] == ["dr andré <andre@hopital-x.mssante.fr>"]
    assert "mime-version" not in record.indexed


def test_broken_indexed_values_are_a_value_error() -> None:
    plain = metarecord.build(mime.parse(MESSAGE), MESSAGE)
    good = metarecord.read(plain).indexed
    assert good is not None
    broken = plain.replace(b'{"from"', b'["from"', 1)
    with pytest.raises(ValueError, match="indexed values"):
        _ = metarecord.read(broken).indexed


def test_version_1_reads_and_renders_on_demand() -> None:
    record = metarecord.read(mime.to_json(mime.parse(MESSAGE)))
    assert record.header is None and record.indexed is None
    assert (record.envelope, record.bodystructure, record.body) == _expected(MESSAGE)[:3]
    assert record.message == mime.parse(MESSAGE)


def test_of_message_has_the_header() -> None:
    record = metarecord.of_message(mime.parse(MESSAGE), MESSAGE)
    assert (record.envelope, record.bodystructure, record.body, record.header) == _expected(MESSAGE)


def test_upgrade_turns_version_1_into_version_2_and_keeps_version_2() -> None:
    v1 = mime.to_json(mime.parse(MESSAGE))
    v2 = metarecord.upgrade(v1, MESSAGE)
    assert v2 == metarecord.build(mime.parse(MESSAGE), MESSAGE)
    assert metarecord.upgrade(v2, MESSAGE) is v2
    assert metarecord.upgrade(b"not json", MESSAGE) == b"not json"  # left for readers to report


@pytest.mark.parametrize(
    "plain",
    [
        metarecord.MAGIC + b"\x00\x00",  # lengths cut short
        metarecord.MAGIC + b"\x00\x00\x00\x05" + b"\x00" * 16 + b"abc",  # beyond the end
    ],
)
def test_broken_version_2_record_is_a_value_error(plain: bytes) -> None:
    with pytest.raises(ValueError, match="broken message structure record"):
        metarecord.read(plain)


def test_broken_json_surfaces_when_the_structure_is_needed() -> None:
    record = metarecord.read(b'{"v": 1}')
    with pytest.raises(ValueError, match="broken message structure"):
        _ = record.message


def test_header_only_message() -> None:
    raw = b"Subject: sans corps\r\n"
    record = metarecord.read(metarecord.build(mime.parse(raw), raw))
    assert record.header == raw[: mime.parse(raw).body.body_start]
    assert record.envelope == _expected(raw)[0]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_give_a_record_equal_to_rendering_now(raw: bytes) -> None:
    message = metarecord.parse(raw)
    record = metarecord.read(metarecord.build(message, raw))
    assert record.envelope == mime.imap_envelope(message.envelope)
    assert record.bodystructure == mime.imap_body(message.body, True)
    assert record.body == mime.imap_body(message.body, False)
    assert record.header == raw[: message.body.body_start]
    assert record.message == message
