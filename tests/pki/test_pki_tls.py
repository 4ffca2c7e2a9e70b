"""TLS profiles (mssante.pki.tls), exercised with real handshakes over 127.0.0.1."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from pki_support import Fixtures, handshake

from mssante.pki.anchors import TrustStore
from mssante.pki.errors import CertificateLoadError, PkiError
from mssante.pki.tls import (
    MSSANTE_CIPHERS,
    ClientCertMode,
    client_context,
    peer_identity,
    server_context,
)
from mssante.pki.validation import Purpose, validate_chain

ANS_SUITES = MSSANTE_CIPHERS.split(":")


def _server(
    fx: Fixtures, profile: str = "mssante", client_cert: ClientCertMode = "none"
) -> ssl.SSLContext:
    return server_context(
        profile, fx.path("operator.pem"), fx.path("operator.key"), fx.bundle, client_cert
    )


def _client(fx: Fixtures, profile: str = "mssante", name: str | None = None) -> ssl.SSLContext:
    if name is None:
        return client_context(profile, fx.bundle)
    return client_context(profile, fx.bundle, fx.path(f"{name}.pem"), fx.path(f"{name}.key"))


def _raw_client(
    fx: Fixtures, version: ssl.TLSVersion, ciphers: str | None = None
) -> ssl.SSLContext:
    """A client outside our profiles, as a non-conforming peer would be."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(fx.bundle))
    context.minimum_version = context.maximum_version = version
    if ciphers is not None:
        context.set_ciphers(ciphers)
    return context


def test_mssante_profile_offers_exactly_the_ans_suites(fx: Fixtures) -> None:
    for context in (_server(fx), _client(fx)):
        tls12 = [c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
        assert tls12 == ANS_SUITES
        assert context.minimum_version == context.maximum_version == ssl.TLSVersion.TLSv1_2
        assert context.options & ssl.OP_NO_COMPRESSION
        assert context.options & ssl.OP_NO_RENEGOTIATION
        assert context.options & ssl.OP_CIPHER_SERVER_PREFERENCE


@pytest.mark.parametrize("suite", ANS_SUITES)
def test_mssante_server_accepts_each_ans_suite(fx: Fixtures, suite: str) -> None:
    result = handshake(_server(fx), _raw_client(fx, ssl.TLSVersion.TLSv1_2, suite))
    assert result.ok, (result.client_error, result.server_error)
    assert result.version == "TLSv1.2"
    assert result.cipher == suite
    assert result.client_saw == fx.cert("operator")


def test_mssante_server_prefers_its_first_suite(fx: Fixtures) -> None:
    result = handshake(_server(fx), _client(fx))
    assert result.ok
    assert (result.version, result.cipher) == ("TLSv1.2", "ECDHE-RSA-AES256-GCM-SHA384")


def test_mssante_server_refuses_tls13_only_client(fx: Fixtures) -> None:
    result = handshake(_server(fx), _raw_client(fx, ssl.TLSVersion.TLSv1_3))
    assert isinstance(result.client_error, ssl.SSLError)
    assert isinstance(result.server_error, ssl.SSLError)


@pytest.mark.parametrize("suite", ["AES128-GCM-SHA256", "ECDHE-RSA-CHACHA20-POLY1305"])
def test_mssante_server_refuses_other_tls12_suites(fx: Fixtures, suite: str) -> None:
    result = handshake(_server(fx), _raw_client(fx, ssl.TLSVersion.TLSv1_2, suite))
    assert isinstance(result.server_error, ssl.SSLError)
    assert "no shared cipher" in str(result.server_error).lower()
    assert result.client_error is not None


def test_modern_accepts_tls13(fx: Fixtures) -> None:
    result = handshake(_server(fx, "modern"), _client(fx, "modern"))
    assert result.ok
    assert result.version == "TLSv1.3"


def test_modern_tls12_is_aead_only(fx: Fixtures) -> None:
    accepted = handshake(
        _server(fx, "modern"),
        _raw_client(fx, ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-CHACHA20-POLY1305"),
    )
    assert accepted.ok
    assert accepted.cipher == "ECDHE-RSA-CHACHA20-POLY1305"
    refused = handshake(
        _server(fx, "modern"), _raw_client(fx, ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES128-SHA256")
    )
    assert refused.server_error is not None


def test_mssante_client_talks_tls12_to_a_modern_server(fx: Fixtures) -> None:
    result = handshake(_server(fx, "modern"), _client(fx, "mssante"))
    assert result.ok
    assert result.version == "TLSv1.2"


def test_required_client_cert_refuses_a_client_without_one(fx: Fixtures) -> None:
    result = handshake(_server(fx, client_cert="required"), _client(fx))
    assert result.server_error is not None
    assert result.client_error is not None


def test_required_client_cert_accepts_peer_a(fx: Fixtures, trust: TrustStore) -> None:
    result = handshake(_server(fx, client_cert="required"), _client(fx, name="peer-a"))
    assert result.ok, (result.client_error, result.server_error)
    assert result.server_saw == fx.cert("peer-a")
    # What the listener does next: our own validation and the whitelist DN.
    assert result.server_saw is not None
    chain = validate_chain(result.server_saw, trust, Purpose.PEER_OPERATOR)
    assert chain.identity.subject_dn == fx.subject("peer-a")


def test_required_client_cert_over_tls13(fx: Fixtures) -> None:
    assert handshake(_server(fx, "modern", "required"), _client(fx, "modern")).server_error
    result = handshake(_server(fx, "modern", "required"), _client(fx, "modern", "pro-1"))
    assert result.ok
    assert result.server_saw == fx.cert("pro-1")


def test_foreign_client_cert_is_refused_at_handshake(fx: Fixtures) -> None:
    result = handshake(_server(fx, client_cert="required"), _client(fx, name="foreign"))
    assert isinstance(result.server_error, ssl.SSLCertVerificationError)
    assert result.server_saw is None


def test_optional_client_cert(fx: Fixtures) -> None:
    without = handshake(_server(fx, client_cert="optional"), _client(fx))
    assert without.ok
    assert without.server_saw is None
    with_cert = handshake(_server(fx, client_cert="optional"), _client(fx, name="pro-2"))
    assert with_cert.ok
    assert with_cert.server_saw == fx.cert("pro-2")


def test_client_checks_the_server_name(fx: Fixtures) -> None:
    assert handshake(_server(fx), _client(fx), server_hostname="mx.demo.mssante.test").ok
    wrong = handshake(_server(fx), _client(fx), server_hostname="smtp.hopital-a.test")
    assert isinstance(wrong.client_error, ssl.SSLCertVerificationError)
    relaxed = client_context("mssante", fx.bundle, check_hostname=False)
    assert handshake(_server(fx), relaxed, server_hostname="smtp.hopital-a.test").ok


def test_client_refuses_a_server_from_a_foreign_ca(fx: Fixtures) -> None:
    foreign = server_context(
        "mssante", fx.path("foreign.pem"), fx.path("foreign.key"), None, "none"
    )
    result = handshake(foreign, _client(fx))
    assert isinstance(result.client_error, ssl.SSLCertVerificationError)


def test_peer_identity_before_handshake_is_none() -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    assert peer_identity(context.wrap_bio(incoming, outgoing, server_hostname="x.test")) is None


def test_unknown_profile(fx: Fixtures) -> None:
    with pytest.raises(PkiError, match="unknown TLS profile 'tls10'"):
        server_context("tls10", fx.path("operator.pem"), fx.path("operator.key"), None, "none")
    with pytest.raises(PkiError, match="unknown TLS profile"):
        client_context("", fx.bundle)


def test_bad_client_cert_mode(fx: Fixtures) -> None:
    with pytest.raises(PkiError, match="client_cert"):
        server_context(
            "mssante",
            fx.path("operator.pem"),
            fx.path("operator.key"),
            fx.bundle,
            "maybe",  # type: ignore[arg-type]
        )


def test_loading_errors_name_the_path(fx: Fixtures, tmp_path: Path) -> None:
    missing = tmp_path / "absent.pem"
    with pytest.raises(CertificateLoadError, match=r"absent\.pem: file not found"):
        server_context("mssante", missing, fx.path("operator.key"), None, "none")
    with pytest.raises(CertificateLoadError, match=r"peer-a\.key"):
        # key of another certificate
        server_context("mssante", fx.path("operator.pem"), fx.path("peer-a.key"), None, "none")
    with pytest.raises(CertificateLoadError, match=r"absent\.pem"):
        client_context("mssante", missing)
    with pytest.raises(PkiError, match="needs a trust bundle"):
        server_context(
            "mssante", fx.path("operator.pem"), fx.path("operator.key"), None, "required"
        )


def test_encrypted_key(fx: Fixtures, tmp_path: Path) -> None:
    key = fx.key("operator")
    encrypted = tmp_path / "operator.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret"),
        )
    )
    cert = fx.path("operator.pem")
    context = server_context("mssante", cert, encrypted, None, "none", key_password="s3cret")
    assert handshake(context, _client(fx)).ok
    with pytest.raises(CertificateLoadError, match=r"operator\.key"):
        server_context("mssante", cert, encrypted, None, "none", key_password="wrong")
    with pytest.raises(CertificateLoadError, match="encrypted and no password"):
        server_context("mssante", cert, encrypted, None, "none")
