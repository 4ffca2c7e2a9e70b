"""QRESYNC (rfc/7162 §3.2) and unsolicited updates (rfc/3501 §7, §7.4.1) against the real
operator over TLS, on SQLite and PostgreSQL (the fixtures of test_imap_server).

Two sessions share a folder; the observing one is driven line by line (`_run` sends one command
and returns every line up to its tagged answer) so the exact responses and their order are
checked, not imaplib's sorted view of them.
"""

from __future__ import annotations

import imaplib
import re

from test_imap_server import (  # the shared server fixture and helpers
    MESSAGE,
    PASSWORD,
    USER,
    Imap,
    _in_thread,
    imap,  # noqa: F401 - a fixture
)

imaplib.Commands.setdefault("IDLE", ("AUTH", "SELECTED"))


def _login(server: Imap) -> imaplib.IMAP4_SSL:
    client = server.tls()
    client.login(USER, PASSWORD)
    return client


def _run(client: imaplib.IMAP4, command: str) -> list[bytes]:
    """Send `command` and return every response line, the tagged one last (no literals are
    asked for here, so each line is one response)."""
    tag = client._new_tag()
    client.send(tag + b" " + command.encode() + b"\r\n")
    lines: list[bytes] = []
    while True:
        line = client.readline().rstrip(b"\r\n")
        lines.append(line)
        if line.startswith(tag + b" "):
            return [re.sub(rb"^" + re.escape(tag) + rb" ", b"T ", line) for line in lines]


def _modseq(line: bytes) -> int:
    found = re.search(rb"MODSEQ \((\d+)\)", line)
    assert found, line
    return int(found[1])


def _highest(lines: list[bytes]) -> int:
    for line in lines:
        found = re.match(rb"\* OK \[HIGHESTMODSEQ (\d+)\]", line)
        if found:
            return int(found[1])
    raise AssertionError(lines)


def _uidvalidity(lines: list[bytes]) -> int:
    for line in lines:
        found = re.match(rb"\* OK \[UIDVALIDITY (\d+)\]", line)
        if found:
            return int(found[1])
    raise AssertionError(lines)


def _append(client: imaplib.IMAP4, count: int) -> None:
    for _ in range(count):
        assert client.append("INBOX", None, None, MESSAGE)[0] == "OK"


async def test_other_sessions_changes_arrive_only_at_allowed_moments(imap: Imap) -> None:  # noqa: F811
    def scenario() -> None:
        a, b = _login(imap), _login(imap)
        _append(a, 4)
        assert a.select("INBOX")[0] == "OK"
        assert _run(b, "SELECT INBOX")[-1] == b"T OK [READ-WRITE] SELECT completed"

        # A flag change by A: sent with B's FETCH of another message (any response may carry
        # it, rfc/3501 §7), with the UID (rfc/9051 §7.5.2), and not again at NOOP.
        a.store("2", "+FLAGS", "(\\Flagged)")
        assert _run(b, "FETCH 1 (FLAGS)") == [
            b"* 1 FETCH (FLAGS ())",
            b"* 2 FETCH (UID 2 FLAGS (\\Flagged))",
            b"T OK FETCH completed",
        ]
        assert _run(b, "NOOP") == [b"T OK NOOP completed"]

        # A removes message 3: never an EXPUNGE in B's FETCH, STORE or SEARCH (rfc/3501
        # §7.4.1); message 3 keeps its number until then.
        a.store("3", "+FLAGS.SILENT", "(\\Deleted)")
        a.expunge()
        assert _run(b, "FETCH 1:* (UID)") == [
            b"* 1 FETCH (UID 1)",
            b"* 2 FETCH (UID 2)",
            b"* 4 FETCH (UID 4)",
            b"T OK FETCH completed",
        ]
        assert _run(b, "STORE 4 +FLAGS (\\Seen)") == [
            b"* 4 FETCH (FLAGS (\\Seen))",
            b"T OK STORE completed",
        ]
        assert _run(b, "SEARCH ALL") == [b"* SEARCH 1 2 4", b"T OK SEARCH completed"]
        # B's own STORE is not echoed back; the removal comes at NOOP.
        assert _run(b, "NOOP") == [b"* 3 EXPUNGE", b"T OK NOOP completed"]
        # A change the client fetched itself is not repeated as an unsolicited FETCH.
        a.store("3", "+FLAGS", "($X)")
        assert _run(b, "FETCH 3 (FLAGS)") == [
            b"* 3 FETCH (FLAGS (\\Seen $X))",
            b"T OK FETCH completed",
        ]

        # UID FETCH is another command: the removal may and does come with it (rfc/3501
        # §7.4.1 note), after its FETCH responses.
        a.store("3", "+FLAGS.SILENT", "(\\Deleted)")  # UID 4 in A's view too
        a.expunge()
        assert _run(b, "UID FETCH 1:* (FLAGS)") == [
            b"* 1 FETCH (UID 1 FLAGS ())",
            b"* 2 FETCH (UID 2 FLAGS (\\Flagged))",
            b"* 3 EXPUNGE",
            b"T OK FETCH completed",
        ]

        # The \Seen its own FETCH set was answered with that FETCH: not echoed at NOOP.
        b.state = "SELECTED"  # imaplib did not see the SELECT sent by _run
        typ, data = b.fetch("1", "(BODY[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK" and data[1] == b" FLAGS (\\Seen))"
        assert _run(b, "NOOP") == [b"T OK NOOP completed"]

        # With CONDSTORE on, the unsolicited FETCH carries the MODSEQ (rfc/7162 §3.1.4.1).
        assert _run(b, "ENABLE CONDSTORE")[0] == b"* ENABLED CONDSTORE"
        a.store("1", "+FLAGS", "($Work)")
        typ, data = a.status("INBOX", "(HIGHESTMODSEQ)")
        assert typ == "OK"
        highest = int(re.findall(rb"HIGHESTMODSEQ (\d+)", data[0] or b"")[0])
        assert _run(b, "CHECK") == [
            f"* 1 FETCH (UID 1 FLAGS (\\Seen $Work) MODSEQ ({highest}))".encode(),
            b"T OK CHECK completed",
        ]

        # Once QRESYNC is on, removals are VANISHED, other sessions' and its own (rfc/7162
        # §3.2.10), and a new message is EXISTS after them.
        assert _run(b, "ENABLE QRESYNC") == [b"* ENABLED QRESYNC", b"T OK ENABLE completed"]
        _append(a, 1)  # UID 5
        a.store("2", "+FLAGS.SILENT", "(\\Deleted)")
        a.expunge()
        assert _run(b, "NOOP") == [b"* VANISHED 2", b"* 2 EXISTS", b"T OK NOOP completed"]
        # rfc/7162 §3.2.4: with QRESYNC every FETCH a STORE or an implicit \\Seen causes has
        # the UID and the MODSEQ, .SILENT included.
        lines = _run(b, "STORE 2 +FLAGS (\\Answered)")
        assert lines == [
            f"* 2 FETCH (UID 5 FLAGS (\\Answered) MODSEQ ({_modseq(lines[0])}))".encode(),
            b"T OK STORE completed",
        ]
        typ, data = b.fetch("2", "(BODY[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK" and isinstance(data[0], tuple)
        assert data[0][0].startswith(b"2 (UID 5 BODY[HEADER.FIELDS (SUBJECT)] {")
        assert data[1] == f" FLAGS (\\Seen \\Answered) MODSEQ ({_modseq(data[1])}))".encode()
        lines = _run(b, "STORE 1 +FLAGS.SILENT (\\Deleted)")
        assert lines == [
            f"* 1 FETCH (UID 1 MODSEQ ({_modseq(lines[0])}))".encode(),
            b"T OK STORE completed",
        ]
        assert _run(b, "EXPUNGE") == [b"* VANISHED 1", b"T OK EXPUNGE completed"]
        lines = _run(b, "UID MOVE 5 Trash")
        assert lines[1:] == [b"* VANISHED 5", b"T OK MOVE completed"]
        assert re.fullmatch(rb"\* OK \[COPYUID \d+ 5 1\] moved", lines[0])
        assert _run(b, "NOOP") == [b"T OK NOOP completed"]
        a.logout()
        b.logout()

    await _in_thread(scenario)


async def test_qresync_select_and_uid_fetch_vanished_after_a_disconnect(imap: Imap) -> None:  # noqa: F811
    def scenario() -> None:
        client = _login(imap)
        _append(client, 6)  # UIDs 1 to 6
        assert _run(client, "ENABLE QRESYNC")[0] == b"* ENABLED QRESYNC"
        lines = _run(client, "SELECT INBOX")
        h0, validity = _highest(lines), _uidvalidity(lines)
        client.logout()

        # While the client is away: flags of 2 and 5 change, 3 and 4 go, 7 arrives.
        other = _login(imap)
        assert other.select("INBOX")[0] == "OK"
        other.store("2", "+FLAGS", "(\\Seen)")
        other.store("5", "+FLAGS", "(\\Flagged)")
        other.store("3:4", "+FLAGS.SILENT", "(\\Deleted)")
        other.expunge()
        _append(other, 1)
        other.logout()

        client = _login(imap)
        # QRESYNC before ENABLE QRESYNC, and VANISHED before it, are BAD (rfc/7162 §3.2.5,
        # §3.2.6); the session goes on.
        assert _run(client, f"SELECT INBOX (QRESYNC ({validity} {h0}))") == [
            b"T BAD QRESYNC is not enabled"
        ]
        assert _run(client, "EXAMINE INBOX")[-1] == b"T OK [READ-ONLY] EXAMINE completed"
        assert _run(client, f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {h0} VANISHED)") == [
            b"T BAD VANISHED needs ENABLE QRESYNC"
        ]
        assert _run(client, "UNSELECT") == [b"T OK UNSELECT completed"]
        assert _run(client, "ENABLE QRESYNC") == [b"* ENABLED QRESYNC", b"T OK ENABLE completed"]
        assert _run(client, "UID FETCH 1:* (FLAGS) (VANISHED)") == [
            b"T BAD VANISHED needs UID FETCH and CHANGEDSINCE"
        ]

        lines = _run(client, f"SELECT INBOX (QRESYNC ({validity} {h0} 1:6))")
        h1 = _highest(lines)
        assert lines[0] == b"* FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft)"
        assert lines[1] == b"* 5 EXISTS"  # UIDs 1, 2, 5, 6 and 7
        tail = lines[lines.index(f"* OK [HIGHESTMODSEQ {h1}] highest".encode()) + 1 :]
        assert len(tail) == 5, tail
        modseqs = [_modseq(line) for line in tail[1:4]]
        assert tail == [
            b"* VANISHED (EARLIER) 3:4",
            f"* 2 FETCH (UID 2 FLAGS (\\Seen) MODSEQ ({modseqs[0]}))".encode(),
            f"* 3 FETCH (UID 5 FLAGS (\\Flagged) MODSEQ ({modseqs[1]}))".encode(),
            f"* 5 FETCH (UID 7 FLAGS () MODSEQ ({modseqs[2]}))".encode(),
            b"T OK [READ-WRITE] SELECT completed",
        ]
        assert h0 < modseqs[0] < modseqs[1] < modseqs[2] <= h1

        # The known UIDs narrow VANISHED (EARLIER); the mailbox selected before is closed
        # first (rfc/7162 §3.2.11).
        lines = _run(client, f"EXAMINE INBOX (QRESYNC ({validity} {modseqs[1]} 1:3))")
        assert lines[0] == b"* OK [CLOSED] previous mailbox closed"
        tail = lines[lines.index(f"* OK [HIGHESTMODSEQ {h1}] highest".encode()) + 1 :]
        assert tail == [
            b"* VANISHED (EARLIER) 3",
            f"* 5 FETCH (UID 7 FLAGS () MODSEQ ({modseqs[2]}))".encode(),
            b"T OK [READ-ONLY] EXAMINE completed",
        ]
        # Nothing changed since h1; another UIDVALIDITY is a plain SELECT.
        for params in (f"{validity} {h1}", f"{validity + 1} 1"):
            lines = _run(client, f"SELECT INBOX (QRESYNC ({params}))")
            assert lines[-2] == f"* OK [HIGHESTMODSEQ {h1}] highest".encode(), lines

        # UID FETCH … (CHANGEDSINCE m VANISHED): the set's removals, then its changes.
        assert _run(client, f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {h0} VANISHED)") == [
            b"* VANISHED (EARLIER) 3:4",
            f"* 2 FETCH (UID 2 FLAGS (\\Seen) MODSEQ ({modseqs[0]}))".encode(),
            f"* 3 FETCH (UID 5 FLAGS (\\Flagged) MODSEQ ({modseqs[1]}))".encode(),
            f"* 5 FETCH (UID 7 FLAGS () MODSEQ ({modseqs[2]}))".encode(),
            b"T OK FETCH completed",
        ]
        assert _run(client, f"UID FETCH 4:5 (FLAGS) (CHANGEDSINCE {modseqs[0]} VANISHED)") == [
            b"* VANISHED (EARLIER) 4",
            f"* 3 FETCH (UID 5 FLAGS (\\Flagged) MODSEQ ({modseqs[1]}))".encode(),
            b"T OK FETCH completed",
        ]
        assert _run(client, f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {h1} VANISHED)") == [
            b"T OK FETCH completed"
        ]
        client.logout()

    await _in_thread(scenario)


async def test_idle_pushes_flag_changes_and_vanished(imap: Imap) -> None:  # noqa: F811
    watcher = await _in_thread(lambda: _login(imap))
    other = await _in_thread(lambda: _login(imap))

    def start_idle() -> bytes:
        _append(other, 2)
        assert _run(watcher, "ENABLE QRESYNC")[0] == b"* ENABLED QRESYNC"
        assert _run(watcher, "SELECT INBOX")[-1] == b"T OK [READ-WRITE] SELECT completed"
        tag = watcher._new_tag()
        watcher.send(tag + b" IDLE\r\n")
        assert watcher.readline() == b"+ idling\r\n"
        return tag

    tag = await _in_thread(start_idle)

    def changes() -> None:
        assert other.select("INBOX")[0] == "OK"
        assert other.store("2", "+FLAGS", "(\\Answered)")[0] == "OK"
        line = watcher.readline()
        assert line == f"* 2 FETCH (UID 2 FLAGS (\\Answered) MODSEQ ({_modseq(line)}))\r\n".encode()
        other.store("1", "+FLAGS.SILENT", "(\\Deleted)")
        line = watcher.readline()
        assert line == f"* 1 FETCH (UID 1 FLAGS (\\Deleted) MODSEQ ({_modseq(line)}))\r\n".encode()
        other.expunge()
        assert watcher.readline() == b"* VANISHED 1\r\n"
        watcher.send(b"DONE\r\n")
        assert watcher.readline() == tag + b" OK IDLE terminated\r\n"
        assert _run(watcher, "FETCH 1 (UID FLAGS)") == [
            b"* 1 FETCH (UID 2 FLAGS (\\Answered))",
            b"T OK FETCH completed",
        ]
        watcher.logout()
        other.logout()

    await _in_thread(changes)
