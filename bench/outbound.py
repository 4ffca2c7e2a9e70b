"""Outbound relay end to end: submission on operator A → queue → mutual TLS → INBOX on B.

Starts two real `mssante serve` processes on this machine: A (demo.mssante.test, submission
only) and B (hopital-a.mssante.test, relay only), each with its own database. A signs with
DKIM, checks each recipient against its directory mirror, keeps a Sent copy, queues, and its
worker delivers to B over mutual TLS; B verifies the signature and delivers into INBOXes.
N submitters (authenticated, STARTTLS, pipelined MAIL/RCPT/DATA) each send M messages.

Reported: the submission rate (250s per second), the end-to-end rate (messages in B's
INBOXes per second, from the first submission to the last arrival), the latency from the
start of each submission to its arrival at B (B's INTERNALDATE minus the time the message
carries), and the CPU and peak RSS of both servers.

    .venv/bin/python bench/outbound.py --submitters 8 --messages 250 --size 10240
    .venv/bin/python bench/outbound.py --db postgresql \\
        --url postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import email
import os
import secrets
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import func, select

from mssante import admin
from mssante.config import Settings, load_settings
from mssante.directory import mirror
from mssante.operator.dkim_sign import generate_key, load_signing_key
from mssante.operator.store import blobs
from mssante.operator.store.db import Store
from mssante.operator.store.schema import FolderRow, MessageRow
from mssante.server import open_cipher

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tls-fixtures"
MSSANTE = str(Path(sys.executable).with_name("mssante"))
A_DOMAIN = "demo.mssante.test"  # operator.pem is whitelisted for it
B_DOMAIN = "hopital-a.mssante.test"  # peer-a.pem is whitelisted for it
SENDER = f"bench@{A_DOMAIN}"
PASSWORD = "bench-password-" + secrets.token_hex(8)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scratch_pg(url: str, label: str) -> tuple[str, str]:
    name = f"mssante_outbound_bench_{label}_" + secrets.token_hex(4)
    base = url.replace("postgresql+asyncpg://", "postgresql://")
    subprocess.run(["psql", base, "-qc", f"CREATE DATABASE {name}"], check=True)
    return base.rsplit("/", 1)[0] + "/" + name, name


def _config(
    workdir: Path,
    name: str,
    database: str,
    cert: str,
    domain: str,
    listeners: str,
    extra: str,
) -> Path:
    directory = workdir / name
    directory.mkdir()
    config = directory / "mssante.toml"
    config.write_text(f"""
[operator]
hostname = "mx.{domain}"
data_dir = "{directory / "data"}"
[database]
url = "{database}"
[pki]
trust_anchors = "{FIXTURES / "ca-bundle.pem"}"
certificate = "{FIXTURES / f"{cert}.pem"}"
private_key = "{FIXTURES / f"{cert}.key"}"
[storage.keys]
k1 = "{secrets.token_hex(32)}"
[logging]
level = "warning"
[metrics]
enabled = false
[imap]
enabled = false
{listeners}
[whitelist]
source = "{FIXTURES / "whitelist.xml"}"
{extra}
""")
    return config


async def _provision(a: Settings, b: Settings, submitters: int) -> None:
    for settings in (a, b):
        await admin.db_upgrade(settings)
    async with admin.open_admin(a, actor="bench") as ops:
        await ops.add_domain(A_DOMAIN)
        await ops.add_mailbox(
            SENDER, "PER", national_id="810001234567", password=PASSWORD, state="active"
        )
        entries = [mirror.Entry(f"box{i}@{B_DOMAIN}", "ORG") for i in range(submitters)]
        await mirror.add_entries(ops.store, entries)
    async with admin.open_admin(b, actor="bench") as ops:
        await ops.add_domain(B_DOMAIN)
        for i in range(submitters):
            await ops.add_mailbox(f"box{i}@{B_DOMAIN}", "ORG", state="active")


async def _reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        if line[3:4] != b"-":
            return line


def _message(index: int, n: int, size: int) -> bytes:
    head = (
        f"From: {SENDER}\r\nTo: box{index}@{B_DOMAIN}\r\nSubject: bench {index}.{n}\r\n"
        f"Message-ID: <{index}.{n}.{secrets.token_hex(6)}@bench>\r\n"
        f"X-Bench-Sent: {time.time():.6f}\r\n\r\n"
    ).encode()
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


async def _submitter(port: int, index: int, messages: int, size: int, acks: list[float]) -> None:
    context = ssl.create_default_context(cafile=str(FIXTURES / "ca-bundle.pem"))
    context.check_hostname = False
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await _reply(reader)
    writer.write(b"EHLO bench.client\r\n")
    await _reply(reader)
    writer.write(b"STARTTLS\r\n")
    assert (await _reply(reader)).startswith(b"220")
    await writer.start_tls(context)
    writer.write(b"EHLO bench.client\r\n")
    await _reply(reader)
    token = base64.b64encode(f"\0{SENDER}\0{PASSWORD}".encode()).decode()
    writer.write(f"AUTH PLAIN {token}\r\n".encode())
    if not (got := await _reply(reader)).startswith(b"235"):
        raise RuntimeError(f"AUTH refused: {got!r}")
    rcpt = f"box{index}@{B_DOMAIN}".encode()
    for n in range(messages):
        body = _message(index, n, size)
        began = time.perf_counter()
        writer.write(b"MAIL FROM:<" + SENDER.encode() + b">\r\nRCPT TO:<" + rcpt + b">\r\nDATA\r\n")
        for expected in (b"250", b"250", b"354"):
            if not (got := await _reply(reader)).startswith(expected):
                raise RuntimeError(f"unexpected reply {got!r}")
        writer.write(body + b".\r\n")
        if not (got := await _reply(reader)).startswith(b"250"):
            raise RuntimeError(f"message refused: {got!r}")
        acks.append(time.perf_counter() - began)
    writer.write(b"QUIT\r\n")
    await _reply(reader)
    writer.close()


async def _arrived(store: Store) -> int:
    async with store.read_session() as session:
        found = await session.scalar(
            select(func.count(MessageRow.id))
            .join(FolderRow, MessageRow.folder_id == FolderRow.id)
            .where(FolderRow.name == "INBOX")
        )
    return int(found or 0)


async def _latencies(store: Store) -> tuple[list[float], float]:
    """Per message: arrival at B minus the submission start it carries; and the last arrival."""
    out: list[float] = []
    last = 0.0
    async with store.read_session() as session:
        rows = (
            await session.execute(
                select(MessageRow.internal_date, MessageRow.blob_id)
                .join(FolderRow, MessageRow.folder_id == FolderRow.id)
                .where(FolderRow.name == "INBOX")
            )
        ).all()
        for arrived_at, blob_id in rows:
            data = await blobs.get_blob(session, store.cipher, blob_id)
            sent = float(email.message_from_bytes(data)["X-Bench-Sent"])
            out.append(arrived_at.timestamp() - sent)
            last = max(last, arrived_at.timestamp())
    return out, last


async def _run(
    b_settings: Settings, port: int, submitters: int, messages: int, size: int
) -> tuple[float, float, list[float], list[float], float]:
    store = await Store.open(b_settings.database_url, open_cipher(b_settings))
    try:
        acks: list[float] = []
        started_wall = time.time()
        began = time.perf_counter()
        await asyncio.gather(
            *(_submitter(port, i, messages, size, acks) for i in range(submitters))
        )
        submitted = time.perf_counter() - began
        total = submitters * messages
        deadline = time.monotonic() + 600
        while await _arrived(store) < total:
            if time.monotonic() > deadline:
                raise SystemExit("not every message arrived within 10 minutes")
            await asyncio.sleep(0.1)
        latencies, last = await _latencies(store)
    finally:
        await store.close()
    return submitted, last - started_wall, acks, latencies, started_wall


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("a server did not start") from None
            time.sleep(0.05)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--url", help="PostgreSQL server URL (scratch databases are created)")
    parser.add_argument("--submitters", type=int, default=8)
    parser.add_argument("--messages", type=int, default=250, help="per submitter")
    parser.add_argument("--size", type=int, default=10240, help="message size in bytes")
    parser.add_argument("--workers", type=int, default=4, help="A's [queue] workers")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="mssante-outbound-bench-"))
    scratch: list[str] = []
    servers: list[subprocess.Popen[bytes]] = []
    try:
        if args.db == "postgresql":
            if not args.url:
                parser.error("--db postgresql needs --url")
            a_url, a_name = _scratch_pg(args.url, "a")
            b_url, b_name = _scratch_pg(args.url, "b")
            scratch += [a_name, b_name]
        else:
            a_url = f"sqlite:///{workdir / 'a.db'}"
            b_url = f"sqlite:///{workdir / 'b.db'}"
        a_sub, b_relay = _free_port(), _free_port()
        key = workdir / "dkim.key"
        generate_key(key)
        record = load_signing_key(key).public_record
        a_config = _config(
            workdir,
            "a",
            a_url,
            "operator",
            A_DOMAIN,
            f"""[relay]
enabled = false
[submission]
listen = "127.0.0.1:{a_sub}"
implicit_tls_listen = ""
max_connections_per_ip = 100
max_commands = 100000""",
            f"""[queue]
workers = {args.workers}
[outbound.routes]
"{B_DOMAIN}" = "127.0.0.1:{b_relay}"
[dkim]
private_key = "{key}"
selector = "bench"
domains = ["{A_DOMAIN}"]""",
        )
        b_config = _config(
            workdir,
            "b",
            b_url,
            "peer-a",
            B_DOMAIN,
            f"""[relay]
listen = "127.0.0.1:{b_relay}"
implicit_tls_listen = ""
max_connections_per_peer = 100
max_commands = 100000
[submission]
enabled = false""",
            f"""[dkim.static_keys]
"bench._domainkey.{A_DOMAIN}" = "{record}\"""",
        )
        a_settings, b_settings = load_settings(a_config), load_settings(b_config)
        asyncio.run(_provision(a_settings, b_settings, args.submitters))
        for config in (a_config, b_config):
            servers.append(
                subprocess.Popen(
                    [MSSANTE, "--config", str(config), "serve"], stderr=subprocess.DEVNULL
                )
            )
        _wait_port(a_sub, servers[0])
        _wait_port(b_relay, servers[1])
        cpu_before = [_cpu_seconds(s.pid) for s in servers]
        submitted, end_to_end, acks, latencies, _ = asyncio.run(
            _run(b_settings, a_sub, args.submitters, args.messages, args.size)
        )
        cpu = [_cpu_seconds(s.pid) - before for s, before in zip(servers, cpu_before, strict=True)]
        rss = [_peak_rss_mb(s.pid) for s in servers]
    finally:
        for server in servers:
            server.send_signal(signal.SIGTERM)
        for server in servers:
            server.wait(timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)
        for name in scratch:
            base = (args.url or "").replace("postgresql+asyncpg://", "postgresql://")
            subprocess.run(["psql", base, "-qc", f"DROP DATABASE IF EXISTS {name}"], check=False)
    total = len(acks)
    print(
        f"database: {args.db}  submitters: {args.submitters}  messages: {total}  "
        f"size: {args.size} B"
    )
    print(f"submission  {total / submitted:8.0f} msg/s   ({submitted:.2f} s to the last 250)")
    print(f"end to end  {total / end_to_end:8.0f} msg/s   ({end_to_end:.2f} s to the last arrival)")
    print(
        f"submission 250   p50 {statistics.median(acks) * 1000:7.1f} ms   "
        f"p99 {_pct(acks, 0.99) * 1000:7.1f} ms"
    )
    print(
        f"arrival at B     p50 {statistics.median(latencies) * 1000:7.1f} ms   "
        f"p99 {_pct(latencies, 0.99) * 1000:7.1f} ms"
    )
    for name, used, peak in zip(("A (submission)", "B (relay)"), cpu, rss, strict=True):
        print(
            f"{name:<15} CPU {used:7.2f} s ({used / end_to_end * 100:.0f}% of one core)   "
            f"peak RSS {peak:.0f} MB"
        )


if __name__ == "__main__":
    main()
