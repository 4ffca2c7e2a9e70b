"""IDLE push (rfc/2177) across processes: a message delivered by ANOTHER process (a real
`python` subprocess running Delivery on the same database) wakes a client idling on this
operator — by LISTEN/NOTIFY on PostgreSQL, by the process-wide poll on SQLite; Delivery in
this process wakes it at once; the LISTEN connection killed by the server is re-established."""

from __future__ import annotations

import asyncio
import imaplib
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text

from mssante.config import load_settings
from mssante.operator.delivery import Delivery, InboundEnvelope, Recipient, SessionInfo
from mssante.operator.imap.notify import FolderWatcher
from mssante.operator.passwords import hash_async
from mssante.operator.store import domains, mailboxes
from mssante.operator.store.migrate import upgrade
from mssante.operator.store.schema import MailboxType
from mssante.server import Running, start, stop

ConfigWriter = Callable[..., Path]
FIXTURES = Path(__file__).parents[3] / "tls-fixtures"
DOMAIN = "hopital-x.mssante.test"
USER = f"jean.martin@{DOMAIN}"
PASSWORD = "correct-horse-battery"
WAIT = 60.0  # generous: the test waits for a response, it does not time it

DELIVER = """
import asyncio, sys
from pathlib import Path
from mssante.config import load_settings
from mssante.operator.delivery import Delivery, InboundEnvelope, Recipient, SessionInfo
from mssante.operator.store.db import Store
from mssante.server import open_cipher

async def main() -> None:
    settings = load_settings(Path(sys.argv[1]))
    store = await Store.open(settings.database_url, open_cipher(settings))
    delivery = Delivery(store, settings)
    await delivery.start()
    try:
        await delivery.deliver(
            InboundEnvelope("dr.pair@peer.mssante.test", (Recipient(sys.argv[2], None, None),),
                            None, None, False, "8BITMIME"),
            b"From: dr.pair@peer.mssante.test\\r\\nSubject: ailleurs\\r\\n\\r\\nBonjour\\r\\n",
            SessionInfo("s2", "192.0.2.20", "smtp.peer.mssante.test", "ESMTPS",
                        None, None, None),
        )
    finally:
        await delivery.close()
        await store.close()

asyncio.run(main())
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Operator:
    running: Running
    config: Path
    tls_port: int

    def login(self) -> imaplib.IMAP4_SSL:
        ctx = ssl.create_default_context(cafile=str(FIXTURES / "ca-bundle.pem"))
        ctx.check_hostname = False
        client = imaplib.IMAP4_SSL("127.0.0.1", self.tls_port, ssl_context=ctx, timeout=WAIT)
        client.login(USER, PASSWORD)
        return client

    async def deliver_from_another_process(self) -> None:
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", DELIVER, str(self.config), USER],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr

    async def deliver_here(self) -> None:
        delivery = Delivery(self.running.store, self.running.settings)
        await delivery.start()
        try:
            await delivery.deliver(
                InboundEnvelope(
                    "dr.pair@peer.mssante.test",
                    (Recipient(USER, None, None),),
                    None,
                    None,
                    False,
                    "8BITMIME",
                ),
                b"From: dr.pair@peer.mssante.test\r\nSubject: ici\r\n\r\nBonjour\r\n",
                SessionInfo(
                    "s1", "192.0.2.10", "smtp.peer.mssante.test", "ESMTPS", None, None, None
                ),
            )
        finally:
            await delivery.close()


async def _operator(store_url: str, write_config: ConfigWriter, poll: float) -> Operator:
    await upgrade(store_url)
    port, tls_port = _free_port(), _free_port()
    path = write_config(
        database_url=store_url,
        extra=(
            "[metrics]\nenabled = false\n[relay]\nenabled = false\n"
            "[submission]\nenabled = false\n[dkim]\nverify = false\n"
            f'[imap]\nenabled = true\nlisten = "127.0.0.1:{port}"\n'
            f'implicit_tls_listen = "127.0.0.1:{tls_port}"\nidle_poll_seconds = {poll}\n'
        ),
    )
    running = await start(load_settings(path))
    async with running.store.session() as session:
        await domains.add_domain(session, DOMAIN)
        await mailboxes.create_mailbox(
            session, USER, MailboxType.PER, password_hash=await hash_async(PASSWORD)
        )
        await session.commit()
    return Operator(running, path, tls_port)


@pytest.fixture
async def operator(store_url: str, write_config: ConfigWriter) -> AsyncIterator[Operator]:
    op = await _operator(store_url, write_config, 1.0)
    try:
        yield op
    finally:
        await stop(op.running)


def _idle(client: imaplib.IMAP4) -> bytes:
    assert client.select("INBOX")[0] == "OK"
    tag: bytes = client._new_tag()  # type: ignore[attr-defined]
    client.send(tag + b" IDLE\r\n")
    assert client.readline() == b"+ idling\r\n"
    return tag


def _done(client: imaplib.IMAP4, tag: bytes) -> None:
    client.send(b"DONE\r\n")
    assert client.readline() == tag + b" OK IDLE terminated\r\n"
    client.logout()


def _watcher_of(op: Operator) -> FolderWatcher:
    imap = op.running.imap
    assert imap is not None
    return imap.watcher


async def _subscribed(op: Operator, count: int) -> None:
    """Wait until `count` sessions idle (the IDLE command reached the server)."""
    watcher = _watcher_of(op)
    for _ in range(int(WAIT * 20)):
        if len(watcher) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the IDLE session never subscribed")


async def test_delivery_by_another_process_wakes_idle(operator: Operator) -> None:
    """PostgreSQL: NOTIFY at the other process's commit; SQLite: the process-wide poll."""
    client = await asyncio.to_thread(operator.login)
    tag = await asyncio.to_thread(_idle, client)
    await _subscribed(operator, 1)
    if operator.running.store.dialect == "postgresql":
        await asyncio.wait_for(_watcher_of(operator).listening.wait(), WAIT)
    await operator.deliver_from_another_process()
    assert await asyncio.to_thread(client.readline) == b"* 1 EXISTS\r\n"
    await operator.deliver_from_another_process()
    assert await asyncio.to_thread(client.readline) == b"* 2 EXISTS\r\n"
    await asyncio.to_thread(_done, client, tag)


async def test_delivery_in_this_process_wakes_idle_without_the_poll(
    store_url: str, write_config: ConfigWriter
) -> None:
    """The poll is set to 60 s, longer than the wait: only Delivery's own notice can wake."""
    op = await _operator(store_url, write_config, 60)
    try:
        client = await asyncio.to_thread(op.login)
        tag = await asyncio.to_thread(_idle, client)
        await _subscribed(op, 1)
        client.sock.settimeout(30)
        await op.deliver_here()
        assert await asyncio.to_thread(client.readline) == b"* 1 EXISTS\r\n"
        await asyncio.to_thread(_done, client, tag)
        assert len(_watcher_of(op)) == 0  # DONE unsubscribed
    finally:
        await stop(op.running)


@pytest.mark.postgres
@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)  # LISTEN is PostgreSQL's
async def test_listen_connection_killed_is_reestablished(operator: Operator) -> None:
    watcher = _watcher_of(operator)
    await asyncio.wait_for(watcher.listening.wait(), WAIT)
    client = await asyncio.to_thread(operator.login)
    tag = await asyncio.to_thread(_idle, client)
    await _subscribed(operator, 1)
    async with operator.running.store.session() as session:
        killed = (
            await session.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = 'mssante-imap-listen'"
                    " AND datname = current_database()"
                )
            )
        ).scalar_one()
    assert killed == 1
    for _ in range(int(WAIT * 20)):
        if watcher.reconnects == 1 and watcher.listening.is_set():
            break
        await asyncio.sleep(0.05)
    assert watcher.reconnects == 1 and watcher.listening.is_set()
    await operator.deliver_from_another_process()
    assert await asyncio.to_thread(client.readline) == b"* 1 EXISTS\r\n"
    await asyncio.to_thread(_done, client, tag)
