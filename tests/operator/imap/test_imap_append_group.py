"""APPEND group-committed (imap/appender.py over operator/groupcommit.py): several sessions
and pipelined APPENDs share transactions, every OK is durable, UIDs stay contiguous and in
order, an over-quota APPEND in a batch is refused alone. Real server, real TLS, imaplib and
a raw TLS socket; SQLite and PostgreSQL."""

from __future__ import annotations

import re
import socket
import threading

from sqlalchemy import select, update
from test_imap_server import (  # the shared server fixture and helpers
    PASSWORD,
    USER,
    Imap,
    _in_thread,
    imap,  # noqa: F401 - a fixture
)

from mssante.operator import metarecord
from mssante.operator.imap import appender
from mssante.operator.imap.session import seal_message
from mssante.operator.store import blobmeta, blobs, folders, mailboxes
from mssante.operator.store.db import Store
from mssante.operator.store.schema import MailboxRow, MessageRow, utcnow

APPENDUID = re.compile(rb"\[APPENDUID (\d+) (\d+)\]")


def _message(n: int) -> bytes:
    return (
        f"From: Dr Pair <dr.pair@peer.mssante.test>\r\nTo: {USER}\r\n"
        f"Subject: compte rendu {n}\r\nMessage-ID: <{n}@peer.mssante.test>\r\n\r\n"
        f"Bonjour {n}.\r\n"
    ).encode()


async def _stored_uids(store: Store) -> dict[int, bytes]:
    """UID → message, read back from the database through the store."""
    async with store.read_session() as session:
        box = await mailboxes.get_mailbox(session, USER)
        inbox = await folders.get_folder(session, box.id, "INBOX")
        rows = (
            await session.execute(
                select(MessageRow.uid, MessageRow.blob_id).where(MessageRow.folder_id == inbox.id)
            )
        ).all()
        return {int(uid): await blobs.get_blob(session, store.cipher, blob) for uid, blob in rows}


async def test_concurrent_sessions_share_commits_and_lose_nothing(imap: Imap) -> None:  # noqa: F811
    sessions, each = 8, 12
    answers: list[tuple[int, bytes]] = []
    lock = threading.Lock()
    before = imap.running.imap.appender.stats if imap.running.imap else None

    def worker(k: int) -> None:
        client = imap.tls()
        client.login(USER, PASSWORD)
        for i in range(each):
            n = k * 100 + i
            typ, data = client.append("INBOX", None, None, _message(n))
            assert typ == "OK", data
            with lock:
                answers.append((n, data[0]))
        client.logout()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(sessions)]

    def run_all() -> None:
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    await _in_thread(run_all)
    assert len(answers) == sessions * each
    uids = {}
    for n, line in answers:
        found = APPENDUID.search(line)
        assert found is not None, line
        uids[int(found.group(2))] = n
    # Every OK named its own UID; together they are 1..N, none reused, none missing.
    assert sorted(uids) == list(range(1, sessions * each + 1))
    stored = await _stored_uids(imap.running.store)
    assert set(stored) == set(uids)
    for uid, n in uids.items():
        assert stored[uid] == _message(n)
    assert imap.running.imap is not None and before is not None
    after = imap.running.imap.appender.stats
    assert after.items - before.items == sessions * each
    assert after.failures == before.failures


def _read_until(sock: socket.socket, tag: bytes) -> bytes:
    data = b""
    while not re.search(rb"(^|\r\n)" + re.escape(tag) + rb" (OK|NO|BAD)[^\r\n]*\r\n", data):
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return data


async def test_pipelined_appends_share_one_commit_answered_in_order(imap: Imap) -> None:  # noqa: F811
    """Five APPENDs sent at once with LITERAL+ (as mbsync pipelines): one transaction, OKs in
    command order, APPENDUIDs ascending; one of them names a folder that does not exist and
    gets its own NO, the others are stored."""
    assert imap.running.imap is not None
    committer = imap.running.imap.appender

    def scenario() -> bytes:
        raw = socket.create_connection(("127.0.0.1", imap.tls_port), timeout=10)
        with imap.context().wrap_socket(raw) as sock:
            sock.recv(4096)
            sock.sendall(b"a LOGIN " + USER.encode() + b' "' + PASSWORD.encode() + b'"\r\n')
            _read_until(sock, b"a")
            pipeline = b""
            for i in range(5):
                folder = b"Nulle-part" if i == 2 else b"INBOX"
                data = _message(500 + i)
                pipeline += b"p%d APPEND %s {%d+}\r\n%s\r\n" % (i, folder, len(data), data)
            sock.sendall(pipeline)
            out = _read_until(sock, b"p4")
            sock.sendall(b"z LOGOUT\r\n")
            return out

    before = committer.stats
    out = await _in_thread(scenario)
    after = committer.stats
    tagged = re.findall(rb"(?m)^(p\d) (OK|NO|BAD)([^\r\n]*)", out)
    assert [t for t, _, _ in tagged] == [b"p0", b"p1", b"p2", b"p3", b"p4"]
    assert [s for _, s, _ in tagged] == [b"OK", b"OK", b"NO", b"OK", b"OK"]
    assert b"[TRYCREATE]" in tagged[2][2]
    uids = [int(m.group(2)) for m in APPENDUID.finditer(out)]
    assert uids == [1, 2, 3, 4]
    assert after.items - before.items == 4
    assert after.commits - before.commits == 1  # the four stored together
    stored = await _stored_uids(imap.running.store)
    assert [stored[u] for u in uids] == [_message(n) for n in (500, 501, 503, 504)]


async def test_over_quota_request_in_a_batch_is_refused_alone(imap: Imap) -> None:  # noqa: F811
    """`appender.write` on one batch: the request that would go over the quota gets None and
    nothing of it is stored; those before and after it are stored, charged in order."""
    store = imap.running.store
    async with store.session() as session:
        box = await mailboxes.get_mailbox(session, USER)
        inbox = await folders.get_folder(session, box.id, "INBOX")
        await session.execute(
            update(MailboxRow).where(MailboxRow.id == box.id).values(quota_bytes=999)
        )
        await session.commit()

    def request(size: int, count: int = 1) -> appender.Request:
        data = _message(size)[:-2] + b"x" * (size - len(_message(size))) + b"\r\n"
        messages = []
        for _ in range(count):
            blob, meta = seal_message(store.cipher, data)
            messages.append(appender.NewMessage(blob, meta, len(data), utcnow(), ()))
        return appender.Request(inbox.id, box.id, tuple(messages))

    batch = [request(400), request(300, count=2), request(500), request(200)]
    async with store.session() as session:
        results = await appender.write(session, batch, default_quota=0)
        await session.commit()
    # 400 fits; 2×300 would make 1000 > 999 (a MULTIAPPEND: all or none); 500 makes 900; 200
    # would make 1100.
    assert results == [(1,), None, (2,), None]
    async with store.read_session() as session:
        used = (await mailboxes.get_mailbox(session, USER)).used_bytes
    assert used == 900
    assert sorted(await _stored_uids(store)) == [1, 2]


async def test_over_quota_over_imap_and_the_records_written(imap: Imap) -> None:  # noqa: F811
    store = imap.running.store
    async with store.session() as session:
        await session.execute(
            update(MailboxRow).where(MailboxRow.address == USER).values(quota_bytes=300)
        )
        await session.commit()

    def scenario() -> tuple[str, str, list[bytes]]:
        client = imap.tls()
        client.login(USER, PASSWORD)
        ok, _ = client.append("INBOX", None, None, _message(1))
        refused = client.append("INBOX", None, None, _message(2) + b"y" * 400)
        client.select("INBOX")
        _, data = client.fetch("1", "(ENVELOPE)")
        client.logout()
        return ok, refused[0] + " " + refused[1][0].decode(), [d for d in data if d]

    ok, refused, envelope = await _in_thread(scenario)
    assert ok == "OK"
    assert refused.startswith("NO [OVERQUOTA]")
    assert b"compte rendu 1" in envelope[0]
    # The structure record written by APPEND is the version 2 one (rendered, with header).
    async with store.read_session() as session:
        box = await mailboxes.get_mailbox(session, USER)
        assert box.used_bytes == len(_message(1))
        blob_id = await session.scalar(select(MessageRow.blob_id).where(MessageRow.uid == 1))
        assert blob_id is not None
        plain = await blobmeta.get_blob_meta(session, store.cipher, blob_id)
    assert plain.startswith(metarecord.MAGIC)
    assert metarecord.read(plain).header == _message(1)[: _message(1).index(b"\r\n\r\n") + 4]
