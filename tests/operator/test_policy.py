"""Trust-space decisions: which peer certificate may send from which domain."""

from __future__ import annotations

from mssante.operator import policy
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
