"""Outbound relay end to end: two real operators, each started whole (`server.start`), each
with its own database, certificate of the test PKI, DKIM key and directory mirror. A
professional submits on one; the queue's worker delivers to the other over mutual TLS; DSNs
come back into the sender's INBOX. The retry schedule is shortened in the configuration (the
code is the production code); waits are bounded polls, never timing assertions."""

from __future__ import annotations

import asyncio
import contextlib
import email
import functools
import imaplib
import json
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.policy import SMTP
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import func, select

from mssante.admin import Admin
from mssante.config import Settings, load_settings
from mssante.directory import mirror
from mssante.operator.dkim_sign import generate_key, load_signing_key
from mssante.operator.passwords import hash_password
from mssante.operator.queue import Queue, RecipientView, Selection
from mssante.operator.store import audit, blobs, domains, mailboxes
from mssante.operator.store.db import Store
from mssante.operator.store.migrate import upgrade
from mssante.operator.store.schema import FolderRow, MessageRow, QueueRecipientRow, QueueState
from mssante.server import Running, open_cipher, start, stop

FIXTURES = Path(__file__).parents[2] / "tls-fixtures"
CRLS = [str(FIXTURES / f"{ca}.crl.pem") for ca in ("root-ca", "org-ca", "pro-ca")]
PASSWORD = "correct horse battery staple"
DEMO = "demo.mssante.test"  # operator.pem is whitelisted for it
HOPITAL_A = "hopital-a.mssante.test"  # peer-a.pem is whitelisted for it
JEAN = f"jean.dupont@{DEMO}"
HOUSE = f"dr.house@{HOPITAL_A}"
PRO1_NATIONAL_ID = "810001234567"  # in pro-1.pem: Jean Dupont's client certificate
T = TypeVar("T")
# Seconds: retries come quickly here; the production defaults are docs/configuration.md's.
FAST_QUEUE = """
poll_seconds = 0.2
retry_delays_seconds = [0.3]
retry_every_seconds = 0.3
retry_jitter = 0.0
lease_seconds = 2.0
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@functools.cache
def _password_hash() -> str:
    return hash_password(PASSWORD)


@dataclass
class Operator:
    """One operator, started; its listeners on loopback."""

    running: Running
    domain: str
    relay_port: int
    submission_port: int

    @property
    def queue(self) -> Queue:
        assert self.running.queue is not None
        return self.running.queue

    async def folder(self, address: str, name: str = "INBOX") -> list[bytes]:
        """The messages of one folder, decrypted, oldest first."""
        store = self.running.store
        async with store.read_session() as session:
            box = await mailboxes.get_mailbox(session, address)
            ids = (
                await session.scalars(
                    select(MessageRow.blob_id)
                    .join(FolderRow, MessageRow.folder_id == FolderRow.id)
                    .where(FolderRow.mailbox_id == box.id, FolderRow.name == name)
                    .order_by(MessageRow.id)
                )
            ).all()
            return [await blobs.get_blob(session, store.cipher, i) for i in ids]

    async def recipients(self) -> list[RecipientView]:
        return await self.queue.list_recipients(Selection(everything=True))

    async def events(self, name: str) -> list[audit.AuditEvent]:
        assert self.running.audit is not None
        await self.running.audit.flush()
        async with self.running.store.read_session() as session:
            return await audit.recent(session, 500, name)

    def submit(self, user: str, to: list[str], data: bytes, **options: list[str]) -> None:
        context = ssl.create_default_context(cafile=str(FIXTURES / "ca-bundle.pem"))
        context.check_hostname = False
        with smtplib.SMTP("127.0.0.1", self.submission_port, timeout=20) as smtp:
            smtp.starttls(context=context)
            smtp.login(user, PASSWORD)
            refused = smtp.sendmail(user, to, data, **options)
            assert refused == {}


def letter(sender: str, to: str, subject: str = "Lettre de sortie") -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content("Patient sorti le 21/11, traitement inchangé.\n")
    return msg.as_bytes(policy=SMTP)


@dataclass(frozen=True)
class Spec:
    """What differs between the two operators of a test."""

    domain: str
    cert: str
    boxes: tuple[str, ...]
    known_remote: tuple[str, ...] = ()  # put in the directory mirror
    dkim_peer_domain: str = ""  # the other operator's signing domain, trusted statically


def _write_config(
    spec: Spec,
    store_url: str,
    directory: Path,
    routes: dict[str, int],
    relay_port: int,
    submission_port: int,
    queue: str,
    dkim_records: dict[str, str],
    imap_port: int | None = None,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    imap = (
        f'listen = "127.0.0.1:{imap_port}"\nimplicit_tls_listen = ""'
        if imap_port
        else "enabled = false"
    )
    key = directory / "dkim.key"
    if not key.exists():
        generate_key(key)
    static = "\n".join(f'"s1._domainkey.{d}" = "{r}"' for d, r in dkim_records.items())
    route_lines = "\n".join(f'"{d}" = "127.0.0.1:{p}"' for d, p in routes.items())
    config = directory / "mssante.toml"
    config.write_text(
        f"""
[operator]
hostname = "mx.{spec.domain}"
data_dir = "{directory / "data"}"
patient_domain = "patient.mssante.test"
[database]
url = "{store_url}"
[pki]
trust_anchors = "{FIXTURES / "ca-bundle.pem"}"
certificate = "{FIXTURES / f"{spec.cert}.pem"}"
private_key = "{FIXTURES / f"{spec.cert}.key"}"
crls = {json.dumps(CRLS)}
[storage.keys]
k1 = "{"11" * 32}"
[metrics]
enabled = false
[imap]
{imap}
[relay]
listen = "127.0.0.1:{relay_port}"
implicit_tls_listen = ""
[submission]
listen = "127.0.0.1:{submission_port}"
implicit_tls_listen = ""
[queue]
{queue}
[whitelist]
source = "{FIXTURES / "whitelist.xml"}"
[outbound]
connect_timeout_seconds = 5
command_timeout_seconds = 10
data_timeout_seconds = 10
[outbound.routes]
{route_lines}
[dkim]
private_key = "{key}"
selector = "s1"
domains = ["{spec.domain}"]
[dkim.static_keys]
{static}
"""
    )
    return config


@contextlib.asynccontextmanager
async def operator(
    spec: Spec,
    store_url: str,
    directory: Path,
    routes: dict[str, int],
    *,
    relay_port: int | None = None,
    queue: str = FAST_QUEUE,
    dkim_records: dict[str, str] | None = None,
) -> AsyncIterator[Operator]:
    """Starts one operator; `routes`: mail domain → relay port of the operator receiving it."""
    relay_port = relay_port or _free_port()
    submission_port = _free_port()
    config = _write_config(
        spec, store_url, directory, routes, relay_port, submission_port, queue, dkim_records or {}
    )
    settings = load_settings(config)
    await upgrade(store_url)
    # Mailboxes exist before the listeners open, as in production (a peer may be retrying).
    store = await Store.open(store_url, open_cipher(settings))
    try:
        await _provision(store, settings, spec)
    finally:
        await store.close()
    running = await start(settings)
    try:
        yield Operator(running, spec.domain, relay_port, submission_port)
    finally:
        await stop(running)


async def _provision(store: Store, settings: Settings, spec: Spec) -> None:
    async with store.read_session() as session:
        if await domains.is_hosted(session, spec.domain):
            return  # started again on the same database
    ops = Admin(store, settings, "test")
    await ops.add_domain(spec.domain)
    for number, address in enumerate(spec.boxes, start=1):
        national_id = PRO1_NATIONAL_ID if address == JEAN else f"8100000000{number:02d}"
        await ops.add_mailbox(address, "PER", national_id=national_id, state="active")
    async with store.write_session() as session, session.begin():
        for address in spec.boxes:
            await mailboxes.set_password_hash(session, address, _password_hash())
    await mirror.add_entries(store, [mirror.Entry(a, "PER") for a in spec.known_remote])


def dkim_record(directory: Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / "dkim.key"
    if not key.exists():
        generate_key(key)
    return load_signing_key(key).public_record


async def until(check: Callable[[], Awaitable[T]], what: str, seconds: float = 30.0) -> T:
    """Poll `check` until it returns something true; fails naming `what` after `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"still waiting for {what}; last value {value!r}")
        await asyncio.sleep(0.05)


def _run(function: Callable[[], T]) -> asyncio.Future[T]:
    """Blocking clients run in a thread: the operators share this test's event loop."""
    return asyncio.get_running_loop().run_in_executor(None, function)


def _report_fields(report: bytes) -> tuple[Message, list[Message]]:
    """The DSN's message/delivery-status part: (per-message fields, per-recipient fields)."""
    parsed = email.message_from_bytes(report)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status"
    (status,) = [p for p in parsed.walk() if p.get_content_type() == "message/delivery-status"]
    payload = status.get_payload()
    assert isinstance(payload, list)
    blocks = [block for block in payload if isinstance(block, Message)]
    return blocks[0], blocks[1:]


SENDER_SIDE = Spec(DEMO, "operator", (JEAN,), known_remote=(HOUSE, f"inconnu@{HOPITAL_A}"))
RECEIVER_SIDE = Spec(HOPITAL_A, "peer-a", (HOUSE,), known_remote=(JEAN,))


@contextlib.asynccontextmanager
async def pair(store_url: str, tmp_path: Path) -> AsyncIterator[tuple[Operator, Operator]]:
    """Our operator (demo, on `store_url`) and the hospital's (SQLite), each routing the
    other's domain to it, each verifying the other's DKIM signatures."""
    a_port, b_port = _free_port(), _free_port()
    a_dir, b_dir = tmp_path / "demo", tmp_path / "hopital"
    a_key, b_key = dkim_record(a_dir), dkim_record(b_dir)
    b_url = f"sqlite+aiosqlite:///{tmp_path / 'hopital.db'}"
    async with (
        operator(
            SENDER_SIDE,
            store_url,
            a_dir,
            {HOPITAL_A: b_port},
            relay_port=a_port,
            dkim_records={HOPITAL_A: b_key},
        ) as a,
        operator(
            RECEIVER_SIDE,
            b_url,
            b_dir,
            {DEMO: a_port},
            relay_port=b_port,
            dkim_records={DEMO: a_key},
        ) as b,
    ):
        yield a, b


# --- delivered --------------------------------------------------------------------------------


async def test_two_operators_exchange_both_ways_signed_and_verified(
    store_url: str, tmp_path: Path
) -> None:
    async with pair(store_url, tmp_path) as (a, b):
        sent_letter = letter(JEAN, HOUSE).replace(
            b"Subject:", f"Disposition-Notification-To: {JEAN}\r\nSubject:".encode(), 1
        )
        await _run(lambda: a.submit(JEAN, [HOUSE], sent_letter))
        (arrived,) = await until(lambda: b.folder(HOUSE), "the letter at the hospital")
        # An MDN request (RFC 8098) passes through untouched: the reader's client answers it.
        assert f"Disposition-Notification-To: {JEAN}\r\n".encode() in arrived
        assert arrived.startswith(b"DKIM-Signature: ") is False  # the peer's trace comes first
        assert b"DKIM-Signature: " in arrived and b"d=demo.mssante.test" in arrived
        assert b"Authentication-Results: mx.hopital-a.mssante.test; dkim=pass" in arrived
        (sent,) = await a.folder(JEAN, "Sent")
        assert (
            email.message_from_bytes(sent)["Message-ID"]
            == (email.message_from_bytes(arrived)["Message-ID"])
        )
        (recipient,) = await until(lambda: _delivered(a), "the recipient recorded as delivered")
        assert recipient.address == HOUSE and recipient.remote_mta == "127.0.0.1"
        assert recipient.last_code == 250

        # And back: the hospital answers, signed with its own key.
        await _run(lambda: b.submit(HOUSE, [JEAN], letter(HOUSE, JEAN, "Re: Lettre de sortie")))
        (answer,) = await until(lambda: a.folder(JEAN), "the answer in our INBOX")
        assert b"d=hopital-a.mssante.test" in answer
        assert b"Authentication-Results: mx.demo.mssante.test; dkim=pass" in answer
        arrivals = await a.events("delivery.ok")
        assert any(e.peer_dn and "smtp.hopital-a.test" in e.peer_dn for e in arrivals)


async def _delivered(op: Operator) -> list[RecipientView]:
    return [r for r in await op.recipients() if r.state is QueueState.DELIVERED]


async def test_success_dsn_comes_back_from_the_peer_operator(
    store_url: str, tmp_path: Path
) -> None:
    """NOTIFY=SUCCESS: the peer takes DSN responsibility (it advertises DSN), delivers, and its
    own worker sends the 'delivered' report back to us, from the null sender."""
    async with pair(store_url, tmp_path) as (a, b):
        options = {"rcpt_options": ["NOTIFY=SUCCESS", f"ORCPT=rfc822;{HOUSE}"]}
        await _run(lambda: a.submit(JEAN, [HOUSE], letter(JEAN, HOUSE), **options))
        await until(lambda: b.folder(HOUSE), "the letter at the hospital")
        (report,) = await until(lambda: a.folder(JEAN), "the success DSN in our INBOX")
        per_message, (per_recipient,) = _report_fields(report)
        assert per_message["Reporting-MTA"] == "dns;mx.hopital-a.mssante.test"
        assert per_recipient["Action"] == "delivered"
        assert per_recipient["Status"] == "2.0.0"
        assert per_recipient["Final-Recipient"] == f"rfc822;{HOUSE}"
        assert per_recipient["Original-Recipient"] == f"rfc822;{HOUSE}"
        # We owe nothing ourselves: the peer took the DSN (no "relayed" report from us).
        (recipient,) = await until(lambda: _delivered(a), "our record of the delivery")
        assert recipient.dsn_owed is None
        # The report left the hospital with the null sender: nobody answers it.
        (sent_back,) = await until(lambda: _delivered(b), "the report recorded as delivered")
        assert (sent_back.envelope_from, sent_back.address) == ("", JEAN)


# --- not delivered ------------------------------------------------------------------------------


async def test_peer_down_is_retried_gets_one_delay_dsn_then_delivered(
    store_url: str, tmp_path: Path
) -> None:
    b_port = _free_port()  # nobody listens there yet
    a_dir, b_dir = tmp_path / "demo", tmp_path / "hopital"
    queue = FAST_QUEUE + "delay_notice_after_seconds = 0.5\n"
    async with operator(SENDER_SIDE, store_url, a_dir, {HOPITAL_A: b_port}, queue=queue) as a:
        await _run(lambda: a.submit(JEAN, [HOUSE], letter(JEAN, HOUSE)))

        async def deferred() -> list[RecipientView]:
            return [r for r in await a.recipients() if r.attempts >= 3]

        (waiting,) = await until(deferred, "three failed attempts")
        assert waiting.state in (QueueState.DEFERRED, QueueState.IN_FLIGHT, QueueState.QUEUED)
        assert waiting.last_code == 451 and "cannot connect" in (waiting.last_text or "")
        (notice,) = await until(lambda: a.folder(JEAN), "the delay DSN")
        _, (per_recipient,) = _report_fields(notice)
        assert per_recipient["Action"] == "delayed"
        assert per_recipient["Status"] == "4.4.1"
        assert per_recipient["Will-Retry-Until"]  # the expiry, 5 days after queueing
        b_url = f"sqlite+aiosqlite:///{tmp_path / 'hopital.db'}"
        async with operator(RECEIVER_SIDE, b_url, b_dir, {}, relay_port=b_port) as b:
            await until(lambda: b.folder(HOUSE), "the letter once the peer is up")
            (done,) = await until(lambda: _delivered(a), "the delivered state")
            assert done.attempts >= 4
        assert len(await a.folder(JEAN)) == 1  # one delay notice, whatever the attempts


async def test_peer_not_whitelisted_for_the_domain_is_deferred_then_expires_with_a_dsn(
    store_url: str, tmp_path: Path
) -> None:
    """The destination presents peer-c's certificate: valid, but its DN is not listed for
    hopital-a in the whitelist. Nothing is sent to it; the recipient waits, then expires, and
    the sender gets a failure report."""
    c_port = _free_port()
    a_dir = tmp_path / "demo"
    impostor = Spec(HOPITAL_A, "peer-c", (HOUSE,))
    c_url = f"sqlite+aiosqlite:///{tmp_path / 'impostor.db'}"
    queue = FAST_QUEUE + "expire_after_seconds = 2.0\n"
    async with (
        operator(impostor, c_url, tmp_path / "impostor", {}, relay_port=c_port) as c,
        operator(SENDER_SIDE, store_url, a_dir, {HOPITAL_A: c_port}, queue=queue) as a,
    ):
        await _run(lambda: a.submit(JEAN, [HOUSE], letter(JEAN, HOUSE)))
        (report,) = await until(lambda: a.folder(JEAN), "the failure DSN")
        (recipient,) = await a.recipients()
        assert recipient.state is QueueState.EXPIRED
        assert recipient.last_code == 451 and recipient.last_enhanced == "4.7.1"
        assert await c.folder(HOUSE) == []  # the impostor never got the letter
        refusals = await a.events("outbound.peer_refused")
        assert refusals and {e.target for e in refusals} == {HOPITAL_A}
        per_message, (per_recipient,) = _report_fields(report)
        assert per_message["Reporting-MTA"] == "dns;mx.demo.mssante.test"
        assert per_recipient["Action"] == "failed"
        assert per_recipient["Final-Recipient"] == f"rfc822;{HOUSE}"
        assert per_recipient["Status"] == "4.7.1"
        parsed = email.message_from_bytes(report)
        assert parsed["From"].startswith("Mail Delivery System <MAILER-DAEMON@")
        assert parsed["Auto-Submitted"] == "auto-replied"
        # RET not given: the original's header only comes back, not its (health) content.
        assert b"text/rfc822-headers" in report and b"traitement inchang" not in report
        sent = await a.events("dsn.sent")
        assert [(e.target, (e.details or {}).get("action")) for e in sent] == [(JEAN, "failed")]


async def test_550_from_the_peer_fails_at_once_with_a_dsn(store_url: str, tmp_path: Path) -> None:
    unknown = f"inconnu@{HOPITAL_A}"  # in our directory mirror, but not a mailbox there
    async with pair(store_url, tmp_path) as (a, b):
        options = {"mail_options": ["RET=FULL", "ENVID=lettre-42"]}
        await _run(lambda: a.submit(JEAN, [HOUSE, unknown], letter(JEAN, HOUSE), **options))
        (report,) = await until(lambda: a.folder(JEAN), "the failure DSN")
        by_address = {r.address: r for r in await a.recipients()}
        assert by_address[unknown].state is QueueState.FAILED
        assert by_address[unknown].attempts == 1  # a 5xx is never retried
        assert by_address[HOUSE].state is QueueState.DELIVERED
        assert len(await b.folder(HOUSE)) == 1
        per_message, (per_recipient,) = _report_fields(report)
        assert per_message["Original-Envelope-Id"] == "lettre-42"
        assert per_recipient["Final-Recipient"] == f"rfc822;{unknown}"
        assert per_recipient["Action"] == "failed" and per_recipient["Status"] == "5.1.1"
        assert per_recipient["Remote-MTA"] == "dns;127.0.0.1"
        assert (per_recipient["Diagnostic-Code"] or "").startswith("smtp;550 5.1.1")
        # RET=FULL: the whole original comes back.
        assert b"message/rfc822" in report and b"traitement inchang" in report


async def test_notify_never_gets_no_dsn(store_url: str, tmp_path: Path) -> None:
    unknown = f"inconnu@{HOPITAL_A}"
    async with pair(store_url, tmp_path) as (a, _b):
        options = {"rcpt_options": ["NOTIFY=NEVER"]}
        await _run(lambda: a.submit(JEAN, [unknown], letter(JEAN, unknown), **options))

        async def failed() -> list[RecipientView]:
            return [r for r in await a.recipients() if r.state is QueueState.FAILED]

        (recipient,) = await until(failed, "the failed state")
        assert recipient.dsn_owed is None
        # One more worker pass, then nothing has arrived.
        assert a.running.worker is not None
        await a.running.worker.send_dsns()
        assert await a.folder(JEAN) == []


# --- real processes, real clients ----------------------------------------------------------------


def _swaks(port: int, sender: str, to: str, subject: str, *login: str) -> None:
    swaks = shutil.which("swaks")
    if swaks is None:
        pytest.fail("swaks is not installed (Debian package swaks; ./dev.sh test installs it)")
    command = [swaks, "--server", "127.0.0.1", "--port", str(port), "--tls"]
    command += [*login, "--from", sender, "--to", to, "--header", f"Subject: {subject}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def _imap_subjects(port: int, user: str) -> list[str]:
    """The Subject and Authentication-Results of each INBOX message, read over IMAP."""
    context = ssl.create_default_context(cafile=str(FIXTURES / "ca-bundle.pem"))
    context.check_hostname = False
    with imaplib.IMAP4("127.0.0.1", port, timeout=10) as imap:
        imap.starttls(context)
        imap.login(user, PASSWORD)
        imap.select("INBOX", readonly=True)
        _, data = imap.uid("FETCH", "1:*", "(BODY.PEEK[HEADER])")
    found = []
    for item in data:
        if isinstance(item, tuple):
            header = email.message_from_bytes(item[1])
            found.append(f"{header['Subject']} | {header['Authentication-Results']}")
    return found


async def test_two_operator_processes_swaks_both_ways_read_over_imap(
    store_url: str, tmp_path: Path
) -> None:
    """Both operators are `mssante serve` processes. swaks submits with AUTH PLAIN over
    STARTTLS and with a professional's client certificate (no AUTH: the certificate is the
    credential); the receiving professionals read their INBOX with imaplib."""
    ports = {
        name: _free_port() for name in ("a_relay", "a_sub", "a_imap", "b_relay", "b_sub", "b_imap")
    }
    a_dir, b_dir = tmp_path / "demo", tmp_path / "hopital"
    a_key, b_key = dkim_record(a_dir), dkim_record(b_dir)
    b_url = f"sqlite+aiosqlite:///{tmp_path / 'hopital.db'}"
    configs = []
    for spec, url, directory, route, own, peer_key in (
        (SENDER_SIDE, store_url, a_dir, {HOPITAL_A: ports["b_relay"]}, "a", {HOPITAL_A: b_key}),
        (RECEIVER_SIDE, b_url, b_dir, {DEMO: ports["a_relay"]}, "b", {DEMO: a_key}),
    ):
        config = await asyncio.to_thread(
            _write_config,
            spec,
            url,
            directory,
            route,
            ports[f"{own}_relay"],
            ports[f"{own}_sub"],
            FAST_QUEUE,
            peer_key,
            ports[f"{own}_imap"],
        )
        settings = load_settings(config)
        await upgrade(url)
        store = await Store.open(url, open_cipher(settings))
        try:
            await _provision(store, settings, spec)
        finally:
            await store.close()
        configs.append(config)
    processes = [_serve(config) for config in configs]
    try:
        for proc, port in zip(processes, (ports["a_sub"], ports["b_sub"]), strict=True):
            await _run(functools.partial(_wait_greeting, port, proc))
        cert = ["--tls-cert", str(FIXTURES / "pro-1.pem"), "--tls-key", str(FIXTURES / "pro-1.key")]
        password = ["--auth", "PLAIN", "--auth-user", JEAN, "--auth-password", PASSWORD]
        await _run(lambda: _swaks(ports["a_sub"], JEAN, HOUSE, "Par mot de passe", *password))
        await _run(lambda: _swaks(ports["a_sub"], JEAN, HOUSE, "Par certificat", *cert))
        back = ["--auth", "PLAIN", "--auth-user", HOUSE, "--auth-password", PASSWORD]
        await _run(lambda: _swaks(ports["b_sub"], HOUSE, JEAN, "Re: Par certificat", *back))

        async def read(port: int, user: str, n: int) -> list[str]:
            found = await _run(lambda: _imap_subjects(port, user))
            return found if len(found) >= n else []

        at_hospital = await until(lambda: read(ports["b_imap"], HOUSE, 2), "two letters over IMAP")
        assert sorted(s.split(" | ")[0] for s in at_hospital) == [
            "Par certificat",
            "Par mot de passe",
        ]
        assert all("dkim=pass" in s for s in at_hospital), at_hospital
        (at_demo,) = await until(lambda: read(ports["a_imap"], JEAN, 1), "the answer over IMAP")
        assert at_demo.startswith("Re: Par certificat | ") and "dkim=pass" in at_demo
    finally:
        for proc in processes:
            proc.send_signal(signal.SIGTERM)
        for proc in processes:
            await _run(proc.communicate)
    assert [proc.returncode for proc in processes] == [0, 0]


# --- a crash while delivering ---------------------------------------------------------------------

MSSANTE = str(Path(sys.executable).with_name("mssante"))


def _wait_greeting(port: int, proc: subprocess.Popen[bytes], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(64).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"port {port} never answered")


def _serve(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [MSSANTE, "--config", str(config), "serve"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def _count(store: Store, state: QueueState) -> int:
    async with store.read_session() as session:
        found = await session.scalar(
            select(func.count(QueueRecipientRow.id)).where(QueueRecipientRow.state == state.value)
        )
    return int(found or 0)


async def test_sigkill_while_delivering_then_everything_is_delivered_after_restart(
    store_url: str, tmp_path: Path
) -> None:
    """Our operator runs as a real process; it is killed (SIGKILL: no shutdown code runs)
    while recipients are in flight. Started again, it takes them back once their lease has
    passed and delivers them: every acknowledged message reaches the peer, at least once."""
    count = 60
    b_port, relay_port, submission_port = _free_port(), _free_port(), _free_port()
    a_dir = tmp_path / "demo"
    config = await asyncio.to_thread(
        _write_config,
        SENDER_SIDE,
        store_url,
        a_dir,
        {HOPITAL_A: b_port},
        relay_port,
        submission_port,
        FAST_QUEUE,
        {},
    )
    settings = load_settings(config)
    await upgrade(store_url)
    watcher = await Store.open(store_url, open_cipher(settings))
    b_url = f"sqlite+aiosqlite:///{tmp_path / 'hopital.db'}"
    ids = [f"<lettre-{n}@demo.mssante.test>" for n in range(count)]
    try:
        await _provision(watcher, settings, SENDER_SIDE)
        async with operator(RECEIVER_SIDE, b_url, tmp_path / "hopital", {}, relay_port=b_port) as b:
            proc = _serve(config)
            try:
                await _run(lambda: _wait_greeting(submission_port, proc))

                def submit_all() -> None:
                    context = ssl.create_default_context(cafile=str(FIXTURES / "ca-bundle.pem"))
                    context.check_hostname = False
                    with smtplib.SMTP("127.0.0.1", submission_port, timeout=20) as smtp:
                        smtp.starttls(context=context)
                        smtp.login(JEAN, PASSWORD)
                        for message_id in ids:
                            msg = email.message_from_bytes(letter(JEAN, HOUSE))
                            msg["Message-ID"] = message_id
                            assert smtp.sendmail(JEAN, [HOUSE], msg.as_bytes()) == {}

                sending = _run(submit_all)

                async def in_flight() -> int:
                    return await _count(watcher, QueueState.IN_FLIGHT)

                await until(in_flight, "recipients in flight")
                proc.send_signal(signal.SIGKILL)
                with contextlib.suppress(smtplib.SMTPException, OSError):
                    await sending  # the client sees the connection close
            finally:
                if proc.poll() is None:
                    proc.kill()
                await _run(proc.communicate)
            assert proc.returncode == -signal.SIGKILL
            stranded = await _count(watcher, QueueState.IN_FLIGHT)
            assert stranded > 0  # the kill did catch deliveries in flight
            committed = {
                v.message_id
                for v in await Queue(watcher).list_recipients(Selection(everything=True))
            }
            again = _serve(config)
            try:
                await _run(lambda: _wait_greeting(submission_port, again))

                async def all_final() -> bool:
                    queued = await Queue(watcher).list_recipients(Selection(everything=True))
                    return bool(queued) and all(v.state is QueueState.DELIVERED for v in queued)

                await until(all_final, "every recipient delivered after the restart", 60)
            finally:
                again.send_signal(signal.SIGTERM)
                await _run(again.communicate)
            arrived = [email.message_from_bytes(m)["Message-ID"] for m in await b.folder(HOUSE)]
            assert committed and committed <= set(arrived)  # duplicates allowed, never a loss
            async with watcher.read_session() as session:
                recoveries = await audit.recent(session, 50, "queue.recover")
            assert recoveries  # taken back after the lease, audited
    finally:
        await watcher.close()
