"""Who a certificate speaks for: the fields of an IGC-Santé certificate the operator acts on."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from mssante.pki.dn import dn_to_string, normalize_dn

# Structure id carried in OU by IGC-Santé server certificates (and in the ANS whitelist DNs):
# "1" + FINESS (9 characters; Corsican départements write 2A/2B) or "3" + SIRET (14 digits).
# Deliberately lenient on the length: the published whitelist holds some that are not 10/15 long.
_STRUCTURE_ID: Final = re.compile(r"(?:[13][0-9]+|12[AB][0-9]+)")

# National id of a person: "8" + RPPS (11 digits), "0" + ADELI (9 characters), or another
# type-prefixed form. We accept any digit-led run of letters and digits of plausible length.
_NATIONAL_ID: Final = re.compile(r"[0-9][0-9A-Za-z]{5,29}")
_CN_WITH_ID: Final = re.compile(r"([0-9][0-9A-Za-z]{5,29})/(.+)")


@dataclass(frozen=True)
class CertIdentity:
    """The identity a certificate asserts, as the rest of the operator uses it.

    ``subject_dn`` is for display and logs (RFC 4514, CN first); ``normalized_dn`` is what to
    compare against whitelist DNs. ``dns_names`` are the SAN dNSNames, lowercased (RFC 4343:
    DNS names are case-insensitive). ``sha256`` is the lowercase hex SHA-256 of the DER
    certificate, without separators.
    """

    subject_dn: str
    normalized_dn: str
    issuer_dn: str
    cn: str | None
    structure_id: str | None
    national_id: str | None
    dns_names: tuple[str, ...]
    sha256: str
    not_before: datetime
    not_after: datetime
    serial: int


def identity_of(cert: x509.Certificate) -> CertIdentity:
    """Extract the :class:`CertIdentity` of ``cert``.

    ``structure_id`` is the first subject OU that looks like ``1``+FINESS or ``3``+SIRET.

    ``national_id`` (a person's national professional id) is, in order of preference: the
    subject ``serialNumber`` attribute when it looks like a national id (``8``+RPPS, ``0``+ADELI
    or another digit-led identifier), else the subject ``UID`` under the same test, else the id
    prefix of a CN written ``<id>/<Prénom NOM>``. **Assumption**: we found no public profile
    stating where IGC-Santé personal certificates put the national id; these three locations
    are what we expect from observed certificates and the test hierarchy is built that way.
    Server certificates normally yield ``None``.
    """
    subject = cert.subject
    cn = _first(subject, NameOID.COMMON_NAME)
    return CertIdentity(
        subject_dn=dn_to_string(subject),
        normalized_dn=normalize_dn(subject),
        issuer_dn=dn_to_string(cert.issuer),
        cn=cn,
        structure_id=_structure_id(subject),
        national_id=_national_id(subject, cn),
        dns_names=_dns_names(cert),
        sha256=cert.fingerprint(hashes.SHA256()).hex(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        serial=cert.serial_number,
    )


def _values(name: x509.Name, oid: x509.ObjectIdentifier) -> list[str]:
    return [
        attribute.value.strip()
        for attribute in name.get_attributes_for_oid(oid)
        if isinstance(attribute.value, str)
    ]


def _first(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    values = _values(name, oid)
    return values[0] if values else None


def _structure_id(subject: x509.Name) -> str | None:
    for unit in _values(subject, NameOID.ORGANIZATIONAL_UNIT_NAME):
        if _STRUCTURE_ID.fullmatch(unit):
            return unit
    return None


def _national_id(subject: x509.Name, cn: str | None) -> str | None:
    for oid in (NameOID.SERIAL_NUMBER, NameOID.USER_ID):
        for value in _values(subject, oid):
            if _NATIONAL_ID.fullmatch(value):
                return value
    if cn is not None:
        match = _CN_WITH_ID.fullmatch(cn)
        if match is not None:
            return match.group(1)
    return None


def _dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(name.lower() for name in san.get_values_for_type(x509.DNSName))
