"""Identity extraction from certificates (mssante.pki.identity)."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from pki_support import T2025, T2045, Fixtures, issue

from mssante.pki.dn import normalize_dn
from mssante.pki.identity import identity_of


def test_professional_identity(fx: Fixtures) -> None:
    info = fx.info("pro-1")
    cert = fx.cert("pro-1")
    identity = identity_of(cert)
    assert identity.national_id == info["national_id"] == "810001234567"
    assert identity.cn == "810001234567/Jean DUPONT"
    assert identity.structure_id == info["structure_id"]
    assert identity.subject_dn == info["subject"]
    assert identity.normalized_dn == normalize_dn(info["subject"])
    assert identity.issuer_dn == fx.subject("pro-ca")
    assert identity.dns_names == ()
    assert identity.serial == cert.serial_number
    assert (identity.not_before, identity.not_after) == (T2025, T2045)


def test_server_identity(fx: Fixtures) -> None:
    info = fx.info("peer-b")
    cert = fx.cert("peer-b")
    identity = identity_of(cert)
    assert identity.cn == "mx.clinique-b.test"
    assert identity.structure_id == "312345678900017"  # 3 + SIRET
    assert identity.national_id is None
    assert identity.dns_names == tuple(info["dns_names"])
    assert (
        identity.sha256 == hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    )
    assert identity_of(fx.cert("peer-a")).structure_id == "1310000019"  # 1 + FINESS


def test_identity_is_frozen(fx: Fixtures) -> None:
    identity = identity_of(fx.cert("operator"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        identity.cn = "other"  # type: ignore[misc]


def _name(*attributes: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes])


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        # serialNumber first
        (
            [(NameOID.SERIAL_NUMBER, "0123456789"), (NameOID.USER_ID, "899700000001")],
            "0123456789",
        ),
        # serialNumber that does not look like an id: fall back to UID
        ([(NameOID.SERIAL_NUMBER, "ABC"), (NameOID.USER_ID, "899700000001")], "899700000001"),
        # no serialNumber/UID: CN "<id>/<name>"
        ([(NameOID.COMMON_NAME, "810001234567/Jean DUPONT")], "810001234567"),
        # nothing that looks like a national id
        ([(NameOID.COMMON_NAME, "Jean DUPONT"), (NameOID.USER_ID, "jdupont")], None),
    ],
)
def test_national_id_sources(
    attributes: list[tuple[x509.ObjectIdentifier, str]], expected: str | None
) -> None:
    made = issue(_name((NameOID.COUNTRY_NAME, "FR"), *attributes), None)
    assert identity_of(made.cert).national_id == expected


def test_structure_id_takes_first_matching_ou() -> None:
    made = issue(
        _name(
            (NameOID.ORGANIZATIONAL_UNIT_NAME, "Service informatique"),
            (NameOID.ORGANIZATIONAL_UNIT_NAME, "12A0000012"),
            (NameOID.ORGANIZATIONAL_UNIT_NAME, "1750048886"),
        ),
        None,
    )
    assert identity_of(made.cert).structure_id == "12A0000012"
    assert identity_of(issue(_name((NameOID.COMMON_NAME, "x")), None).cert).structure_id is None


def test_empty_subject_is_allowed() -> None:
    # RFC 5280 §4.1.2.6: the subject may be empty when the SAN carries the identity.
    made = issue(
        x509.Name([]), None, extra=[(x509.SubjectAlternativeName([x509.DNSName("A.test")]), True)]
    )
    identity = identity_of(made.cert)
    assert (identity.subject_dn, identity.normalized_dn, identity.cn) == ("", "", None)
    assert identity.dns_names == ("a.test",)
