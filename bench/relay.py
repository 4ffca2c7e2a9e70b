"""Relay throughput: N peer connections over mutual TLS, each sending M messages of S bytes.

Starts a real `mssante serve` (relay only) on a scratch database, delivers to real mailboxes
with durable commits, and reports messages/s, p50/p99 time per message (MAIL to the final
250), the server's CPU time and peak RSS.

    .venv/bin/python bench/relay.py --db sqlite --connections 8 --messages 500 --size 10240
    .venv/bin/python bench/relay.py --db postgresql \\
        --url postgresql://postgres@127.0.0.1:5432/postgres --connections 8 --messages 500

The client is a lean pipelining SMTP client (RFC 2920: MAIL, RCPT and DATA in one write) so
that it costs the shared 2 cores as little as possible.
"""

from __future__ import annotations

import argparse
import asyncio
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

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tls-fixtures"
MSSANTE = str(Path(sys.executable).with_name("mssante"))
DOMAIN = "bench.mssante.test"
SENDER = "bench@hopital-a.mssante.test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(config: Path, *argv: str) -> None:
    subprocess.run(
        [MSSANTE, "--config", str(config), *argv], check=True, capture_output=True, text=True
    )


def _scratch_pg(url: str) -> tuple[str, str]:
    """A fresh database on the server at `url`; returns (its URL, its name)."""
    name = "mssante_relay_bench_" + secrets.token_hex(4)
    base = url.replace("postgresql+asyncpg://", "postgresql://")
    subprocess.run(["psql", base, "-qc", f"CREATE DATABASE {name}"], check=True)
    return base.rsplit("/", 1)[0] + "/" + name, name


def _setup(workdir: Path, db: str, url: str | None, port: int, boxes: int) -> Path:
    database = f"sqlite:///{workdir / 'relay.db'}" if db == "sqlite" else url
    config = workdir / "mssante.toml"
    config.write_text(f"""
[operator]
hostname = "mx.bench.mssante.test"
data_dir = "{workdir / "data"}"
[database]
url = "{database}"
[pki]
trust_anchors = "{FIXTURES / "ca-bundle.pem"}"
certificate = "{FIXTURES / "operator.pem"}"
private_key = "{FIXTURES / "operator.key"}"
[storage.keys]
k1 = "{bytes(range(32)).hex()}"
[logging]
level = "warning"
[metrics]
enabled = false
[relay]
listen = "127.0.0.1:{port}"
max_connections_per_peer = 100
max_commands = 100000
[whitelist]
source = "{FIXTURES / "whitelist.xml"}"
""")
    _cli(config, "db", "upgrade")
    _cli(config, "domain", "add", DOMAIN)
    for i in range(boxes):
        _cli(config, "mailbox", "add", f"box{i}@{DOMAIN}", "--type", "APP")
    return config


async def _reply(reader: asyncio.StreamReader) -> bytes:
    """One (possibly multi-line) SMTP reply; its last line."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        if line[3:4] != b"-":
            return line


def _body(size: int, n: int) -> bytes:
    head = (
        f"From: {SENDER}\r\nTo: box@{DOMAIN}\r\nSubject: bench {n}\r\n"
        f"Message-ID: <{n}.{secrets.token_hex(6)}@bench>\r\n\r\n"
    ).encode()
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


async def _connection(port: int, index: int, messages: int, size: int, times: list[float]) -> None:
    context = ssl.create_default_context(cafile=str(FIXTURES / "ca-bundle.pem"))
    context.check_hostname = False
    context.load_cert_chain(FIXTURES / "peer-a.pem", FIXTURES / "peer-a.key")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await _reply(reader)
    writer.write(b"EHLO bench.client\r\n")
    await _reply(reader)
    writer.write(b"STARTTLS\r\n")
    assert (await _reply(reader)).startswith(b"220")
    await writer.start_tls(context)
    writer.write(b"EHLO bench.client\r\n")
    await _reply(reader)
    rcpt = f"box{index}@{DOMAIN}".encode()
    for n in range(messages):
        body = _body(size, n)
        began = time.perf_counter()
        writer.write(b"MAIL FROM:<" + SENDER.encode() + b">\r\nRCPT TO:<" + rcpt + b">\r\nDATA\r\n")
        for expected in (b"250", b"250", b"354"):
            got = await _reply(reader)
            if not got.startswith(expected):
                raise RuntimeError(f"unexpected reply {got!r}")
        writer.write(body + b".\r\n")
        got = await _reply(reader)
        if not got.startswith(b"250"):
            raise RuntimeError(f"message refused: {got!r}")
        times.append(time.perf_counter() - began)
    writer.write(b"QUIT\r\n")
    await _reply(reader)
    writer.close()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _run(port: int, connections: int, messages: int, size: int) -> tuple[float, list[float]]:
    times: list[float] = []
    began = time.perf_counter()
    await asyncio.gather(*(_connection(port, i, messages, size, times) for i in range(connections)))
    return time.perf_counter() - began, times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--url", help="PostgreSQL server URL (a scratch database is created)")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--messages", type=int, default=500, help="per connection")
    parser.add_argument("--size", type=int, default=10240, help="message size in bytes")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="mssante-relay-bench-"))
    pg_name = None
    url = None
    if args.db == "postgresql":
        if not args.url:
            parser.error("--db postgresql needs --url")
        url, pg_name = _scratch_pg(args.url)
    port = _free_port()
    server: subprocess.Popen[bytes] | None = None
    try:
        config = _setup(workdir, args.db, url, port, args.connections)
        server = subprocess.Popen(
            [MSSANTE, "--config", str(config), "serve"], stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("server did not start") from None
                time.sleep(0.05)
        cpu_before = _cpu_seconds(server.pid)
        elapsed, times = asyncio.run(_run(port, args.connections, args.messages, args.size))
        cpu = _cpu_seconds(server.pid) - cpu_before
        rss = _peak_rss_mb(server.pid)
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)
        if pg_name and args.url:
            base = args.url.replace("postgresql+asyncpg://", "postgresql://")
            subprocess.run(["psql", base, "-qc", f"DROP DATABASE IF EXISTS {pg_name}"], check=False)
    total = len(times)
    times.sort()
    p99 = times[min(total - 1, int(total * 0.99))]
    print(
        f"database: {args.db}  connections: {args.connections}  messages: {total}  "
        f"size: {args.size} B"
    )
    print(f"throughput  {total / elapsed:8.0f} msg/s   ({elapsed:.2f} s)")
    print(f"per message p50 {statistics.median(times) * 1000:6.1f} ms   p99 {p99 * 1000:6.1f} ms")
    print(
        f"server CPU  {cpu:8.2f} s  ({cpu / elapsed * 100:.0f}% of one core)   "
        f"peak RSS {rss:.0f} MB"
    )


if __name__ == "__main__":
    main()
