"""APPEND, CREATE/DELETE/RENAME/SUBSCRIBE, COPY/MOVE and IDLE through Python's imaplib against
the real operator, on SQLite and PostgreSQL (the fixtures of test_imap_server)."""

from __future__ import annotations

import datetime as dt
import imaplib
import re

import pytest
from sqlalchemy import func, select, text, update
from test_imap_server import (  # the shared server fixture and helpers
    MESSAGE,
    PASSWORD,
    USER,
    Imap,
    _deliver,
    _in_thread,
    imap,  # noqa: F401 - a fixture
)

from mssante.operator.store.schema import BlobMetaRow, BlobRow, MailboxRow, MessageRow

imaplib.Commands.setdefault("MOVE", ("SELECTED",))
imaplib.Commands.setdefault("IDLE", ("AUTH", "SELECTED"))


def _login(server: Imap) -> imaplib.IMAP4_SSL:
    client = server.tls()
    client.login(USER, PASSWORD)
    return client


def _listed(client: imaplib.IMAP4, verb: str = "LIST", *args: str) -> str:
    typ, lines = client._simple_command(verb, *(args or ('""', "*")))
    assert typ == "OK"
    data = client._untagged_response(typ, lines, verb)[1]
    return "\n".join(x.decode() for x in data if isinstance(x, bytes))


async def _used_bytes(server: Imap) -> int:
    async with server.running.store.read_session() as session:
        used = await session.scalar(select(MailboxRow.used_bytes).where(MailboxRow.address == USER))
    return int(used or 0)


async def test_create_delete_rename_subscribe(imap: Imap) -> None:  # noqa: F811
    def scenario() -> None:
        client = _login(imap)
        assert client.create("Projets/2026/")[0] == "OK"  # parents are created too
        typ, data = client.create("Projets")
        assert (typ, data) == ("NO", [b"[ALREADYEXISTS] mailbox exists"])
        typ, data = client._simple_command("CREATE", "Archives2", "(USE (\\Archive))")
        assert typ == "OK"
        typ, data = client._simple_command("CREATE", "Bizarre", "(USE (\\Important))")
        assert (typ, data) == ("NO", [b"[USEATTR] unsupported special-use attribute"])
        listed = _listed(client)
        assert '(\\HasChildren) "/" "Projets"' in listed
        assert '(\\HasNoChildren) "/" "Projets/2026"' in listed
        assert '(\\HasNoChildren \\Archive) "/" "Archives2"' in listed
        # rfc/9051 §6.3.4: INBOX stays; a folder with children stays (we keep no \Noselect).
        assert client.delete("INBOX")[0] == "NO"
        assert client.delete("Projets") == ("NO", [b"[HASCHILDREN] mailbox has children"])
        assert client.delete("Nulle-part") == ("NO", [b"[NONEXISTENT] no such mailbox"])
        # RENAME moves the children along.
        assert client.rename("Projets", "Dossiers/Anciens")[0] == "OK"
        listed = _listed(client)
        assert "Projets" not in listed
        for name in ("Dossiers", "Dossiers/Anciens", "Dossiers/Anciens/2026"):
            assert f'"/" "{name}"' in listed
        assert client.rename("Dossiers", "INBOX")[0] == "NO"
        assert client.rename("Dossiers", "Dossiers/Anciens/x")[0] == "NO"
        assert client.rename("Archives2", "Sent") == ("NO", [b"[ALREADYEXISTS] mailbox exists"])
        # Subscriptions: LSUB and LIST (SUBSCRIBED) follow them.
        assert client.unsubscribe("Dossiers/Anciens")[0] == "OK"
        lsub = _listed(client, "LSUB")
        assert '"Dossiers/Anciens"' not in lsub and '"Dossiers/Anciens/2026"' in lsub
        subscribed = _listed(client, "LIST", "(SUBSCRIBED)", '""', "Dossiers/*")
        assert subscribed == '(\\HasNoChildren \\Subscribed) "/" "Dossiers/Anciens/2026"'
        assert client.subscribe("Dossiers/Anciens")[0] == "OK"
        assert '"Dossiers/Anciens"' in _listed(client, "LSUB")
        assert client.delete("Dossiers/Anciens/2026")[0] == "OK"
        assert client.delete("Dossiers/Anciens")[0] == "OK"
        assert "Anciens" not in _listed(client)
        client.logout()

    await _in_thread(scenario)


async def test_append_stores_like_delivery(imap: Imap) -> None:  # noqa: F811
    when = dt.datetime(2026, 1, 15, 8, 30, tzinfo=dt.timezone(dt.timedelta(hours=1)))

    def scenario() -> None:
        client = _login(imap)
        caps = client.capabilities
        for cap in (
            "UIDPLUS",
            "MOVE",
            "IDLE",
            "MULTIAPPEND",
            "CREATE-SPECIAL-USE",
            "APPENDLIMIT=26214400",
        ):
            assert cap in caps
        typ, data = client.append("Nulle-part", None, None, MESSAGE)
        assert (typ, data) == ("NO", [b"[TRYCREATE] no such mailbox"])
        typ, data = client.append(
            "Drafts", "(\\Seen $Urgent)", imaplib.Time2Internaldate(when), MESSAGE
        )
        assert typ == "OK"
        match = re.fullmatch(rb"\[APPENDUID (\d+) 1\] APPEND completed", data[0] or b"")
        assert match
        typ, status = client.status("Drafts", "(UIDVALIDITY APPENDLIMIT)")
        assert status[0] == b'"Drafts" (UIDVALIDITY ' + match[1] + b" APPENDLIMIT 26214400)"
        # A second APPEND of the same bytes shares the body blob.
        typ, data = client.append("Drafts", None, None, MESSAGE)
        assert data[0] == b"[APPENDUID " + match[1] + b" 2] APPEND completed"
        with pytest.raises(imaplib.IMAP4.error, match="invalid flag"):
            client.append("Drafts", "(\\Bogus)", None, MESSAGE)
        # rfc/7889 §4: over the APPENDLIMIT, NO [TOOBIG] before any literal is sent.
        tag = client._new_tag()
        client.send(tag + b" APPEND Drafts {26214401}\r\n")
        assert client.readline() == tag + b" NO [TOOBIG] too big: literal\r\n"
        assert client.noop()[0] == "OK"
        client.select("Drafts")
        typ, data = client.fetch("1", "(FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])")
        assert typ == "OK"
        head, body = data[0]  # type: ignore[misc]
        assert body == MESSAGE
        assert b"FLAGS (\\Seen $Urgent)" in head
        assert b'INTERNALDATE "15-Jan-2026 07:30:00 +0000"' in head
        assert f"RFC822.SIZE {len(MESSAGE)}".encode() in head
        typ, data = client.fetch("2", "(BODYSTRUCTURE)")
        assert b'("APPLICATION" "PDF" ("NAME" "cr.pdf")' in (data[0] or b"")
        client.logout()

    await _in_thread(scenario)
    async with imap.running.store.read_session() as session:
        assert await session.scalar(select(func.count(BlobRow.id))) == 1
        assert await session.scalar(select(func.count(BlobMetaRow.blob_id))) == 1
        assert await session.scalar(select(func.count(MessageRow.id))) == 2
    assert await _used_bytes(imap) == 2 * len(MESSAGE)


async def test_append_over_quota(imap: Imap) -> None:  # noqa: F811
    async with imap.running.store.session() as session:
        await session.execute(
            update(MailboxRow)
            .where(MailboxRow.address == USER)
            .values(quota_bytes=len(MESSAGE) + 10)
        )
        await session.commit()

    def scenario() -> None:
        client = _login(imap)
        assert client.append("INBOX", None, None, MESSAGE)[0] == "OK"
        typ, data = client.append("INBOX", None, None, MESSAGE)
        assert (typ, data) == ("NO", [b"[OVERQUOTA] over quota"])
        client.select("INBOX")
        typ, data = client.copy("1", "Trash")
        assert (typ, data) == ("NO", [b"[OVERQUOTA] over quota"])
        # MOVE does not add to the mailbox: allowed.
        typ, data = client._simple_command("MOVE", "1", "Trash")
        assert typ == "OK"
        client.logout()

    await _in_thread(scenario)
    assert await _used_bytes(imap) == len(MESSAGE)


async def test_copy_and_move_share_the_body(imap: Imap) -> None:  # noqa: F811
    await _deliver(imap)

    def scenario() -> None:
        client = _login(imap)
        client.append("INBOX", "(\\Flagged)", None, MESSAGE + b"2")
        client.append("INBOX", None, None, MESSAGE + b"3")
        client.select("INBOX")
        typ, status = client.status("Trash", "(UIDVALIDITY)")
        trash_validity = re.search(rb"UIDVALIDITY (\d+)", status[0] or b"")
        assert trash_validity
        v = trash_validity[1]
        typ, data = client.copy("1:2", "Trash")
        assert (typ, data) == ("OK", [b"[COPYUID " + v + b" 1:2 1:2] COPY completed"])
        assert client.copy("1", "Nulle-part") == ("NO", [b"[TRYCREATE] no such mailbox"])
        # UID MOVE: untagged OK [COPYUID], EXPUNGE, then the tagged OK (rfc/6851 §4.3).
        typ, data = client.uid("MOVE", "2", "Trash")
        assert typ == "OK"
        assert client.untagged_responses.pop("COPYUID")[-1] == v + b" 2 3"
        assert client.untagged_responses.pop("EXPUNGE") == [b"2"]
        typ, data = client.fetch("1:*", "(UID)")
        assert data == [b"1 (UID 1)", b"2 (UID 3)"]
        # UID EXPUNGE (rfc/4315 §2.1) removes only the given \Deleted UIDs.
        client.store("1:2", "+FLAGS.SILENT", "(\\Deleted)")
        typ, data = client.uid("EXPUNGE", "3")
        assert typ == "OK"
        assert client.untagged_responses.pop("EXPUNGE") == [b"2"]
        client.select("Trash")
        typ, data = client.fetch("1:*", "(UID FLAGS)")
        assert data == [
            b"1 (UID 1 FLAGS ())",
            b"2 (UID 2 FLAGS (\\Flagged))",
            b"3 (UID 3 FLAGS (\\Flagged))",
        ]
        typ, data = client.fetch("3", "(BODY.PEEK[TEXT])")
        assert data[0][1].endswith(b"--b1--\r\n2")  # type: ignore[index]
        client.logout()

    await _in_thread(scenario)
    async with imap.running.store.read_session() as session:
        assert await session.scalar(select(func.count(BlobRow.id))) == 3
        assert await session.scalar(select(func.count(MessageRow.id))) == 4


def _read_line(client: imaplib.IMAP4) -> bytes:
    return client.readline().rstrip(b"\r\n")


async def test_idle_sees_append_expunge_and_delivery(imap: Imap) -> None:  # noqa: F811
    watcher = await _in_thread(lambda: _login(imap))
    other = await _in_thread(lambda: _login(imap))

    def start_idle() -> bytes:
        watcher.select("INBOX")
        tag = watcher._new_tag()
        watcher.send(tag + b" IDLE\r\n")
        assert _read_line(watcher) == b"+ idling"
        return tag

    tag = await _in_thread(start_idle)

    def append_and_expunge() -> None:
        # No timing asserted (benchmarks measure speed): the push must come, before DONE.
        assert other.append("INBOX", None, None, MESSAGE)[0] == "OK"
        assert _read_line(watcher) == b"* 1 EXISTS"
        other.select("INBOX")
        other.store("1", "+FLAGS.SILENT", "(\\Deleted)")
        # Another session's flag change is pushed too (rfc/7162 §3.2.4 wants the UID in it).
        assert _read_line(watcher) == b"* 1 FETCH (UID 1 FLAGS (\\Deleted))"
        other.expunge()
        assert _read_line(watcher) == b"* 1 EXPUNGE"

    await _in_thread(append_and_expunge)
    await _deliver(imap)  # Delivery notifies at its commit (store/notify.py)

    def after_delivery() -> None:
        assert _read_line(watcher) == b"* 1 EXISTS"
        watcher.send(b"DONE\r\n")
        assert _read_line(watcher) == tag + b" OK IDLE terminated"
        assert watcher.noop()[0] == "OK"
        watcher.logout()
        other.logout()

    await _in_thread(after_delivery)


async def test_fetch_in_batches_sends_every_message_in_order(
    imap: Imap,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mssante.operator.imap import session as imap_session

    # Batches of 2 messages (and 1 KiB) instead of 500 (and 16 MiB): 7 messages, 4 batches.
    monkeypatch.setattr(imap_session, "FETCH_BATCH_MESSAGES", 2)
    monkeypatch.setattr(imap_session, "FETCH_BATCH_BYTES", 1024)
    bodies = [MESSAGE.replace(b"fin.", f"fin {n}.".encode()) for n in range(7)]

    def scenario() -> None:
        client = _login(imap)
        for body in bodies:
            assert client.append("INBOX", None, None, body)[0] == "OK"
        client.select("INBOX")
        typ, data = client.fetch("1:*", "(UID BODY.PEEK[])")
        assert typ == "OK"
        literals = [item for item in data if isinstance(item, tuple)]
        assert [item[1] for item in literals] == bodies
        numbers = [int(item[0].split()[0]) for item in literals]
        assert numbers == list(range(1, 8))
        typ, data = client.fetch("3:5", "(ENVELOPE)")
        assert typ == "OK" and len(data) == 3
        client.logout()

    await _in_thread(scenario)


async def test_database_failure_answers_unavailable_and_loses_nothing(imap: Imap) -> None:  # noqa: F811
    """A database error in a command (here the `expunged` table made to vanish) is answered
    `NO [UNAVAILABLE]`, its transaction is rolled back, and the session goes on."""
    client = await _in_thread(lambda: _login(imap))

    def mark_deleted() -> None:
        assert client.append("INBOX", None, None, MESSAGE)[0] == "OK"
        client.select("INBOX")
        assert client.store("1", "+FLAGS", "(\\Deleted)")[0] == "OK"

    await _in_thread(mark_deleted)
    async with imap.running.store.session() as session:
        await session.execute(text("ALTER TABLE expunged RENAME TO expunged_away"))
        await session.commit()

    def failing_expunge() -> None:
        typ, data = client._simple_command("EXPUNGE")
        assert (typ, data) == ("NO", [b"[UNAVAILABLE] temporary failure"])

    await _in_thread(failing_expunge)
    async with imap.running.store.session() as session:
        await session.execute(text("ALTER TABLE expunged_away RENAME TO expunged"))
        await session.commit()

    def after() -> None:
        # Nothing was removed by the failed EXPUNGE; the same session goes on and expunges.
        typ, data = client.fetch("1", "(FLAGS)")
        assert typ == "OK" and b"\\Deleted" in (data[0] or b"")
        typ, data = client.expunge()
        assert (typ, data) == ("OK", [b"1"])
        client.logout()

    await _in_thread(after)


async def test_rename_inbox_moves_its_messages_and_leaves_it_empty(imap: Imap) -> None:  # noqa: F811
    client = await _in_thread(lambda: _login(imap))
    uidvalidity = re.compile(rb"UIDVALIDITY (\d+)")

    def rename() -> tuple[int, int]:
        for _ in range(2):
            assert client.append("INBOX", None, None, MESSAGE)[0] == "OK"
        assert client.create("INBOX/Suivi")[0] == "OK"
        typ, data = client.status("INBOX", "(MESSAGES UIDVALIDITY)")
        before = int(uidvalidity.findall(data[0] or b"")[0])
        # rfc/3501 §6.3.5: the messages go to the new name, INBOX stays and is empty.
        assert client.rename("INBOX", '"Archives 2025"')[0] == "OK"
        typ, data = client.status('"Archives 2025"', "(MESSAGES UIDNEXT UIDVALIDITY)")
        assert typ == "OK"
        assert data[0] == b'"Archives 2025" (MESSAGES 2 UIDNEXT 3 UIDVALIDITY %d)' % before
        typ, data = client.status("INBOX", "(MESSAGES UIDVALIDITY)")
        after = int(uidvalidity.findall(data[0] or b"")[0])
        assert b"(MESSAGES 0 " in (data[0] or b"")
        assert "INBOX/Suivi" in _listed(client)  # inferior names are unaffected
        # The new name is taken now: renaming INBOX onto it again is refused.
        assert client.append("INBOX", None, None, MESSAGE)[0] == "OK"
        typ, data = client._simple_command("RENAME", "INBOX", '"Archives 2025"')
        assert (typ, data) == ("NO", [b"[ALREADYEXISTS] mailbox exists"])
        return before, after

    before, after = await _in_thread(rename)
    assert after > before  # rfc/3501 §2.3.1.1: a new mailbox, a new UIDVALIDITY
    await _deliver(imap)  # new mail goes to the new INBOX

    def check() -> None:
        _, data = client.status("INBOX", "(MESSAGES)")
        assert data[0] == b'"INBOX" (MESSAGES 2)'
        _, data = client.status('"Archives 2025"', "(MESSAGES)")
        assert data[0] == b'"Archives 2025" (MESSAGES 2)'
        client.logout()

    await _in_thread(check)
