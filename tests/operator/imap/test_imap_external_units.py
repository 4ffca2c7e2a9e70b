"""Decisions without I/O: which mapped mailbox EXTERNAL logs in to, and the NOTIFY payloads."""

from __future__ import annotations

from mssante.operator.imap.external import Candidate, choose
from mssante.operator.imap.queries import Account
from mssante.operator.store.notify import MAX_PAYLOAD, parse_payload, payloads

PER = Candidate(Account(1, "jean@h.test", None), own=True)
APP = Candidate(Account(2, "robot@h.test", None), own=False)
ORG = Candidate(Account(3, "service@h.test", None), own=False)


def test_choose_prefers_the_own_per_mailbox_and_honours_the_authzid() -> None:
    assert choose([], "") == "no_mailbox"
    assert choose([APP, PER], "") == PER.account
    assert choose([APP], "") == APP.account
    assert choose([APP, ORG], "") == "ambiguous"
    assert choose([APP, ORG], " Service@H.test ") == ORG.account
    assert choose([PER, APP], "other@h.test") == "authzid_not_mapped"


def test_payloads_stay_under_the_notify_limit_and_round_trip() -> None:
    ids = list(range(10**12, 10**12 + 3000))  # 13-digit ids: several payloads
    chunks = list(payloads(ids + ids[:10]))
    assert len(chunks) > 1
    assert all(len(c.encode()) < MAX_PAYLOAD < 8000 for c in chunks)
    assert [i for c in chunks for i in parse_payload(c)] == ids
    assert list(payloads([])) == []
    assert parse_payload("12,x,,-3,99999999999999999999,7") == [12, 7]
