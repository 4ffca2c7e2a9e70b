"""AUTHENTICATE EXTERNAL (rfc/4422 App. A) with health-PKI client certificates: the real
operator, real TLS presenting the `tls-fixtures/` certificates, Python's imaplib."""

from __future__ import annotations

import asyncio
import base64
import datetime
import imaplib
import json
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from mssante.config import load_settings
from mssante.operator.passwords import hash_async
from mssante.operator.store import audit, domains, mailboxes
from mssante.operator.store.migrate import upgrade
from mssante.operator.store.schema import BindingKind, MailboxState, MailboxType
from mssante.pki.anchors import load_certificates
from mssante.pki.identity import identity_of
from mssante.server import Running, start, stop

ConfigWriter = Callable[..., Path]
FIXTURES = Path(__file__).parents[3] / "tls-fixtures"
INDEX = json.loads((FIXTURES / "fixtures.json").read_text())["files"]
DOMAIN = "hopital-x.mssante.test"
DUPONT = f"jean.dupont@{DOMAIN}"  # PER of pro-1's national id
ROBOT = f"robot@{DOMAIN}"  # APP, bound to pro-2 by fingerprint
PASSWORD = "correct-horse-battery"
FAILED = "[AUTHENTICATIONFAILED] Authentication failed"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Imap:
    running: Running
    port: int
    tls_port: int
    tmp: Path

    def context(self, cert: str | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(FIXTURES / "ca-bundle.pem"))
        ctx.check_hostname = False  # the test certificate names the operator, not 127.0.0.1
        if cert is not None:
            folder = self.tmp if (self.tmp / f"{cert}.pem").exists() else FIXTURES
            ctx.load_cert_chain(folder / f"{cert}.pem", folder / f"{cert}.key")
        return ctx

    def tls(self, cert: str | None = None) -> imaplib.IMAP4_SSL:
        return imaplib.IMAP4_SSL(
            "127.0.0.1", self.tls_port, ssl_context=self.context(cert), timeout=10
        )

    def starttls(self, cert: str | None = None) -> imaplib.IMAP4:
        client = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
        client.starttls(ssl_context=self.context(cert))
        return client

    async def refusals(self) -> list[dict[str, Any]]:
        imap = self.running.imap
        assert imap is not None
        await imap.audit_sink.flush()
        async with self.running.store.read_session() as session:
            events = await audit.recent(session, event="imap.login")
        return [e.details or {} for e in events if e.outcome.value == "refused"]


@pytest.fixture
async def imap(store_url: str, write_config: ConfigWriter, tmp_path: Path) -> AsyncIterator[Imap]:
    await upgrade(store_url)
    port, tls_port = _free_port(), _free_port()
    crls = [str(FIXTURES / f"{ca}.crl.pem") for ca in ("root-ca", "org-ca", "pro-ca")]
    path = write_config(
        database_url=store_url,
        pki=f"crls = {json.dumps(crls)}",
        extra=(
            "[metrics]\nenabled = false\n[relay]\nenabled = false\n"
            "[submission]\nenabled = false\n[dkim]\nverify = false\n"
            f'[imap]\nenabled = true\nlisten = "127.0.0.1:{port}"\n'
            f'implicit_tls_listen = "127.0.0.1:{tls_port}"\nlogin_failures_before_delay = 50\n'
        ),
    )
    running = await start(load_settings(path))
    password_hash = await hash_async(PASSWORD)
    pro2 = identity_of(load_certificates(FIXTURES / "pro-2.pem")[0])
    async with running.store.session() as session:
        await domains.add_domain(session, DOMAIN)
        await mailboxes.create_mailbox(
            session,
            DUPONT,
            MailboxType.PER,
            password_hash=password_hash,
            national_id=INDEX["pro-1.pem"]["national_id"],
        )
        await mailboxes.create_mailbox(
            session,
            f"ancien@{DOMAIN}",
            MailboxType.PER,
            national_id=INDEX["pro-2.pem"]["national_id"],
            state=MailboxState.DISABLED,
        )
        await mailboxes.create_mailbox(session, ROBOT, MailboxType.APP)
        await mailboxes.bind_certificate(session, ROBOT, BindingKind.FINGERPRINT, pro2.sha256)
        await session.commit()
    _no_eku_certificate(tmp_path)
    try:
        yield Imap(running, port, tls_port, tmp_path)
    finally:
        await stop(running)


def _no_eku_certificate(folder: Path) -> None:
    """pro-1's subject issued by the test pro-ca without extendedKeyUsage: OpenSSL lets it
    through the handshake (no EKU means any purpose to it), the PKI layer refuses it."""
    ca_cert = load_certificates(FIXTURES / "pro-ca.pem")[0]
    ca_key = serialization.load_pem_private_key((FIXTURES / "pro-ca.key").read_bytes(), None)
    assert isinstance(ca_key, rsa.RSAPrivateKey)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, INDEX["pro-1.pem"]["national_id"]),
            x509.NameAttribute(NameOID.COMMON_NAME, "810001234567/Jean DUPONT"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "pro-noeku.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "pro-noeku.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _external(client: imaplib.IMAP4, authzid: bytes = b"") -> tuple[str, list[Any]]:
    """AUTHENTICATE EXTERNAL answering the empty challenge with `authzid` (rfc/4422 App. A)."""
    return client.authenticate("EXTERNAL", lambda _challenge: authzid)


def _external_refused(client: imaplib.IMAP4, authzid: bytes = b"") -> str:
    with pytest.raises(imaplib.IMAP4.error) as info:
        _external(client, authzid)
    return str(info.value)


def _sasl_ir(client: imaplib.IMAP4, response: str) -> tuple[str, list[Any]]:
    """AUTHENTICATE EXTERNAL with the initial response on the command line (rfc/4959)."""
    return client._simple_command("AUTHENTICATE", "EXTERNAL", response)  # type: ignore[attr-defined,no-any-return]


async def test_professional_certificate_logs_in_to_their_per_mailbox(imap: Imap) -> None:
    def run() -> None:
        with imap.tls("pro-1") as client:
            assert "AUTH=EXTERNAL" in client.capabilities
            typ, data = _sasl_ir(client, "=")  # rfc/4959: "=" is an empty initial response
            assert typ == "OK", data
            client.state = "AUTH"  # imaplib does not track a raw AUTHENTICATE
            typ, data = client.select("INBOX")
            assert typ == "OK", data
            client.logout()
        # STARTTLS, the empty response after the continuation, and the authzid named.
        with imap.starttls("pro-1") as client:
            typ, data = _external(client, DUPONT.encode())
            assert typ == "OK", data
            assert client.select("INBOX")[0] == "OK"
            client.logout()

    await asyncio.to_thread(run)
    imap_server = imap.running.imap
    assert imap_server is not None
    await imap_server.audit_sink.flush()
    async with imap.running.store.read_session() as session:
        logins = await audit.recent(session, event="imap.login")
    ok = [e for e in logins if e.outcome.value == "ok"]
    assert len(ok) == 2
    assert ok[0].target == DUPONT
    assert ok[0].details is not None and ok[0].details["mechanism"] == "EXTERNAL"
    assert ok[0].details["subject"] == INDEX["pro-1.pem"]["subject"]


async def test_certificate_refusals_say_authentication_failed_and_audit_why(imap: Imap) -> None:
    cases = [
        (None, "no_certificate"),
        ("peer-expired", "invalid_certificate:expired"),
        ("pro-revoked", "invalid_certificate:revoked"),
        ("pro-noeku", "invalid_certificate:wrong_usage"),
    ]

    def run() -> list[str]:
        answers = []
        for cert, _ in cases:
            with imap.tls(cert) as client:
                assert ("AUTH=EXTERNAL" in client.capabilities) is (cert is not None)
                answers.append(_external_refused(client))
                # The session goes on: a password login still works on it.
                if cert is None:
                    assert client.login(DUPONT, PASSWORD)[0] == "OK"
                client.logout()
        return answers

    answers = await asyncio.to_thread(run)
    assert all(FAILED in answer for answer in answers), answers
    refusals = await imap.refusals()
    reasons = [r["reason"] for r in reversed(refusals)]
    assert reasons == [reason for _, reason in cases]
    assert all(r["mechanism"] == "EXTERNAL" for r in refusals)
    expired = next(r for r in refusals if r["reason"] == "invalid_certificate:expired")
    assert expired["subject"] == INDEX["peer-expired.pem"]["subject"]
    assert len(expired["fingerprint"]) == 64


async def test_mapping_refusals_and_fingerprint_binding(imap: Imap) -> None:
    def run() -> list[str]:
        answers = []
        # pro-2's national id names only a DISABLED PER mailbox; its fingerprint is bound to
        # the APP mailbox ROBOT: that one is chosen.
        with imap.tls("pro-2") as client:
            typ, data = _external(client)
            assert typ == "OK", data
            assert client.select("INBOX")[0] == "OK"
            client.logout()
        with imap.tls("pro-2") as client:
            answers.append(_external_refused(client, DUPONT.encode()))  # not pro-2's mailbox
            client.logout()
        with imap.tls("pro-1") as client:
            answers.append(_external_refused(client, ROBOT.encode()))  # not pro-1's mailbox
            client.logout()
        # A valid certificate that maps to no mailbox: peer-c (an operator's certificate,
        # clientAuth allowed, no national id, no binding).
        with imap.tls("peer-c") as client:
            answers.append(_external_refused(client))
            client.logout()
        return answers

    answers = await asyncio.to_thread(run)
    assert all(FAILED in answer for answer in answers), answers
    reasons = [r["reason"] for r in reversed(await imap.refusals())]
    assert reasons == ["authzid_not_mapped", "authzid_not_mapped", "no_mailbox"]


async def test_external_needs_tls_and_passwords_still_work(imap: Imap) -> None:
    def run() -> None:
        client = imaplib.IMAP4("127.0.0.1", imap.port, timeout=10)
        try:
            assert "AUTH=EXTERNAL" not in client.capabilities
            typ, data = client._simple_command(  # type: ignore[attr-defined]
                "AUTHENTICATE", "EXTERNAL", "="
            )
            assert typ == "NO"
            assert data == [b"[PRIVACYREQUIRED] TLS required"], data
        finally:
            client.logout()
        # Without a client certificate EXTERNAL is not offered (SASL libraries would pick it).
        with imap.starttls() as client:
            assert "AUTH=EXTERNAL" not in client.capabilities
            assert "AUTH=PLAIN" in client.capabilities
            assert client.login(DUPONT, PASSWORD)[0] == "OK"
            client.logout()
        with imap.starttls("pro-1") as client:
            assert "AUTH=EXTERNAL" in client.capabilities
            client.logout()
        # A certificate from a CA outside the trust anchors fails the TLS handshake itself
        # (OpenSSL verifies any certificate sent, as for the relay).
        foreign = imap.context("foreign")  # loads: the refusal below is the server's
        with pytest.raises((ssl.SSLError, ConnectionError)):
            imaplib.IMAP4_SSL("127.0.0.1", imap.tls_port, ssl_context=foreign, timeout=10)
        # An authorization identity that is not UTF-8 is malformed, not a failed login.
        with imap.tls("pro-1") as client:
            with pytest.raises(imaplib.IMAP4.error) as info:
                client._simple_command(  # type: ignore[attr-defined]
                    "AUTHENTICATE", "EXTERNAL", base64.b64encode(b"\xff").decode()
                )
            assert "malformed EXTERNAL response (rfc 4422)" in str(info.value)
            client.logout()

    await asyncio.to_thread(run)
