"""IMAP server: a realistic mailbox read, searched and written over real TLS.

Builds a mailbox of N messages (default 10,000) straight through the store API (the same
seal / blob / structure / append steps as IMAP APPEND, in batches), with varied headers and
sizes: plain text in quoted-printable, multipart/alternative text + HTML (base64), French
subjects as RFC 2047 encoded-words, and ~20 % with a 50-500 KB PDF-like attachment. Then
starts a real `mssante serve` (IMAP only) in its own process and measures, with a lean
asyncio client over implicit TLS:

- `FETCH 1:* (UID FLAGS ENVELOPE BODYSTRUCTURE)` wall time;
- `UID FETCH n BODY.PEEK[]` of random messages, one after the other: msg/s and MB/s;
- `SEARCH` on a header, on flags and on body text (a `NO` answer is reported as
  unsupported);
- APPEND rate: one at a time, pipelined (LITERAL+) on one connection, and over several
  connections;
- the server's RSS per idle connection: C connections logged in, INBOX selected, IDLE.

    .venv/bin/python bench/imap.py --db sqlite
    .venv/bin/python bench/imap.py --db postgresql \\
        --url postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import quopri
import random
import re
import resource
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from email.header import Header
from pathlib import Path

from mssante.config import load_settings
from mssante.operator.imap.session import seal_message
from mssante.operator.passwords import hash_async
from mssante.operator.store import blobmeta, blobs, domains, mailboxes
from mssante.operator.store import folders as store_folders
from mssante.operator.store import messages as store_messages
from mssante.operator.store.crypto import BlobCipher, SealedBlob, SealedRecord
from mssante.operator.store.db import Store
from mssante.operator.store.migrate import upgrade
from mssante.operator.store.schema import MailboxType, utcnow
from mssante.server import open_cipher

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tls-fixtures"
MSSANTE = str(Path(sys.executable).with_name("mssante"))
DOMAIN = "bench.mssante.test"
WARM_UP_CONNECTIONS = 64
PIPELINE = 16  # APPENDs in flight in the pipelined measure
USER = f"lecteur@{DOMAIN}"
PASSWORD = "bench-password-1234"

FIRST = ("Jean", "Amélie", "François", "Hélène", "Loïc", "Zoé", "Noël", "Cécile", "Gaëlle")
LAST = ("Martin", "Lefèvre", "Dubois", "Moreau", "Girard", "Mercier", "Bérard", "Rousseau")
SUBJECTS = (
    "Compte rendu d'hospitalisation",
    "Résultats d'analyses biologiques",
    "Lettre de liaison – sortie",
    "Demande d'avis spécialisé",
    "Ordonnance renouvelée",
    "Réunion de concertation pluridisciplinaire",
    "Échographie abdominale",
    "Suivi post-opératoire",
)
WORDS = [
    "patient",
    "tension",
    "artérielle",
    "traitement",
    "bilan",
    "contrôle",
    "prescription",
    "examen",
    "douleur",
    "surveillance",
    "hémoglobine",
    "créatinine",
    "antécédents",
    "allergie",
    "pansement",
    "rendez-vous",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _text(rng: random.Random, lines: int) -> str:
    return "\n".join(
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) for _ in range(lines)
    )


def _qp(text: str) -> bytes:
    return quopri.encodestring(text.replace("\n", "\r\n").encode()).replace(b"\n", b"\r\n")


def _b64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def message(rng: random.Random, n: int) -> bytes:
    """One realistic message; its subject names `dossier-<n>` (for SEARCH SUBJECT)."""
    first, last = rng.choice(FIRST), rng.choice(LAST)
    sender = f"{first} {last}"
    subject = f"{rng.choice(SUBJECTS)} dossier-{n}"
    headers = [
        f"From: {Header(sender, 'utf-8').encode()} <{last.lower()}@hopital-{n % 7}.mssante.fr>",
        f"To: Lecteur <{USER}>",
        f"Subject: {Header(subject, 'utf-8').encode()}",
        f"Date: Mon, {1 + n % 28:02d} Sep 2025 {n % 24:02d}:{n % 60:02d}:00 +0200",
        f"Message-ID: <{n}.{secrets.token_hex(4)}@hopital-{n % 7}.mssante.fr>",
        "MIME-Version: 1.0",
    ]
    if rng.random() < 0.3:
        headers.append(f"Cc: {rng.choice(FIRST)} <secretariat@hopital-{n % 5}.mssante.fr>")
    text = _text(rng, rng.randint(3, 60))
    plain = (
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + _qp(text)
    )
    kind = rng.random()
    if kind < 0.5 and rng.random() < 0.8:
        head = "\r\n".join(headers).encode() + b"\r\n"
        return head + plain
    html = "<html><body><p>" + text.replace("\n", "</p><p>") + "</p></body></html>"
    alternative = (
        b'Content-Type: multipart/alternative; boundary="alt"\r\n\r\n'
        b"--alt\r\n" + plain + b"\r\n--alt\r\n"
        b"Content-Type: text/html; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + _b64(html.encode()) + b"--alt--\r\n"
    )
    if rng.random() < 0.2 / 0.6:  # ~20 % of all messages carry an attachment
        size = rng.randint(50_000, 500_000)
        pdf = b"%PDF-1.4\n" + rng.randbytes(size)
        body = (
            b'Content-Type: multipart/mixed; boundary="mix"\r\n\r\n'
            b"--mix\r\n" + alternative + b"\r\n--mix\r\n"
            b'Content-Type: application/pdf; name="cr.pdf"\r\n'
            b'Content-Disposition: attachment; filename="cr.pdf"\r\n'
            b"Content-Transfer-Encoding: base64\r\n\r\n" + _b64(pdf) + b"--mix--\r\n"
        )
    else:
        body = alternative
    return "\r\n".join(headers).encode() + b"\r\n" + body


def _flags(rng: random.Random) -> tuple[str, ...]:
    flags = [] if rng.random() < 0.3 else ["\\Seen"]
    if rng.random() < 0.1:
        flags.append("\\Flagged")
    return tuple(flags)


def _seal_all(cipher: BlobCipher, datas: list[bytes]) -> list[tuple[SealedBlob, SealedRecord]]:
    return [seal_message(cipher, m) for m in datas]


async def build(url: str, config: Path, count: int, seed: int) -> tuple[float, int]:
    """Create the mailbox and its `count` messages; (seconds, bytes stored)."""
    settings = load_settings(config)
    await upgrade(url)
    store = await Store.open(url, open_cipher(settings))
    cipher = store.cipher
    total = 0
    began = time.perf_counter()
    try:
        async with store.session() as session:
            await domains.add_domain(session, DOMAIN)
            await mailboxes.create_mailbox(
                session, USER, MailboxType.PER, password_hash=await hash_async(PASSWORD)
            )
            await session.commit()
        async with store.read_session() as session:
            box = await mailboxes.get_mailbox(session, USER)
            inbox = await store_folders.get_folder(session, box.id, "INBOX")
        rng = random.Random(seed)
        batch = 200
        for start in range(0, count, batch):
            datas = [message(rng, n) for n in range(start, min(count, start + batch))]
            flags = [_flags(rng) for _ in datas]
            sealed = await asyncio.to_thread(_seal_all, cipher, datas)
            async with store.session() as session:
                stored = await blobs.put_sealed_blobs(
                    session, [(b, len(d)) for (b, _), d in zip(sealed, datas, strict=True)]
                )
                await blobmeta.add_new_blob_meta(
                    session, [(stored.ids[b.digest], meta) for b, meta in sealed]
                )
                await store_messages.append_messages(
                    session,
                    [
                        store_messages.NewMessage(
                            folder_id=inbox.id,
                            blob_id=stored.ids[b.digest],
                            size=len(d),
                            internal_date=utcnow(),
                            flags=f,
                        )
                        for (b, _), d, f in zip(sealed, datas, flags, strict=True)
                    ],
                )
                await session.commit()
            total += sum(len(d) for d in datas)
    finally:
        await store.close()
    return time.perf_counter() - began, total


# --- a lean client ----------------------------------------------------------------------------

_LITERAL = re.compile(rb"\{(\d+)\}\r\n$")


@dataclass
class Client:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    tags: int = 0

    @classmethod
    async def open(cls, port: int, context: ssl.SSLContext, login: bool = True) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        client = cls(reader, writer)
        await client.line()
        if login:
            status, _, _ = await client.command(f'LOGIN {USER} "{PASSWORD}"')
            if status != "OK":
                raise RuntimeError("login refused")
        return client

    async def line(self) -> bytes:
        return await self.reader.readuntil(b"\r\n")

    async def command(self, text: str | bytes) -> tuple[str, int, bytes]:
        """(status, literal bytes received, tagged line)."""
        self.tags += 1
        tag = b"b%d" % self.tags
        raw = text.encode() if isinstance(text, str) else text
        self.writer.write(tag + b" " + raw + b"\r\n")
        received = 0
        while True:
            line = await self.line()
            if line.startswith(tag + b" "):
                return line.split(b" ", 2)[1].decode(), received, line
            if line.startswith(b"+ "):
                continue
            size = _LITERAL.search(line)
            if size:
                received += int(size.group(1))
                await self.reader.readexactly(int(size.group(1)))

    async def append(self, folder: str, data: bytes) -> None:
        self.tags += 1
        tag = b"b%d" % self.tags
        self.writer.write(tag + f' APPEND "{folder}" {{{len(data)}}}\r\n'.encode())
        line = await self.line()
        if not line.startswith(b"+"):
            raise RuntimeError(f"APPEND refused: {line!r}")
        self.writer.write(data + b"\r\n")
        while not (line := await self.line()).startswith(tag + b" "):
            pass
        if not line.startswith(tag + b" OK"):
            raise RuntimeError(f"APPEND refused: {line!r}")

    async def append_many(self, folder: str, datas: list[bytes]) -> None:
        """APPENDs sent at once with LITERAL+ (rfc/7888), then their answers awaited."""
        tags = []
        for data in datas:
            self.tags += 1
            tag = b"b%d" % self.tags
            tags.append(tag)
            self.writer.write(tag + f' APPEND "{folder}" {{{len(data)}+}}\r\n'.encode())
            self.writer.write(data + b"\r\n")
        waiting = set(tags)
        while waiting:
            line = await self.line()
            tag = line.split(b" ", 1)[0]
            if tag in waiting:
                if not line.startswith(tag + b" OK"):
                    raise RuntimeError(f"APPEND refused: {line!r}")
                waiting.discard(tag)

    def close(self) -> None:
        self.writer.close()


def _context() -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(FIXTURES / "ca-bundle.pem"))
    context.check_hostname = False
    return context


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class _Report(list[str]):
    """Results, printed as they come (a long run keeps what it measured)."""

    def append(self, line: str) -> None:
        print(line, flush=True)
        super().append(line)


async def measure(port: int, pid: int, args: argparse.Namespace, count: int) -> list[str]:
    out = _Report()
    context = _context()
    client = await Client.open(port, context)
    await client.command("SELECT INBOX")

    began = time.perf_counter()
    status, _, _ = await client.command("FETCH 1:* (UID FLAGS ENVELOPE BODYSTRUCTURE)")
    elapsed = time.perf_counter() - began
    out.append(f"header FETCH of {count}: {elapsed:.2f} s (answer {status}; target < 1 s)")

    rng = random.Random(7)
    wanted = [rng.randint(1, count) for _ in range(args.bodies)]
    received = 0
    began = time.perf_counter()
    for uid in wanted:
        _, got, _ = await client.command(f"UID FETCH {uid} BODY.PEEK[]")
        received += got
    elapsed = time.perf_counter() - began
    out.append(
        f"UID FETCH BODY.PEEK[] of {len(wanted)} random: {len(wanted) / elapsed:.0f} msg/s, "
        f"{received / elapsed / 1e6:.1f} MB/s"
    )

    for label, search in (
        ("SEARCH SUBJECT (one hit)", f'SEARCH SUBJECT "dossier-{count // 2}"'),
        ("SEARCH FROM", 'SEARCH FROM "martin"'),
        ("SEARCH UNSEEN FLAGGED", "SEARCH UNSEEN FLAGGED"),
        ("SEARCH BODY", 'SEARCH BODY "créatinine"'),
    ):
        command = search.encode()
        if not search.isascii():
            command = f"SEARCH CHARSET UTF-8 BODY {{{len('créatinine'.encode())}+}}\r\n".encode()
            command += "créatinine".encode()
        began = time.perf_counter()
        status, _, line = await client.command(command)
        elapsed = time.perf_counter() - began
        if status == "OK":
            out.append(f"{label}: {elapsed * 1000:.0f} ms (target < 100 ms for headers)")
        else:
            out.append(f"{label}: unsupported ({line.decode().strip()})")
    await client.command('CREATE "Bench"')

    data = message(random.Random(1), 10**6)[:8000] + b"\r\n"
    began = time.perf_counter()
    for _ in range(args.appends):
        await client.append("Bench", data)
    elapsed = time.perf_counter() - began
    out.append(f"APPEND sequential: {args.appends / elapsed:.0f} msg/s ({len(data)} B)")

    # Pipelined as mbsync does: PIPELINE APPENDs with non-synchronising literals in flight
    # (LITERAL-, rfc/7888: at most 4,096 octets each), the next group sent once the previous
    # one is answered.
    small = data[:4000] + b"\r\n"
    began = time.perf_counter()
    for _ in range(0, args.appends, PIPELINE):
        await client.append_many("Bench", [small] * PIPELINE)
    elapsed = time.perf_counter() - began
    sent = (args.appends + PIPELINE - 1) // PIPELINE * PIPELINE
    out.append(
        f"APPEND pipelined ({PIPELINE} in flight, 1 connection): {sent / elapsed:.0f} msg/s "
        f"({len(small)} B)"
    )
    client.close()

    writers = [await Client.open(port, context) for _ in range(args.append_connections)]
    per = max(1, args.appends // args.append_connections)

    async def run(c: Client) -> None:
        for _ in range(per):
            await c.append("Bench", data)

    began = time.perf_counter()
    await asyncio.gather(*(run(c) for c in writers))
    elapsed = time.perf_counter() - began
    out.append(
        f"APPEND with {args.append_connections} connections: "
        f"{per * len(writers) / elapsed:.0f} msg/s (target >= 500)"
    )
    for c in writers:
        c.close()

    # Warm-up: the first logins grow the server's fixed costs (argon2's 64 MiB working memory
    # in each worker thread's malloc arena, pools, caches); measured after them, the delta is
    # what each idle connection costs.
    warm = [await Client.open(port, context) for _ in range(WARM_UP_CONNECTIONS)]
    for c in warm:
        c.close()
    await asyncio.sleep(1)
    before = _rss_kb(pid)
    idle: list[Client] = []
    semaphore = asyncio.Semaphore(32)

    failed: list[str] = []

    async def idler() -> None:
        async with semaphore:
            try:
                c = await Client.open(port, context)
                await c.command("SELECT INBOX")
                c.writer.write(b"i IDLE\r\n")
                if not (await c.line()).startswith(b"+"):
                    raise RuntimeError("IDLE refused")
            except (OSError, RuntimeError, asyncio.IncompleteReadError) as exc:
                failed.append(type(exc).__name__)
                return
            idle.append(c)

    await asyncio.gather(*(idler() for _ in range(args.idle_connections)))
    await asyncio.sleep(3)
    after = _rss_kb(pid)
    alive = 0
    for c in idle:  # every session still answers after the wait
        c.writer.write(b"DONE\r\n")
    for c in idle:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            if (await c.line()).startswith(b"i OK"):
                alive += 1
    out.append(
        f"idle connections: {len(idle)} opened ({len(failed)} failed), {alive} still answering; "
        f"server RSS {before / 1024:.0f} → {after / 1024:.0f} MB, "
        f"{(after - before) / max(1, len(idle)):.1f} KB each (target <= 30 KB)"
    )
    for c in idle:
        c.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--url", help="PostgreSQL server URL (a scratch database is created)")
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--bodies", type=int, default=1000, help="random full-body fetches")
    parser.add_argument("--appends", type=int, default=1000)
    parser.add_argument("--append-connections", type=int, default=8)
    parser.add_argument("--idle-connections", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 2 * args.idle_connections + 1024)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))  # the server inherits it
    workdir = Path(tempfile.mkdtemp(prefix="mssante-imap-bench-"))
    pg_name = None
    if args.db == "postgresql":
        if not args.url:
            parser.error("--db postgresql needs --url")
        pg_name = "mssante_imap_bench_" + secrets.token_hex(4)
        base = args.url.replace("postgresql+asyncpg://", "postgresql://")
        subprocess.run(["psql", base, "-qc", f"CREATE DATABASE {pg_name}"], check=True)
        url = base.rsplit("/", 1)[0] + "/" + pg_name
    else:
        url = f"sqlite:///{workdir / 'imap.db'}"
    port = _free_port()
    config = workdir / "mssante.toml"
    limit = args.idle_connections + 100
    config.write_text(f"""
[operator]
hostname = "imap.bench.mssante.test"
data_dir = "{workdir / "data"}"
[database]
url = "{url}"
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
enabled = false
[submission]
enabled = false
[dkim]
verify = false
[imap]
enabled = true
listen = "127.0.0.1:{_free_port()}"
implicit_tls_listen = "127.0.0.1:{port}"
max_connections = {limit}
max_connections_per_ip = {limit}
""")
    server: subprocess.Popen[bytes] | None = None
    try:
        seconds, size = asyncio.run(build(url, config, args.messages, args.seed))
        print(
            f"database: {args.db}  built {args.messages} messages, {size / 1e6:.0f} MB, "
            f"in {seconds:.0f} s ({args.messages / seconds:.0f} msg/s)",
            flush=True,
        )
        server = subprocess.Popen([MSSANTE, "--config", str(config), "serve"])
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("server did not start") from None
                time.sleep(0.1)
        asyncio.run(measure(port, server.pid, args, args.messages))
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=120)
        shutil.rmtree(workdir, ignore_errors=True)
        if pg_name and args.url:
            base = args.url.replace("postgresql+asyncpg://", "postgresql://")
            subprocess.run(["psql", base, "-qc", f"DROP DATABASE IF EXISTS {pg_name}"], check=False)


if __name__ == "__main__":
    main()
