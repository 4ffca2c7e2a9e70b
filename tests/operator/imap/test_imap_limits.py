"""Connection limits and autologout timers of the IMAP server, over real sockets.

The server is the real operator (`mssante.server.start`) on loopback. Limits do not depend on the
database, so SQLite only. Loopback accepts any 127.0.0.0/8 source address on Linux, which gives
the tests a second client IP.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from mssante.config import load_settings
from mssante.operator.passwords import hash_async
from mssante.operator.store import audit, domains, mailboxes
from mssante.operator.store.migrate import upgrade
from mssante.operator.store.schema import MailboxType
from mssante.server import Running, start, stop

ConfigWriter = Callable[..., Path]
FIXTURES = Path(__file__).parents[3] / "tls-fixtures"
DOMAIN = "hopital-x.mssante.test"
USER = f"jean.martin@{DOMAIN}"
PASSWORD = "correct-horse-battery"
TIMEOUT = 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    running: Running
    port: int
    tls_port: int

    async def connect(
        self, source: str = "127.0.0.1", *, tls: bool = False
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
        context = None
        if tls:
            context = ssl.create_default_context(cafile=str(FIXTURES / "ca-bundle.pem"))
            context.check_hostname = False
        reader, writer = await asyncio.open_connection(
            "127.0.0.1",
            self.tls_port if tls else self.port,
            local_addr=(source, 0),
            ssl=context,
        )
        greeting = await asyncio.wait_for(reader.readline(), TIMEOUT)
        return reader, writer, greeting

    async def audit_events(self) -> list[audit.AuditEvent]:
        assert self.running.imap is not None
        await self.running.imap.audit_sink.flush()
        async with self.running.store.session() as session:
            return await audit.recent(session, 200)


@pytest.fixture
async def server(store_url: str, write_config: ConfigWriter) -> AsyncIterator[Server]:
    await upgrade(store_url)
    port, tls_port = _free_port(), _free_port()
    path = write_config(
        database_url=store_url,
        extra=(
            "[metrics]\nenabled = false\n[relay]\nenabled = false\n"
            "[submission]\nenabled = false\n[dkim]\nverify = false\n"
            f'[imap]\nenabled = true\nlisten = "127.0.0.1:{port}"\n'
            f'implicit_tls_listen = "127.0.0.1:{tls_port}"\n'
            "max_connections = 4\nmax_connections_per_ip = 2\n"
        ),
    )
    running = await start(load_settings(path))
    password_hash = await hash_async(PASSWORD)
    async with running.store.session() as session:
        await domains.add_domain(session, DOMAIN)
        await mailboxes.create_mailbox(session, USER, MailboxType.PER, password_hash=password_hash)
        await session.commit()
    try:
        yield Server(running, port, tls_port)
    finally:
        await stop(running)


async def _closed(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(), TIMEOUT) == b""


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_per_ip_limit_refuses_with_bye_and_other_ips_still_connect(server: Server) -> None:
    first = await server.connect()
    second = await server.connect(tls=True)  # both listeners count
    assert first[2].startswith(b"* OK [CAPABILITY IMAP4rev1")
    assert second[2].startswith(b"* OK [CAPABILITY IMAP4rev1")
    reader, writer, greeting = await server.connect()
    assert greeting == b"* BYE Too many connections, try again later\r\n"
    assert await _closed(reader)
    writer.close()
    # Another address is not affected by this one's limit.
    other = await server.connect("127.0.0.2")
    assert other[2].startswith(b"* OK ")
    # Ending a session frees its slot.
    first[1].write(b"a LOGOUT\r\n")
    assert (await asyncio.wait_for(first[0].readline(), TIMEOUT)).startswith(b"* BYE")
    assert await asyncio.wait_for(first[0].readline(), TIMEOUT) == b"a OK LOGOUT completed\r\n"
    assert await _closed(first[0])
    again = await server.connect()
    assert again[2].startswith(b"* OK ")
    refusals = [e for e in await server.audit_events() if e.event == "imap.connection"]
    assert [(e.peer_ip, (e.details or {}).get("reason")) for e in refusals] == [
        ("127.0.0.1", "too many connections (per_ip)")
    ]
    for _, w, _ in (second, other, again):
        w.close()


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_total_limit_refuses_every_address(server: Server) -> None:
    held = [
        await server.connect(source)
        for source in ("127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.2")
    ]
    assert all(greeting.startswith(b"* OK ") for _, _, greeting in held)
    reader, writer, greeting = await server.connect("127.0.0.3")
    assert greeting == b"* BYE Too many connections, try again later\r\n"
    assert await _closed(reader)
    writer.close()
    refusals = [e for e in await server.audit_events() if e.event == "imap.connection"]
    assert [(e.peer_ip, (e.details or {}).get("reason")) for e in refusals] == [
        ("127.0.0.3", "too many connections (total)")
    ]
    for _, w, _ in held:
        w.close()


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_silent_connections_are_logged_out(server: Server) -> None:
    imap = server.running.imap
    assert imap is not None
    # The configured timers are minutes long; the test shortens them on the running server.
    imap.unauthenticated_timeout = 0.3
    imap.idle_timeout = 5.0
    reader, writer, _ = await server.connect(tls=True)
    assert await asyncio.wait_for(reader.readline(), TIMEOUT) == (
        b"* BYE Autologout; idle for too long\r\n"
    )
    assert await _closed(reader)
    writer.close()
    # Once logged in the longer timer applies: still there after the short one has passed.
    reader, writer, _ = await server.connect(tls=True)
    writer.write(f"a LOGIN {USER} {PASSWORD}\r\n".encode())
    assert (await asyncio.wait_for(reader.readline(), TIMEOUT)).startswith(b"a OK ")
    await asyncio.sleep(1.0)
    writer.write(b"b NOOP\r\n")
    assert await asyncio.wait_for(reader.readline(), TIMEOUT) == b"b OK NOOP completed\r\n"
    assert await asyncio.wait_for(reader.readline(), TIMEOUT) == (
        b"* BYE Autologout; idle for too long\r\n"
    )
    assert await _closed(reader)
    writer.close()
    timeouts = [e for e in await server.audit_events() if e.event == "imap.timeout"]
    assert sorted(bool((e.details or {}).get("authenticated")) for e in timeouts) == [False, True]
