"""Shared and delegated mailboxes (issue 4 §5) and LIST-EXTENDED / LIST-STATUS, through
Python's imaplib against the real operator, on SQLite and PostgreSQL.

The cast: USER (a PER mailbox) has a read-only secretary and a read-write stand-in; the ORG
mailbox `service@` (no password, never logs in) has two members with write access; an
outsider has no grant at all."""

from __future__ import annotations

import imaplib
import json
import re

import pytest
from sqlalchemy import select
from test_imap_server import (  # the shared server fixture and helpers
    DOMAIN,
    PASSWORD,
    USER,
    Imap,
    _in_thread,
    imap,  # noqa: F401 - a fixture
)

from mssante.operator.passwords import hash_async
from mssante.operator.store import grants, mailboxes
from mssante.operator.store.schema import (
    AuditEventRow,
    MailboxRow,
    MailboxType,
    MessageRow,
    PrivateSeenRow,
)

imaplib.Commands.setdefault("MOVE", ("SELECTED",))

ORG = f"service@{DOMAIN}"
ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
SECRETARY = f"secretaire@{DOMAIN}"
STANDIN = f"remplacant@{DOMAIN}"
OUTSIDER = f"outsider@{DOMAIN}"
ORG_INBOX = f"Shared/{ORG}/INBOX"
USER_INBOX = f"Shared/{USER}/INBOX"
MESSAGE = b"From: a@b.test\r\nTo: c@d.test\r\nSubject: shared\r\n\r\nHello\r\n"


async def _cast(server: Imap) -> None:
    password_hash = await hash_async(PASSWORD)
    async with server.running.store.session() as session:
        await mailboxes.create_mailbox(session, ORG, MailboxType.ORG)
        for address in (ALICE, BOB, SECRETARY, STANDIN, OUTSIDER):
            await mailboxes.create_mailbox(
                session, address, MailboxType.PER, password_hash=password_hash
            )
        await grants.grant(session, ORG, ALICE, read=True, write=True)
        await grants.grant(session, ORG, BOB, read=True, write=True)
        await grants.grant(session, USER, SECRETARY, read=True, write=False)
        await grants.grant(session, USER, STANDIN, read=True, write=True)
        await session.commit()


def _login(server: Imap, user: str) -> imaplib.IMAP4_SSL:
    client = server.tls()
    client.login(user, PASSWORD)
    return client


def _lines(client: imaplib.IMAP4, verb: str, *args: str) -> list[str]:
    typ, data = client._simple_command(verb, *args)
    assert typ == "OK", data
    out: list[str] = []
    for name in ("LIST", "STATUS"):
        out += [d.decode() for d in client.untagged_responses.pop(name, []) if isinstance(d, bytes)]
    return out


def _raw(client: imaplib.IMAP4, verb: str, *args: str) -> list[str]:
    """The untagged lines of one command, in the order the server sent them."""
    seen: list[str] = []
    original = client._get_line

    def record() -> bytes:
        line: bytes = original()
        seen.append(line.decode())
        return line

    client._get_line = record  # type: ignore[method-assign]
    try:
        typ, data = client._simple_command(verb, *args)
    finally:
        del client._get_line
    assert typ == "OK", data
    client.untagged_responses.clear()
    return [line for line in seen if line.startswith("* ")]


def _flags(client: imaplib.IMAP4, what: str = "1") -> str:
    typ, data = client.fetch(what, "(FLAGS)")
    assert typ == "OK"
    return b" ".join(d for d in data if isinstance(d, bytes)).decode()


def _no(client: imaplib.IMAP4, *command: str) -> str:
    typ, data = client._simple_command(*command)
    assert typ == "NO", (typ, data)
    return b" ".join(d for d in data if isinstance(d, bytes)).decode()


def _append(client: imaplib.IMAP4, folder: str, flags: str = "") -> None:
    typ, data = client.append(folder, flags or None, None, MESSAGE)
    assert typ == "OK", data


async def _audit(server: Imap) -> list[dict[str, object]]:
    assert server.running.audit is not None
    await server.running.audit.flush()
    async with server.running.store.read_session() as session:
        rows = (
            await session.execute(
                select(AuditEventRow.outcome, AuditEventRow.details)
                .where(AuditEventRow.event == "imap.shared")
                .order_by(AuditEventRow.id)
            )
        ).all()
    return [{"outcome": r[0], **json.loads(r[1] or "{}")} for r in rows]


async def test_org_members_read_and_flag_with_their_own_seen(imap: Imap) -> None:  # noqa: F811
    await _cast(imap)

    def scenario() -> None:
        alice = _login(imap, ALICE)
        listed = "\n".join(_lines(alice, "LIST", '""', "*"))
        assert '(\\Noselect \\HasChildren) "/" "Shared"' in listed
        assert f'(\\Noselect \\HasChildren) "/" "Shared/{ORG}"' in listed
        assert f'(\\HasNoChildren) "/" "{ORG_INBOX}"' in listed
        assert f'(\\HasNoChildren) "/" "Shared/{ORG}/Sent"' in listed  # no \Sent: not hers
        assert USER not in listed  # no grant on USER's mailbox: nothing of it shows
        _append(alice, ORG_INBOX)
        typ, data = alice.select(ORG_INBOX)
        assert (typ, data) == ("OK", [b"1"])
        assert alice.response("READ-WRITE") == ("READ-WRITE", [b""])
        typ, _ = alice.fetch("1", "(BODY[])")  # sets her own \Seen
        assert "\\Seen" in _flags(alice)
        typ, _ = alice.store("1", "+FLAGS", "(\\Flagged)")
        assert typ == "OK"
        assert re.search(r"FLAGS \((\\Seen \\Flagged|\\Flagged \\Seen)\)", _flags(alice))
        alice.logout()

        bob = _login(imap, BOB)
        typ, data = bob.status(ORG_INBOX, "(MESSAGES UNSEEN)")
        assert data == [f'"{ORG_INBOX}" (MESSAGES 1 UNSEEN 1)'.encode()]
        bob.select(ORG_INBOX)
        assert "FLAGS (\\Flagged)" in _flags(bob)  # Alice's \Flagged, not her \Seen
        assert bob.search(None, "UNSEEN") == ("OK", [b"1"])
        assert bob.search(None, "FLAGGED SEEN") == ("OK", [b""])
        bob.store("1", "+FLAGS", "(\\Seen)")
        assert bob.search(None, "SEEN") == ("OK", [b"1"])
        bob.store("1", "-FLAGS", "(\\Seen)")
        assert "FLAGS (\\Flagged)" in _flags(bob)
        bob.logout()

        alice = _login(imap, ALICE)
        alice.select(ORG_INBOX)
        assert re.search(r"FLAGS \((\\Seen \\Flagged|\\Flagged \\Seen)\)", _flags(alice))
        alice.logout()

    await _in_thread(scenario)
    async with imap.running.store.read_session() as session:
        # The ORG's own \Seen was never set: the members' read states are private rows.
        assert (await session.execute(select(MessageRow.seen))).scalars().all() == [False]
        readers = (await session.execute(select(PrivateSeenRow.reader_id))).scalars().all()
        alice_id = await session.scalar(select(MailboxRow.id).where(MailboxRow.address == ALICE))
    assert readers == [alice_id]


async def test_read_only_delegate_cannot_change_anything_but_own_seen(imap: Imap) -> None:  # noqa: F811
    await _cast(imap)

    def scenario() -> None:
        owner = _login(imap, USER)
        _append(owner, "INBOX", "(\\Flagged)")
        owner.create("Projets")
        owner.logout()

        secretary = _login(imap, SECRETARY)
        typ, _ = secretary.select(USER_INBOX)
        assert typ == "OK"
        flags = secretary.untagged_responses.get("PERMANENTFLAGS")
        assert flags == [b"(\\Seen)"]
        # rfc/3501 §6.3.1: READ-WRITE, as her own \Seen can change (PERMANENTFLAGS above).
        assert secretary.response("READ-WRITE") == ("READ-WRITE", [b""])
        refused = f"[NOPERM] STORE refused: read-only access to {USER}"
        assert _no(secretary, "STORE", "1", "+FLAGS", "(\\Deleted)") == refused
        assert _no(secretary, "STORE", "1", "FLAGS", "(\\Seen \\Flagged)") == refused
        assert _no(secretary, "EXPUNGE") == f"[NOPERM] EXPUNGE refused: read-only access to {USER}"
        assert _no(secretary, "UID", "EXPUNGE", "1") == (
            f"[NOPERM] EXPUNGE refused: read-only access to {USER}"
        )
        typ, data = secretary.append(USER_INBOX, None, None, MESSAGE)
        refused_append = f"[NOPERM] APPEND refused: read-only access to {USER}".encode()
        assert (typ, data) == ("NO", [refused_append])
        assert _no(secretary, "COPY", "1", f"Shared/{USER}/Projets") == (
            f"[NOPERM] COPY refused: read-only access to {USER}"
        )
        assert _no(secretary, "MOVE", "1", "INBOX") == (
            f"[NOPERM] MOVE refused: read-only access to {USER}"
        )
        for command in (
            ("CREATE", f"Shared/{USER}/Neuf"),
            ("DELETE", f"Shared/{USER}/Projets"),
            ("RENAME", f"Shared/{USER}/Projets", f"Shared/{USER}/Autre"),
        ):
            assert _no(secretary, *command) == (
                f"[NOPERM] {command[0]} refused: read-only access to {USER}"
            )
        assert _no(secretary, "UNSUBSCRIBE", USER_INBOX) == (
            "[CANNOT] shared folders are always subscribed"
        )
        assert secretary.subscribe(USER_INBOX)[0] == "OK"
        # Her own \Seen she may keep, and a copy into her own mailbox carries it.
        typ, _ = secretary.store("1", "+FLAGS", "(\\Seen)")
        assert typ == "OK"
        assert re.search(r"FLAGS \((\\Seen \\Flagged|\\Flagged \\Seen)\)", _flags(secretary))
        typ, _ = secretary.copy("1", "INBOX")
        assert typ == "OK"
        secretary.select("INBOX")
        assert re.search(r"FLAGS \((\\Seen \\Flagged|\\Flagged \\Seen)\)", _flags(secretary))
        secretary.logout()

        owner = _login(imap, USER)
        owner.select("INBOX")
        assert "FLAGS (\\Flagged)" in _flags(owner)  # the owner's \Seen untouched
        assert owner.search(None, "UNSEEN") == ("OK", [b"1"])
        owner.logout()

    await _in_thread(scenario)
    refusals = [e for e in await _audit(imap) if e["outcome"] == "refused"]
    assert {e["command"] for e in refusals} >= {"STORE", "EXPUNGE", "APPEND", "COPY", "MOVE"}
    assert all(e["user"] == SECRETARY and e["owner"] == USER for e in refusals)


async def test_read_write_delegate_expunges_and_owner_sees_it_gone(imap: Imap) -> None:  # noqa: F811
    await _cast(imap)

    def scenario() -> None:
        owner = _login(imap, USER)
        _append(owner, "INBOX")
        _append(owner, "INBOX")
        owner.select("INBOX")

        standin = _login(imap, STANDIN)
        standin.select(USER_INBOX)
        assert standin.untagged_responses.get("PERMANENTFLAGS") == [
            b"(\\Seen \\Answered \\Flagged \\Deleted \\Draft \\*)"
        ]
        standin.store("1", "+FLAGS", "(\\Deleted)")
        typ, data = standin.expunge()
        assert (typ, data) == ("OK", [b"1"])
        _append(standin, USER_INBOX)
        assert standin.create(f"Shared/{USER}/Brouillon")[0] == "OK"
        assert standin.rename(f"Shared/{USER}/Brouillon", f"Shared/{USER}/Dossiers")[0] == "OK"
        assert _no(standin, "RENAME", f"Shared/{USER}/Dossiers", "Perso") == (
            "[CANNOT] invalid mailbox name"
        )  # folders do not change hands
        assert _no(standin, "DELETE", USER_INBOX) == "[CANNOT] INBOX cannot be deleted"
        assert standin.create(f"Shared/{USER}/Poubelle")[0] == "OK"
        assert standin.delete(f"Shared/{USER}/Poubelle")[0] == "OK"
        typ, data = standin.list(f"Shared/{USER}/", "%")
        assert any(b'"Shared/' + USER.encode() + b'/Dossiers"' in d for d in data if d)
        standin.logout()

        typ, _ = owner.noop()
        assert owner.response("EXPUNGE")[1][0] == b"1"
        typ, data = owner.search(None, "ALL")
        assert data == [b"1 2"]
        listed = "\n".join(_lines(owner, "LIST", '""', "*"))
        assert '"Dossiers"' in listed
        assert "Brouillon" not in listed and "Poubelle" not in listed
        owner.logout()

    await _in_thread(scenario)
    async with imap.running.store.read_session() as session:
        used = await session.scalar(select(MailboxRow.used_bytes).where(MailboxRow.address == USER))
        standin_used = await session.scalar(
            select(MailboxRow.used_bytes).where(MailboxRow.address == STANDIN)
        )
    assert used == 2 * len(MESSAGE)  # the stand-in's APPEND counts against the owner
    assert standin_used == 0


async def test_revoked_grant_refuses_the_next_write(imap: Imap) -> None:  # noqa: F811
    await _cast(imap)

    def before() -> imaplib.IMAP4_SSL:
        owner = _login(imap, USER)
        _append(owner, "INBOX")
        owner.logout()
        standin = _login(imap, STANDIN)
        standin.select(USER_INBOX)
        assert standin.store("1", "+FLAGS", "(\\Deleted)")[0] == "OK"
        return standin

    standin = await _in_thread(before)
    async with imap.running.store.session() as session:
        await grants.revoke(session, USER, STANDIN)
        await session.commit()

    def after() -> None:
        assert _no(standin, "STORE", "1", "+FLAGS", "(\\Flagged)") == (
            f"[NOPERM] STORE refused: access to {USER} was withdrawn"
        )
        assert standin.close()[0] == "OK"  # rfc/3501 §6.4.2, but no longer allowed to expunge
        typ, data = standin.select(USER_INBOX)
        assert (typ, data) == ("NO", [b"[NONEXISTENT] no such mailbox"])
        standin.logout()
        owner = _login(imap, USER)
        assert owner.select("INBOX") == ("OK", [b"1"])
        owner.logout()

    await _in_thread(after)


async def test_non_member_cannot_even_see_the_mailbox(imap: Imap) -> None:  # noqa: F811
    await _cast(imap)

    def scenario() -> None:
        outsider = _login(imap, OUTSIDER)
        listed = "\n".join(_lines(outsider, "LIST", '""', "*"))
        assert ORG not in listed and USER not in listed
        assert '(\\Noselect \\HasNoChildren) "/" "Shared"' in listed
        missing = f"Shared/nobody@{DOMAIN}/INBOX"
        for name in (ORG_INBOX, USER_INBOX):
            for verb in ("SELECT", "EXAMINE"):
                typ, data = outsider._simple_command(verb, name)
                typ2, data2 = outsider._simple_command(verb, missing)
                assert (typ, data) == (typ2, data2) == ("NO", [b"[NONEXISTENT] no such mailbox"])
            assert _no(outsider, "STATUS", name, "(MESSAGES)") == _no(
                outsider, "STATUS", missing, "(MESSAGES)"
            )
            typ, data = outsider.append(name, None, None, MESSAGE)
            assert (typ, data) == outsider.append(missing, None, None, MESSAGE)
            assert data == [b"[TRYCREATE] no such mailbox"]
            assert _no(outsider, "DELETE", name) == _no(outsider, "DELETE", missing)
        outsider.select("INBOX")
        _append(outsider, "INBOX")
        assert _no(outsider, "COPY", "1", ORG_INBOX) == "[TRYCREATE] no such mailbox"
        outsider.logout()

    await _in_thread(scenario)
    events = await _audit(imap)
    attempts = [e for e in events if e["user"] == OUTSIDER]
    assert attempts and all(e["outcome"] == "refused" for e in attempts)
    assert {e["command"] for e in attempts} >= {"SELECT", "EXAMINE", "STATUS", "APPEND", "COPY"}
    assert all(e["owner"] is None and e["reason"] == "no_access" for e in attempts)


async def test_delegate_access_is_audited(imap: Imap) -> None:  # noqa: F811
    await _cast(imap)

    def scenario() -> None:
        owner = _login(imap, USER)
        _append(owner, "INBOX")
        owner.select("INBOX")
        owner.fetch("1", "(BODY.PEEK[])")  # the owner's own access is not delegate access
        owner.logout()
        secretary = _login(imap, SECRETARY)
        secretary.status(USER_INBOX, "(MESSAGES)")
        secretary.select(USER_INBOX, readonly=True)
        secretary.fetch("1", "(FLAGS)")  # no content: not a body access
        secretary.fetch("1", "(BODY.PEEK[])")
        secretary.logout()

    await _in_thread(scenario)
    events = await _audit(imap)
    assert all(e["user"] == SECRETARY for e in events)
    assert [(e["command"], e["outcome"]) for e in events] == [
        ("STATUS", "ok"),
        ("EXAMINE", "ok"),
        ("FETCH", "ok"),
    ]
    assert events[2]["uids"] == "1" and events[2]["owner"] == USER
    assert events[1]["folder"] == USER_INBOX and events[1]["rights"] == "read"


async def test_list_extended_and_list_status(imap: Imap) -> None:  # noqa: F811
    await _cast(imap)

    def scenario() -> None:
        client = _login(imap, USER)
        assert "LIST-EXTENDED" in client.capabilities and "LIST-STATUS" in client.capabilities
        client.create("Projets/2026")
        client.unsubscribe("Projets")
        _append(client, "INBOX")
        # rfc/5819: STATUS right after each selectable LIST item.
        lines = _raw(
            client, "LIST", '""', "(INBOX Projets)", "RETURN", "(STATUS (MESSAGES UNSEEN))"
        )
        assert lines == [
            '* LIST (\\HasNoChildren) "/" "INBOX"',
            '* STATUS "INBOX" (MESSAGES 1 UNSEEN 1)',
            '* LIST (\\HasChildren) "/" "Projets"',
            '* STATUS "Projets" (MESSAGES 0 UNSEEN 0)',
        ]
        # rfc/5258 §3.5: RECURSIVEMATCH shows an unsubscribed parent with CHILDINFO.
        lines = _lines(client, "LIST", "(SUBSCRIBED RECURSIVEMATCH)", '""', "%")
        assert '() "/" "Projets" ("CHILDINFO" ("SUBSCRIBED"))' not in lines
        assert '(\\HasChildren) "/" "Projets" ("CHILDINFO" ("SUBSCRIBED"))' in lines
        assert '(\\HasNoChildren \\Subscribed) "/" "INBOX"' in lines
        lines = _lines(client, "LIST", "(SUBSCRIBED)", '""', "%")
        assert not any('"Projets"' in line for line in lines)
        lines = _lines(client, "LIST", "(SPECIAL-USE)", '""', "*", "RETURN", "(SUBSCRIBED)")
        assert '(\\HasNoChildren \\Sent \\Subscribed) "/" "Sent"' in lines
        assert not any('"INBOX"' in line for line in lines)
        with pytest.raises(imaplib.IMAP4.error, match="RECURSIVEMATCH needs another"):
            client._simple_command("LIST", "(RECURSIVEMATCH)", '""', "%")
        client.logout()

        secretary = _login(imap, SECRETARY)
        lines = _lines(
            secretary, "LIST", '""', f"Shared/{USER}/%", "RETURN", "(STATUS (MESSAGES UNSEEN))"
        )
        assert f'(\\HasNoChildren) "/" "{USER_INBOX}"' in lines
        assert f'"{USER_INBOX}" (MESSAGES 1 UNSEEN 1)' in lines
        assert f'(\\HasChildren) "/" "Shared/{USER}/Projets"' in lines
        secretary.logout()

    await _in_thread(scenario)


async def test_shared_writes_count_against_the_owner_quota(imap: Imap) -> None:  # noqa: F811
    await _cast(imap)
    async with imap.running.store.session() as session:
        box = await mailboxes.get_mailbox(session, USER)
        row = await session.get(MailboxRow, box.id)
        assert row is not None
        row.quota_bytes = len(MESSAGE) + 10
        await session.commit()

    def scenario() -> None:
        standin = _login(imap, STANDIN)
        _append(standin, USER_INBOX)
        typ, data = standin.append(USER_INBOX, None, None, MESSAGE)
        assert (typ, data) == ("NO", [b"[OVERQUOTA] over quota"])
        _append(standin, "INBOX")  # her own mailbox has room
        standin.select("INBOX")
        assert _no(standin, "COPY", "1", USER_INBOX) == "[OVERQUOTA] over quota"
        # rfc/9208: the shared folder's quota root is its owner's, shown to the grantee.
        root = f"Shared/{USER}".encode()
        typ, lines = standin._simple_command("GETQUOTAROOT", USER_INBOX)
        assert typ == "OK"
        assert standin._untagged_response(typ, lines, "QUOTAROOT")[1] == [
            b'"' + USER_INBOX.encode() + b'" ' + root  # an astring: an atom here
        ]
        used_kib, limit_kib = -(-len(MESSAGE) // 1024), (len(MESSAGE) + 10) // 1024
        expected = b"%s (STORAGE %d %d)" % (root, used_kib, limit_kib)
        assert standin._untagged_response(typ, lines, "QUOTA")[1] == [expected]
        assert standin.getquota(f'"Shared/{USER.upper()}"') == ("OK", [expected])
        standin.logout()
        # A user without a grant on that mailbox: no root, as for an unknown name.
        outsider = _login(imap, OUTSIDER)
        typ, data = outsider._simple_command("GETQUOTA", f'"Shared/{USER}"')
        assert (typ, data) == ("NO", [b"[NONEXISTENT] no such quota root"])
        outsider.logout()

    await _in_thread(scenario)


async def test_private_seen_moves_modseq_and_idle_sees_shared_appends(imap: Imap) -> None:  # noqa: F811
    await _cast(imap)

    def scenario() -> None:
        alice = _login(imap, ALICE)
        _append(alice, ORG_INBOX)
        alice.enable("CONDSTORE")
        alice.select(ORG_INBOX)
        typ, data = alice.fetch("1", "(MODSEQ)")
        before = int(re.findall(rb"MODSEQ \((\d+)\)", data[0] or b"")[0])
        typ, data = alice.store("1", "+FLAGS", "(\\Seen)")
        assert typ == "OK"
        after = int(re.findall(rb"MODSEQ \((\d+)\)", data[0] or b"")[0])
        assert after > before  # rfc/7162 §3.1.1: a CONDSTORE client resyncs her \Seen
        typ, _ = alice.store("1", "+FLAGS.SILENT", "(\\Seen)")  # no change: same MODSEQ
        typ, data = alice.fetch("1", "(MODSEQ)")
        assert int(re.findall(rb"MODSEQ \((\d+)\)", data[0] or b"")[0]) == after

        bob = _login(imap, BOB)
        bob.select(ORG_INBOX)
        tag = bob._new_tag().decode()
        bob.send(f"{tag} IDLE\r\n".encode())
        assert bob.readline().startswith(b"+")
        _append(alice, ORG_INBOX)
        assert bob.readline() == b"* 2 EXISTS\r\n"
        bob.send(b"DONE\r\n")
        assert bob.readline() == f"{tag} OK IDLE terminated\r\n".encode()
        bob.logout()
        alice.logout()

    await _in_thread(scenario)


def test_shared_names_and_rights() -> None:
    from mssante.operator.imap import shared

    assert shared.split(f"Shared/{ORG.upper()}/inbox") == (ORG, "INBOX")
    assert shared.split(f"Shared/{ORG}/Projets/2026") == (ORG, "Projets/2026")
    for name in ("Shared", f"Shared/{ORG}", f"Shared/{ORG}/", "Shared//INBOX", "INBOX"):
        assert shared.split(name) is None
    assert shared.split(f"Shared/{ORG}/a%b") is None  # not a name a folder can have
    assert not shared.in_namespace("shared/x/INBOX")  # as personal names: case-sensitive
    reader = shared.Access(1, ORG, can_write=False)
    writer = shared.Access(1, ORG, can_write=True)
    for write in shared.Write:
        assert shared.refusal(writer, write) is None
        assert shared.refusal(None, write) is None  # one's own folder
        assert shared.refusal(reader, write) == f"{write.value} refused: read-only access to {ORG}"
