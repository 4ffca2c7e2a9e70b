"""Helpers for the PKI tests: the committed test hierarchy, a certificate factory, and a real
TLS handshake over a loopback socket."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mssante.pki.tls import peer_identity

FIXTURES_DIR = Path(__file__).parents[2] / "tls-fixtures"

T2025 = datetime(2025, 1, 1, tzinfo=UTC)
T2045 = datetime(2045, 1, 1, tzinfo=UTC)
NOW_IN_RANGE = datetime(2030, 6, 1, tzinfo=UTC)

SERVER_EKU = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)


@dataclass(frozen=True)
class Fixtures:
    """The generated hierarchy in a directory, read through its fixtures.json index."""

    root: Path
    index: dict[str, Any]

    @classmethod
    def open(cls, root: Path) -> Fixtures:
        return cls(root, json.loads((root / "fixtures.json").read_text(encoding="utf-8")))

    def path(self, name: str) -> Path:
        return self.root / name

    def info(self, name: str) -> dict[str, Any]:
        info: dict[str, Any] = self.index["files"][_pem(name)]
        return info

    def cert(self, name: str) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.path(_pem(name)).read_bytes())

    def key(self, name: str) -> CertificateIssuerPrivateKeyTypes:
        key = serialization.load_pem_private_key(
            self.path(f"{name.removesuffix('.pem')}.key").read_bytes(), password=None
        )
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise TypeError(f"unexpected key type {type(key).__name__}")
        return key

    def names(self, role: str) -> list[str]:
        return sorted(
            name.removesuffix(".pem")
            for name, info in self.index["files"].items()
            if info["role"] == role and name.endswith(".pem")
        )

    def subject(self, name: str) -> str:
        subject: str = self.info(name)["subject"]
        return subject

    @property
    def bundle(self) -> Path:
        return self.path(self.index["trust_bundle"])

    @property
    def crl_paths(self) -> list[Path]:
        return [self.path(name) for name in self.index["crls"]]


def _pem(name: str) -> str:
    return name if name.endswith((".pem", ".xml", ".json", ".md")) else f"{name}.pem"


def simple_name(cn: str, ou: str = "1310000019", o: str = "TEST") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, o),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


@dataclass
class Made:
    cert: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes


def issue(
    subject: x509.Name,
    issuer: Made | None,
    *,
    issuer_name: x509.Name | None = None,
    ca: bool = False,
    path_length: int | None = None,
    key_cert_sign: bool | None = None,
    digital_signature: bool | None = None,
    eku: Sequence[x509.ObjectIdentifier] | None = SERVER_EKU,
    not_before: datetime = T2025,
    not_after: datetime = T2045,
    aki: bool = True,
    extra: Sequence[tuple[x509.ExtensionType, bool]] = (),
    key: CertificateIssuerPrivateKeyTypes | None = None,
) -> Made:
    """Make a certificate with an EC key (fast); ``issuer=None`` makes it self-signed.

    ``issuer_name`` overrides the issuer field (to forge a certificate that claims an issuer
    whose key did not sign it).
    """
    own_key = key or ec.generate_private_key(ec.SECP256R1())
    signer = issuer.key if issuer is not None else own_key
    public = own_key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(
            issuer_name
            if issuer_name is not None
            else (issuer.cert.subject if issuer is not None else subject)
        )
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=(not ca) if digital_signature is None else digital_signature,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca if key_cert_sign is None else key_cert_sign,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    if aki and issuer is not None:
        # The key identifier of the issuer *certificate* (RFC 5280 §4.2.1.1), so a forged
        # certificate can claim a CA's identifier while being signed by another key.
        issuer_ski = issuer.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski.value),
            critical=False,
        )
    if eku is not None and not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    for extension, critical in extra:
        builder = builder.add_extension(extension, critical=critical)
    return Made(builder.sign(signer, hashes.SHA256()), own_key)


@dataclass
class Handshake:
    """Outcome of one TLS connection attempt, seen from both ends."""

    client_error: BaseException | None = None
    server_error: BaseException | None = None
    version: str | None = None
    cipher: str | None = None
    server_saw: x509.Certificate | None = None
    client_saw: x509.Certificate | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.client_error is None and self.server_error is None


def handshake(
    server: ssl.SSLContext,
    client: ssl.SSLContext,
    server_hostname: str = "localhost",
    timeout: float = 5.0,
) -> Handshake:
    """Connect ``client`` to a one-shot server on 127.0.0.1 and exchange a ping/pong."""
    result = Handshake()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(timeout)
    port = listener.getsockname()[1]

    def serve() -> None:
        try:
            connection, _ = listener.accept()
            connection.settimeout(timeout)
            with server.wrap_socket(connection, server_side=True) as tls:
                result.server_saw = peer_identity(tls)
                if tls.recv(4) == b"ping":
                    tls.sendall(b"pong")
        except Exception as exc:
            result.server_error = exc

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw,
            client.wrap_socket(raw, server_hostname=server_hostname) as tls,
        ):
            result.version = tls.version()
            cipher = tls.cipher()
            result.cipher = cipher[0] if cipher else None
            result.client_saw = peer_identity(tls)
            tls.sendall(b"ping")
            # TLS 1.3 servers refuse a client certificate after the client's handshake has
            # completed, so the refusal only shows on the first read.
            if tls.recv(4) != b"pong":
                raise ConnectionError("server closed the connection")
    except Exception as exc:
        result.client_error = exc
    finally:
        thread.join(timeout)
        listener.close()
    return result


def make_crl(
    issuer: Made,
    *,
    number: int | None = 1,
    revoked: Sequence[int] = (),
    this_update: datetime = T2025,
    next_update: datetime = T2045,
    issuer_name: x509.Name | None = None,
) -> bytes:
    """A PEM CRL signed by ``issuer`` (optionally claiming another issuer name)."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer_name or issuer.cert.subject)
        .last_update(this_update)
        .next_update(next_update)
    )
    if number is not None:
        builder = builder.add_extension(x509.CRLNumber(number), critical=False)
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(this_update)
            .build()
        )
    return builder.sign(issuer.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
