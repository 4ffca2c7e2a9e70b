"""Local delivery throughput: concurrent deliver() calls, as the relay makes them, durable.

Each delivery is what the relay does at the end of DATA: check the recipient (as at RCPT),
then `Delivery.deliver` — header split, DKIM, trace fields, MIME structure, sealing of the
message and its structure, then the group-committed transaction (blob, message with UID and
MODSEQ, structure, quota counter, audit) — and it returns once the commit is durable.
Messages are distinct 10 KB letters (no deduplication) to real mailboxes of every type.

    .venv/bin/python bench/bench_delivery.py --db sqlite --messages 4000 --concurrency 200
    .venv/bin/python bench/bench_delivery.py --db postgresql \\
        --url postgresql://postgres@127.0.0.1:5432/postgres --messages 4000 --concurrency 200

`--concurrency` is the number of SMTP transactions in flight (peers' connections). `--dkim`
signs every message (RSA-2048, key published through `[dkim] static_keys`), so verification
is part of the cost. On PostgreSQL, --url names a server where we may CREATE DATABASE; the run
uses a scratch database dropped afterwards. On SQLite, --url is the database file (default: a
file in a temporary directory). Durability settings are the production ones (SQLite WAL with
synchronous=FULL; PostgreSQL as configured: leave fsync on to measure anything meaningful).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import dkim as dkimpy  # type: ignore[import-untyped]
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from scratch import scratch_database  # bench/scratch.py (the script's own directory)

from mssante.config import (
    DkimSettings,
    OperatorSettings,
    PkiSettings,
    Settings,
    StorageSettings,
)
from mssante.operator.delivery import Delivery, InboundEnvelope, Recipient, SessionInfo
from mssante.operator.store import domains, mailboxes
from mssante.operator.store.crypto import BlobCipher
from mssante.operator.store.db import Store, mask_url
from mssante.operator.store.migrate import upgrade
from mssante.operator.store.schema import MailboxType

DOMAIN = "bench.mssante.test"
PATIENTS = "patient.bench.mssante.test"
SELECTOR = "bench"
TYPES = [MailboxType.PER, MailboxType.ORG, MailboxType.APP, MailboxType.CAB]


def _letter(i: int, size: int) -> bytes:
    header = (
        f"From: Dr Pair <dr.pair@peer.mssante.test>\r\n"
        f"To: <box{i}@{DOMAIN}>\r\n"
        f"Subject: Compte rendu {i}\r\n"
        f"Date: Mon, 24 Nov 2025 09:30:00 +0100\r\n"
        f"Message-ID: <{i}.{secrets.token_hex(8)}@peer.mssante.test>\r\n"
        f"MIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n"
        f"\r\n"
    ).encode()
    line = base64.b64encode(os.urandom(57)) + b"\r\n"  # 78-octet lines, like a real body
    return header + line * max(1, (size - len(header)) // len(line))


def _settings(tmp: Path, dkim_record: str | None) -> Settings:
    return Settings(
        operator=OperatorSettings(hostname="mx.bench.mssante.test", data_dir=tmp),
        pki=PkiSettings(trust_anchors=tmp / "x", certificate=tmp / "x", private_key=tmp / "x"),
        storage=StorageSettings(default_quota_bytes=0),
        dkim=DkimSettings(
            verify=True,
            static_keys=(
                {f"{SELECTOR}._domainkey.peer.mssante.test": dkim_record} if dkim_record else {}
            ),
        ),
    )


async def run(
    kind: str, url: str | None, count: int, size: int, concurrency: int, boxes: int, dkim: bool
) -> None:
    private_pem = None
    record = None
    if dkim:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private_pem = key.private_bytes(
            Encoding.PEM, PrivateFormat.TraditionalOpenSSL, NoEncryption()
        )
        public = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        record = "v=DKIM1; k=rsa; p=" + base64.b64encode(public).decode()
    letters = [_letter(i, size) for i in range(count)]
    if private_pem is not None:
        letters = [
            dkimpy.sign(m, SELECTOR.encode(), b"peer.mssante.test", private_pem) + m
            for m in letters
        ]
    async with scratch_database(kind, url) as db_url:
        await upgrade(db_url)
        cipher = BlobCipher({"bench": os.urandom(32)}, "bench")
        async with await Store.open(db_url, cipher) as store:
            addresses = []
            async with store.session() as session:
                await domains.add_domain(session, DOMAIN)
                await domains.add_domain(session, PATIENTS)
                for i in range(boxes):
                    kind_i = TYPES[i % len(TYPES)]
                    address = f"box{i}@{DOMAIN}"
                    if i % 5 == 4:
                        kind_i, address = MailboxType.PATIENT, f"1460263220{i:05d}@{PATIENTS}"
                    await mailboxes.create_mailbox(session, address, kind_i)
                    addresses.append(address)
                await session.commit()
            with tempfile.TemporaryDirectory() as tmp:
                delivery = Delivery(store, _settings(Path(tmp), record))
                await delivery.start()
                latencies: list[float] = []
                queue: asyncio.Queue[int] = asyncio.Queue()
                for i in range(count):
                    queue.put_nowait(i)

                async def peer(n: int) -> None:
                    info = SessionInfo(
                        session_id=f"bench{n}",
                        peer_ip="192.0.2.10",
                        helo="smtp.peer.mssante.test",
                        protocol="ESMTPS",
                        tls_version="TLSv1.2",
                        tls_cipher="ECDHE-RSA-AES256-GCM-SHA384",
                        peer_dn="CN=smtp.peer.mssante.test,OU=318310021300028,O=Pair,C=FR",
                    )
                    while not queue.empty():
                        i = queue.get_nowait()
                        rcpt = addresses[i % len(addresses)]
                        await delivery.check_recipient(rcpt)
                        envelope = InboundEnvelope(
                            "dr.pair@peer.mssante.test",
                            (Recipient(rcpt, None, None),),
                            None,
                            None,
                            False,
                            "8BITMIME",
                        )
                        started = time.perf_counter()
                        await delivery.deliver(envelope, letters[i], info)
                        latencies.append(time.perf_counter() - started)

                start = time.perf_counter()
                await asyncio.gather(*(peer(n) for n in range(concurrency)))
                elapsed = time.perf_counter() - start
                await delivery.close()
                stats = delivery.stats
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    print(
        f"database: {mask_url(db_url)}  messages: {count} x {len(letters[0])} bytes  "
        f"concurrency: {concurrency}  mailboxes: {boxes}  dkim: {'signed' if dkim else 'none'}"
    )
    print(
        f"{count / elapsed:8.0f} msg/s   p50 {p50:7.1f} ms   p99 {p99:7.1f} ms   "
        f"commits {stats.commits} ({stats.deliveries / max(1, stats.commits):.1f} per commit)  "
        f"failures {stats.failures}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--url", help="SQLite file URL, or PostgreSQL server URL (scratch DB)")
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--size", type=int, default=10 * 1024, help="bytes per message")
    parser.add_argument("--concurrency", type=int, default=200, help="transactions in flight")
    parser.add_argument("--mailboxes", type=int, default=50)
    parser.add_argument("--dkim", action="store_true", help="sign every message (RSA-2048)")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args()
    if min(args.messages, args.size, args.concurrency, args.mailboxes) < 1:
        parser.error("--messages, --size, --concurrency and --mailboxes must be positive")
    coroutine = run(
        args.db, args.url, args.messages, args.size, args.concurrency, args.mailboxes, args.dkim
    )
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(coroutine)
    else:
        asyncio.run(coroutine)


if __name__ == "__main__":
    main()
