"""The whitelist snapshot (mssante.whitelist.model): normalisation and matching rules."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from mssante.whitelist.errors import WhitelistError
from mssante.whitelist.model import Whitelist, normalize_domain

DN_A = "CN=smtp.hopital-a.test,OU=1310000019,O=TEST HOPITAL A,ST=Haute-Garonne (31),C=FR"
DN_B = "CN=mx.clinique-b.test,OU=312345678900017,O=TEST CLINIQUE B,ST=Gironde (33),C=FR"


@pytest.mark.parametrize(
    ("written", "normalised"),
    [
        ("hopital-a.mssante.fr", "hopital-a.mssante.fr"),
        ("  Hopital-A.MSSante.FR.  ", "hopital-a.mssante.fr"),
        ("clinique-b.fr", "clinique-b.fr"),
        ("münchen.example", "xn--mnchen-3ya.example"),
        ("XN--MNCHEN-3YA.example", "xn--mnchen-3ya.example"),
        ("a1.b-2.c", "a1.b-2.c"),
    ],
)
def test_normalize_domain(written: str, normalised: str) -> None:
    assert normalize_domain(written) == normalised


@pytest.mark.parametrize(
    "bad",
    ["", ".", "a..b", "-a.fr", "a-.fr", "a b.fr", "a_b.fr", "a.fr/x", "x" * 64 + ".fr", "@a.fr"],
)
def test_normalize_domain_refuses_what_is_not_a_domain(bad: str) -> None:
    with pytest.raises(ValueError, match="domain"):
        normalize_domain(bad)


def test_domain_longer_than_253_is_refused() -> None:
    name = ".".join(["a" * 63] * 4)  # 255 characters
    with pytest.raises(ValueError, match="longer than 253"):
        normalize_domain(name)


def _sample() -> Whitelist:
    return Whitelist.from_entries(
        [
            ("hopital-a.mssante.test", DN_A),
            ("clinique-b.fr", DN_A),
            ("clinique-b.fr", DN_B),
            ("clinique-b.fr", DN_B.lower()),  # the same pair written differently: counts once
        ]
    )


def test_counts_are_distinct_pairs_domains_and_operators() -> None:
    whitelist = _sample()
    assert (whitelist.entries, whitelist.domains, whitelist.operators) == (3, 2, 2)
    assert whitelist.generated is None


def test_matching_ignores_case_order_and_trailing_dot() -> None:
    whitelist = _sample()
    reordered = (
        "C=FR, ST=haute-garonne (31), O=test hopital a, OU=1310000019, CN=SMTP.HOPITAL-A.TEST"
    )
    assert whitelist.allows("HOPITAL-A.mssante.test.", reordered)
    assert whitelist.allows("clinique-b.fr", DN_B)
    assert not whitelist.allows("hopital-a.mssante.test", DN_B)
    assert whitelist.domains_for(reordered) == {"hopital-a.mssante.test", "clinique-b.fr"}
    assert len(whitelist.operators_for("Clinique-B.fr")) == 2


def test_x509_name_matches_its_string_form() -> None:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "Gironde (33)"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "TEST CLINIQUE B"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "312345678900017"),
            x509.NameAttribute(NameOID.COMMON_NAME, "mx.clinique-b.test"),
        ]
    )
    whitelist = _sample()
    assert whitelist.allows("clinique-b.fr", name)
    assert whitelist.is_listed_operator(name)
    assert whitelist.domains_for(name) == {"clinique-b.fr"}


def test_lookups_never_raise_on_garbage() -> None:
    whitelist = _sample()
    for dn in ("", "not a dn", "CN=x,", "FOO=bar"):
        assert not whitelist.allows("clinique-b.fr", dn)
        assert not whitelist.is_listed_operator(dn)
        assert whitelist.domains_for(dn) == frozenset()
    for domain in ("", "a..b", "ü..x", "clinique-b.fr/x"):
        assert not whitelist.allows(domain, DN_B)
        assert not whitelist.has_domain(domain)
        assert whitelist.operators_for(domain) == frozenset()


def test_internationalised_domain_matches_either_form() -> None:
    whitelist = Whitelist.from_entries([("hôpital.example", DN_A)])
    assert whitelist.has_domain("xn--hpital-ixa.example")
    assert whitelist.allows("HÔPITAL.example", DN_A)


def test_no_wildcards_and_no_parent_domains() -> None:
    whitelist = _sample()
    assert not whitelist.has_domain("sub.clinique-b.fr")
    assert not whitelist.has_domain("fr")
    assert not whitelist.allows("x.hopital-a.mssante.test", DN_A)


def test_empty_refuses_everyone() -> None:
    empty = Whitelist.empty()
    assert (empty.entries, empty.domains, empty.operators, empty.generated) == (0, 0, 0, None)
    assert not empty.allows("clinique-b.fr", DN_B)
    assert not empty.is_listed_operator(DN_B)


def test_from_entries_refuses_bad_entries() -> None:
    with pytest.raises(WhitelistError, match=r"entry 1: .*domain"):
        Whitelist.from_entries([("a.fr", DN_A), ("a..fr", DN_A)])
    with pytest.raises(WhitelistError, match="entry 0"):
        Whitelist.from_entries([("a.fr", "not a dn")])


def test_snapshot_is_immutable() -> None:
    whitelist = _sample()
    with pytest.raises(dataclasses.FrozenInstanceError):
        whitelist.entries = 0  # type: ignore[misc]
    mapping = whitelist._by_domain
    with pytest.raises(TypeError):
        mapping["evil.fr"] = frozenset({"cn=evil"})  # type: ignore[index]
