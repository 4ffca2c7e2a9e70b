"""Outbound queue throughput, store side: enqueue, claim and record, on SQLite or PostgreSQL.

- enqueue, 8 concurrent submitters, one transaction per message (`Queue.enqueue`);
- enqueue in groups (`Queue.enqueue_many`, what a submission committer would do);
- claim 100 due recipients and record them delivered (the worker's loop without the network),
  until the queue is drained: every content is then released and its blob deleted.

Messages are distinct (no deduplication), 10 KB by default, one recipient each, spread over
five destination domains.

    .venv/bin/python bench/outbound_queue.py --db sqlite --messages 800
    .venv/bin/python bench/outbound_queue.py --db postgresql \\
        --url postgresql://postgres@127.0.0.1:5432/postgres --messages 800
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from scratch import scratch_database  # bench/scratch.py (the script's own directory)

from mssante.operator.queue import (
    AttemptOutcome,
    AttemptResult,
    OutboundEnvelope,
    OutboundRecipient,
    Queue,
)
from mssante.operator.store.crypto import BlobCipher
from mssante.operator.store.db import Store, mask_url
from mssante.operator.store.migrate import upgrade


def _items(start: int, count: int, size: int) -> list[tuple[OutboundEnvelope, bytes]]:
    return [
        (
            OutboundEnvelope(
                "dr.bench@ours.mssante.fr",
                (OutboundRecipient(f"r{i}@peer{i % 5}.mssante.fr"),),
                message_id=f"<{i}@bench>",
            ),
            f"Message-ID: <{i}@bench>\r\n\r\n".encode() + os.urandom(size),
        )
        for i in range(start, start + count)
    ]


def _line(name: str, count: int, seconds: float) -> str:
    return f"{name:<44} {count:>7} {seconds:>8.2f} s {count / seconds:>8.0f}/s"


async def run(kind: str, url: str | None, messages: int, size: int, group: int) -> None:
    async with scratch_database(kind, url) as db_url:
        await upgrade(db_url)
        async with await Store.open(db_url, BlobCipher({"b": os.urandom(32)}, "b")) as store:
            print(f"database {mask_url(db_url)}, {messages} messages of {size} bytes")
            queue = Queue(store)
            items = _items(0, messages, size)
            gate = asyncio.Semaphore(8)

            async def one(item: tuple[OutboundEnvelope, bytes]) -> None:
                async with gate:
                    await queue.enqueue(*item)

            start = time.perf_counter()
            await asyncio.gather(*(one(item) for item in items))
            print(
                _line("enqueue, 8 submitters, 1 commit each", messages, time.perf_counter() - start)
            )

            items = _items(messages, messages, size)
            start = time.perf_counter()
            for i in range(0, messages, group):
                await queue.enqueue_many(items[i : i + group])
            print(_line(f"enqueue_many, {group} per commit", messages, time.perf_counter() - start))

            start = time.perf_counter()
            total = 0
            while True:
                claim = await queue.claim(100)
                if not claim.batches:
                    break
                await queue.record(
                    claim.token,
                    [
                        AttemptResult(rid, AttemptOutcome.DELIVERED, 250, "2.0.0")
                        for rid in claim.recipient_ids
                    ],
                )
                total += len(claim.recipient_ids)
            print(
                _line(
                    "claim 100 + record delivered (+ release)", total, time.perf_counter() - start
                )
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--url", help="PostgreSQL server (CREATE DATABASE allowed) or SQLite file")
    parser.add_argument("--messages", type=int, default=800)
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--group", type=int, default=16)
    args = parser.parse_args()
    asyncio.run(run(args.db, args.url, args.messages, args.size, args.group))


if __name__ == "__main__":
    main()
