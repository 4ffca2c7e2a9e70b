"""The outbound client against a real peer: our own relay, started on loopback with a
certificate of the test PKI, reached through a static route or through MX records served by
a small DNS responder. Every test sends for real over mutual TLS."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import dns.asyncresolver
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdatatype
import dns.rrset
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import func, select

from mssante.admin import Admin
from mssante.config import ConfigError, Settings, load_settings
from mssante.operator.auditlog import AuditSink
from mssante.operator.dkim_sign import DkimSigner, generate_key, load_signing_key
from mssante.operator.outbound import (
    MessageResult,
    OutboundClient,
    OutboundMessage,
    OutboundRecipient,
    Status,
    _Peer,
    mail_parameters,
    order_mx,
    rcpt_parameters,
    resolve_destination,
)
from mssante.operator.store import audit, mailboxes
from mssante.operator.store.crypto import BlobCipher
from mssante.operator.store.db import Store
from mssante.operator.store.migrate import upgrade
from mssante.operator.store.schema import DsnRequestRow, FolderRow, MessageRow
from mssante.pki.runtime import Pki
from mssante.pki.tls import server_context
from mssante.server import Running, start, stop, whitelist_store

FIXTURES = Path(__file__).parents[2] / "tls-fixtures"
INDEX = json.loads((FIXTURES / "fixtures.json").read_text())
CRLS = [str(FIXTURES / f"{ca}.crl.pem") for ca in ("root-ca", "org-ca", "pro-ca")]
ConfigWriter = Callable[..., Path]  # the `write_config` fixture of tests/conftest.py

SENDER = "jean.dupont@demo.mssante.test"  # our domain: operator.pem is listed for it
HOPITAL_A = "hopital-a.mssante.test"  # peer-a is listed for it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def message(to: str, body: str = "Compte rendu de consultation.") -> bytes:
    return (
        f"From: Dr Jean Dupont <{SENDER}>\r\n"
        f"To: {to}\r\n"
        "Subject: Compte rendu\r\n"
        "Date: Mon, 24 Nov 2025 09:30:00 +0100\r\n"
        "Message-ID: <cr-1@demo.mssante.test>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        f"{body}\r\n"
    ).encode()


@dataclass
class Peer:
    """A receiving operator: our own server, with `cert` as its certificate."""

    running: Running
    port: int
    domain: str

    async def inbox_count(self, address: str) -> int:
        async with self.running.store.session() as session:
            box = await mailboxes.get_mailbox(session, address)
            count = await session.scalar(
                select(func.count(MessageRow.id))
                .join(FolderRow, MessageRow.folder_id == FolderRow.id)
                .where(FolderRow.mailbox_id == box.id, FolderRow.name == "INBOX")
            )
        return int(count or 0)


def _peer_config(
    store_url: str,
    directory: Path,
    cert: str,
    domain: str,
    port: int,
    relay_options: str,
    dkim: str,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "peer.toml"
    config.write_text(
        f"""
[operator]
hostname = "mx.{domain}"
data_dir = "{directory / "data"}"
patient_domain = "patient.mssante.test"
[database]
url = "{store_url}"
[pki]
trust_anchors = "{FIXTURES / "ca-bundle.pem"}"
certificate = "{FIXTURES / f"{cert}.pem"}"
private_key = "{FIXTURES / f"{cert}.key"}"
crls = {json.dumps(CRLS)}
[storage.keys]
k1 = "{"00" * 32}"
[metrics]
enabled = false
[imap]
enabled = false
[submission]
enabled = false
[relay]
listen = "127.0.0.1:{port}"
{relay_options}
[whitelist]
source = "{FIXTURES / "whitelist.xml"}"
{dkim}
"""
    )
    return config


@contextlib.asynccontextmanager
async def running_peer(
    store_url: str,
    directory: Path,
    cert: str,
    domain: str,
    boxes: tuple[str, ...],
    *,
    relay_options: str = "",
    dkim: str = "",
    port: int | None = None,
) -> AsyncIterator[Peer]:
    port = port or _free_port()
    config = _peer_config(store_url, directory, cert, domain, port, relay_options, dkim)
    settings = load_settings(config)
    await upgrade(store_url)
    running = await start(settings)
    ops = Admin(running.store, settings, "test")
    with contextlib.suppress(Exception):
        await ops.add_domain(domain)  # the database may be shared with another peer
    for address in boxes:
        await ops.add_mailbox(address, "ORG", state="active")
    try:
        yield Peer(running, port, domain)
    finally:
        await stop(running)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """For the tests where the database does not matter (the peer's store only receives)."""
    return f"sqlite+aiosqlite:///{tmp_path / 'outbound.db'}"


@pytest.fixture
async def sqlite_store(sqlite_url: str, cipher: BlobCipher) -> AsyncIterator[Store]:
    await upgrade(sqlite_url)
    opened = await Store.open(sqlite_url, cipher)
    try:
        yield opened
    finally:
        await opened.close()


@dataclass
class Sender:
    """Our side: the operator certificate, the fixture whitelist, routes to the peers."""

    client: OutboundClient
    sink: AuditSink
    settings: Settings

    async def deliver(self, domain: str, messages: list[OutboundMessage]) -> list[MessageResult]:
        return await self.client.deliver(domain, messages)


@contextlib.asynccontextmanager
async def sender(
    write_config: ConfigWriter,
    store: Store,
    routes: dict[str, int],
    *,
    outbound: str = "",
    resolver: dns.asyncresolver.Resolver | None = None,
) -> AsyncIterator[Sender]:
    route_lines = "\n".join(f'"{d}" = "127.0.0.1:{p}"' for d, p in routes.items())
    # Short timeouts so that a broken test fails fast; a test may set its own.
    defaults = {
        "connect_timeout_seconds": "5",
        "command_timeout_seconds": "10",
        "data_timeout_seconds": "10",
        "dns_timeout_seconds": "2",
    }
    given = {line.split("=")[0].strip() for line in outbound.splitlines() if "=" in line}
    outbound_lines = "\n".join(
        [outbound, *(f"{k} = {v}" for k, v in defaults.items() if k not in given)]
    )
    path = write_config(
        pki=f"crls = {json.dumps(CRLS)}",
        extra=f"""
[whitelist]
source = "{FIXTURES / "whitelist.xml"}"
[outbound]
{outbound_lines}
[outbound.routes]
{route_lines}
""",
    )
    settings = load_settings(path)
    pki = await Pki.load(settings.pki, settings.crl_cache_dir)
    whitelist = whitelist_store(settings)
    await whitelist.load()
    sink = AuditSink(store)  # our audit trail, in the test database (shared with the peer)
    await sink.start()
    client = OutboundClient(settings, pki, whitelist, sink, resolver)
    try:
        yield Sender(client, sink, settings)
    finally:
        await client.close()
        await sink.close()


async def audit_events(store: Store, sink: AuditSink, name: str) -> list[audit.AuditEvent]:
    await sink.flush()
    async with store.session() as session:
        return await audit.recent(session, 200, name)


def out(to: list[str], *, ref: str = "m1", data: bytes | None = None) -> OutboundMessage:
    return OutboundMessage(
        sender=SENDER,
        recipients=tuple(OutboundRecipient(a) for a in to),
        data=data or message(", ".join(to)),
        ref=ref,
    )


# --- delivered ------------------------------------------------------------------------------


async def test_delivered_over_mutual_tls_and_dkim_verifies_on_arrival(
    store_url: str, write_config: ConfigWriter, tmp_path: Path
) -> None:
    key = tmp_path / "dkim.key"
    generate_key(key)
    record = load_signing_key(key).public_record
    dkim = f'[dkim.static_keys]\n"s1._domainkey.demo.mssante.test" = "{record}"'
    boxes = (f"secretariat@{HOPITAL_A}", f"cardio@{HOPITAL_A}")
    async with (
        running_peer(store_url, tmp_path / "a", "peer-a", HOPITAL_A, boxes, dkim=dkim) as peer,
        sender(write_config, peer.running.store, {HOPITAL_A: peer.port}) as ours,
    ):
        signer = DkimSigner(load_signing_key(key), "s1", ["demo.mssante.test"])
        signed = await signer.sign(message(boxes[0]))
        results = await ours.deliver(HOPITAL_A.upper(), [out(list(boxes), data=signed)])
        (result,) = results
        assert [r.status for r in result.recipients] == [Status.DELIVERED] * 2
        first = result.recipients[0]
        assert first.from_remote and first.reply.startswith("250 2.0.0")
        assert first.remote_mta == "127.0.0.1" and first.dsn_passed
        for address in boxes:
            assert await peer.inbox_count(address) == 1
        arrived = await audit_events(peer.running.store, ours.sink, "delivery.ok")
        assert {(e.details or {}).get("dkim") for e in arrived} == {"pass"}
        # The peer saw our certificate (mutual TLS): its Received names our DN.
        assert any(e.peer_dn and "mx.demo.mssante.test" in e.peer_dn for e in arrived)
        ours_audit = await audit_events(peer.running.store, ours.sink, "outbound.delivered")
        assert {e.target for e in ours_audit} == set(boxes)


async def test_one_connection_carries_several_messages_within_the_limit(
    sqlite_url: str, write_config: ConfigWriter, tmp_path: Path
) -> None:
    box = f"secretariat@{HOPITAL_A}"
    async with (
        running_peer(sqlite_url, tmp_path / "a", "peer-a", HOPITAL_A, (box,)) as peer,
        sender(
            write_config,
            peer.running.store,
            {HOPITAL_A: peer.port},
            outbound="max_connections_per_destination = 2\nmax_messages_per_connection = 3",
        ) as ours,
    ):
        batch = [out([box], ref=f"m{i}") for i in range(7)]
        results = await ours.deliver(HOPITAL_A, batch)
        assert [r.ref for r in results] == [m.ref for m in batch]
        assert all(r.recipients[0].status is Status.DELIVERED for r in results)
        connections = [r.connection for r in results]
        per_connection = {c: connections.count(c) for c in set(connections)}
        # At most 3 messages per connection, so at least 3 connections; never more than 2 at
        # once is what the semaphore guarantees, and reuse means fewer than 7 connections.
        assert max(per_connection.values()) <= 3 and 3 <= len(per_connection) < 7
        assert await peer.inbox_count(box) == 7


async def test_a_connection_is_kept_for_the_next_delivery_and_checked_before_reuse(
    sqlite_url: str, write_config: ConfigWriter, tmp_path: Path
) -> None:
    box = f"secretariat@{HOPITAL_A}"
    async with (
        # The peer drops a connection idle for 1 s (its idle timeout).
        running_peer(
            sqlite_url,
            tmp_path / "a",
            "peer-a",
            HOPITAL_A,
            (box,),
            relay_options="idle_timeout_seconds = 1",
        ) as peer,
        sender(
            write_config,
            peer.running.store,
            {HOPITAL_A: peer.port},
            outbound="connection_cache_seconds = 60",
        ) as ours,
    ):
        (first,) = await ours.deliver(HOPITAL_A, [out([box], ref="m1")])
        (second,) = await ours.deliver(HOPITAL_A, [out([box], ref="m2")])
        assert first.connection is not None and second.connection == first.connection
        await asyncio.sleep(1.5)  # past the peer's idle timeout: it has closed our connection
        (third,) = await ours.deliver(HOPITAL_A, [out([box], ref="m3")])
        assert third.recipients[0].status is Status.DELIVERED  # RSET failed: a new connection
        assert third.connection not in (None, first.connection)
        assert await peer.inbox_count(box) == 3


async def test_no_connection_cache_closes_after_each_delivery(
    sqlite_url: str, write_config: ConfigWriter, tmp_path: Path
) -> None:
    box = f"secretariat@{HOPITAL_A}"
    async with (
        running_peer(sqlite_url, tmp_path / "a", "peer-a", HOPITAL_A, (box,)) as peer,
        sender(
            write_config,
            peer.running.store,
            {HOPITAL_A: peer.port},
            outbound="connection_cache_seconds = 0",
        ) as ours,
    ):
        (first,) = await ours.deliver(HOPITAL_A, [out([box], ref="m1")])
        (second,) = await ours.deliver(HOPITAL_A, [out([box], ref="m2")])
        assert None not in (first.connection, second.connection)
        assert first.connection != second.connection
        assert await peer.inbox_count(box) == 2


async def test_the_per_destination_limit_holds_across_callers(
    sqlite_url: str, write_config: ConfigWriter, tmp_path: Path
) -> None:
    box = f"secretariat@{HOPITAL_A}"
    # The peer refuses a second simultaneous connection (421): with our limit at 1, two callers
    # delivering at once still get everything through, one connection after the other.
    async with (
        running_peer(
            sqlite_url,
            tmp_path / "a",
            "peer-a",
            HOPITAL_A,
            (box,),
            relay_options="max_connections = 1\nmax_connections_per_peer = 1",
        ) as peer,
        sender(
            write_config,
            peer.running.store,
            {HOPITAL_A: peer.port},
            outbound="max_connections_per_destination = 1",
        ) as ours,
    ):
        calls = [
            ours.deliver(HOPITAL_A, [out([box], ref=f"{c}{i}") for i in range(4)]) for c in "ab"
        ]
        batches = await asyncio.gather(*calls)
        statuses = {r.recipients[0].status for batch in batches for r in batch}
        assert statuses == {Status.DELIVERED}
        assert await peer.inbox_count(box) == 8


# --- refused peers: nothing is sent -------------------------------------------------------------


@pytest.mark.parametrize(
    ("cert", "domain", "reason"),
    [
        # peer-b is listed for clinique-b.fr only, not for the recipient's domain.
        ("peer-b", HOPITAL_A, "dn_not_listed_for_domain"),
        # peer-c is a valid IGC-Santé certificate that the whitelist does not name at all.
        ("peer-c", "labo-c.mssante.test", "dn_not_whitelisted"),
        ("peer-revoked", "revoque.mssante.test", "certificate_revoked"),
        # OpenSSL refuses an expired server certificate at the handshake.
        ("peer-expired", "expire.mssante.test", "tls_handshake"),
        # The CA is not ours: the same DN as peer-a, and still refused at the handshake.
        ("foreign", HOPITAL_A, "tls_handshake"),
    ],
)
async def test_peer_not_acceptable_for_the_domain_gets_nothing(
    sqlite_url: str, write_config: ConfigWriter, tmp_path: Path, cert: str, domain: str, reason: str
) -> None:
    box = f"secretariat@{domain}"
    async with (
        running_peer(sqlite_url, tmp_path / "p", cert, domain, (box,)) as peer,
        sender(write_config, peer.running.store, {domain: peer.port}) as ours,
    ):
        (result,) = await ours.deliver(domain, [out([box])])
        (recipient,) = result.recipients
        assert recipient.status is Status.DEFERRED
        assert recipient.reason == reason and not recipient.from_remote
        assert recipient.reply.startswith("451 4.7.")
        if reason == "tls_handshake":
            assert "certificate" in recipient.reply, recipient.reply
        assert result.connection is None
        assert await peer.inbox_count(box) == 0
        refusals = await audit_events(peer.running.store, ours.sink, "outbound.peer_refused")
        assert [(e.target, (e.details or {}).get("reason")) for e in refusals] == [(domain, reason)]
        # The peer never saw a MAIL command from us.
        mail_refusals = await audit_events(peer.running.store, ours.sink, "smtp.reject")
        assert mail_refusals == []


async def test_peer_down_is_deferred(
    write_config: ConfigWriter, sqlite_url: str, tmp_path: Path
) -> None:
    box = f"secretariat@{HOPITAL_A}"
    async with running_peer(sqlite_url, tmp_path / "a", "peer-a", HOPITAL_A, (box,)) as peer:
        closed = _free_port()  # nobody listens there
        async with sender(write_config, peer.running.store, {HOPITAL_A: closed}) as ours:
            results = await ours.deliver(HOPITAL_A, [out([box], ref="a"), out([box], ref="b")])
        for result in results:
            (recipient,) = result.recipients
            assert recipient.status is Status.DEFERRED
            assert recipient.reply.startswith("451 4.4.1 cannot connect to 127.0.0.1")
            assert recipient.reason == "connection_failed"


# --- replies from the peer -----------------------------------------------------------------------


async def test_550_for_one_recipient_fails_it_and_delivers_the_others(
    store_url: str, write_config: ConfigWriter, tmp_path: Path
) -> None:
    box = f"secretariat@{HOPITAL_A}"
    unknown = f"nobody@{HOPITAL_A}"
    injected = f"x@{HOPITAL_A}>\r\nRSET\r\nRCPT TO:<{box}"  # never reaches a command line
    async with (
        running_peer(store_url, tmp_path / "a", "peer-a", HOPITAL_A, (box,)) as peer,
        sender(write_config, peer.running.store, {HOPITAL_A: peer.port}) as ours,
    ):
        (result,) = await ours.deliver(HOPITAL_A, [out([unknown, box, injected])])
        failed, delivered, bad = result.recipients
        assert (bad.status, bad.reply) == (Status.FAILED, "553 5.1.3 Invalid recipient address")
        assert failed.status is Status.FAILED and failed.enhanced == "5.1.1"
        assert failed.reply.startswith("550 5.1.1") and failed.from_remote
        assert delivered.status is Status.DELIVERED
        assert await peer.inbox_count(box) == 1
        failures = await audit_events(peer.running.store, ours.sink, "outbound.failed")
        assert len(failures) == 2
        delivered_events = await audit_events(peer.running.store, ours.sink, "outbound.delivered")
        assert [e.peer_ip for e in delivered_events] == ["127.0.0.1"]


async def test_4xx_for_a_recipient_is_deferred(
    sqlite_url: str, write_config: ConfigWriter, tmp_path: Path
) -> None:
    boxes = tuple(f"box{i}@{HOPITAL_A}" for i in range(3))
    async with (
        # The peer takes 2 recipients per transaction and answers 452 4.5.3 to the third.
        running_peer(
            sqlite_url,
            tmp_path / "a",
            "peer-a",
            HOPITAL_A,
            boxes,
            relay_options="max_recipients = 2",
        ) as peer,
        sender(write_config, peer.running.store, {HOPITAL_A: peer.port}) as ours,
    ):
        (result,) = await ours.deliver(HOPITAL_A, [out(list(boxes))])
        statuses = [r.status for r in result.recipients]
        assert statuses == [Status.DELIVERED, Status.DELIVERED, Status.DEFERRED]
        deferred = result.recipients[2]
        assert deferred.reply.startswith("452 4.5.3") and deferred.enhanced == "4.5.3"
        assert await peer.inbox_count(boxes[2]) == 0


async def test_dsn_parameters_are_passed_to_a_peer_advertising_dsn(
    store_url: str, write_config: ConfigWriter, tmp_path: Path
) -> None:
    box = f"secretariat@{HOPITAL_A}"
    async with (
        running_peer(store_url, tmp_path / "a", "peer-a", HOPITAL_A, (box,)) as peer,
        sender(write_config, peer.running.store, {HOPITAL_A: peer.port}) as ours,
    ):
        msg = OutboundMessage(
            sender=SENDER,
            recipients=(
                OutboundRecipient(box, frozenset({"SUCCESS", "FAILURE"}), "rfc822;Sec+1=x@a.test"),
            ),
            data=message(box),
            ret="HDRS",
            envid="env id+=1",
        )
        (result,) = await ours.deliver(HOPITAL_A, [msg])
        assert result.recipients[0].status is Status.DELIVERED
        assert result.recipients[0].dsn_passed
        async with peer.running.store.session() as session:
            row = (await session.execute(select(DsnRequestRow))).scalar_one()
        assert set((row.notify or "").split(",")) == {"SUCCESS", "FAILURE"}
        assert (row.recipient, row.orcpt, row.ret, row.envid) == (
            box,
            "rfc822;Sec+1=x@a.test",
            "HDRS",
            "env id+=1",
        )


def test_dsn_parameters_only_to_a_peer_advertising_dsn() -> None:
    msg = OutboundMessage(
        sender=SENDER,
        recipients=(OutboundRecipient("a@b.test", frozenset(), "rfc822;a@b.test"),),
        data="Subject: é\r\n\r\nx\r\n".encode(),
        ret="FULL",
        envid="e1",
    )
    with_dsn = _Peer(dsn=True, size=1000, eight_bit=True, smtputf8=True)
    without = _Peer(dsn=False, size=None, eight_bit=True, smtputf8=True)
    assert mail_parameters(msg, with_dsn) == ["SIZE=18", "BODY=8BITMIME", "RET=FULL", "ENVID=e1"]
    assert rcpt_parameters(msg.recipients[0], with_dsn) == ["NOTIFY=NEVER", "ORCPT=rfc822;a@b.test"]
    assert mail_parameters(msg, without) == ["BODY=8BITMIME"]
    assert rcpt_parameters(msg.recipients[0], without) == []


# --- destinations: routes, MX, null MX, implicit MX ---------------------------------------------


@dataclass
class DnsServer(asyncio.DatagramProtocol):
    """Answers from `records` ((name, type) → rdata texts), NXDOMAIN for unknown names, an
    empty answer for known names without that type, nothing at all for `silent` names."""

    records: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    silent: set[str] = field(default_factory=set)
    transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        if name in self.silent:
            return
        kind = dns.rdatatype.to_text(question.rdtype)
        response = dns.message.make_response(query)
        texts = self.records.get((name, kind))
        if texts:
            rdatas = [dns.rdata.from_text("IN", kind, t) for t in texts]
            response.answer.append(dns.rrset.from_rdata_list(question.name, 300, rdatas))
        elif not any(n == name for n, _ in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


@pytest.fixture
async def dns_server() -> AsyncIterator[tuple[DnsServer, dns.asyncresolver.Resolver]]:
    server = DnsServer()
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: server, local_addr=("127.0.0.1", 0)
    )
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = transport.get_extra_info("sockname")[1]
    try:
        yield server, resolver
    finally:
        transport.close()


async def test_mx_lookup_finds_the_peer(
    sqlite_url: str,
    write_config: ConfigWriter,
    tmp_path: Path,
    dns_server: tuple[DnsServer, dns.asyncresolver.Resolver],
) -> None:
    server, resolver = dns_server
    box = f"secretariat@{HOPITAL_A}"
    port = _free_port()
    # The best MX does not exist; the second is the peer, reached through /etc/hosts.
    server.records[(HOPITAL_A, "MX")] = ["10 gone.invalid.", "20 localhost."]
    async with (
        running_peer(sqlite_url, tmp_path / "a", "peer-a", HOPITAL_A, (box,), port=port) as peer,
        sender(
            write_config, peer.running.store, {}, outbound=f"mx_port = {port}", resolver=resolver
        ) as ours,
    ):
        (result,) = await ours.deliver(HOPITAL_A, [out([box])])
        assert result.recipients[0].status is Status.DELIVERED
        assert result.recipients[0].remote_mta == "localhost"
        assert await peer.inbox_count(box) == 1


async def test_destination_resolution(
    write_config: ConfigWriter, dns_server: tuple[DnsServer, dns.asyncresolver.Resolver]
) -> None:
    server, resolver = dns_server
    settings = load_settings(
        write_config(
            extra="[outbound]\nmx_port = 2525\ndns_timeout_seconds = 1\n"
            '[outbound.routes]\n"Routed.Test" = "10.0.0.1:26"'
        )
    )
    server.records[("mx.test", "MX")] = ["20 b.mx.test.", "10 a.mx.test.", "30 c.mx.test."]
    server.records[("null.test", "MX")] = ["0 ."]
    server.records[("implicit.test", "A")] = ["192.0.2.1"]
    server.records[("nothing.test", "TXT")] = ['"v=spf1 -all"']
    server.silent.add("slow.test")

    routed = await resolve_destination("routed.test", settings, resolver)
    assert [(t.host, t.port) for t in routed.targets] == [("10.0.0.1", 26)]
    mx = await resolve_destination("mx.test", settings, resolver)
    assert [(t.host, t.port) for t in mx.targets] == [
        ("a.mx.test", 2525),
        ("b.mx.test", 2525),
        ("c.mx.test", 2525),
    ]
    implicit = await resolve_destination("implicit.test", settings, resolver)
    assert [t.host for t in implicit.targets] == ["implicit.test"]
    for domain, code, enhanced in (
        ("null.test", 556, "5.1.10"),  # RFC 7505
        ("nothing.test", 550, "5.1.2"),  # neither MX nor address
        ("absent.test", 550, "5.1.2"),  # NXDOMAIN
        ("slow.test", 451, "4.4.3"),  # timeout: try again later
    ):
        resolution = await resolve_destination(domain, settings, resolver)
        assert resolution.targets == ()
        assert resolution.error is not None
        assert (resolution.error.code, resolution.error.enhanced) == (code, enhanced), domain


def test_equal_mx_preferences_are_shuffled() -> None:
    import random

    records = [(10, "a"), (10, "b"), (10, "c"), (5, "first")]
    seen = {tuple(order_mx(records, random.Random(seed))) for seed in range(30)}
    assert all(order[0] == "first" for order in seen)
    assert len(seen) > 1  # the three of preference 10 do not always come in one order


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            '[outbound.routes]\n"a.test" = "nohost"',
            r"outbound\.routes\.a\.test: expected HOST:PORT",
        ),
        ('[outbound.routes]\n"not a domain" = "h:25"', r"outbound\.routes: 'not a domain'"),
        ("[outbound]\nmax_connections_per_destination = 0", r"outbound\.max_connections_per"),
        ("[outbound]\ndata_timeout_seconds = 0", r"outbound\.data_timeout_seconds: must be"),
        ("[outbound]\nmx_port = 70000", r"outbound\.mx_port"),
    ],
)
def test_outbound_configuration_errors(
    write_config: ConfigWriter, table: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(write_config(extra=table))


def test_xtext_round_trip() -> None:
    from mssante.operator.smtp.params import decode_xtext, encode_xtext

    for text in ("plain@x.test", "a+b=c d", "é\x01~!"):
        encoded = encode_xtext(text)
        assert encoded.isascii() and " " not in encoded and "=" not in encoded
        assert decode_xtext(encoded).encode("latin-1") == text.encode("utf-8")
    assert encode_xtext("a+b=c d") == "a+2Bb+3Dc+20d"


# --- peers that are not mssante: aiosmtpd as a plain SMTP server --------------------------------


@dataclass
class Capture:
    envelopes: list[Envelope] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802 - aiosmtpd's hook name
        self.envelopes.append(envelope)
        return "250 2.0.0 Ok"


@contextlib.asynccontextmanager
async def aiosmtpd_peer(*, tls: bool) -> AsyncIterator[tuple[Capture, int]]:
    """aiosmtpd with peer-a's certificate: STARTTLS offered (or not), no DSN extension."""
    capture = Capture()
    context = (
        server_context("mssante", FIXTURES / "peer-a.pem", FIXTURES / "peer-a.key", None, "none")
        if tls
        else None
    )
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(capture, tls_context=context, hostname="mx.other.test"), "127.0.0.1", 0
    )
    try:
        yield capture, int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


async def test_peer_without_starttls_gets_nothing(
    sqlite_store: Store, write_config: ConfigWriter
) -> None:
    box = f"secretariat@{HOPITAL_A}"
    async with (
        aiosmtpd_peer(tls=False) as (capture, port),
        sender(write_config, sqlite_store, {HOPITAL_A: port}) as ours,
    ):
        (result,) = await ours.deliver(HOPITAL_A, [out([box])])
        (recipient,) = result.recipients
        assert (recipient.status, recipient.reason) == (Status.DEFERRED, "no_starttls")
        assert recipient.reply.startswith("451 4.7.10")
        assert capture.envelopes == []
        refusals = await audit_events(sqlite_store, ours.sink, "outbound.peer_refused")
        assert [(e.details or {}).get("reason") for e in refusals] == ["no_starttls"]


async def test_peer_without_dsn_gets_no_dsn_parameters_and_we_keep_responsibility(
    sqlite_store: Store, write_config: ConfigWriter
) -> None:
    box = f"secretariat@{HOPITAL_A}"
    async with (
        aiosmtpd_peer(tls=True) as (capture, port),
        sender(write_config, sqlite_store, {HOPITAL_A: port}) as ours,
    ):
        msg = OutboundMessage(
            sender=SENDER,
            recipients=(OutboundRecipient(box, frozenset({"SUCCESS"}), f"rfc822;{box}"),),
            data=message(box),
            ret="HDRS",
            envid="e1",
        )
        (result,) = await ours.deliver(HOPITAL_A, [msg])
        (recipient,) = result.recipients
        assert recipient.status is Status.DELIVERED and not recipient.dsn_passed
        (envelope,) = capture.envelopes
        assert envelope.rcpt_tos == [box]
        options = " ".join([*envelope.mail_options, *envelope.rcpt_options]).upper()
        assert "NOTIFY" not in options and "RET=" not in options and "ENVID" not in options
        assert "SIZE=" in options  # the peer advertised SIZE


async def test_mail_refused_fails_every_recipient(
    sqlite_url: str, write_config: ConfigWriter, tmp_path: Path
) -> None:
    box = f"secretariat@{HOPITAL_A}"
    async with (
        running_peer(sqlite_url, tmp_path / "a", "peer-a", HOPITAL_A, (box,)) as peer,
        sender(
            write_config,
            peer.running.store,
            {HOPITAL_A: peer.port},
            outbound="max_connections_per_destination = 1",
        ) as ours,
    ):
        # Our certificate is not listed for hopital-a's domain: the peer refuses at MAIL.
        msg = OutboundMessage(
            sender=f"someone@{HOPITAL_A}",
            recipients=(OutboundRecipient(box), OutboundRecipient(f"other@{HOPITAL_A}")),
            data=message(box),
        )
        result, following = await ours.deliver(HOPITAL_A, [msg, out([box], ref="next")])
        assert {(r.status, r.enhanced) for r in result.recipients} == {(Status.FAILED, "5.7.1")}
        assert following.recipients[0].status is Status.DELIVERED
        assert following.connection == result.connection
        # The same connection goes on with the next message after RSET.
        assert await peer.inbox_count(box) == 1


@dataclass
class Misbehaving:
    """aiosmtpd hooks: drop the connection at the end of DATA, or never answer it."""

    mode: str
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802 - aiosmtpd's hook name
        if self.mode == "drop":
            assert server.transport is not None
            server.transport.abort()
        else:
            await self.release.wait()
        return "250 2.0.0 Ok"


@pytest.mark.parametrize("mode", ["drop", "silent"])
async def test_no_reply_to_the_final_dot_is_deferred(
    sqlite_store: Store, write_config: ConfigWriter, mode: str
) -> None:
    box = f"secretariat@{HOPITAL_A}"
    handler = Misbehaving(mode)
    context = server_context(
        "mssante", FIXTURES / "peer-a.pem", FIXTURES / "peer-a.key", None, "none"
    )
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(handler, tls_context=context, hostname="mx.other.test"), "127.0.0.1", 0
    )
    port = int(server.sockets[0].getsockname()[1])
    try:
        async with sender(
            write_config, sqlite_store, {HOPITAL_A: port}, outbound="data_timeout_seconds = 1"
        ) as ours:
            (result,) = await ours.deliver(HOPITAL_A, [out([box])])
    finally:
        handler.release.set()
        server.close()
        await server.wait_closed()
    (recipient,) = result.recipients
    # Without the reply to the final dot nothing counts as delivered (the queue retries; the
    # recorded Message-ID makes a duplicate visible).
    assert (recipient.status, recipient.reason) == (Status.DEFERRED, "connection_failed")
    assert recipient.reply.startswith("451 4.4.1 connection to 127.0.0.1 lost")
