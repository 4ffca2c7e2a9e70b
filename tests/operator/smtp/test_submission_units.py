"""The message submission sends on: pure functions, no sockets."""

from __future__ import annotations

from mssante.operator import mime
from mssante.operator.policy import SendRights
from mssante.operator.smtp.submission import header_from_addresses, prepare_message

RIGHTS = SendRights(
    "claire@x.test", own=frozenset({"claire@x.test"}), on_behalf=frozenset({"jean@x.test"})
)
RECEIVED = b"Received: from client.test ([127.0.0.1])\r\n\tby mx.x.test; now\r\n"


def _prepare(data: bytes) -> tuple[bytes, str]:
    prepared = prepare_message(data, mime.split_header(data), RIGHTS, RECEIVED, "mx.x.test")
    return prepared.data, prepared.message_id


def test_from_addresses_with_names_groups_and_case() -> None:
    data = b'From: "Dr Jean" <Jean@X.test>, claire@x.test\r\nTo: a@b.test\r\n\r\nbody\r\n'
    assert header_from_addresses(mime.split_header(data)) == ("jean@x.test", "claire@x.test")
    assert header_from_addresses(mime.split_header(b"To: a@b.test\r\n\r\nx\r\n")) == ()


def test_sender_added_for_someone_else_and_client_sender_replaced() -> None:
    data = (
        b"From: jean@x.test\r\nSender: evil@y.test\r\nMessage-ID: <m1@x.test>\r\n"
        b"Date: Mon, 2 Nov 2026 10:00:00 +0000\r\nSubject: s\r\n\r\nbody\r\n"
    )
    out, message_id = _prepare(data)
    assert out.startswith(RECEIVED + b"Sender: <claire@x.test>\r\nFrom: jean@x.test\r\n")
    assert b"evil@y.test" not in out
    assert message_id == "<m1@x.test>"
    assert out.count(b"Message-ID:") == 1 and out.count(b"Date:") == 1
    assert out.endswith(b"\r\n\r\nbody\r\n")


def test_own_message_has_no_sender_and_gets_message_id_and_date() -> None:
    data = b"From: claire@x.test\r\nSender: claire@x.test\r\nSubject: s\r\n\r\nbody\r\n"
    out, message_id = _prepare(data)
    assert b"Sender:" not in out
    assert message_id.startswith("<") and message_id.endswith("@mx.x.test>")
    assert f"Message-ID: {message_id}\r\n".encode() in out
    assert b"\r\nDate: " in out
    assert out.startswith(RECEIVED)
