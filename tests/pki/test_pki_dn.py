"""DN parsing, canonical form and display (mssante.pki.dn)."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from pki_support import Fixtures

from mssante.pki.dn import dn_equal, dn_to_string, normalize_dn, parse_dn
from mssante.pki.errors import DnError, PkiError

WHITELIST_DN = "CN=smtp.operator.fr,OU=318310021300028,O=Hopital X,ST=Haute-Garonne (31),C=FR"


@pytest.mark.parametrize(
    "variant",
    [
        # attribute order
        "C=FR,ST=Haute-Garonne (31),O=Hopital X,OU=318310021300028,CN=smtp.operator.fr",
        "OU=318310021300028,CN=smtp.operator.fr,C=FR,O=Hopital X,ST=Haute-Garonne (31)",
        # case of types and values
        "cn=SMTP.Operator.FR,ou=318310021300028,o=HOPITAL x,st=haute-garonne (31),c=fr",
        # spaces around separators and inside values
        " CN = smtp.operator.fr , OU=318310021300028,  O = Hopital   X ,"
        "ST=Haute-Garonne (31),C=FR ",
        # long names and dotted OIDs for the types
        "commonName=smtp.operator.fr,2.5.4.11=318310021300028,O=Hopital X,"
        "stateOrProvinceName=Haute-Garonne (31),OID.2.5.4.6=FR",
        # hex-escaped characters
        "CN=smtp\\2Eoperator.fr,OU=318310021300028,O=Hopital\\20X,ST=Haute-Garonne (31),C=FR",
    ],
)
def test_equivalent_spellings_normalize_identically(variant: str) -> None:
    assert normalize_dn(variant) == normalize_dn(WHITELIST_DN)
    assert dn_equal(variant, WHITELIST_DN)


@pytest.mark.parametrize(
    "different",
    [
        "CN=smtp2.operator.fr,OU=318310021300028,O=Hopital X,ST=Haute-Garonne (31),C=FR",
        "CN=smtp.operator.fr,OU=318310021300029,O=Hopital X,ST=Haute-Garonne (31),C=FR",
        "CN=smtp.operator.fr,OU=318310021300028,O=Hopital X,C=FR",
        # same values under another attribute type
        "CN=smtp.operator.fr,O=318310021300028,OU=Hopital X,ST=Haute-Garonne (31),C=FR",
    ],
)
def test_different_dns_differ(different: str) -> None:
    assert normalize_dn(different) != normalize_dn(WHITELIST_DN)


def test_rfc4514_escapes_are_decoded() -> None:
    rdns = parse_dn(r"CN=Dupont\, Durand\+Cie,O=\"Le\" \\ groupe,OU=\#1,L=Chamb\C3\A9ry")
    assert [value for ((_, value),) in rdns] == [
        "Dupont, Durand+Cie",
        '"Le" \\ groupe',
        "#1",
        "Chambéry",
    ]


def test_escaped_and_literal_forms_compare_equal() -> None:
    assert dn_equal("L=Chamb\\C3\\A9ry,C=FR", "L=CHAMBÉRY,C=FR")
    assert dn_equal("O=Dupont\\, Durand,C=FR", 'O="Dupont, Durand",C=FR')


def test_escaped_comma_is_not_a_separator() -> None:
    assert not dn_equal("O=A\\,OU=B,C=FR", "O=A,OU=B,C=FR")
    assert len(parse_dn("O=A\\,OU=B,C=FR")) == 2


def test_multivalued_rdn_is_order_insensitive_but_grouping_matters() -> None:
    assert dn_equal("CN=Jean+UID=42,O=X,C=FR", "UID=42 + CN=Jean,C=FR,O=X")
    assert not dn_equal("CN=Jean+UID=42,O=X,C=FR", "CN=Jean,UID=42,O=X,C=FR")
    assert parse_dn("CN=Jean+UID=42,O=X") == (
        (("2.5.4.3", "Jean"), ("0.9.2342.19200300.100.1.1", "42")),
        (("2.5.4.10", "X"),),
    )


def test_email_aliases_and_hex_value() -> None:
    assert dn_equal("E=a@b.fr,CN=x", "emailAddress=A@B.fr,CN=x")
    # RFC 4514 §2.4: #hex is the BER encoding; 0c 01 61 is UTF8String "a".
    assert dn_equal("CN=#0c0161,C=FR", "CN=a,C=FR")


def test_canonical_form_escapes_special_characters() -> None:
    canonical = normalize_dn("O=A\\,B,CN=x\\+y")
    assert canonical == "cn=x\\+y,o=a\\,b"
    assert normalize_dn(canonical) == canonical


@pytest.mark.parametrize(
    "malformed",
    [
        "",
        "   ",
        "CN",
        "CN=a,",
        "CN=a,,O=b",
        "=a",
        "CN=a+",
        "FOO=a",
        "C N=a",
        "CN=a\\",
        "CN=a\\zz",
        "CN=\\C3",
        'CN="unterminated',
        'CN="quoted" trailing',
        "CN=#zz",
        "CN=#0c05ab",
    ],
)
def test_malformed_dns_raise_dnerror(malformed: str) -> None:
    with pytest.raises(DnError) as caught:
        normalize_dn(malformed)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, PkiError)
    assert str(caught.value)


def test_cert_subject_matches_whitelist_string(fx: Fixtures) -> None:
    for entry in fx.info("whitelist.xml")["entries"]:
        cert = fx.cert(entry["certificate"])
        assert normalize_dn(cert.subject) == normalize_dn(entry["dn"])


def test_dn_to_string_is_cn_first_like_the_whitelist(fx: Fixtures) -> None:
    cert = fx.cert("peer-a")
    text = dn_to_string(cert.subject)
    assert text == fx.subject("peer-a")
    assert text.startswith("CN=smtp.hopital-a.test,OU=")
    assert text.endswith(",C=FR")
    # Same order as cryptography's own RFC 4514 rendering (which already reverses the
    # encoded sequence, RFC 4514 §2.1).
    assert text == cert.subject.rfc4514_string()


def test_dn_to_string_names_professional_attributes(fx: Fixtures) -> None:
    text = dn_to_string(fx.cert("pro-1").subject)
    assert text.startswith(
        "CN=810001234567/Jean DUPONT,serialNumber=810001234567,GN=Jean,SN=DUPONT"
    )


def test_dn_to_string_escapes_and_round_trips() -> None:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Dupont, Durand + Cie"),
            x509.NameAttribute(NameOID.COMMON_NAME, " #lead"),
        ]
    )
    text = dn_to_string(name)
    assert text == "CN=\\ #lead,O=Dupont\\, Durand \\+ Cie,C=FR"
    assert normalize_dn(text) == normalize_dn(name)
