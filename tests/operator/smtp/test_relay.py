"""The relay over real TLS on loopback, driven by smtplib with the test PKI's certificates."""

from __future__ import annotations

import asyncio
import contextlib
import json
import smtplib
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pytest
from sqlalchemy import func, select

from mssante.admin import Admin
from mssante.config import load_settings
from mssante.operator.store import audit, mailboxes
from mssante.operator.store.migrate import upgrade
from mssante.operator.store.schema import FolderRow, MessageRow
from mssante.server import Running, start, stop

FIXTURES = Path(__file__).parents[3] / "tls-fixtures"
INDEX = json.loads((FIXTURES / "fixtures.json").read_text())
ConfigWriter = Callable[..., Path]  # the `write_config` fixture of tests/conftest.py

DOMAIN = "demo.mssante.test"
PATIENT = "146026322000196@patient.mssante.test"
BOXES = {
    f"jean.dupont@{DOMAIN}": ("PER", "810001234567"),
    f"cardiologie@{DOMAIN}": ("ORG", None),
    f"dpi@{DOMAIN}": ("APP", None),
    f"cabinet@{DOMAIN}": ("CAB", None),
    PATIENT: ("PATIENT", None),
}
SIZE_LIMIT = 50_000
MAX_RECIPIENTS = 3


def _domain_of(peer: str) -> str:
    return str(INDEX["files"][f"{peer}.pem"]["domain"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Relay:
    running: Running
    host: str
    port: int

    def client(self, peer: str | None = "peer-a", *, starttls: bool = True) -> smtplib.SMTP:
        smtp = smtplib.SMTP(self.host, self.port, timeout=10)
        smtp.ehlo("client.test")
        if starttls:
            context = ssl.create_default_context(cafile=str(FIXTURES / "ca-bundle.pem"))
            context.check_hostname = False
            if peer is not None:
                context.load_cert_chain(FIXTURES / f"{peer}.pem", FIXTURES / f"{peer}.key")
            smtp.starttls(context=context)
            smtp.ehlo("client.test")
        return smtp

    async def inbox_count(self, address: str) -> int:
        async with self.running.store.session() as session:
            box = await mailboxes.get_mailbox(session, address)
            count = await session.scalar(
                select(func.count(MessageRow.id))
                .join(FolderRow, MessageRow.folder_id == FolderRow.id)
                .where(FolderRow.mailbox_id == box.id, FolderRow.name == "INBOX")
            )
        return int(count or 0)

    async def audit_reasons(self) -> list[str]:
        assert self.running.relay is not None
        await self.running.relay.audit_sink.flush()
        async with self.running.store.session() as session:
            events = await audit.recent(session, 200)
        return [str((e.details or {}).get("reason")) for e in events]


def message(sender: str, to: str, body: str = "Compte rendu de consultation.") -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = "Résultats"
    msg["Message-ID"] = "<t1@hopital-a.test>"
    msg.set_content(body)
    return msg.as_bytes(policy=SMTP)  # CRLF line ends, as on the wire


@contextlib.asynccontextmanager
async def running_relay(
    store_url: str, write_config: ConfigWriter, relay_options: str = ""
) -> AsyncIterator[Relay]:
    port = _free_port()
    crls = [str(FIXTURES / f"{ca}.crl.pem") for ca in ("root-ca", "org-ca", "pro-ca")]
    config = write_config(
        database_url=store_url,
        pki=f"crls = {json.dumps(crls)}",
        storage=f"max_message_size = {SIZE_LIMIT}",
        extra=f"""
[metrics]
enabled = false
[imap]
enabled = false
[submission]
enabled = false
[relay]
listen = "127.0.0.1:{port}"
max_recipients = {MAX_RECIPIENTS}
{relay_options}
[whitelist]
source = "{FIXTURES / "whitelist.xml"}"
""",
    )
    settings = load_settings(config)
    await upgrade(store_url)
    running = await start(settings)
    ops = Admin(running.store, settings, "test")
    await ops.add_domain(DOMAIN)
    await ops.add_domain("patient.mssante.test")
    for address, (kind, nid) in BOXES.items():
        await ops.add_mailbox(address, kind, national_id=nid, state="active")
    try:
        yield Relay(running, "127.0.0.1", port)
    finally:
        await stop(running)


@pytest.fixture
async def relay(store_url: str, write_config: ConfigWriter) -> AsyncIterator[Relay]:
    async with running_relay(store_url, write_config) as started:
        yield started


def _send(relay: Relay, peer: str, sender: str, rcpts: list[str]) -> dict[str, tuple[int, bytes]]:
    with relay.client(peer) as smtp:
        return smtp.sendmail(sender, rcpts, message(sender, ", ".join(rcpts)))


async def test_whitelisted_peer_delivers_to_every_mailbox_type(relay: Relay) -> None:
    sender = f"dr.house@{_domain_of('peer-a')}"
    refused = await asyncio.to_thread(_send, relay, "peer-a", sender, list(BOXES)[:3])
    assert refused == {}
    refused = await asyncio.to_thread(_send, relay, "peer-a", sender, list(BOXES)[3:])
    assert refused == {}
    for address in BOXES:
        assert await relay.inbox_count(address) == 1, address


async def test_peer_listed_for_a_second_domain_and_null_sender(relay: Relay) -> None:
    # peer-a is listed for clinique-b.fr too (a domain listed twice, for two certificates).
    await asyncio.to_thread(_send, relay, "peer-a", "x@clinique-b.fr", [f"dpi@{DOMAIN}"])
    await asyncio.to_thread(_send, relay, "peer-b", "y@clinique-b.fr", [f"dpi@{DOMAIN}"])
    await asyncio.to_thread(_send, relay, "peer-b", "", [f"dpi@{DOMAIN}"])  # a DSN
    assert await relay.inbox_count(f"dpi@{DOMAIN}") == 3


def _mail_reply(
    relay: Relay, peer: str | None, sender: str, *, starttls: bool = True
) -> tuple[int, bytes]:
    with relay.client(peer, starttls=starttls) as smtp:
        return smtp.mail(sender)


@pytest.mark.parametrize(
    ("peer", "starttls", "code", "enhanced", "reason"),
    [
        ("peer-a", False, 530, b"5.7.0", "no_tls"),
        (None, True, 530, b"5.7.0", "no_client_certificate"),
        ("peer-expired", True, 550, b"5.7.1", "certificate_expired"),
        ("peer-revoked", True, 550, b"5.7.1", "certificate_revoked"),
        ("peer-noeku-server", True, 550, b"5.7.1", "certificate_wrong_usage"),
        ("peer-c", True, 550, b"5.7.1", "dn_not_whitelisted"),
    ],
)
async def test_trust_refusals_at_mail(
    relay: Relay, peer: str | None, starttls: bool, code: int, enhanced: bytes, reason: str
) -> None:
    sender = f"someone@{_domain_of(peer) if peer else 'hopital-a.mssante.test'}"
    got_code, text = await asyncio.to_thread(_mail_reply, relay, peer, sender, starttls=starttls)
    assert (got_code, text.split()[0]) == (code, enhanced), text
    assert reason in await relay.audit_reasons()


async def test_dn_listed_for_another_domain_only(relay: Relay) -> None:
    code, text = await asyncio.to_thread(_mail_reply, relay, "peer-b", f"x@{_domain_of('peer-a')}")
    assert (code, text.split()[0]) == (550, b"5.7.1")
    assert b"hopital-a.mssante.test" in text
    assert "dn_not_listed_for_domain" in await relay.audit_reasons()


async def test_unknown_ca_fails_the_handshake_and_is_audited(relay: Relay) -> None:
    with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)):
        await asyncio.to_thread(_mail_reply, relay, "foreign", "x@hopital-a.mssante.test")
    await asyncio.sleep(0.1)
    assert "tls_handshake" in await relay.audit_reasons()


def _rcpt_reply(relay: Relay, rcpt: str) -> tuple[int, bytes]:
    with relay.client("peer-a") as smtp:
        assert smtp.mail(f"x@{_domain_of('peer-a')}")[0] == 250
        return smtp.rcpt(rcpt)


@pytest.mark.parametrize(
    ("rcpt", "code", "enhanced", "reason"),
    [
        (f"nobody@{DOMAIN}", 550, b"5.1.1", "unknown_user"),
        ("someone@elsewhere.test", 550, b"5.7.1", "relay_denied"),
        ("146026322000197@patient.mssante.test", 550, b"5.1.1", "unknown_user"),
    ],
)
async def test_recipient_refusals(
    relay: Relay, rcpt: str, code: int, enhanced: bytes, reason: str
) -> None:
    got, text = await asyncio.to_thread(_rcpt_reply, relay, rcpt)
    assert (got, text.split()[0]) == (code, enhanced), text
    assert reason in await relay.audit_reasons()


def _too_many(relay: Relay) -> list[tuple[int, bytes]]:
    with relay.client("peer-a") as smtp:
        smtp.mail(f"x@{_domain_of('peer-a')}")
        return [smtp.rcpt(f"jean.dupont@{DOMAIN}") for _ in range(MAX_RECIPIENTS + 1)]


async def test_too_many_recipients(relay: Relay) -> None:
    replies = await asyncio.to_thread(_too_many, relay)
    assert [c for c, _ in replies[:MAX_RECIPIENTS]] == [250] * MAX_RECIPIENTS
    assert replies[-1][0] == 452 and replies[-1][1].startswith(b"4.5.3")
    assert "too_many_recipients" in await relay.audit_reasons()


def _data_reply(relay: Relay, body: bytes) -> tuple[int, bytes]:
    with relay.client("peer-a") as smtp:
        smtp.mail(f"x@{_domain_of('peer-a')}")
        smtp.rcpt(f"jean.dupont@{DOMAIN}")
        code, text = smtp.data(body)
        # The session is still in step: a NOOP is answered normally.
        assert smtp.noop()[0] == 250
        return code, text


async def test_message_too_big(relay: Relay) -> None:
    body = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * (SIZE_LIMIT // 1000 + 5)
    code, text = await asyncio.to_thread(_data_reply, relay, body)
    assert (code, text.split()[0]) == (552, b"5.3.4")
    assert await relay.inbox_count(f"jean.dupont@{DOMAIN}") == 0
    assert "too_big" in await relay.audit_reasons()


async def test_declared_size_too_big_is_refused_at_mail(relay: Relay) -> None:
    def go() -> tuple[int, bytes]:
        with relay.client("peer-a") as smtp:
            return smtp.mail(f"x@{_domain_of('peer-a')}", [f"SIZE={SIZE_LIMIT + 1}"])

    code, text = await asyncio.to_thread(go)
    assert (code, text.split()[0]) == (552, b"5.3.4")


async def test_line_too_long(relay: Relay) -> None:
    body = b"Subject: long\r\n\r\n" + b"y" * 1200 + b"\r\n"
    code, text = await asyncio.to_thread(_data_reply, relay, body)
    assert (code, text.split()[0]) == (500, b"5.5.2")
    assert await relay.inbox_count(f"jean.dupont@{DOMAIN}") == 0
    assert "line_too_long" in await relay.audit_reasons()


async def test_ehlo_advertises_the_extensions(relay: Relay) -> None:
    def go() -> tuple[str, str]:
        with relay.client("peer-a", starttls=False) as plain:
            before = plain.ehlo_resp.decode()
        with relay.client("peer-a") as tls:
            return before, tls.ehlo_resp.decode()

    before, after = await asyncio.to_thread(go)
    assert "STARTTLS" in before
    for ext in ("SIZE 50000", "8BITMIME", "SMTPUTF8", "PIPELINING", "ENHANCEDSTATUSCODES", "DSN"):
        assert ext in after
    assert "STARTTLS" not in after


async def test_dsn_parameters_are_accepted(relay: Relay) -> None:
    def go() -> dict[str, tuple[int, bytes]]:
        with relay.client("peer-a") as smtp:
            sender = f"x@{_domain_of('peer-a')}"
            return smtp.sendmail(
                sender,
                [f"jean.dupont@{DOMAIN}"],
                message(sender, "j"),
                mail_options=["RET=HDRS", "ENVID=abc+2B1"],
                rcpt_options=["NOTIFY=SUCCESS,FAILURE", f"ORCPT=rfc822;jean.dupont@{DOMAIN}"],
            )

    assert await asyncio.to_thread(go) == {}
    assert await relay.inbox_count(f"jean.dupont@{DOMAIN}") == 1


async def test_connection_limit_per_peer(relay: Relay) -> None:
    assert relay.running.relay is not None
    limit = relay.running.relay.settings.relay.max_connections_per_peer

    def go() -> bytes:
        held = [socket.create_connection((relay.host, relay.port)) for _ in range(limit)]
        try:
            for s in held:
                assert s.recv(512).startswith(b"220")
            extra = socket.create_connection((relay.host, relay.port))
            with extra:
                return extra.recv(512)
        finally:
            for s in held:
                s.close()

    reply = await asyncio.to_thread(go)
    assert reply.startswith(b"421 4.7.0")
    assert "too_many_connections_from_peer" in await relay.audit_reasons()


async def test_dot_stuffing_round_trips(relay: Relay) -> None:
    from mssante.operator.store.blobs import get_blob

    body = "Ligne normale.\n.commence par un point\n.\n..deux points\nfin."
    sender = f"x@{_domain_of('peer-a')}"
    rcpt = f"jean.dupont@{DOMAIN}"

    def go() -> None:
        with relay.client("peer-a") as smtp:
            smtp.sendmail(sender, [rcpt], message(sender, rcpt, body))  # smtplib stuffs dots

    await asyncio.to_thread(go)
    async with relay.running.store.session() as session:
        blob_id = await session.scalar(select(MessageRow.blob_id))
        assert blob_id is not None
        stored = await get_blob(session, relay.running.store.cipher, blob_id)
    assert b"\r\n.commence par un point\r\n.\r\n..deux points\r\nfin.\r\n" in stored
    head = stored.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nReceived: from client.test" in head or head.startswith(b"Received: from")


# --- limits, with a relay configured tight (SQLite is enough: nothing here is storage) -------


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_too_many_commands_ends_the_session(
    store_url: str, write_config: ConfigWriter
) -> None:
    async with running_relay(store_url, write_config, "max_commands = 4") as relay:

        def go() -> list[bytes]:
            with socket.create_connection((relay.host, relay.port), timeout=10) as s:
                s.recv(512)
                replies = []
                for _ in range(5):
                    s.sendall(b"NOOP\r\n")
                    replies.append(s.recv(512))
                replies.append(s.recv(512))  # the server closed: b""
                return replies

        replies = await asyncio.to_thread(go)
        assert replies[:4] == [b"250 2.0.0 OK\r\n"] * 4
        assert replies[4].startswith(b"421 4.7.0") and replies[5] == b""
        assert "too_many_commands" in await relay.audit_reasons()


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_total_connection_limit(store_url: str, write_config: ConfigWriter) -> None:
    async with running_relay(store_url, write_config, "max_connections = 2") as relay:

        def go() -> bytes:
            held = [socket.create_connection((relay.host, relay.port)) for _ in range(2)]
            try:
                for s in held:
                    assert s.recv(512).startswith(b"220")
                with socket.create_connection((relay.host, relay.port)) as extra:
                    return extra.recv(512)
            finally:
                for s in held:
                    s.close()

        assert (await asyncio.to_thread(go)).startswith(b"421 4.7.0 Too many connections")
        assert "too_many_connections" in await relay.audit_reasons()


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_idle_session_is_closed(store_url: str, write_config: ConfigWriter) -> None:
    async with running_relay(store_url, write_config, "idle_timeout_seconds = 1") as relay:

        def go() -> bytes:
            with socket.create_connection((relay.host, relay.port), timeout=10) as s:
                s.recv(512)
                return s.recv(512)  # nothing sent: the server speaks first, then closes

        assert (await asyncio.to_thread(go)).startswith(b"421 4.4.2")
        assert "idle_timeout" in await relay.audit_reasons()


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_implicit_tls_listener(store_url: str, write_config: ConfigWriter) -> None:
    tls_port = _free_port()
    options = f'implicit_tls_listen = "127.0.0.1:{tls_port}"'
    async with running_relay(store_url, write_config, options) as relay:

        def go() -> tuple[dict[str, tuple[int, bytes]], str]:
            context = ssl.create_default_context(cafile=str(FIXTURES / "ca-bundle.pem"))
            context.check_hostname = False
            context.load_cert_chain(FIXTURES / "peer-a.pem", FIXTURES / "peer-a.key")
            with smtplib.SMTP_SSL(relay.host, tls_port, context=context, timeout=10) as smtp:
                sender = f"x@{_domain_of('peer-a')}"
                ehlo = smtp.ehlo()[1].decode()
                return smtp.sendmail(sender, [f"dpi@{DOMAIN}"], message(sender, "d")), ehlo

        refused, ehlo = await asyncio.to_thread(go)
        assert refused == {} and "STARTTLS" not in ehlo
        assert relay.running.listeners["relay_tls"] == f"127.0.0.1:{tls_port}"
        assert await relay.inbox_count(f"dpi@{DOMAIN}") == 1


async def test_over_quota_mailbox_refuses_at_rcpt(relay: Relay) -> None:
    ops = Admin(relay.running.store, relay.running.settings, "test")
    await ops.set_quota(f"dpi@{DOMAIN}", "100")  # bytes: one message fills it
    sender = f"x@{_domain_of('peer-a')}"
    # The message that crosses the quota is accepted; the next one is refused at RCPT.
    await asyncio.to_thread(_send, relay, "peer-a", sender, [f"dpi@{DOMAIN}"])
    code, text = await asyncio.to_thread(_rcpt_reply, relay, f"dpi@{DOMAIN}")
    assert (code, text.split()[0]) == (552, b"5.2.2"), text
    assert "over_quota" in await relay.audit_reasons()


async def test_auth_is_not_offered_on_the_relay(relay: Relay) -> None:
    def go() -> tuple[int, bytes]:
        with relay.client("peer-a") as smtp:
            return smtp.docmd("AUTH", "PLAIN AGplYW4AcGFzc3dvcmQ=")

    code, text = await asyncio.to_thread(go)
    assert (code, text) == (502, b"5.5.1 AUTH not available on the relay")
