"""INS keys, professional/structure ids and address classification."""

from __future__ import annotations

import pytest

from mssante.operator.addresses import (
    AddressError,
    AddressKind,
    ins_key,
    parse_address,
    validate_ins,
    validate_professional_id,
    validate_structure_id,
)


def _with_key(first13: str) -> str:
    return f"{first13}{ins_key(first13):02d}"


def test_example_ins_from_the_domain_page_checks() -> None:
    assert validate_ins("146026322000196") == "146026322000196"


@pytest.mark.parametrize("first13", ["1460263220001", "2850575123456", "1991299999999"])
def test_computed_keys_validate(first13: str) -> None:
    assert validate_ins(_with_key(first13)) == _with_key(first13)


def test_key_is_97_minus_the_number_mod_97() -> None:
    assert ins_key("1460263220001") == 97 - 1460263220001 % 97 == 96


@pytest.mark.parametrize(("dept", "as_number"), [("2A", "19"), ("2B", "18")])
def test_corsica_counts_as_19_and_18(dept: str, as_number: str) -> None:
    first13 = f"18503{dept}012345"
    assert ins_key(first13) == 97 - int(f"18503{as_number}012345") % 97
    ins = _with_key(first13)
    assert validate_ins(ins.lower()) == ins  # 2a/2b accepted in lower case, returned upper


def test_corsica_key_differs_between_2a_and_2b() -> None:
    with pytest.raises(AddressError, match="wrong key"):
        validate_ins("18503" + "2B" + "012345" + f"{ins_key('185032A012345'):02d}")


@pytest.mark.parametrize("bad", ["146026322000197", "146026322000100"])
def test_wrong_key_is_refused_naming_the_expected_key(bad: str) -> None:
    with pytest.raises(AddressError, match=r"wrong key .* \(expected 96\)"):
        validate_ins(bad)


@pytest.mark.parametrize("bad", ["14602632200019", "1460263220001960", ""])
def test_wrong_length_is_refused(bad: str) -> None:
    with pytest.raises(AddressError, match="wrong length"):
        validate_ins(bad)


@pytest.mark.parametrize("bad", ["54602632200019X", "9460263220001 6", "1460263C2000196"])
def test_malformed_ins_is_refused(bad: str) -> None:
    with pytest.raises(AddressError):
        validate_ins(bad)


def test_invalid_month_is_refused() -> None:
    first13 = "1461363220001"  # month 13
    with pytest.raises(AddressError, match="month 13"):
        validate_ins(_with_key(first13))


def test_patient_address_is_classified_and_checked() -> None:
    addr = parse_address("<146026322000196@Patient.MSSante.fr>")
    assert addr.kind is AddressKind.PATIENT
    assert str(addr) == "146026322000196@patient.mssante.fr"
    with pytest.raises(AddressError, match="wrong key"):
        parse_address("146026322000197@patient.mssante.fr")
    with pytest.raises(AddressError, match="wrong length"):
        parse_address("jean.dupont@patient.mssante.fr")


def test_professional_address_is_lower_cased() -> None:
    addr = parse_address("Jean.Dupont@Hopital-X.MSSante.fr")
    assert (addr.local, addr.domain, addr.kind) == (
        "jean.dupont",
        "hopital-x.mssante.fr",
        AddressKind.PROFESSIONAL,
    )


def test_patient_domain_is_configurable() -> None:
    addr = parse_address("146026322000196@patients.example.test", "patients.example.test")
    assert addr.kind is AddressKind.PATIENT


@pytest.mark.parametrize(
    "bad",
    [
        "no-at-sign",
        "@domain.fr",
        "user@",
        "user@localhost",
        "a b@x.fr",
        "user@-bad.fr",
        "x" * 65 + "@x.fr",
        "user@exa_mple.fr",
        "us..er@x.fr",
    ],
)
def test_malformed_addresses_are_refused(bad: str) -> None:
    with pytest.raises(AddressError):
        parse_address(bad)


def test_professional_ids() -> None:
    assert validate_professional_id("810001234567") == "810001234567"
    assert validate_professional_id("0751234567") == "0751234567"
    for bad in ("81000123456", "910001234567", "8100012345678", "abc"):
        with pytest.raises(AddressError, match="RPPS"):
            validate_professional_id(bad)


def test_structure_ids() -> None:
    assert validate_structure_id("1750712184") == "1750712184"  # 1 + FINESS
    assert validate_structure_id("12A0000012") == "12A0000012"  # Corsican FINESS
    assert validate_structure_id("373282932000074") == "373282932000074"  # 3 + SIRET
    with pytest.raises(AddressError, match="control key"):
        validate_structure_id("373282932000075")
    with pytest.raises(AddressError, match="FINESS"):
        validate_structure_id("2750712184")
