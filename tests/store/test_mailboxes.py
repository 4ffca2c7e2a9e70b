"""Domains, mailboxes, their folders, credentials and certificate bindings."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from mssante.operator.store import domains, folders, mailboxes
from mssante.operator.store.db import Store
from mssante.operator.store.errors import AlreadyExists, NotFound
from mssante.operator.store.schema import BindingKind, MailboxState, MailboxType, SpecialUse

DOMAIN = "hopital-x.mssante.fr"
FINGERPRINT = "AB:" * 31 + "CD"
# Cheap parameters: these tests check storage, not hashing strength.
HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture
async def hosted(store: Store) -> Store:
    async with store.session() as session:
        await domains.add_domain(session, DOMAIN)
        await session.commit()
    return store


async def test_domains_add_get_list(store: Store) -> None:
    async with store.session() as session:
        added = await domains.add_domain(session, " Hopital-X.MSSante.fr. ")
        await domains.add_domain(session, "clinique.example")
        await session.commit()
    assert added.name == DOMAIN
    assert added.created_at.tzinfo is not None
    async with store.session() as session:
        assert (await domains.get_domain(session, DOMAIN.upper())).id == added.id
        assert [d.name for d in await domains.list_domains(session)] == [
            "clinique.example",
            DOMAIN,
        ]
        with pytest.raises(NotFound, match=r"elsewhere\.example"):
            await domains.get_domain(session, "elsewhere.example")


async def test_adding_a_hosted_domain_again_is_refused(hosted: Store) -> None:
    async with hosted.session() as session:
        with pytest.raises(AlreadyExists, match=DOMAIN):
            await domains.add_domain(session, DOMAIN.upper())
        # The refusal left the transaction usable.
        await domains.add_domain(session, "other.example")
        await session.commit()
    async with hosted.session() as session:
        assert len(await domains.list_domains(session)) == 2


@pytest.mark.parametrize("bad", ["", "a b.example", "user@example.org", "é.example"])
async def test_impossible_domain_names_are_refused(store: Store, bad: str) -> None:
    async with store.session() as session:
        with pytest.raises(ValueError, match="domain"):
            await domains.add_domain(session, bad)


async def test_create_mailbox_with_standard_folders(hosted: Store) -> None:
    async with hosted.session() as session:
        box = await mailboxes.create_mailbox(
            session,
            f"Jean.Dupont@{DOMAIN.upper()}",
            MailboxType.PER,
            display_name="Dr Jean Dupont",
            national_id="810001234567",
        )
        await session.commit()
    assert box.address == f"jean.dupont@{DOMAIN}"
    assert box.domain == DOMAIN
    assert box.type is MailboxType.PER
    assert box.state is MailboxState.ACTIVE
    assert box.national_id == "810001234567"
    assert box.quota_bytes is None
    async with hosted.session() as session:
        found = await folders.list_folders(session, box.id)
    by_name = {f.name: f for f in found}
    assert set(by_name) == {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"}
    assert by_name["INBOX"].special_use is None
    assert by_name["Sent"].special_use is SpecialUse.SENT
    assert by_name["Drafts"].special_use is SpecialUse.DRAFTS
    assert by_name["Trash"].special_use is SpecialUse.TRASH
    assert by_name["Junk"].special_use is SpecialUse.JUNK
    assert by_name["Archive"].special_use is SpecialUse.ARCHIVE
    assert len({f.uidvalidity for f in found}) == 6
    assert all(0 < f.uidvalidity <= 0xFFFFFFFF for f in found)
    assert all(f.uidnext == 1 and f.highest_modseq == 1 and f.subscribed for f in found)


async def test_uidvalidity_is_never_reused_for_a_name(hosted: Store) -> None:
    async with hosted.session() as session:
        a = await mailboxes.create_mailbox(session, f"a@{DOMAIN}", MailboxType.ORG)
        b = await mailboxes.create_mailbox(session, f"b@{DOMAIN}", MailboxType.ORG)
        first = await folders.create_folder(session, a.id, "Projets/2025")
        await session.commit()
    async with hosted.session() as session:
        await session.execute(text("DELETE FROM folders WHERE id = :id"), {"id": first.id})
        again = await folders.create_folder(session, a.id, "Projets/2025")
        await session.commit()
    assert again.uidvalidity > first.uidvalidity
    async with hosted.session() as session:
        every = await folders.list_folders(session, a.id) + await folders.list_folders(
            session, b.id
        )
    assert len({f.uidvalidity for f in every}) == len(every) == 13


async def test_folder_names(hosted: Store) -> None:
    async with hosted.session() as session:
        box = await mailboxes.create_mailbox(session, f"c@{DOMAIN}", MailboxType.CAB)
        inbox = await folders.get_folder(session, box.id, "inbox")
        assert inbox.name == "INBOX"
        child = await folders.create_folder(session, box.id, "Inbox/Résultats")
        assert child.name == "INBOX/Résultats"
        with pytest.raises(AlreadyExists):
            await folders.create_folder(session, box.id, "INBOX/Résultats")
        for bad in ["", "a//b", "/a", "a/", "a*", "b%", "x\ny"]:
            with pytest.raises(ValueError):
                await folders.create_folder(session, box.id, bad)
        with pytest.raises(NotFound):
            await folders.get_folder(session, box.id, "Nope")
        assert (await folders.get_folder_by_id(session, child.id)).name == "INBOX/Résultats"


async def test_mailbox_in_a_domain_not_hosted_is_refused(hosted: Store) -> None:
    async with hosted.session() as session:
        with pytest.raises(NotFound, match=r"elsewhere\.example"):
            await mailboxes.create_mailbox(session, "x@elsewhere.example", MailboxType.PER)


async def test_duplicate_mailbox_is_refused(hosted: Store) -> None:
    async with hosted.session() as session:
        await mailboxes.create_mailbox(session, f"secretariat@{DOMAIN}", MailboxType.ORG)
        await session.commit()
    async with hosted.session() as session:
        with pytest.raises(AlreadyExists, match=f"secretariat@{DOMAIN}"):
            await mailboxes.create_mailbox(session, f"<Secretariat@{DOMAIN}>", MailboxType.ORG)


async def test_get_list_and_state(hosted: Store) -> None:
    async with hosted.session() as session:
        await domains.add_domain(session, "patient.mssante.fr")
        await mailboxes.create_mailbox(session, f"b@{DOMAIN}", MailboxType.ORG)
        await mailboxes.create_mailbox(session, f"a@{DOMAIN}", MailboxType.PER)
        await mailboxes.create_mailbox(
            session,
            "146026322000196@patient.mssante.fr",
            MailboxType.PATIENT,
            national_id="146026322000196",
            state=MailboxState.PENDING,
        )
        await session.commit()
    async with hosted.session() as session:
        every = await mailboxes.list_mailboxes(session)
        assert [m.address for m in every] == [
            "146026322000196@patient.mssante.fr",
            f"a@{DOMAIN}",
            f"b@{DOMAIN}",
        ]
        per = await mailboxes.list_mailboxes(session, MailboxType.PER)
        assert [m.address for m in per] == [f"a@{DOMAIN}"]
        in_domain = await mailboxes.list_mailboxes(session, domain=DOMAIN)
        assert len(in_domain) == 2
        patient = await mailboxes.get_mailbox(session, "146026322000196@patient.mssante.fr")
        assert patient.state is MailboxState.PENDING
        changed = await mailboxes.set_state(session, patient.address, MailboxState.ACTIVE)
        assert changed.state is MailboxState.ACTIVE
        assert changed.updated_at >= patient.updated_at
        await session.commit()
    async with hosted.session() as session:
        assert (await mailboxes.get_mailbox(session, patient.address)).state is MailboxState.ACTIVE
        with pytest.raises(NotFound, match=f"nobody@{DOMAIN}"):
            await mailboxes.get_mailbox(session, f"nobody@{DOMAIN}")


async def test_password_hash_set_replace_remove(hosted: Store) -> None:
    first, second = HASHER.hash("correct horse"), HASHER.hash("battery staple")
    async with hosted.session() as session:
        box = await mailboxes.create_mailbox(
            session, f"p@{DOMAIN}", MailboxType.PER, password_hash=first
        )
        assert await mailboxes.get_password_hash(session, box.address) == first
        await mailboxes.set_password_hash(session, box.address, second)
        await session.commit()
    async with hosted.session() as session:
        stored = await mailboxes.get_password_hash(session, box.address)
        assert stored is not None and HASHER.verify(stored, "battery staple")
        await mailboxes.set_password_hash(session, box.address, None)
        assert await mailboxes.get_password_hash(session, box.address) is None
        await mailboxes.set_password_hash(session, box.address, first)
        assert await mailboxes.get_password_hash(session, box.address) == first
        with pytest.raises(ValueError, match="argon2"):
            await mailboxes.set_password_hash(session, box.address, "plain text password")
        with pytest.raises(ValueError, match="argon2"):
            await mailboxes.create_mailbox(
                session, f"q@{DOMAIN}", MailboxType.PER, password_hash="hunter2"
            )


async def test_certificate_bindings(hosted: Store) -> None:
    async with hosted.session() as session:
        a = await mailboxes.create_mailbox(session, f"a@{DOMAIN}", MailboxType.PER)
        b = await mailboxes.create_mailbox(session, f"b@{DOMAIN}", MailboxType.ORG)
        bound = await mailboxes.bind_certificate(
            session, a.address, BindingKind.FINGERPRINT, FINGERPRINT
        )
        assert bound.value == FINGERPRINT.replace(":", "").lower()
        await mailboxes.bind_certificate(session, b.address, BindingKind.FINGERPRINT, FINGERPRINT)
        await mailboxes.bind_certificate(
            session, a.address, BindingKind.NATIONAL_ID, "810001234567"
        )
        await mailboxes.bind_certificate(
            session, a.address, BindingKind.SUBJECT_DN, "cn=jean dupont,o=hopital x,c=fr"
        )
        with pytest.raises(AlreadyExists):
            await mailboxes.bind_certificate(
                session, a.address, BindingKind.FINGERPRINT, FINGERPRINT.lower()
            )
        with pytest.raises(ValueError, match="64 hex"):
            await mailboxes.bind_certificate(session, a.address, BindingKind.FINGERPRINT, "abcd")
        await session.commit()
    async with hosted.session() as session:
        holders = await mailboxes.mailboxes_for_certificate(
            session, BindingKind.FINGERPRINT, FINGERPRINT.replace(":", "")
        )
        assert [m.address for m in holders] == [a.address, b.address]
        kinds = [x.kind for x in await mailboxes.list_bindings(session, a.address)]
        assert kinds == [BindingKind.FINGERPRINT, BindingKind.NATIONAL_ID, BindingKind.SUBJECT_DN]
        await mailboxes.unbind_certificate(session, b.address, BindingKind.FINGERPRINT, FINGERPRINT)
        with pytest.raises(NotFound):
            await mailboxes.unbind_certificate(
                session, b.address, BindingKind.FINGERPRINT, FINGERPRINT
            )
        holders = await mailboxes.mailboxes_for_certificate(
            session, BindingKind.FINGERPRINT, FINGERPRINT
        )
        assert [m.address for m in holders] == [a.address]


_INSERT_MAILBOX = text(
    "INSERT INTO mailboxes (address, domain_id, type, display_name, state, last_uidvalidity,"
    " created_at, updated_at) VALUES (:address, (SELECT id FROM domains), :type, '', :state,"
    " 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
)


@pytest.mark.parametrize(
    ("address", "type_", "state"),
    [
        (f"a@{DOMAIN}", "BOGUS", "active"),
        (f"a@{DOMAIN}", "per", "active"),
        (f"a@{DOMAIN}", "PER", "deleted"),
        (f"A@{DOMAIN}", "PER", "active"),
    ],
)
async def test_check_constraints_refuse_bogus_values(
    hosted: Store, address: str, type_: str, state: str
) -> None:
    async with hosted.session() as session:
        await session.execute(
            _INSERT_MAILBOX, {"address": "ok@x", "type": "PER", "state": "active"}
        )
        with pytest.raises(IntegrityError, match=r"(?i)check"):
            await session.execute(
                _INSERT_MAILBOX, {"address": address, "type": type_, "state": state}
            )
