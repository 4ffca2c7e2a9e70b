"""DKIM verification: real signatures made with dkimpy, keys from static_keys or a real DNS server.

The DNS server is a small UDP responder on 127.0.0.1 built with dnspython's message API; the
verifier talks to it with its ordinary asyncio resolver.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import cast

import dkim as dkimpy  # type: ignore[import-untyped]
import dns.asyncresolver
import dns.message
import dns.rcode
import dns.rdata
import dns.rrset
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from mssante.config import DkimSettings
from mssante.operator.dkim import (
    NO_SIGNATURE,
    THREAD_THRESHOLD,
    DkimResult,
    DkimVerdict,
    DkimVerifier,
    result_clauses,
)
from mssante.operator.mime import split_header

DOMAIN = "hopital-x.mssante.test"
SELECTOR = "s2025"
KEY_NAME = f"{SELECTOR}._domainkey.{DOMAIN}"
MESSAGE = (
    b"From: Dr Jean Martin <jean.martin@hopital-x.mssante.test>\r\n"
    b"To: secretariat@cabinet-y.mssante.test\r\n"
    b"Subject: Compte rendu\r\n"
    b"Date: Mon, 24 Nov 2025 09:30:00 +0100\r\n"
    b"Message-ID: <cr-1@hopital-x.mssante.test>\r\n"
    b"\r\n"
    b"Bonjour,\r\nci-joint le compte rendu.\r\n"
)


@dataclass(frozen=True)
class Key:
    private_pem: bytes
    record: str  # the TXT record publishing the public key (RFC 6376 §3.6.1)


def make_key() -> Key:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(Encoding.PEM, PrivateFormat.TraditionalOpenSSL, NoEncryption())
    public = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return Key(private, "v=DKIM1; k=rsa; p=" + base64.b64encode(public).decode("ascii"))


def sign(message: bytes, key: Key, domain: str = DOMAIN, selector: str = SELECTOR) -> bytes:
    signature: bytes = dkimpy.sign(
        message,
        selector.encode(),
        domain.encode(),
        key.private_pem,
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    )
    return signature + message


def signatures(message: bytes) -> list[str]:
    return [f.value for f in split_header(message).fields if f.name == "dkim-signature"]


@pytest.fixture(scope="module")
def key() -> Key:
    return make_key()


@dataclass
class DnsServer(asyncio.DatagramProtocol):
    """Answers TXT queries from `records`, NXDOMAIN otherwise, nothing at all for `silent`."""

    records: dict[str, str] = field(default_factory=dict)
    silent: set[str] = field(default_factory=set)
    queries: list[str] = field(default_factory=list)
    transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        qname = query.question[0].name
        name = qname.to_text(omit_final_dot=True).lower()
        self.queries.append(name)
        if name in self.silent:
            return
        response = dns.message.make_response(query)
        if name in self.records:
            text = self.records[name]
            # TXT character-strings are at most 255 octets (RFC 1035 §3.3.14).
            chunks = " ".join(f'"{text[i : i + 200]}"' for i in range(0, len(text), 200))
            rdata = dns.rdata.from_text("IN", "TXT", chunks)
            response.answer.append(dns.rrset.from_rdata(qname, 300, rdata))
        else:
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


def static(key: Key, timeout: float = 2.0) -> DkimSettings:
    return DkimSettings(dns_timeout_seconds=timeout, static_keys={KEY_NAME: key.record})


async def test_valid_signature_passes(key: Key) -> None:
    signed = sign(MESSAGE, key)
    verdict = await DkimVerifier(static(key)).verify(signed, signatures(signed))
    assert verdict == DkimVerdict((DkimResult("pass", DOMAIN, SELECTOR),))
    assert verdict.summary == "pass"


async def test_body_altered_after_signing_fails(key: Key) -> None:
    signed = sign(MESSAGE, key).replace(b"compte rendu.", b"compte rendu!")
    verdict = await DkimVerifier(static(key)).verify(signed, signatures(signed))
    assert verdict.results == (DkimResult("fail", DOMAIN, SELECTOR, "body hash mismatch"),)


async def test_signed_header_altered_fails(key: Key) -> None:
    signed = sign(MESSAGE, key).replace(b"Subject: Compte rendu", b"Subject: Compte rendu 2")
    verdict = await DkimVerifier(static(key)).verify(signed, signatures(signed))
    assert verdict.results == (DkimResult("fail", DOMAIN, SELECTOR, "signature did not verify"),)


async def test_message_without_signature_is_none(key: Key) -> None:
    verdict = await DkimVerifier(static(key)).verify(MESSAGE, signatures(MESSAGE))
    assert verdict is NO_SIGNATURE
    assert verdict.summary == "none"
    assert result_clauses(verdict) == ["dkim=none"]


async def test_signature_by_another_key_fails(key: Key) -> None:
    signed = sign(MESSAGE, make_key())  # published key is `key`, signer used another one
    verdict = await DkimVerifier(static(key)).verify(signed, signatures(signed))
    assert verdict.summary == "fail"


async def test_malformed_signature_is_permerror(key: Key) -> None:
    broken = b"DKIM-Signature: v=1; a=rsa-sha256; s=s2025; b=AAAA\r\n" + MESSAGE
    verdict = await DkimVerifier(static(key)).verify(broken, signatures(broken))
    assert verdict.results == (DkimResult("permerror", None, "s2025", "malformed d= or s="),)
    missing_bh = (
        b"DKIM-Signature: v=1; a=rsa-sha256; d=" + DOMAIN.encode() + b"; s=s2025; "
        b"h=from; b=AAAA\r\n" + MESSAGE
    )
    verdict = await DkimVerifier(static(key)).verify(missing_bh, signatures(missing_bh))
    assert verdict.results == (DkimResult("permerror", DOMAIN, SELECTOR, "malformed signature"),)


async def test_unusable_published_key_is_permerror(key: Key) -> None:
    signed = sign(MESSAGE, key)
    settings = DkimSettings(static_keys={KEY_NAME: "v=DKIM1; k=rsa; p=bm90IGEga2V5"})
    verdict = await DkimVerifier(settings).verify(signed, signatures(signed))
    assert verdict.results == (DkimResult("permerror", DOMAIN, SELECTOR, "unusable key"),)


async def test_two_signatures_one_passing_summarise_as_pass(key: Key) -> None:
    other = make_key()
    once = sign(MESSAGE, other, domain="cabinet-y.mssante.test", selector="old")
    twice = sign(once, key)  # the newest signature is on top
    settings = DkimSettings(
        static_keys={KEY_NAME: key.record, "old._domainkey.cabinet-y.mssante.test": key.record}
    )
    verdict = await DkimVerifier(settings).verify(twice, signatures(twice))
    assert [r.result for r in verdict.results] == ["pass", "fail"]
    assert verdict.summary == "pass"
    assert result_clauses(verdict) == [
        f"dkim=pass header.d={DOMAIN} header.s={SELECTOR}",
        'dkim=fail reason="signature did not verify" header.d=cabinet-y.mssante.test header.s=old',
    ]


async def test_large_message_is_verified_off_the_event_loop(key: Key) -> None:
    big = MESSAGE + b"x" * 998 + b"\r\n"
    big += (b"y" * 998 + b"\r\n") * (THREAD_THRESHOLD // 1000 + 10)
    assert len(big) > THREAD_THRESHOLD
    signed = sign(big, key)
    verdict = await DkimVerifier(static(key)).verify(signed, signatures(signed))
    assert verdict.summary == "pass"


async def test_key_fetched_over_dns_then_cached(
    key: Key, dns_server: tuple[DnsServer, dns.asyncresolver.Resolver]
) -> None:
    server, resolver = dns_server
    server.records[KEY_NAME] = key.record
    verifier = DkimVerifier(DkimSettings(dns_timeout_seconds=2.0), resolver=resolver)
    signed = sign(MESSAGE, key)
    for _ in range(3):
        verdict = await verifier.verify(signed, signatures(signed))
        assert verdict.summary == "pass"
    assert server.queries == [KEY_NAME]


async def test_static_key_is_used_before_dns(
    key: Key, dns_server: tuple[DnsServer, dns.asyncresolver.Resolver]
) -> None:
    server, resolver = dns_server
    verifier = DkimVerifier(static(key), resolver=resolver)
    signed = sign(MESSAGE, key)
    assert (await verifier.verify(signed, signatures(signed))).summary == "pass"
    assert server.queries == []


async def test_no_key_published_is_permerror(
    key: Key, dns_server: tuple[DnsServer, dns.asyncresolver.Resolver]
) -> None:
    server, resolver = dns_server
    verifier = DkimVerifier(DkimSettings(dns_timeout_seconds=2.0), resolver=resolver)
    signed = sign(MESSAGE, key)
    for _ in range(2):
        verdict = await verifier.verify(signed, signatures(signed))
        assert verdict.results == (
            DkimResult("permerror", DOMAIN, SELECTOR, "no key for signature"),
        )
    assert server.queries == [KEY_NAME]  # the absence is remembered for a while


async def test_dns_timeout_is_temperror_and_does_not_block_the_loop(
    key: Key, dns_server: tuple[DnsServer, dns.asyncresolver.Resolver]
) -> None:
    server, resolver = dns_server
    server.silent.add(KEY_NAME)
    verifier = DkimVerifier(DkimSettings(dns_timeout_seconds=0.3), resolver=resolver)
    signed = sign(MESSAGE, key)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    running = asyncio.create_task(ticker())
    try:
        verdict = await verifier.verify(signed, signatures(signed))
    finally:
        running.cancel()
    assert verdict.results == (DkimResult("temperror", DOMAIN, SELECTOR, "key query timed out"),)
    assert ticks > 0  # other tasks ran while the lookup waited
    server.silent.clear()
    server.records[KEY_NAME] = key.record
    # A temporary failure is not remembered: the next message tries again.
    assert (await verifier.verify(signed, signatures(signed))).summary == "pass"
