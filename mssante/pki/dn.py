"""Distinguished names: parsing (RFC 4514), a canonical form for comparison, display.

The ANS whitelist names each operator certificate by its subject DN written as a string,
e.g. ``CN=smtp.operator.fr,OU=318310021300028,O=Hopital X,ST=Haute-Garonne (31),C=FR``, while the
TLS handshake gives us an ``x509.Name``. :func:`normalize_dn` maps both to one canonical string so
that whitelist matching is a string comparison that ignores case, insignificant spaces and the
order of attributes.

Canonical form (ours, stable, not meant for display): each attribute type becomes a lowercase
short name (``cn``, ``ou``, ...) or its dotted OID when we have no short name for it; each value
is prepared as RFC 4518 §2 suggests for caseIgnoreMatch (Unicode NFKC, case folding, runs of
spaces collapsed, leading/trailing spaces dropped) and re-escaped per RFC 4514 §2.4; the
attribute-value pairs of a multi-valued RDN are sorted and joined with ``+``; the RDNs are sorted
and joined with ``,``. Sorting the RDNs is deliberate: X.500 DN matching is order-sensitive, but
the whitelist is written in whatever order the operator's tooling printed the name, and a
certificate under the IGC-Santé hierarchy never holds two subjects that differ only by RDN order.
The grouping of a multi-valued RDN stays significant (``CN=a+UID=b`` is not ``CN=a,UID=b``).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

from cryptography import x509

from mssante.pki.errors import DnError

Ava = tuple[str, str]
"""One attribute-value assertion: (dotted OID, value)."""

Rdn = tuple[Ava, ...]

# Short names we accept in DN strings (upper-cased) -> dotted OID. RFC 4514 §3 lists CN, L, ST,
# O, OU, C, STREET, DC, UID; the others are the names OpenSSL, Java and Windows print for the
# attributes found in IGC-Santé certificates (serialNumber carries the national id, RFC 4519).
_TYPE_ALIASES: Final[dict[str, str]] = {
    "CN": "2.5.4.3",
    "COMMONNAME": "2.5.4.3",
    "SN": "2.5.4.4",
    "SURNAME": "2.5.4.4",
    "SERIALNUMBER": "2.5.4.5",
    "C": "2.5.4.6",
    "COUNTRYNAME": "2.5.4.6",
    "L": "2.5.4.7",
    "LOCALITYNAME": "2.5.4.7",
    "ST": "2.5.4.8",
    "S": "2.5.4.8",
    "STATEORPROVINCENAME": "2.5.4.8",
    "STREET": "2.5.4.9",
    "O": "2.5.4.10",
    "ORGANIZATIONNAME": "2.5.4.10",
    "OU": "2.5.4.11",
    "ORGANIZATIONALUNITNAME": "2.5.4.11",
    "TITLE": "2.5.4.12",
    "GN": "2.5.4.42",
    "G": "2.5.4.42",
    "GIVENNAME": "2.5.4.42",
    "UID": "0.9.2342.19200300.100.1.1",
    "USERID": "0.9.2342.19200300.100.1.1",
    "DC": "0.9.2342.19200300.100.1.25",
    "DOMAINCOMPONENT": "0.9.2342.19200300.100.1.25",
    "E": "1.2.840.113549.1.9.1",
    "EMAIL": "1.2.840.113549.1.9.1",
    "EMAILADDRESS": "1.2.840.113549.1.9.1",
}

# Dotted OID -> short name used when printing (dn_to_string). Lowercased, it is also the key in
# the canonical form.
_DISPLAY_NAMES: Final[dict[str, str]] = {
    "2.5.4.3": "CN",
    "2.5.4.4": "SN",
    "2.5.4.5": "serialNumber",
    "2.5.4.6": "C",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.9": "STREET",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "2.5.4.12": "title",
    "2.5.4.42": "GN",
    "0.9.2342.19200300.100.1.1": "UID",
    "0.9.2342.19200300.100.1.25": "DC",
    "1.2.840.113549.1.9.1": "emailAddress",
}

_NUMERIC_OID: Final = re.compile(r"(?:OID\.)?([0-9]+(?:\.[0-9]+)+)", re.IGNORECASE)
_DESCR: Final = re.compile(r"[A-Za-z][A-Za-z0-9-]*")
_HEX_PAIR: Final = re.compile(r"[0-9A-Fa-f]{2}")
_SPACES: Final = re.compile(r"\s+")

# RFC 4514 §2.4 / §3: characters that may follow a backslash as themselves.
_ESCAPABLE: Final = frozenset(' "#+,;<=>\\')

# ASN.1 universal string tags we decode in a ``#hex`` value (RFC 4514 §2.4 allows any attribute
# to be given as the hex of its BER encoding).
_STRING_TAGS: Final[dict[int, str]] = {
    0x0C: "utf-8",  # UTF8String
    0x12: "ascii",  # NumericString
    0x13: "ascii",  # PrintableString
    0x14: "latin-1",  # TeletexString: in practice Latin-1
    0x16: "ascii",  # IA5String
    0x1A: "ascii",  # VisibleString
    0x1C: "utf-32-be",  # UniversalString
    0x1E: "utf-16-be",  # BMPString
}

# Bound the work done on untrusted input (Postfix rule): real DNs are a few hundred characters.
MAX_DN_LENGTH: Final = 4096


def parse_dn(dn: str) -> tuple[Rdn, ...]:
    """Parse an RFC 4514 DN string into RDNs, in the order written, values unescaped.

    Lenient where the whitelist needs it: spaces around ``,``, ``+`` and ``=`` are ignored,
    and the RFC 2253 §3 quoted-value form (``O="Dupont, Durand"``) is accepted. Unescaped
    ``"`` ``;`` ``<`` ``>`` inside a value are kept as literal characters (RFC 4514 §3 wants them
    escaped, but only ``,`` and ``+`` separate, so they are not ambiguous). Raises
    :class:`DnError` on anything else that does not parse.
    """
    if len(dn) > MAX_DN_LENGTH:
        raise DnError(f"distinguished name longer than {MAX_DN_LENGTH} characters")
    if not dn.strip():
        raise DnError("empty distinguished name")
    parser = _Parser(dn)
    return parser.parse()


def normalize_dn(dn: str | x509.Name) -> str:
    """Return the canonical form of ``dn`` (see the module docstring).

    Two DNs denote the same subject for whitelist purposes iff their canonical forms are
    equal. Raises :class:`DnError` for a malformed or empty DN string.
    """
    # An empty x509.Name is legitimate (RFC 5280 §4.1.2.6: subject in the SAN only) and maps
    # to ""; an empty *string* is refused by parse_dn, since no whitelist entry is empty.
    rdns = _rdns_of_name(dn) if isinstance(dn, x509.Name) else parse_dn(dn)
    canonical: list[str] = []
    for rdn in rdns:
        avas = sorted(f"{_canonical_type(oid)}={_escape(_prepare(value))}" for oid, value in rdn)
        canonical.append("+".join(avas))
    return ",".join(sorted(canonical))


def dn_equal(a: str | x509.Name, b: str | x509.Name) -> bool:
    """True when ``a`` and ``b`` have the same canonical form."""
    return normalize_dn(a) == normalize_dn(b)


def dn_to_string(name: x509.Name) -> str:
    """Format ``name`` as RFC 4514 with the short names the whitelist uses.

    RFC 4514 §2.1 prints the RDN sequence last-to-first. Certificates encode the most general
    RDN first (C, ST, O, OU, CN), so the result starts with CN, as in the whitelist:
    ``CN=smtp.operator.fr,OU=318310021300028,O=Hopital X,ST=Haute-Garonne (31),C=FR``.
    This is the same order as ``Name.rfc4514_string()``; we format ourselves so that
    serialNumber, GN, SN, title and emailAddress get names rather than dotted OIDs.
    """
    return ",".join(
        "+".join(f"{_display_type(oid)}={_escape(value)}" for oid, value in rdn)
        for rdn in reversed(_rdns_of_name(name))
    )


def _rdns_of_name(name: x509.Name) -> tuple[Rdn, ...]:
    rdns: list[Rdn] = []
    for rdn in name.rdns:
        avas: list[Ava] = []
        for attribute in rdn:
            value = attribute.value
            text = value if isinstance(value, str) else "#" + value.hex()
            avas.append((attribute.oid.dotted_string, text))
        rdns.append(tuple(avas))
    return tuple(rdns)


def _canonical_type(oid: str) -> str:
    return _DISPLAY_NAMES.get(oid, oid).lower()


def _display_type(oid: str) -> str:
    return _DISPLAY_NAMES.get(oid, oid)


def _prepare(value: str) -> str:
    # RFC 4518 §2.2-2.6 in the spirit of caseIgnoreMatch: compatibility normalisation, case
    # folding, insignificant space handling (§2.6.1: spaces collapse, ends are dropped).
    folded = unicodedata.normalize("NFKC", value).casefold()
    folded = unicodedata.normalize("NFKC", folded)
    return _SPACES.sub(" ", folded).strip()


def _escape(value: str) -> str:
    """Escape ``value`` for an RFC 4514 string (§2.4)."""
    out: list[str] = []
    last = len(value) - 1
    for index, char in enumerate(value):
        special = char in '\\"+,;<>=' or (char == "#" and index == 0)
        if special or (char == " " and index in (0, last)):
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\{ord(char):02X}")
        else:
            out.append(char)
    return "".join(out)


def _resolve_type(raw: str, dn: str) -> str:
    name = raw.strip()
    if not name:
        raise DnError(f"missing attribute type in {dn!r}")
    numeric = _NUMERIC_OID.fullmatch(name)
    if numeric is not None:
        # RFC 4512 §1.4 numericoid: compare arcs as numbers so 2.5.4.03 is not a new type.
        return ".".join(str(int(arc)) for arc in numeric.group(1).split("."))
    oid = _TYPE_ALIASES.get(name.upper())
    if oid is not None:
        return oid
    if _DESCR.fullmatch(name):
        raise DnError(f"unknown attribute type {name!r} in {dn!r}")
    raise DnError(f"invalid attribute type {name!r} in {dn!r}")


def _decode_ber_string(hex_digits: str, dn: str) -> str:
    """Decode an RFC 4514 ``#hex`` value; keep non-string encodings as canonical hex."""
    try:
        data = bytes.fromhex(hex_digits)
    except ValueError:
        raise DnError(f"invalid hex value '#{hex_digits}' in {dn!r}") from None
    if len(data) < 2:
        raise DnError(f"truncated BER value '#{hex_digits}' in {dn!r}")
    tag, length, offset = data[0], data[1], 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or len(data) < 2 + count:
            raise DnError(f"bad BER length in '#{hex_digits}' in {dn!r}")
        length = int.from_bytes(data[2 : 2 + count], "big")
        offset = 2 + count
    if offset + length != len(data):
        raise DnError(f"BER length does not match content in '#{hex_digits}' in {dn!r}")
    encoding = _STRING_TAGS.get(tag)
    if encoding is None:
        return "#" + data.hex()
    try:
        return data[offset:].decode(encoding)
    except UnicodeDecodeError:
        raise DnError(f"undecodable string in '#{hex_digits}' in {dn!r}") from None


class _Parser:
    """A single left-to-right pass over an RFC 4514 string (§3 grammar)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def parse(self) -> tuple[Rdn, ...]:
        rdns: list[Rdn] = []
        current: list[Ava] = []
        text = self.text
        while True:
            current.append(self._attribute())
            if self.pos >= len(text):
                rdns.append(tuple(current))
                return tuple(rdns)
            separator = text[self.pos]
            self.pos += 1
            if separator == ",":
                rdns.append(tuple(current))
                current = []
            if not text[self.pos :].strip():
                raise DnError(f"{separator!r} at the end of {text!r}")

    def _attribute(self) -> Ava:
        text = self.text
        start = self.pos
        equals = start
        while equals < len(text) and text[equals] not in "=,+":
            equals += 1
        if equals >= len(text) or text[equals] != "=":
            fragment = text[start:equals].strip()
            raise DnError(f"expected 'type=value', got {fragment!r} in {text!r}")
        oid = _resolve_type(text[start:equals], text)
        self.pos = equals + 1
        return oid, self._value()

    def _skip_spaces(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] == " ":
            self.pos += 1

    def _value(self) -> str:
        self._skip_spaces()
        text = self.text
        if self.pos < len(text) and text[self.pos] == "#":
            return self._hex_value()
        if self.pos < len(text) and text[self.pos] == '"':
            return self._quoted_value()
        return self._string_value()

    def _hex_value(self) -> str:
        text = self.text
        start = self.pos + 1
        end = start
        while end < len(text) and text[end] not in ",+ ":
            end += 1
        self.pos = end
        self._expect_separator()
        return _decode_ber_string(text[start:end], text)

    def _quoted_value(self) -> str:
        # RFC 2253 §3 quotation: everything up to the closing quote, backslash escapes allowed.
        text = self.text
        self.pos += 1
        buffer = bytearray()
        while True:
            if self.pos >= len(text):
                raise DnError(f"unterminated quoted value in {text!r}")
            char = text[self.pos]
            if char == '"':
                self.pos += 1
                break
            if char == "\\":
                self._escape_into(buffer)
                continue
            buffer += char.encode("utf-8")
            self.pos += 1
        self._expect_separator()
        return self._decode(buffer)

    def _string_value(self) -> str:
        text = self.text
        buffer = bytearray()
        # Length of ``buffer`` up to its last significant byte: unescaped trailing spaces before
        # a separator are not part of the value (RFC 4514 §3 requires a trailing space to be
        # escaped, so an unescaped one can only be layout).
        significant = 0
        while self.pos < len(text) and text[self.pos] not in ",+":
            char = text[self.pos]
            if char == "\\":
                self._escape_into(buffer)
                significant = len(buffer)
                continue
            buffer += char.encode("utf-8")
            self.pos += 1
            if char != " ":
                significant = len(buffer)
        return self._decode(buffer[:significant])

    def _escape_into(self, buffer: bytearray) -> None:
        text = self.text
        if self.pos + 1 >= len(text):
            raise DnError(f"backslash at the end of {text!r}")
        following = text[self.pos + 1]
        pair = text[self.pos + 1 : self.pos + 3]
        if _HEX_PAIR.fullmatch(pair):
            # RFC 4514 §3 hexpair: one byte of the UTF-8 encoding.
            buffer.append(int(pair, 16))
            self.pos += 3
        elif following in _ESCAPABLE:
            buffer += following.encode("utf-8")
            self.pos += 2
        else:
            raise DnError(f"invalid escape '\\{following}' in {text!r}")

    def _expect_separator(self) -> None:
        self._skip_spaces()
        if self.pos < len(self.text) and self.text[self.pos] not in ",+":
            raise DnError(f"unexpected {self.text[self.pos]!r} after value in {self.text!r}")

    def _decode(self, buffer: bytearray | bytes) -> str:
        try:
            return bytes(buffer).decode("utf-8")
        except UnicodeDecodeError:
            raise DnError(f"escaped bytes are not valid UTF-8 in {self.text!r}") from None
