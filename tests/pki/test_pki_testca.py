"""The test-hierarchy generator (mssante.pki.testca) and the whitelist writer it uses."""

from __future__ import annotations

import stat
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

import pytest
from pki_support import NOW_IN_RANGE, Fixtures

from mssante.pki.anchors import TrustStore
from mssante.pki.crl import CrlStore
from mssante.pki.dn import normalize_dn
from mssante.pki.errors import ValidationError
from mssante.pki.testca import write_test_hierarchy
from mssante.pki.validation import Purpose, validate_chain
from mssante.whitelist.xmlwriter import NAMESPACE

NS = {"lb": NAMESPACE}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Fixtures:
    outdir = tmp_path_factory.mktemp("hierarchy")
    write_test_hierarchy(outdir, operator_host="mx.autre.mssante.test")
    return Fixtures.open(outdir)


async def test_generated_hierarchy_validates(generated: Fixtures) -> None:
    trust = TrustStore.from_file(generated.bundle)
    crls = CrlStore(trust, [str(p) for p in generated.crl_paths], require_crl=True)
    await crls.load()
    assert all(s.last_error is None for s in crls.status())
    outcomes: dict[str, str] = {}
    for name, info in generated.index["files"].items():
        if "expect" not in info:
            continue
        purpose = Purpose(info["purpose"])
        try:
            validate_chain(generated.cert(name), trust, purpose, at=NOW_IN_RANGE, crls=crls)
            outcomes[name] = "valid"
        except ValidationError as exc:
            outcomes[name] = exc.reason
        assert outcomes[name] == info["expect"], name
    assert sorted(outcomes.values()).count("valid") == 6


def test_operator_host_is_used(generated: Fixtures) -> None:
    cert = generated.cert("operator")
    assert generated.subject("operator") == (
        "CN=mx.autre.mssante.test,OU=318751234500012,O=MSSANTE DEMO,ST=Paris (75),C=FR"
    )
    assert generated.index["operator_host"] == "mx.autre.mssante.test"
    assert normalize_dn(cert.subject) == normalize_dn(generated.subject("operator"))


def test_keys_are_private_and_match(generated: Fixtures) -> None:
    keys = sorted(generated.root.glob("*.key"))
    assert len(keys) == 15
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
        cert = generated.cert(key.stem)
        assert cert.public_key() == generated.key(key.stem).public_key()


def test_index_and_readme_cover_every_file(generated: Fixtures) -> None:
    on_disk = {p.name for p in generated.root.iterdir()}
    assert on_disk == set(generated.index["files"])
    readme = (generated.root / "README.md").read_text(encoding="utf-8")
    assert "mssante pki test-hierarchy OUTDIR" in readme
    assert "TEST ONLY" in readme
    for name, info in generated.index["files"].items():
        if info["role"] != "private-key":
            assert f"`{name}`" in readme


def _whitelist(fixtures: Fixtures) -> list[tuple[str, str]]:
    # Our own generated file, not network input.
    root = ET.parse(fixtures.path("whitelist.xml")).getroot()  # noqa: S314
    assert root.tag == f"{{{NAMESPACE}}}ListeBlancheMSSante"
    generated_at = root.findtext("lb:DateDeGeneration", namespaces=NS)
    assert generated_at is not None
    datetime.fromisoformat(generated_at)
    pairs = []
    for domain in root.iterfind("lb:ListeDomaines/lb:Domaine", NS):
        children = [child.tag.split("}")[1] for child in domain]
        assert children == [
            "Nom",
            "Description",
            "DNCertificatOperateur",
            "ResponsableContact",
            "SupportContact",
            "DateMAJ",
        ]
        pairs.append(
            (
                domain.findtext("lb:Nom", namespaces=NS) or "",
                domain.findtext("lb:DNCertificatOperateur", namespaces=NS) or "",
            )
        )
    return pairs


@pytest.mark.parametrize("which", ["committed", "generated"])
def test_whitelist_lists_the_expected_pairs(fx: Fixtures, generated: Fixtures, which: str) -> None:
    fixtures = fx if which == "committed" else generated
    pairs = _whitelist(fixtures)
    assert pairs == [(e["domain"], e["dn"]) for e in fixtures.info("whitelist.xml")["entries"]]
    listed = {(domain, normalize_dn(dn)) for domain, dn in pairs}
    peer_a, peer_b = (normalize_dn(fixtures.subject(n)) for n in ("peer-a", "peer-b"))
    assert ("hopital-a.mssante.test", peer_a) in listed
    assert ("clinique-b.fr", peer_a) in listed
    assert ("clinique-b.fr", peer_b) in listed
    assert ("demo.mssante.test", normalize_dn(fixtures.subject("operator"))) in listed
    assert all(dn != normalize_dn(fixtures.subject("peer-c")) for _, dn in listed)


def test_committed_fixtures_are_complete(fx: Fixtures) -> None:
    assert {p.name for p in fx.root.iterdir()} == set(fx.index["files"])
    assert fx.info("pro-1")["national_id"] == "810001234567"
    assert fx.info("pro-2")["national_id"] == "810009876543"
    assert fx.info("peer-b")["domain"] == "clinique-b.fr"


def test_generator_overwrites_an_existing_directory(tmp_path: Path) -> None:
    key = tmp_path / "operator.key"
    key.write_text("old")
    key.chmod(0o644)
    write_test_hierarchy(tmp_path)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
