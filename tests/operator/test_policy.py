"""Trust-space decisions: which peer certificate may send from which domain, who may submit as
whom, and where a submitted recipient goes."""

from __future__ import annotations

import pytest

from mssante.operator import policy
from mssante.operator.errors import MailError
from mssante.whitelist.model import Whitelist

PEER_A = "CN=smtp.hopital-a.test,OU=1310000019,O=TEST HOPITAL A,C=FR"
PEER_B = "CN=mx.clinique-b.test,OU=312345678900017,O=TEST CLINIQUE B,C=FR"


LIST = Whitelist.from_entries(
    [("hopital-a.mssante.test", PEER_A), ("clinique-b.fr", PEER_A), ("clinique-b.fr", PEER_B)]
)


def test_listed_dn_may_send_for_its_domains() -> None:
    assert policy.peer_may_send_from(LIST, PEER_A, "x@hopital-a.mssante.test") is None
    assert policy.peer_may_send_from(LIST, PEER_A, "x@clinique-b.fr") is None
    assert policy.peer_may_send_from(LIST, PEER_B, "x@CLINIQUE-B.FR") is None


def test_dn_listed_for_another_domain_only() -> None:
    refusal = policy.peer_may_send_from(LIST, PEER_B, "x@hopital-a.mssante.test")
    assert refusal is not None
    assert (refusal.code, refusal.enhanced, refusal.reason) == (
        550,
        "5.7.1",
        "dn_not_listed_for_domain",
    )
    assert "hopital-a.mssante.test" in refusal.text


def test_unlisted_dn() -> None:
    refusal = policy.peer_may_send_from(LIST, "CN=other", "x@hopital-a.mssante.test")
    assert refusal is not None and refusal.reason == "dn_not_whitelisted"


def test_null_sender_from_any_listed_operator_only() -> None:
    assert policy.peer_may_send_from(LIST, PEER_B, "") is None
    refusal = policy.peer_may_send_from(LIST, "CN=other", "")
    assert refusal is not None and refusal.reason == "dn_not_whitelisted"


# --- submission: sender rights ------------------------------------------------------------------

DOCTOR = "jean.dupont@hopital-x.mssante.test"
SECRETARY = "marie.secretaire@hopital-x.mssante.test"
SERVICE = "cardiologie@hopital-x.mssante.test"
LAB_APP = "labo-noreply@hopital-x.mssante.test"


def secretary_rights() -> policy.SendRights:
    # The secretary sends as herself, for the doctor (delegated with the send right) and for
    # the cardiology service (member with the send right).
    return policy.SendRights(
        identity=SECRETARY, own=frozenset({SECRETARY}), on_behalf=frozenset({DOCTOR, SERVICE})
    )


def test_envelope_sender_must_be_one_the_identity_may_send_as() -> None:
    rights = secretary_rights()
    for allowed in (SECRETARY, DOCTOR.upper(), SERVICE):
        assert policy.submission_sender_refused(rights, allowed) is None
    refused = policy.submission_sender_refused(rights, LAB_APP)
    assert refused is not None
    assert (refused.code, refused.enhanced, refused.reason) == (
        550,
        "5.7.1",
        "envelope_sender_not_allowed",
    )
    assert LAB_APP in refused.text


def test_null_envelope_sender_is_the_operators_only() -> None:
    refused = policy.submission_sender_refused(secretary_rights(), "")
    assert refused is not None
    assert (refused.code, refused.enhanced, refused.reason) == (550, "5.7.1", "null_sender")


def test_every_from_address_must_be_allowed() -> None:
    rights = secretary_rights()
    assert policy.header_from_refused(rights, [DOCTOR]) is None
    assert policy.header_from_refused(rights, [DOCTOR, SERVICE]) is None
    refused = policy.header_from_refused(rights, [DOCTOR, "autre@ailleurs.mssante.test"])
    assert refused is not None
    assert (refused.code, refused.enhanced, refused.reason) == (
        550,
        "5.7.1",
        "header_from_not_allowed",
    )
    missing = policy.header_from_refused(rights, [])
    assert missing is not None
    assert (missing.code, missing.enhanced, missing.reason) == (550, "5.6.0", "no_from")


def test_sender_header_only_when_sending_for_someone_else() -> None:
    rights = secretary_rights()
    assert not policy.needs_sender_header(rights, [SECRETARY])
    assert policy.needs_sender_header(rights, [DOCTOR])
    assert policy.needs_sender_header(rights, [SECRETARY, SERVICE])
    app = policy.SendRights(identity=DOCTOR, own=frozenset({DOCTOR, LAB_APP}))
    assert not policy.needs_sender_header(app, [LAB_APP])


# --- submission: recipient routing --------------------------------------------------------------

HOSTED = {"hopital-x.mssante.test"}
LISTED = {"clinique-y.mssante.test", "patient.mssante.test"}
DIRECTORY = {"dr.martin@clinique-y.mssante.test", "146026322000196@patient.mssante.test"}


def route(address: str, *, directory: bool = True) -> policy.Route | MailError:
    return policy.route_recipient(
        address,
        hosted=HOSTED.__contains__,
        whitelisted=LISTED.__contains__,
        in_directory=DIRECTORY.__contains__ if directory else None,
        patient_domain="patient.mssante.test",
    )


def test_routes_hosted_and_listed_recipients() -> None:
    assert route("anyone@HOPITAL-X.mssante.test") is policy.Route.LOCAL
    assert route("Dr.Martin@clinique-y.mssante.test") is policy.Route.REMOTE
    assert route("146026322000196@patient.mssante.test") is policy.Route.REMOTE


@pytest.mark.parametrize(
    ("address", "code", "enhanced", "reason"),
    [
        ("someone@gmail.example", 550, "5.7.1", "domain_not_whitelisted"),
        ("dr.inconnu@clinique-y.mssante.test", 550, "5.1.1", "not_in_directory"),
        ("146026322000197@patient.mssante.test", 553, "5.1.3", "bad_address"),
        ("no-at-sign", 553, "5.1.3", "bad_address"),
    ],
)
def test_refused_recipients(address: str, code: int, enhanced: str, reason: str) -> None:
    refused = route(address)
    assert isinstance(refused, MailError)
    assert (refused.code, refused.enhanced, refused.reason) == (code, enhanced, reason)


def test_directory_check_can_be_off() -> None:
    assert route("dr.inconnu@clinique-y.mssante.test", directory=False) is policy.Route.REMOTE
    # The whitelist is never optional.
    assert isinstance(route("someone@gmail.example", directory=False), MailError)
