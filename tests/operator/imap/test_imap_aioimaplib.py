"""aioimaplib (an asyncio IMAP client from PyPI) against the real operator over implicit TLS,
on SQLite and PostgreSQL: login, select, fetch, store, and IDLE receiving the EXISTS of a
message another client appends. aioimaplib 2.0 has no STARTTLS method (the command is only in
its table), so the STARTTLS port is left to imaplib (test_imap_server.py)."""

from __future__ import annotations

import aioimaplib
from test_imap_server import (  # the shared server fixture
    PASSWORD,
    USER,
    Imap,
    imap,  # noqa: F401 - a fixture
)

MESSAGE = (
    b"From: Dr Pair <dr.pair@peer.mssante.test>\r\n"
    b"To: " + USER.encode() + b"\r\n"
    b"Subject: =?utf-8?q?R=C3=A9sultats?=\r\n"
    b"Message-ID: <aio-1@peer.mssante.test>\r\n"
    b"\r\n"
    b"Bonjour.\r\n"
)


async def _client(server: Imap) -> aioimaplib.IMAP4_SSL:
    client = aioimaplib.IMAP4_SSL(
        "127.0.0.1", server.tls_port, ssl_context=server.context(), timeout=20
    )
    await client.wait_hello_from_server()
    response = await client.login(USER, PASSWORD)
    assert response.result == "OK", response.lines
    return client


async def test_aioimaplib_fetch_store_and_idle_push(imap: Imap) -> None:  # noqa: F811
    client = await _client(imap)
    assert client.has_capability("IDLE")
    response = await client.append(MESSAGE, mailbox="INBOX", flags="(\\Flagged)")
    assert response.result == "OK", response.lines
    assert b"[APPENDUID " in response.lines[-1]
    response = await client.select("INBOX")
    assert response.result == "OK" and b"1 EXISTS" in response.lines
    response = await client.fetch("1", "(UID FLAGS BODY.PEEK[])")
    assert response.result == "OK", response.lines
    assert response.lines[0] == b"1 FETCH (UID 1 FLAGS (\\Flagged) BODY[] {%d}" % len(MESSAGE)
    assert bytes(response.lines[1]) == MESSAGE
    response = await client.store("1", "+FLAGS", "(\\Seen)")
    assert response.result == "OK"
    assert response.lines[0] == b"1 FETCH (FLAGS (\\Seen \\Flagged))"
    response = await client.uid("fetch", "1", "(FLAGS)")
    assert response.lines[0] == b"1 FETCH (UID 1 FLAGS (\\Seen \\Flagged))"

    # IDLE (rfc/2177): another client appends, this one is told the new count.
    idle = await client.idle_start(timeout=60)
    other = await _client(imap)
    response = await other.append(MESSAGE.replace(b"aio-1", b"aio-2"), mailbox="INBOX")
    assert response.result == "OK", response.lines
    pushed: list[bytes] = []
    while b"2 EXISTS" not in pushed:
        pushed += await client.wait_server_push(timeout=30)
    client.idle_done()
    response = await idle
    assert response.result == "OK", response.lines
    response = await client.fetch("2", "(UID)")
    assert response.lines[0] == b"2 FETCH (UID 2)"
    for c in (client, other):
        assert (await c.logout()).result == "OK"
