"""Chain validation (mssante.pki.validation) on the test hierarchy and on forged certificates."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier
from pki_support import NOW_IN_RANGE, Fixtures, Made, issue, simple_name

from mssante.pki.anchors import TrustStore
from mssante.pki.crl import CrlStore
from mssante.pki.errors import VALIDATION_REASONS, ValidationError
from mssante.pki.identity import identity_of
from mssante.pki.validation import Purpose, ValidatedChain, validate_chain

PURPOSES = {p.value: p for p in Purpose}


def _ca(fx: Fixtures, name: str) -> Made:
    return Made(fx.cert(name), fx.key(name))


def _reason(call: Callable[[], object]) -> str:
    with pytest.raises(ValidationError) as caught:
        call()
    assert caught.value.reason in VALIDATION_REASONS
    return caught.value.reason


async def test_every_fixture_certificate_gets_its_expected_outcome(
    fx: Fixtures, trust: TrustStore, crls: CrlStore
) -> None:
    checked = 0
    for name, info in fx.index["files"].items():
        if "expect" not in info:
            continue
        purpose = PURPOSES[info["purpose"]]
        cert = fx.cert(name)
        if info["expect"] == "valid":
            chain = validate_chain(cert, trust, purpose, at=NOW_IN_RANGE, crls=crls)
            assert chain.identity == identity_of(cert)
        else:
            with pytest.raises(ValidationError) as caught:
                validate_chain(cert, trust, purpose, at=NOW_IN_RANGE, crls=crls)
            assert caught.value.reason == info["expect"], name
        checked += 1
    assert checked == 11


@pytest.mark.parametrize(
    ("name", "purpose"),
    [
        ("operator", Purpose.SERVER),
        ("operator", Purpose.PEER_OPERATOR),
        ("operator", Purpose.CLIENT),
        ("peer-a", Purpose.SERVER),
        ("peer-b", Purpose.PEER_OPERATOR),
        ("peer-c", Purpose.PEER_OPERATOR),
        ("pro-1", Purpose.CLIENT),
        ("pro-2", Purpose.CLIENT),
        ("peer-noeku-server", Purpose.CLIENT),  # clientAuth is what it has
    ],
)
async def test_valid_chains(
    fx: Fixtures, trust: TrustStore, crls: CrlStore, name: str, purpose: Purpose
) -> None:
    chain = validate_chain(fx.cert(name), trust, purpose, crls=crls)
    assert isinstance(chain, ValidatedChain)
    issuer = fx.info(name)["issuer"]
    assert chain.chain == (fx.cert(name), fx.cert(issuer), fx.cert("root-ca"))
    assert chain.leaf == fx.cert(name)
    assert chain.anchor == fx.cert("root-ca")
    assert chain.identity.subject_dn == fx.subject(name)


def test_expired(fx: Fixtures, trust: TrustStore) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_chain(fx.cert("peer-expired"), trust, Purpose.SERVER)
    assert caught.value.reason == "expired"
    assert caught.value.subject == fx.subject("peer-expired")
    assert fx.subject("peer-expired") in str(caught.value)
    assert "2021-01-01" in str(caught.value)


def test_validity_is_checked_at_the_given_time(fx: Fixtures, trust: TrustStore) -> None:
    peer = fx.cert("peer-a")
    assert _reason(
        lambda: validate_chain(peer, trust, Purpose.SERVER, at=datetime(2024, 6, 1))
    ) == ("not_yet_valid")
    late = datetime(2045, 1, 2, tzinfo=UTC)
    assert _reason(lambda: validate_chain(peer, trust, Purpose.SERVER, at=late)) == "expired"
    # peer-expired was valid in 2020, but its CA was not yet.
    old = datetime(2020, 6, 1, tzinfo=UTC)
    with pytest.raises(ValidationError) as caught:
        validate_chain(fx.cert("peer-expired"), trust, Purpose.SERVER, at=old)
    assert caught.value.reason == "not_yet_valid"
    assert caught.value.subject == fx.subject("org-ca")


async def test_revoked_only_through_the_crl(
    fx: Fixtures, trust: TrustStore, crls: CrlStore
) -> None:
    for name, purpose in (("peer-revoked", Purpose.PEER_OPERATOR), ("pro-revoked", Purpose.CLIENT)):
        with pytest.raises(ValidationError) as caught:
            validate_chain(fx.cert(name), trust, purpose, crls=crls)
        assert caught.value.reason == "revoked"
        assert fx.subject(name) in str(caught.value)
        # Without CRLs the same certificate passes: the CRL is what refuses it.
        validate_chain(fx.cert(name), trust, purpose)


def test_foreign_ca_is_unknown(fx: Fixtures, trust: TrustStore) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_chain(fx.cert("foreign"), trust, Purpose.PEER_OPERATOR)
    assert caught.value.reason == "unknown_ca"
    assert fx.subject("foreign-ca") in str(caught.value)


def test_foreign_ca_passed_as_extra_is_not_an_anchor(fx: Fixtures, trust: TrustStore) -> None:
    extra = [fx.cert("foreign-ca")]
    reason = _reason(
        lambda: validate_chain(
            fx.cert("foreign"), trust, Purpose.PEER_OPERATOR, extra_intermediates=extra
        )
    )
    assert reason == "unknown_ca"


@pytest.mark.parametrize(
    ("name", "purpose"),
    [
        ("peer-noeku-server", Purpose.SERVER),
        ("peer-noeku-server", Purpose.PEER_OPERATOR),
        ("pro-1", Purpose.SERVER),
        ("pro-1", Purpose.PEER_OPERATOR),
    ],
)
def test_wrong_usage(fx: Fixtures, trust: TrustStore, name: str, purpose: Purpose) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_chain(fx.cert(name), trust, purpose)
    assert caught.value.reason == "wrong_usage"
    assert "serverAuth" in str(caught.value)


def test_peer_operator_needs_client_auth_too(fx: Fixtures, trust: TrustStore) -> None:
    server_only = issue(
        simple_name("smtp.serveur-seul.test"),
        _ca(fx, "org-ca"),
        eku=[ExtendedKeyUsageOID.SERVER_AUTH],
    )
    validate_chain(server_only.cert, trust, Purpose.SERVER)
    with pytest.raises(ValidationError, match="clientAuth") as caught:
        validate_chain(server_only.cert, trust, Purpose.PEER_OPERATOR)
    assert caught.value.reason == "wrong_usage"


@pytest.mark.parametrize(
    "variant",
    ["no_digital_signature", "no_eku", "leaf_is_ca"],
)
def test_leaf_usage_variants(fx: Fixtures, trust: TrustStore, variant: str) -> None:
    org = _ca(fx, "org-ca")
    name = simple_name(f"{variant}.test")
    if variant == "no_digital_signature":
        made = issue(name, org, digital_signature=False)
    elif variant == "no_eku":
        made = issue(name, org, eku=None)
    else:
        made = issue(name, org, ca=True)
    assert _reason(lambda: validate_chain(made.cert, trust, Purpose.SERVER)) == "wrong_usage"


def test_forged_signature_with_the_same_issuer_name(fx: Fixtures, trust: TrustStore) -> None:
    # A certificate that names org-ca as issuer (and even carries org-ca's key identifier)
    # but is signed by another key.
    impostor = Made(fx.cert("org-ca"), ec.generate_private_key(ec.SECP256R1()))
    forged = issue(simple_name("smtp.hopital-a.test"), impostor)
    with pytest.raises(ValidationError) as caught:
        validate_chain(forged.cert, trust, Purpose.SERVER)
    assert caught.value.reason == "bad_signature"
    assert fx.subject("org-ca") in str(caught.value)


def test_forged_signature_without_key_identifier(fx: Fixtures, trust: TrustStore) -> None:
    impostor = Made(fx.cert("org-ca"), ec.generate_private_key(ec.SECP256R1()))
    forged = issue(simple_name("smtp.forge.test"), impostor, aki=False)
    assert _reason(lambda: validate_chain(forged.cert, trust, Purpose.SERVER)) == "bad_signature"


def test_key_identifier_of_no_known_ca(fx: Fixtures, trust: TrustStore) -> None:
    # Issuer name of org-ca, but an authorityKeyIdentifier no CA of the store has: no candidate.
    other = issue(fx.cert("org-ca").subject, None, ca=True)
    forged = issue(simple_name("smtp.forge.test"), other)
    assert _reason(lambda: validate_chain(forged.cert, trust, Purpose.SERVER)) == "unknown_ca"


def test_issuer_that_is_not_a_ca(fx: Fixtures, trust: TrustStore) -> None:
    peer = _ca(fx, "peer-a")
    leaf = issue(simple_name("sous-certificat.test"), peer)
    with pytest.raises(ValidationError) as caught:
        validate_chain(leaf.cert, trust, Purpose.SERVER, extra_intermediates=[peer.cert])
    assert caught.value.reason == "not_a_ca"
    assert caught.value.subject == fx.subject("peer-a")


def test_ca_without_key_cert_sign(fx: Fixtures, trust: TrustStore) -> None:
    sub = issue(simple_name("TEST SUB CA"), _ca(fx, "root-ca"), ca=True, key_cert_sign=False)
    leaf = issue(simple_name("leaf.test"), sub)
    reason = _reason(
        lambda: validate_chain(leaf.cert, trust, Purpose.SERVER, extra_intermediates=[sub.cert])
    )
    assert reason == "not_a_ca"


def test_extra_intermediate_completes_the_path(fx: Fixtures, trust: TrustStore) -> None:
    sub = issue(simple_name("TEST SUB CA"), _ca(fx, "root-ca"), ca=True, path_length=0)
    leaf = issue(simple_name("leaf.test"), sub)
    assert _reason(lambda: validate_chain(leaf.cert, trust, Purpose.SERVER)) == "unknown_ca"
    chain = validate_chain(leaf.cert, trust, Purpose.SERVER, extra_intermediates=[sub.cert])
    assert chain.chain == (leaf.cert, sub.cert, fx.cert("root-ca"))


def test_path_length_constraint(fx: Fixtures, trust: TrustStore) -> None:
    # org-ca has pathLenConstraint 0: a CA below it may not issue.
    sub = issue(simple_name("TEST SUB CA"), _ca(fx, "org-ca"), ca=True)
    leaf = issue(simple_name("leaf.test"), sub)
    with pytest.raises(ValidationError) as caught:
        validate_chain(leaf.cert, trust, Purpose.SERVER, extra_intermediates=[sub.cert])
    assert caught.value.reason == "path_too_long"
    assert caught.value.subject == fx.subject("org-ca")


def test_max_depth(fx: Fixtures, trust: TrustStore) -> None:
    # root -> a -> b -> c -> leaf: 5 certificates, no pathLen constraints on a, b, c.
    issuer = _ca(fx, "root-ca")
    chain: list[x509.Certificate] = []
    for label in "abc":
        issuer = issue(simple_name(f"TEST CA {label}"), issuer, ca=True)
        chain.append(issuer.cert)
    leaf = issue(simple_name("deep.test"), issuer)
    assert (
        len(validate_chain(leaf.cert, trust, Purpose.SERVER, extra_intermediates=chain).chain) == 5
    )
    reason = _reason(
        lambda: validate_chain(
            leaf.cert, trust, Purpose.SERVER, extra_intermediates=chain, max_depth=4
        )
    )
    assert reason == "path_too_long"


def test_unknown_critical_extension_is_refused(fx: Fixtures, trust: TrustStore) -> None:
    odd = x509.UnrecognizedExtension(ObjectIdentifier("1.2.250.1.71.99"), b"\x05\x00")
    made = issue(simple_name("critique.test"), _ca(fx, "org-ca"), extra=[(odd, True)])
    assert _reason(lambda: validate_chain(made.cert, trust, Purpose.SERVER)) == (
        "unsupported_critical_extension"
    )
    fine = issue(simple_name("noncritique.test"), _ca(fx, "org-ca"), extra=[(odd, False)])
    validate_chain(fine.cert, trust, Purpose.SERVER)


async def test_require_crl(fx: Fixtures, trust: TrustStore) -> None:
    only_root = CrlStore(trust, [str(fx.path("root-ca.crl.pem"))], require_crl=True)
    await only_root.load()
    with pytest.raises(ValidationError) as caught:
        validate_chain(fx.cert("peer-a"), trust, Purpose.SERVER, crls=only_root)
    assert caught.value.reason == "crl_missing"
    assert fx.subject("org-ca") in str(caught.value)

    everything = CrlStore(trust, [str(p) for p in fx.crl_paths], require_crl=True)
    await everything.load()
    validate_chain(fx.cert("peer-a"), trust, Purpose.SERVER, crls=everything)


def test_reasons_are_documented() -> None:
    assert {
        "expired",
        "not_yet_valid",
        "unknown_ca",
        "bad_signature",
        "revoked",
        "wrong_usage",
        "not_a_ca",
        "path_too_long",
        "crl_missing",
        "unsupported_critical_extension",
    } == VALIDATION_REASONS


def test_root_only_store_with_caller_intermediates(fx: Fixtures) -> None:
    # Trust only the root: the intermediates then come from the caller.
    root_only = TrustStore.from_file(fx.path("root-ca.pem"))
    peer = fx.cert("peer-b")
    assert _reason(lambda: validate_chain(peer, root_only, Purpose.SERVER)) == "unknown_ca"
    chain = validate_chain(peer, root_only, Purpose.SERVER, extra_intermediates=[fx.cert("org-ca")])
    assert len(chain.chain) == 3
