"""Grants: delegation of PER mailboxes, membership of ORG/CAB mailboxes."""

from __future__ import annotations

import pytest

from mssante.operator.store import domains, grants, mailboxes
from mssante.operator.store.db import Store
from mssante.operator.store.errors import NotFound
from mssante.operator.store.schema import MailboxType

DOMAIN = "hopital-x.mssante.fr"
DOCTOR = f"jean.dupont@{DOMAIN}"
SECRETARY = f"secretaire@{DOMAIN}"
TEAM = f"cardiologie@{DOMAIN}"


@pytest.fixture
async def people(store: Store) -> Store:
    async with store.session() as session:
        await domains.add_domain(session, DOMAIN)
        await mailboxes.create_mailbox(session, DOCTOR, MailboxType.PER)
        await mailboxes.create_mailbox(session, SECRETARY, MailboxType.PER)
        await mailboxes.create_mailbox(session, TEAM, MailboxType.ORG)
        await session.commit()
    return store


async def test_grant_is_an_upsert(people: Store) -> None:
    async with people.session() as session:
        first = await grants.grant(session, DOCTOR, SECRETARY, read=True)
        assert (first.can_read, first.can_write, first.can_send_as) == (True, False, False)
        await session.commit()
    async with people.session() as session:
        second = await grants.grant(
            session, DOCTOR.upper(), SECRETARY, read=True, write=True, send_as=True
        )
        await session.commit()
    assert (second.can_read, second.can_write, second.can_send_as) == (True, True, True)
    assert (second.owner, second.grantee) == (DOCTOR, SECRETARY)
    async with people.session() as session:
        listed = await grants.list_for_owner(session, DOCTOR)
    assert listed == [second]


async def test_lists_for_owner_and_grantee(people: Store) -> None:
    async with people.session() as session:
        await grants.grant(session, DOCTOR, SECRETARY, read=True, write=True)
        await grants.grant(session, TEAM, SECRETARY, read=True, send_as=True)
        await grants.grant(session, TEAM, DOCTOR, read=True)
        await session.commit()
    async with people.session() as session:
        of_secretary = await grants.list_for_grantee(session, SECRETARY)
        assert [(g.owner, g.can_write, g.can_send_as) for g in of_secretary] == [
            (TEAM, False, True),
            (DOCTOR, True, False),
        ]
        on_team = await grants.list_for_owner(session, TEAM)
        assert [g.grantee for g in on_team] == [DOCTOR, SECRETARY]
        assert await grants.list_for_owner(session, SECRETARY) == []
        every = await grants.list_all(session)
        assert [(g.owner, g.grantee) for g in every] == [
            (TEAM, DOCTOR),
            (TEAM, SECRETARY),
            (DOCTOR, SECRETARY),
        ]


async def test_revoke(people: Store) -> None:
    async with people.session() as session:
        await grants.grant(session, TEAM, SECRETARY)
        await grants.grant(session, TEAM, DOCTOR)
        await session.commit()
    async with people.session() as session:
        await grants.revoke(session, TEAM, SECRETARY)
        await session.commit()
    async with people.session() as session:
        assert [g.grantee for g in await grants.list_for_owner(session, TEAM)] == [DOCTOR]
        with pytest.raises(NotFound, match=SECRETARY):
            await grants.revoke(session, TEAM, SECRETARY)


async def test_refusals(people: Store) -> None:
    async with people.session() as session:
        with pytest.raises(ValueError, match="itself"):
            await grants.grant(session, DOCTOR, DOCTOR.upper())
        with pytest.raises(ValueError, match="revoke"):
            await grants.grant(session, DOCTOR, SECRETARY, read=False)
        with pytest.raises(NotFound, match="ghost"):
            await grants.grant(session, DOCTOR, f"ghost@{DOMAIN}")
        with pytest.raises(NotFound, match="ghost"):
            await grants.list_for_grantee(session, f"ghost@{DOMAIN}")
