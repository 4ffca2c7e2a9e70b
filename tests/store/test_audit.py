"""The audit trail: record, read back, bounded fields, constraints."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from mssante.operator.store import audit
from mssante.operator.store.db import Store
from mssante.operator.store.schema import Outcome


async def test_record_and_read_back(store: Store) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    async with store.session() as session:
        await audit.record(session, "mailbox.add", Outcome.OK, actor="admin", target="a@x.fr")
        await audit.record(
            session,
            "smtp.reject",
            "refused",
            peer_ip="2001:db8::1",
            peer_dn="CN=smtp.peer.fr,OU=318310021300028,O=Peer,C=FR",
            target="b@x.fr",
            details={"code": 550, "reason": "domain not whitelisted", "when": before},
        )
        await session.commit()
    async with store.session() as session:
        events = await audit.recent(session, limit=10)
        rejects = await audit.recent(session, limit=10, event="smtp.reject")
    assert [e.event for e in events] == ["smtp.reject", "mailbox.add"]
    reject = rejects[0]
    assert rejects == [events[0]]
    assert reject.outcome is Outcome.REFUSED
    assert reject.peer_ip == "2001:db8::1"
    assert reject.peer_dn is not None and reject.peer_dn.startswith("CN=smtp.peer.fr")
    assert reject.details == {
        "code": 550,
        "reason": "domain not whitelisted",
        "when": str(before),
    }
    assert reject.at.tzinfo == UTC
    assert before <= reject.at <= datetime.now(UTC)
    added = events[1]
    assert (added.actor, added.target, added.details, added.outcome) == (
        "admin",
        "a@x.fr",
        None,
        Outcome.OK,
    )


async def test_recent_limits_and_orders(store: Store) -> None:
    async with store.session() as session:
        for i in range(5):
            await audit.record(session, "imap.login", "ok", actor=f"user{i}")
        await session.commit()
    async with store.session() as session:
        latest = await audit.recent(session, limit=2)
        assert [e.actor for e in latest] == ["user4", "user3"]
        assert await audit.recent(session, event="nothing.here") == []
        with pytest.raises(ValueError):
            await audit.recent(session, limit=0)


async def test_fields_from_the_network_are_bounded(store: Store) -> None:
    async with store.session() as session:
        await audit.record(
            session,
            "smtp.connect",
            "error",
            peer_dn="CN=" + "x" * 5000,
            peer_ip="y" * 100,
            details={"blob": "z" * 100_000},
        )
        await session.commit()
    async with store.session() as session:
        (event,) = await audit.recent(session, limit=1)
    assert event.peer_dn is not None and len(event.peer_dn) == 1024
    assert event.peer_ip is not None and len(event.peer_ip) == 45
    assert event.details == {"truncated": True, "original_chars": 100_012}


async def test_bad_names_and_outcomes_are_refused(store: Store) -> None:
    async with store.session() as session:
        for name in ["", "nodot", "Mailbox.Add", "a..b", "x" * 70 + ".y"]:
            with pytest.raises(ValueError, match="audit event"):
                await audit.record(session, name, "ok")
        with pytest.raises(ValueError):
            await audit.record(session, "mailbox.add", "maybe")
        with pytest.raises(IntegrityError, match=r"(?i)check"):
            await session.execute(
                text(
                    "INSERT INTO audit_events (at, event, outcome)"
                    " VALUES (CURRENT_TIMESTAMP, 'mailbox.add', 'maybe')"
                )
            )
