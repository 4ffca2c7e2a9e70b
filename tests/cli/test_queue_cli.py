"""`mssante queue …` run in-process through `main(argv)` on SQLite and PostgreSQL, over a
queue filled and worked through the `Queue` API as the submission path and the worker do."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mssante.cli import main
from mssante.operator.queue import (
    AttemptOutcome,
    AttemptResult,
    OutboundEnvelope,
    OutboundRecipient,
    Queue,
)
from mssante.operator.store.crypto import BlobCipher
from mssante.operator.store.db import Store

ConfigWriter = Callable[..., Path]


@dataclass
class Cli:
    config: Path
    capsys: pytest.CaptureFixture[str]

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        code = main(["--config", str(self.config), *argv])
        out, err = self.capsys.readouterr()
        return code, out, err

    def ok(self, *argv: str) -> str:
        code, out, err = self(*argv)
        assert code == 0, err
        return out

    def refused(self, *argv: str) -> str:
        code, out, err = self(*argv)
        assert code == 1, (out, err)
        assert err.startswith("mssante: error: ") and err.count("\n") == 1
        return err


@dataclass
class Filled:
    cli: Cli
    first: int  # a@x.test failed (DSN owed), b@y.test delivered
    second: int  # c@x.test deferred
    failed_id: int


async def _fill(store_url: str, cipher: BlobCipher) -> tuple[int, int, int]:
    async with await Store.open(store_url, cipher) as store:
        queue = Queue(store)
        first = await queue.enqueue(
            OutboundEnvelope(
                "dr.a@ours.test",
                (OutboundRecipient("a@x.test"), OutboundRecipient("b@y.test")),
                message_id="<first@ours.test>",
            ),
            b"Subject: first\r\n\r\nSECRET-CONTENT\r\n",
        )
        second = await queue.enqueue(
            OutboundEnvelope("dr.a@ours.test", (OutboundRecipient("c@x.test"),)),
            b"Subject: second\r\n\r\nbody\r\n",
        )
        claim = await queue.claim()
        by_address = {
            r.address: r.id for b in claim.batches for m in b.messages for r in m.recipients
        }
        await queue.record(
            claim.token,
            [
                AttemptResult(
                    by_address["a@x.test"], AttemptOutcome.FAILED, 550, "5.1.1", "no such user"
                ),
                AttemptResult(by_address["b@y.test"], AttemptOutcome.DELIVERED, 250, "2.0.0"),
                AttemptResult(
                    by_address["c@x.test"], AttemptOutcome.DEFERRED, 451, "4.4.1", "peer down"
                ),
            ],
        )
    return first, second, by_address["a@x.test"]


# Synchronous: the CLI runs its own event loop (asyncio.run), as from a shell.
@pytest.fixture
def filled(
    store_url: str,
    write_config: ConfigWriter,
    capsys: pytest.CaptureFixture[str],
    cipher: BlobCipher,
) -> Filled:
    cli = Cli(write_config(database_url=store_url), capsys)
    cli.ok("db", "upgrade")
    return Filled(cli, *asyncio.run(_fill(store_url, cipher)))


def _addresses(out: str) -> list[str]:
    return [line.split()[5] for line in out.splitlines()]


def test_list_with_filters(filled: Filled) -> None:
    cli = filled.cli
    lines = cli.ok("queue", "list").splitlines()
    assert len(lines) == 3
    failed = next(line for line in lines if "a@x.test" in line)
    assert failed.split()[:5] == [str(filled.first), str(filled.failed_id), "failed", "1", "-"]
    assert failed.endswith("a@x.test                                 550 5.1.1 no such user")
    deferred = next(line for line in lines if "c@x.test" in line).split()
    assert datetime.fromisoformat(deferred[4]) > datetime.now(UTC)  # 2026-…T…Z
    assert _addresses(cli.ok("queue", "list", "--state", "deferred")) == ["c@x.test"]
    assert _addresses(cli.ok("queue", "list", "--domain", "X.TEST")) == ["a@x.test", "c@x.test"]
    assert _addresses(cli.ok("queue", "list", "--recipient", "B@Y.test")) == ["b@y.test"]
    assert cli.ok("queue", "list", "--state", "in_flight") == ""
    rows = json.loads(cli.ok("queue", "list", "--json", "--limit", "2"))
    assert [(r["address"], r["state"]) for r in rows] == [
        ("a@x.test", "failed"),
        ("b@y.test", "delivered"),
    ]
    assert rows[0]["dsn_owed"] == "failed" and rows[0]["remote_mta"] is None
    with pytest.raises(SystemExit) as usage:
        cli("queue", "list", "--state", "bogus")
    assert usage.value.code == 2 and "invalid choice" in cli.capsys.readouterr().err


def test_show(filled: Filled) -> None:
    cli = filled.cli
    shown = json.loads(cli.ok("queue", "show", str(filled.first)))
    assert shown["message_id"] == "<first@ours.test>"
    assert shown["envelope_from"] == "dr.a@ours.test"
    assert shown["content_held"] is True  # the failure DSN is still owed
    assert [(r["address"], r["state"]) for r in shown["recipients"]] == [
        ("a@x.test", "failed"),
        ("b@y.test", "delivered"),
    ]
    assert sorted(a["reply"] for a in shown["attempts"]) == [
        "250 2.0.0",
        "550 5.1.1 no such user",
    ]
    assert "SECRET-CONTENT" not in json.dumps(shown)  # never the content
    assert "no queued message 999" in cli.refused("queue", "show", "999")


def test_retry_and_delete(filled: Filled) -> None:
    cli = filled.cli
    assert "select recipients" in cli.refused("queue", "retry")
    assert cli.ok("queue", "retry", "--domain", "x.test") == "1 recipient(s) due now\n"
    (row,) = json.loads(cli.ok("queue", "list", "--json", "--recipient", "c@x.test"))
    assert datetime.fromisoformat(row["next_attempt_at"]) <= datetime.now(UTC)
    assert cli.ok("queue", "retry", "--all") == "1 recipient(s) due now\n"  # only waiting ones
    assert "select recipients" in cli.refused("queue", "delete")
    assert cli.ok("queue", "delete", str(filled.second)) == "1 recipient(s) deleted\n"
    assert "no queued message" in cli.refused("queue", "show", str(filled.second))
    assert _addresses(cli.ok("queue", "list")) == ["a@x.test", "b@y.test"]
    events = [json.loads(line) for line in cli.ok("audit", "--event", "queue.delete").splitlines()]
    assert events[0]["actor"].startswith("cli")
    assert events[0]["details"]["messages"] == [filled.second]
    retried = [json.loads(line) for line in cli.ok("audit", "--event", "queue.retry").splitlines()]
    assert {e["target"] for e in retried} == {"domain x.test", "all"}


def test_purge_expired(filled: Filled, store_url: str, cipher: BlobCipher) -> None:
    cli = filled.cli
    # The first message owes a DSN, the second still waits: nothing is finished.
    assert cli.ok("queue", "purge-expired") == "0 finished message(s) purged\n"

    async def dsn_sent() -> None:
        async with await Store.open(store_url, cipher) as store:
            await Queue(store).dsn_sent([filled.failed_id])

    asyncio.run(dsn_sent())
    assert cli.ok("queue", "purge-expired", "--older-than", "1d") == (
        "0 finished message(s) purged\n"
    )
    assert cli.ok("queue", "purge-expired", "--older-than", "0s") == (
        "1 finished message(s) purged\n"
    )
    assert _addresses(cli.ok("queue", "list")) == ["c@x.test"]
    assert "duration" in cli.refused("queue", "purge-expired", "--older-than", "soon")
    events = [json.loads(x) for x in cli.ok("audit", "--event", "queue.purge").splitlines()]
    assert [e["details"]["ids"] for e in events] == [[filled.first], [], []]  # newest first
