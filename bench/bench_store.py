"""Store throughput: encrypted appends and blob reads, on SQLite or PostgreSQL.

Each append is what a local delivery costs the store: seal the body (AES-256-GCM), insert the
blob, allocate UID/MODSEQ and insert the message, commit durably. Bodies are distinct (no
deduplication) and 50 KB by default, a typical letter with a small PDF.

    .venv/bin/python bench/bench_store.py --db sqlite --messages 1000
    .venv/bin/python bench/bench_store.py --db postgresql \\
        --url postgresql://postgres@127.0.0.1:5432/postgres --messages 1000 --concurrency 8

On PostgreSQL, --url names a server and a database we may CREATE DATABASE from; the benchmark
runs in a scratch database that is dropped afterwards. On SQLite, --url is the database file
(default: a file in a temporary directory).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from scratch import scratch_database  # bench/scratch.py (the script's own directory)
from sqlalchemy import select

from mssante.operator.store import blobs, domains, folders, mailboxes, messages
from mssante.operator.store.crypto import BlobCipher
from mssante.operator.store.db import Store, mask_url
from mssante.operator.store.migrate import upgrade
from mssante.operator.store.schema import BlobRow, MailboxType


@dataclass(frozen=True)
class Result:
    name: str
    count: int
    seconds: float
    payload_bytes: int

    def row(self) -> str:
        rate = self.count / self.seconds
        mbps = self.payload_bytes / self.seconds / 1e6
        ms = self.seconds / self.count * 1000
        return (
            f"{self.name:<34} {self.count:>8} {self.seconds:>9.2f} "
            f"{rate:>10.0f} {mbps:>8.1f} {ms:>9.2f}"
        )


def _bodies(count: int, size: int) -> list[bytes]:
    # Distinct bodies so that nothing is deduplicated; random filler, like compressed PDFs.
    return [
        f"Message-ID: <{i}.{secrets.token_hex(8)}@bench>\r\n\r\n".encode() + os.urandom(size)
        for i in range(count)
    ]


async def _appends(
    store: Store, folder_ids: list[int], bodies: list[bytes], concurrency: int
) -> Result:
    queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
    for i, body in enumerate(bodies):
        queue.put_nowait((folder_ids[i % len(folder_ids)], body))

    async def worker() -> None:
        while not queue.empty():
            folder_id, body = queue.get_nowait()
            async with store.session() as session:
                blob_id = await blobs.put_blob(session, store.cipher, body)
                await messages.append_message(
                    session, folder_id, blob_id, len(body), datetime.now(UTC)
                )
                await session.commit()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return Result(f"append, {concurrency} writer(s)", len(bodies), elapsed, sum(map(len, bodies)))


async def _reads(store: Store, concurrency: int) -> Result:
    async with store.read_session() as session:
        ids = list((await session.scalars(select(BlobRow.id))).all())
    queue: asyncio.Queue[int] = asyncio.Queue()
    for blob_id in ids:
        queue.put_nowait(blob_id)
    total = 0

    async def worker() -> None:
        nonlocal total
        async with store.read_session() as session:
            while not queue.empty():
                data = await blobs.get_blob(session, store.cipher, queue.get_nowait())
                total += len(data)  # not `total += await …`: that reads `total` before awaiting

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Result(
        f"blob read, {concurrency} reader(s)", len(ids), time.perf_counter() - start, total
    )


async def run(kind: str, url: str | None, count: int, size: int, concurrency: int) -> None:
    async with scratch_database(kind, url) as db_url:
        await upgrade(db_url)
        cipher = BlobCipher({"bench": os.urandom(32)}, "bench")
        async with await Store.open(db_url, cipher) as store:
            async with store.session() as session:
                await domains.add_domain(session, "bench.mssante.fr")
                folder_ids = []
                # Several mailboxes so that concurrent writers are not all on one folder row.
                for i in range(max(1, concurrency)):
                    box = await mailboxes.create_mailbox(
                        session, f"b{i}@bench.mssante.fr", MailboxType.PER
                    )
                    folder_ids.append((await folders.get_folder(session, box.id, "INBOX")).id)
                await session.commit()
            bodies = _bodies(count, size)
            results = [
                await _appends(store, folder_ids, bodies, 1),
                await _appends(store, folder_ids, _bodies(count, size), concurrency),
                await _reads(store, 1),
                await _reads(store, concurrency),
            ]
        print(f"database: {mask_url(db_url)}  bodies: {size} bytes  messages: {count}")
        print(
            f"{'workload':<34} {'count':>8} {'seconds':>9} {'msg/s':>10} {'MB/s':>8} {'ms/msg':>9}"
        )
        for result in results:
            print(result.row())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--url", help="SQLite file URL, or PostgreSQL server URL (scratch DB)")
    parser.add_argument("--messages", type=int, default=500, help="messages per append run")
    parser.add_argument("--body-size", type=int, default=50 * 1024, help="bytes per body")
    parser.add_argument(
        "--concurrency", type=int, default=8, help="writers/readers in the parallel runs"
    )
    args = parser.parse_args()
    if args.messages < 1 or args.body_size < 0 or args.concurrency < 1:
        parser.error("--messages and --concurrency must be positive, --body-size not negative")
    asyncio.run(run(args.db, args.url, args.messages, args.body_size, args.concurrency))


if __name__ == "__main__":
    main()
