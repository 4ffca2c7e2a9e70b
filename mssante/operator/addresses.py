"""Parse and classify addresses of the trust space: professional mailboxes and `<INS>@patient…`.

Pure functions, no I/O. The INS (identifiant national de santé) of a patient is their NIR or NIA
matricule: 15 characters, the first 13 identifying the person and a 2-digit control key.
Key = 97 − (N mod 97) where N is the first 13 characters read as a number, Corsican
départements `2A` and `2B` counting as `19` and `18` (INSEE rule for the NIR key).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class AddressError(ValueError):
    """An address or identifier that cannot be used; the message says why."""


class AddressKind(StrEnum):
    PROFESSIONAL = "professional"  # PER, ORG, APP or CAB: the directory tells which
    PATIENT = "patient"


@dataclass(frozen=True)
class Address:
    local: str
    domain: str
    kind: AddressKind

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


# RFC 5321 §4.5.3.1: 64 octets local part, 255 domain; we keep to the dot-atom form (no quoted
# local parts: no MSSanté directory entry uses them and they are a classic parsing trap).
_LOCAL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_INS = re.compile(r"^[1-478][0-9]{2}[0-9]{2}(?:[0-9]{2}|2A|2B)[0-9]{3}[0-9]{3}[0-9]{2}$")


def ins_key(first13: str) -> int:
    """The control key of the 13 first characters of a NIR/NIA (Corsica 2A→19, 2B→18)."""
    digits = first13.upper()
    if digits[5:7] == "2A":
        digits = digits[:5] + "19" + digits[7:]
    elif digits[5:7] == "2B":
        digits = digits[:5] + "18" + digits[7:]
    if len(digits) != 13 or not digits.isdigit():
        raise AddressError(f"INS {first13!r}: the first 13 characters must be digits (or 2A/2B)")
    return 97 - int(digits) % 97


def validate_ins(ins: str) -> str:
    """Return the INS upper-cased if it is well formed and its key checks; AddressError if not."""
    value = ins.strip().upper()
    if len(value) != 15:
        raise AddressError(f"INS {ins!r}: wrong length ({len(value)} characters, expected 15)")
    if not _INS.match(value):
        raise AddressError(
            f"INS {ins!r}: not of the form sex(1-4,7,8) year month département commune "
            f"order key (digits; 2A/2B allowed for the département)"
        )
    month = int(value[3:5])
    # NIR months are 01-12, plus 20-42 and 50-99 for people whose birth month is unknown.
    if not (1 <= month <= 12 or 20 <= month <= 42 or 50 <= month <= 99):
        raise AddressError(f"INS {ins!r}: month {value[3:5]} is not valid")
    expected = ins_key(value[:13])
    if int(value[13:]) != expected:
        raise AddressError(f"INS {ins!r}: wrong key {value[13:]} (expected {expected:02d})")
    return value


def parse_address(text: str, patient_domain: str = "patient.mssante.fr") -> Address:
    """Split, normalise (domain lower-cased) and classify a mailbox address.

    An address in the patient domain must have a valid INS as its local part.
    """
    value = text.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    local, sep, domain = value.rpartition("@")
    if not sep or not local or not domain:
        raise AddressError(f"address {text!r}: expected local-part@domain")
    if len(local.encode()) > 64:
        raise AddressError(f"address {text!r}: local part longer than 64 octets")
    if not _LOCAL.match(local):
        raise AddressError(f"address {text!r}: local part has characters not allowed")
    domain = domain.lower().rstrip(".")
    if len(domain) > 255 or "." not in domain:
        raise AddressError(f"address {text!r}: domain is not a fully qualified name")
    if not all(_LABEL.match(label) for label in domain.split(".")):
        raise AddressError(f"address {text!r}: domain {domain!r} is not a valid host name")
    if domain == patient_domain.lower():
        return Address(validate_ins(local), domain, AddressKind.PATIENT)
    # Local parts are case-sensitive in theory (RFC 5321 §2.4) but every MSSanté operator treats
    # them case-insensitively, and the directory publishes them in lower case.
    return Address(local.lower(), domain, AddressKind.PROFESSIONAL)


_RPPS_ID = re.compile(r"^8[0-9]{11}$")
_ADELI_ID = re.compile(r"^0[0-9]{2}[0-9A-Z][0-9]{6}$")
_FINESS_ID = re.compile(r"^1(?:[0-9]{2}|2A|2B)[0-9]{7}$")
_SIRET_ID = re.compile(r"^3[0-9]{14}$")


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def validate_professional_id(value: str) -> str:
    """A professional's national id: `8` + RPPS (11 digits) or `0` + ADELI (9 characters)."""
    v = value.strip().upper()
    if _RPPS_ID.match(v) or _ADELI_ID.match(v):
        return v
    raise AddressError(
        f"national id {value!r}: expected 8 followed by the 11-digit RPPS number, "
        f"or 0 followed by the 9-character ADELI number"
    )


def validate_structure_id(value: str) -> str:
    """A structure's national id: `1` + FINESS (9 characters) or `3` + SIRET (14 digits)."""
    v = value.strip().upper()
    if _FINESS_ID.match(v):
        return v
    if _SIRET_ID.match(v):
        # SIRET carries a Luhn key (INSEE); La Poste's establishments (SIREN 356000000) are the
        # documented exception and use a sum divisible by 5 instead.
        siret = v[1:]
        if _luhn_ok(siret) or (siret.startswith("356000000") and sum(map(int, siret)) % 5 == 0):
            return v
        raise AddressError(f"structure id {value!r}: the SIRET's control key is wrong")
    raise AddressError(
        f"structure id {value!r}: expected 1 followed by the 9-character FINESS number, "
        f"or 3 followed by the 14-digit SIRET number"
    )
