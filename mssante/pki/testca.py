"""A test PKI modelled on IGC-Santé, for tests and demos. Its keys are public: test use only.

``write_test_hierarchy(outdir)`` (CLI: ``mssante pki test-hierarchy OUTDIR``) writes a root CA, two
intermediate CAs like IGC-Santé's ORGANISATIONS and PERSONNES CAs, operator and peer server
certificates with whitelist-style subject DNs, professionals' certificates carrying a national
id, deliberately broken certificates (revoked, expired, wrong usage, foreign CA), the CRLs, a
test whitelist, a machine-readable index (``fixtures.json``) and a README that says all of this.

All keys are RSA 2048 (the ``mssante`` TLS profile only has ECDHE-RSA suites), signatures
SHA-256, validity 2025-01-01 to 2045-01-01 except the expired certificate.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mssante.pki.dn import dn_to_string
from mssante.whitelist.xmlwriter import WhitelistEntry, write_whitelist

NOT_BEFORE: Final = datetime(2025, 1, 1, tzinfo=UTC)
NOT_AFTER: Final = datetime(2045, 1, 1, tzinfo=UTC)
EXPIRED_NOT_BEFORE: Final = datetime(2020, 1, 1, tzinfo=UTC)
EXPIRED_NOT_AFTER: Final = datetime(2021, 1, 1, tzinfo=UTC)

CRL_BASE_URL: Final = "http://igc-sante.test/crl"
OPERATOR_DOMAIN: Final = "demo.mssante.test"

_SERVER_EKU: Final = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
_CLIENT_EKU: Final = (ExtendedKeyUsageOID.CLIENT_AUTH,)


@dataclass(frozen=True)
class _Key:
    private: rsa.RSAPrivateKey

    @classmethod
    def generate(cls) -> _Key:
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@dataclass
class _Issued:
    name: str
    cert: x509.Certificate
    key: _Key
    info: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class _Server:
    name: str
    cn: str
    structure_id: str
    organization: str
    state: str
    domain: str
    role: str = "peer"
    expect: str = "valid"
    whitelisted_for: tuple[str, ...] = ()
    eku: tuple[x509.ObjectIdentifier, ...] = _SERVER_EKU
    expired: bool = False
    revoked: bool = False
    note: str = ""


@dataclass(frozen=True)
class _Professional:
    name: str
    national_id: str
    given_name: str
    surname: str
    profession: str
    profession_label: str
    organization: str
    structure_id: str
    email: str
    expect: str = "valid"
    revoked: bool = False


def _ca_name(common_name: str) -> x509.Name:
    # Attribute order as in IGC-Santé CA certificates, most general first in the encoding.
    # OU "0002 187512751": ISO 6523 code 0002 (SIREN) + the SIREN of the agency.
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "TEST ASIP-SANTE"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "0002 187512751"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "IGC-SANTE ELEMENTAIRE"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _foreign_ca_name() -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "TEST PKI ETRANGERE"),
            x509.NameAttribute(NameOID.COMMON_NAME, "TEST AC ETRANGERE"),
        ]
    )


def _server_name(server: _Server) -> x509.Name:
    # Encoded C, ST, O, OU, CN so that RFC 4514 prints CN=…,OU=…,O=…,ST=…,C=FR like the
    # whitelist does.
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, server.state),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, server.organization),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, server.structure_id),
            x509.NameAttribute(NameOID.COMMON_NAME, server.cn),
        ]
    )


def _professional_name(pro: _Professional) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, pro.organization),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, pro.structure_id),
            x509.NameAttribute(NameOID.TITLE, pro.profession),
            x509.NameAttribute(NameOID.SURNAME, pro.surname),
            x509.NameAttribute(NameOID.GIVEN_NAME, pro.given_name),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, pro.national_id),
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"{pro.national_id}/{pro.given_name} {pro.surname}"
            ),
        ]
    )


def _ski(key: _Key) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key.private.public_key())


def _issue(
    subject: x509.Name,
    key: _Key,
    issuer: _Issued | None,
    *,
    ca: bool,
    path_length: int | None = None,
    eku: Sequence[x509.ObjectIdentifier] = (),
    san: Sequence[x509.GeneralName] = (),
    key_encipherment: bool = False,
    not_before: datetime = NOT_BEFORE,
    not_after: datetime = NOT_AFTER,
    crl_name: str | None = None,
) -> x509.Certificate:
    """Sign a certificate; ``issuer=None`` makes it self-signed."""
    issuer_name = subject if issuer is None else issuer.cert.subject
    signing_key = key if issuer is None else issuer.key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        # RFC 5280 §4.2.1.9: basicConstraints critical in CA certificates; we mark it critical
        # in end-entity certificates too, as IGC-Santé does.
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=key_encipherment,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(_ski(key), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(_ski(issuer.key)),
            critical=False,
        )
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
    if crl_name is not None:
        point = x509.DistributionPoint(
            full_name=[x509.UniformResourceIdentifier(f"{CRL_BASE_URL}/{crl_name}.crl")],
            relative_name=None,
            reasons=None,
            crl_issuer=None,
        )
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
    return builder.sign(signing_key.private, hashes.SHA256())


def _crl(issuer: _Issued, revoked: Sequence[_Issued]) -> x509.CertificateRevocationList:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(NOT_BEFORE)
        .next_update(NOT_AFTER)
        .add_extension(x509.CRLNumber(1), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(_ski(issuer.key)),
            critical=False,
        )
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(entry.cert.serial_number)
            .revocation_date(NOT_BEFORE)
            .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False)
            .build()
        )
    return builder.sign(issuer.key.private, hashes.SHA256())


def _servers(operator_host: str) -> list[_Server]:
    return [
        _Server(
            name="operator",
            cn=operator_host,
            structure_id="318751234500012",
            organization="MSSANTE DEMO",
            state="Paris (75)",
            domain=OPERATOR_DOMAIN,
            role="operator",
            whitelisted_for=(OPERATOR_DOMAIN,),
            note="our own operator certificate (server and mutual-TLS client)",
        ),
        _Server(
            name="peer-a",
            cn="smtp.hopital-a.test",
            structure_id="1310000019",
            organization="TEST HOPITAL A",
            state="Haute-Garonne (31)",
            domain="hopital-a.mssante.test",
            whitelisted_for=("hopital-a.mssante.test", "clinique-b.fr"),
            note="whitelisted peer (1+FINESS), listed for two domains",
        ),
        _Server(
            name="peer-b",
            cn="mx.clinique-b.test",
            structure_id="312345678900017",
            organization="TEST CLINIQUE B",
            state="Gironde (33)",
            domain="clinique-b.fr",
            whitelisted_for=("clinique-b.fr",),
            note="whitelisted peer (3+SIRET) for a domain outside mssante.fr",
        ),
        _Server(
            name="peer-c",
            cn="smtp.labo-c.test",
            structure_id="398765432100015",
            organization="TEST LABO C",
            state="Rhône (69)",
            domain="labo-c.mssante.test",
            note="valid IGC-Santé certificate, NOT in the whitelist",
        ),
        _Server(
            name="peer-revoked",
            cn="smtp.revoque.test",
            structure_id="1130000012",
            organization="TEST HOPITAL REVOQUE",
            state="Bouches-du-Rhône (13)",
            domain="revoque.mssante.test",
            expect="revoked",
            whitelisted_for=("revoque.mssante.test",),
            revoked=True,
            note="whitelisted, but revoked in org-ca.crl.pem",
        ),
        _Server(
            name="peer-expired",
            cn="smtp.expire.test",
            structure_id="1690000014",
            organization="TEST HOPITAL EXPIRE",
            state="Rhône (69)",
            domain="expire.mssante.test",
            expect="expired",
            whitelisted_for=("expire.mssante.test",),
            expired=True,
            note="whitelisted, but valid only from 2020-01-01 to 2021-01-01",
        ),
        _Server(
            name="peer-noeku-server",
            cn="smtp.mauvais-usage.test",
            structure_id="356789012300018",
            organization="TEST MAUVAIS USAGE",
            state="Nord (59)",
            domain="mauvais-usage.mssante.test",
            expect="wrong_usage",
            whitelisted_for=("mauvais-usage.mssante.test",),
            eku=_CLIENT_EKU,
            note="whitelisted, but extendedKeyUsage is clientAuth only (no serverAuth)",
        ),
    ]


_PROFESSIONALS: Final = (
    _Professional(
        name="pro-1",
        national_id="810001234567",
        given_name="Jean",
        surname="DUPONT",
        profession="10",
        profession_label="Médecin",
        organization="TEST HOPITAL A",
        structure_id="1310000019",
        email="jean.dupont@hopital-a.mssante.test",
    ),
    _Professional(
        name="pro-2",
        national_id="810009876543",
        given_name="Marie",
        surname="MARTIN",
        profession="60",
        profession_label="Infirmier",
        organization="TEST CLINIQUE B",
        structure_id="312345678900017",
        email="marie.martin@clinique-b.fr",
    ),
    _Professional(
        name="pro-revoked",
        national_id="810005555555",
        given_name="Paul",
        surname="DURAND",
        profession="10",
        profession_label="Médecin",
        organization="TEST HOPITAL A",
        structure_id="1310000019",
        email="paul.durand@hopital-a.mssante.test",
        expect="revoked",
        revoked=True,
    ),
)


def write_test_hierarchy(outdir: Path, operator_host: str = "mx.demo.mssante.test") -> None:
    """Generate the test PKI into ``outdir`` (created if needed; existing files overwritten).

    Private keys are written unencrypted with mode 0600. See the generated README.md for the
    list of files; ``fixtures.json`` indexes them for tests.
    """
    outdir.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, object]] = {}

    root_key = _Key.generate()
    root = _Issued(
        "root-ca",
        _issue(_ca_name("TEST AC RACINE IGC-SANTE ELEMENTAIRE"), root_key, None, ca=True),
        root_key,
        {"role": "root-ca", "note": "trust anchor, self-signed"},
    )
    intermediates: list[_Issued] = []
    for name, cn, note in (
        ("org-ca", "TEST AC IGC-SANTE ELEMENTAIRE ORGANISATIONS", "issues server certificates"),
        ("pro-ca", "TEST AC IGC-SANTE ELEMENTAIRE PERSONNES", "issues professionals' certificates"),
    ):
        key = _Key.generate()
        cert = _issue(_ca_name(cn), key, root, ca=True, path_length=0, crl_name="root-ca")
        intermediates.append(
            _Issued(
                name, cert, key, {"role": "intermediate-ca", "issuer": "root-ca.pem", "note": note}
            )
        )
    org_ca, pro_ca = intermediates

    foreign_ca_key = _Key.generate()
    foreign_ca = _Issued(
        "foreign-ca",
        _issue(_foreign_ca_name(), foreign_ca_key, None, ca=True),
        foreign_ca_key,
        {"role": "foreign-ca", "note": "unrelated self-signed CA, NOT in ca-bundle.pem"},
    )

    servers = _servers(operator_host)
    issued_servers: dict[str, _Issued] = {}
    for server in servers:
        key = _Key.generate()
        dns = [server.cn, "localhost"]
        ips = [ipaddress.ip_address("127.0.0.1")]
        if server.role == "operator":
            ips.append(ipaddress.ip_address("::1"))
        san: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        san += [x509.IPAddress(ip) for ip in ips]
        cert = _issue(
            _server_name(server),
            key,
            org_ca,
            ca=False,
            eku=server.eku,
            san=san,
            key_encipherment=True,
            not_before=EXPIRED_NOT_BEFORE if server.expired else NOT_BEFORE,
            not_after=EXPIRED_NOT_AFTER if server.expired else NOT_AFTER,
            crl_name="org-ca",
        )
        issued_servers[server.name] = _Issued(
            server.name,
            cert,
            key,
            {
                "role": server.role,
                "issuer": "org-ca.pem",
                "domain": server.domain,
                "whitelisted_for": list(server.whitelisted_for),
                "structure_id": server.structure_id,
                "dns_names": dns,
                "ip_addresses": [str(ip) for ip in ips],
                "purpose": "peer_operator",
                "expect": server.expect,
                "note": server.note,
            },
        )

    peer_a = next(s for s in servers if s.name == "peer-a")
    foreign_key = _Key.generate()
    foreign = _Issued(
        "foreign",
        _issue(
            _server_name(peer_a),
            foreign_key,
            foreign_ca,
            ca=False,
            eku=_SERVER_EKU,
            san=[
                x509.DNSName(peer_a.cn),
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            ],
            key_encipherment=True,
        ),
        foreign_key,
        {
            "role": "foreign",
            "issuer": "foreign-ca.pem",
            "impersonates": "peer-a.pem",
            "domain": peer_a.domain,
            "purpose": "peer_operator",
            "expect": "unknown_ca",
            "note": "same subject DN as peer-a (so whitelisted by name) but from foreign-ca",
        },
    )

    professionals: list[_Issued] = []
    for pro in _PROFESSIONALS:
        key = _Key.generate()
        cert = _issue(
            _professional_name(pro),
            key,
            pro_ca,
            ca=False,
            eku=_CLIENT_EKU,
            san=[x509.RFC822Name(pro.email)],
            crl_name="pro-ca",
        )
        professionals.append(
            _Issued(
                pro.name,
                cert,
                key,
                {
                    "role": "professional",
                    "issuer": "pro-ca.pem",
                    "national_id": pro.national_id,
                    "given_name": pro.given_name,
                    "surname": pro.surname,
                    "profession": pro.profession,
                    "profession_label": pro.profession_label,
                    "structure_id": pro.structure_id,
                    "email": pro.email,
                    "purpose": "client",
                    "expect": pro.expect,
                },
            )
        )

    everything = [
        root,
        org_ca,
        pro_ca,
        *issued_servers.values(),
        foreign_ca,
        foreign,
        *professionals,
    ]
    for item in everything:
        _write_pem(outdir / f"{item.name}.pem", item.cert)
        _write_key(outdir / f"{item.name}.key", item.key)
        files[f"{item.name}.pem"] = {
            **item.info,
            "subject": dn_to_string(item.cert.subject),
            "key": f"{item.name}.key",
        }
        files[f"{item.name}.key"] = {"role": "private-key", "certificate": f"{item.name}.pem"}

    (outdir / "ca-bundle.pem").write_bytes(
        b"".join(c.cert.public_bytes(serialization.Encoding.PEM) for c in (root, org_ca, pro_ca))
    )
    files["ca-bundle.pem"] = {
        "role": "trust-bundle",
        "contains": ["root-ca.pem", "org-ca.pem", "pro-ca.pem"],
    }

    revoked_servers = [issued_servers[s.name] for s in servers if s.revoked]
    revoked_pros = [
        p for p, spec in zip(professionals, _PROFESSIONALS, strict=True) if spec.revoked
    ]
    for issuer, revoked in ((root, []), (org_ca, revoked_servers), (pro_ca, revoked_pros)):
        crl = _crl(issuer, revoked)
        (outdir / f"{issuer.name}.crl.pem").write_bytes(
            crl.public_bytes(serialization.Encoding.PEM)
        )
        files[f"{issuer.name}.crl.pem"] = {
            "role": "crl",
            "issuer": f"{issuer.name}.pem",
            "crl_number": 1,
            "revokes": [f"{r.name}.pem" for r in revoked],
        }

    entries: list[dict[str, str]] = []
    whitelist: list[WhitelistEntry] = []
    for server in servers:
        issued = issued_servers[server.name]
        for domain in server.whitelisted_for:
            dn = dn_to_string(issued.cert.subject)
            whitelist.append(
                WhitelistEntry(
                    domain=domain,
                    dn=dn,
                    description=f"Domaine de messagerie MSSanté de {server.organization}",
                    contact=f"01 00 00 00 00, mssante@{server.cn}",
                    updated=NOT_BEFORE,
                )
            )
            entries.append({"domain": domain, "dn": dn, "certificate": f"{server.name}.pem"})
    write_whitelist(outdir / "whitelist.xml", whitelist, generated=NOT_BEFORE)
    files["whitelist.xml"] = {"role": "whitelist", "entries": entries}
    files["fixtures.json"] = {"role": "index"}
    files["README.md"] = {"role": "readme"}

    index = {
        "generated_by": "mssante pki test-hierarchy",
        "operator_host": operator_host,
        "operator_domain": OPERATOR_DOMAIN,
        "not_before": NOT_BEFORE.isoformat(),
        "not_after": NOT_AFTER.isoformat(),
        "trust_bundle": "ca-bundle.pem",
        "crls": ["root-ca.crl.pem", "org-ca.crl.pem", "pro-ca.crl.pem"],
        "whitelist": "whitelist.xml",
        "files": files,
    }
    (outdir / "fixtures.json").write_text(
        json.dumps(index, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (outdir / "README.md").write_text(_readme(files, operator_host), encoding="utf-8")


def _write_pem(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _write_key(path: Path, key: _Key) -> None:
    data = key.private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Create with 0600 from the start (no window where the key is world-readable), and fix the
    # mode of a file that already existed.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as stream:
        os.fchmod(stream.fileno(), 0o600)
        stream.write(data)


def _readme(files: dict[str, dict[str, object]], operator_host: str) -> str:
    lines = [
        "# Test PKI (IGC-Santé look-alike)",
        "",
        "**TEST ONLY. Every private key here is public; never trust these certificates",
        "outside tests and demos.**",
        "",
        "Generated by `mssante pki test-hierarchy OUTDIR`",
        "(`mssante.pki.testca.write_test_hierarchy`); regenerate rather than edit.",
        f"Operator host: `{operator_host}`. Keys: RSA 2048; signatures: SHA-256; validity",
        f"{NOT_BEFORE:%Y-%m-%d} to {NOT_AFTER:%Y-%m-%d} (peer-expired: "
        f"{EXPIRED_NOT_BEFORE:%Y-%m-%d} to {EXPIRED_NOT_AFTER:%Y-%m-%d}).",
        "Private keys are written with mode 0600 (git does not keep that mode).",
        "",
        "`fixtures.json` indexes every file with its role, subject DN, domain (servers) and",
        "national id (professionals); tests read it instead of hard-coding DNs.",
        "",
        "## Hierarchy",
        "",
        "```",
        "root-ca  TEST AC RACINE IGC-SANTE ELEMENTAIRE (self-signed)",
        "├── org-ca  TEST AC IGC-SANTE ELEMENTAIRE ORGANISATIONS (pathLen 0)",
        "│   └── operator, peer-a, peer-b, peer-c, peer-revoked, peer-expired, peer-noeku-server",
        "└── pro-ca  TEST AC IGC-SANTE ELEMENTAIRE PERSONNES (pathLen 0)",
        "    └── pro-1, pro-2, pro-revoked",
        "foreign-ca  TEST AC ETRANGERE (self-signed, not trusted)",
        "└── foreign (same subject DN as peer-a)",
        "```",
        "",
        "## Files",
        "",
        "| file | role | subject / content | notes |",
        "|---|---|---|---|",
    ]
    for name, info in files.items():
        if info["role"] == "private-key":
            continue
        subject = str(info.get("subject", ""))
        details: list[str] = []
        for label in ("issuer", "domain", "national_id", "expect", "note"):
            if label in info:
                details.append(f"{label}: {info[label]}")
        revokes = info.get("revokes")
        if isinstance(revokes, list):
            details.append("revokes: " + (", ".join(str(r) for r in revokes) or "nothing"))
        if info["role"] == "trust-bundle":
            details.append("root-ca + org-ca + pro-ca: the trust anchors file")
        if info["role"] == "whitelist":
            details.append("ANS ListeBlancheMSSante format; see fixtures.json for entries")
        key = f" (key: `{info['key']}`)" if "key" in info else ""
        cells = [f"`{name}`{key}", str(info["role"]), subject, "; ".join(details)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += [
        "",
        "Server certificates carry SAN DNS = CN + `localhost` and IP 127.0.0.1 (the operator",
        "also ::1), extendedKeyUsage serverAuth + clientAuth (peer-noeku-server: clientAuth",
        "only). Professionals' certificates carry the national id (`8` + RPPS) in the subject",
        "serialNumber and in CN as `<id>/<Prénom NOM>`, GN, SN, title (profession code),",
        "O/OU of their structure, extendedKeyUsage clientAuth, keyUsage digitalSignature.",
        "CRLs: thisUpdate 2025-01-01, nextUpdate 2045-01-01, CRL number 1.",
        "",
    ]
    return "\n".join(lines)
