"""Loading certificate files and the trust store (mssante.pki.anchors)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from pki_support import Fixtures

from mssante.pki.anchors import TrustStore, load_certificates
from mssante.pki.errors import CertificateLoadError, PkiError


def test_bundle_loads_three_certificates(fx: Fixtures) -> None:
    certificates = load_certificates(fx.bundle)
    assert len(certificates) == 3


def test_single_der_certificate(fx: Fixtures, tmp_path: Path) -> None:
    der = fx.cert("peer-a").public_bytes(serialization.Encoding.DER)
    path = tmp_path / "peer-a.der"
    path.write_bytes(der)
    assert load_certificates(path) == [fx.cert("peer-a")]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "file not found"),
        (b"", "file is empty"),
        (b"hello, I am not a certificate", "not a certificate"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "invalid PEM"),
    ],
)
def test_load_errors_name_the_path(tmp_path: Path, content: bytes | None, problem: str) -> None:
    path = tmp_path / "trust.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CertificateLoadError) as caught:
        load_certificates(path)
    assert str(path) in str(caught.value)
    assert problem in str(caught.value)
    assert isinstance(caught.value, PkiError)


def test_private_key_file_is_not_a_certificate(fx: Fixtures) -> None:
    with pytest.raises(PkiError, match="no CERTIFICATE"):
        load_certificates(fx.path("peer-a.key"))


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="directory"):
        load_certificates(tmp_path)


def test_trust_store_splits_roots_and_intermediates(fx: Fixtures) -> None:
    store = TrustStore.from_file(fx.bundle)
    assert [c.subject for c in store.roots] == [fx.cert("root-ca").subject]
    assert {c.subject for c in store.intermediates} == {
        fx.cert("org-ca").subject,
        fx.cert("pro-ca").subject,
    }
    assert store.is_root(fx.cert("root-ca"))
    assert not store.is_root(fx.cert("org-ca"))
    assert not store.is_root(fx.cert("foreign-ca"))  # self-signed, but not ours


def test_issuer_candidates_by_name_and_key_id(fx: Fixtures) -> None:
    store = TrustStore.from_files([fx.bundle, fx.path("root-ca.pem")])  # duplicates ignored
    assert len(store.certificates) == 3
    assert store.issuer_candidates(fx.cert("peer-a")) == [fx.cert("org-ca")]
    assert store.issuer_candidates(fx.cert("pro-1")) == [fx.cert("pro-ca")]
    assert store.issuer_candidates(fx.cert("foreign")) == []
    assert len(store.describe()) == 3
