"""CONDSTORE (rfc/7162 §3.1) through Python's imaplib against the real operator, on SQLite and
PostgreSQL (the fixtures of test_imap_server)."""

from __future__ import annotations

import imaplib
import re

import pytest
from test_imap_server import (  # the shared server fixture and helpers
    MESSAGE,
    PASSWORD,
    USER,
    Imap,
    _in_thread,
    imap,  # noqa: F401 - a fixture
)


def _login(server: Imap) -> imaplib.IMAP4_SSL:
    client = server.tls()
    client.login(USER, PASSWORD)
    return client


def _highest(client: imaplib.IMAP4) -> int:
    return int(client.untagged_responses["HIGHESTMODSEQ"][-1])


def _status_highest(client: imaplib.IMAP4) -> int:
    typ, data = client.status("INBOX", "(HIGHESTMODSEQ)")
    assert typ == "OK"
    found = re.fullmatch(rb'"INBOX" \(HIGHESTMODSEQ (\d+)\)', data[0] or b"")
    assert found
    return int(found[1])


def _modseq(item: object) -> int:
    assert isinstance(item, bytes)
    found = re.search(rb"MODSEQ \((\d+)\)", item)
    assert found, item
    return int(found[1])


async def test_condstore_select_fetch_store_search_status(imap: Imap) -> None:  # noqa: F811
    def scenario() -> None:
        client = _login(imap)
        assert "CONDSTORE" in client.capabilities
        for _ in range(3):
            assert client.append("INBOX", None, None, MESSAGE)[0] == "OK"
        # Without CONDSTORE: no HIGHESTMODSEQ, no MODSEQ after STORE.
        typ, data = client.select("INBOX")
        assert (typ, data) == ("OK", [b"3"])
        assert "HIGHESTMODSEQ" not in client.untagged_responses
        typ, data = client.store("3", "+FLAGS", "($Lu)")
        assert data == [b"3 (FLAGS ($Lu))"]

        # SELECT (CONDSTORE) enables it and shows HIGHESTMODSEQ, as STATUS does.
        typ, data = client._simple_command("SELECT", "INBOX", "(CONDSTORE)")
        assert typ == "OK"
        h0 = _highest(client)
        assert _status_highest(client) == h0
        typ, data = client.fetch("1:3", "(MODSEQ)")
        assert typ == "OK" and all(_modseq(d) <= h0 for d in data)

        # A STORE bumps it and reports the new MODSEQ.
        typ, data = client.store("2", "+FLAGS", "(\\Flagged)")
        h1 = _modseq(data[0])
        assert data == [f"2 (FLAGS (\\Flagged) MODSEQ ({h1}))".encode()]
        assert h1 > h0 and _status_highest(client) == h1

        # CHANGEDSINCE: only the changed message, with its MODSEQ.
        typ, data = client.fetch("1:*", f"(FLAGS) (CHANGEDSINCE {h0})")
        assert (typ, data) == ("OK", [f"2 (FLAGS (\\Flagged) MODSEQ ({h1}))".encode()])
        typ, data = client.uid("FETCH", "1:*", f"(FLAGS) (CHANGEDSINCE {h1})")
        assert (typ, data) == ("OK", [None])

        # UNCHANGEDSINCE: message 2 changed after h0, so it is refused and listed.
        typ, data = client._simple_command(
            "STORE", "1,2", f"(UNCHANGEDSINCE {h0})", "+FLAGS", "(\\Seen)"
        )
        assert (typ, data) == ("OK", [b"[MODIFIED 2] Conditional STORE failed"])
        fetched = client.untagged_responses.pop("FETCH")
        assert len(fetched) == 1 and isinstance(fetched[0], bytes)
        h2 = _modseq(fetched[0])
        assert fetched[0] == f"1 (FLAGS (\\Seen) MODSEQ ({h2}))".encode() and h2 > h1
        typ, data = client.fetch("1:2", "(FLAGS)")
        assert data == [b"1 (FLAGS (\\Seen))", b"2 (FLAGS (\\Flagged))"]
        # UID STORE lists UIDs; .SILENT still reports the MODSEQ of what changed.
        typ, data = client._simple_command(
            "UID", "STORE", "2,3", f"(UNCHANGEDSINCE {h2})", "+FLAGS.SILENT", "(\\Deleted)"
        )
        assert (typ, data) == ("OK", [b"STORE completed"])
        fetched = client.untagged_responses.pop("FETCH")
        h3 = _modseq(fetched[0])
        assert fetched == [
            f"2 (UID 2 MODSEQ ({h3}))".encode(),
            f"3 (UID 3 MODSEQ ({h3}))".encode(),
        ]
        typ, data = client._simple_command(
            "UID", "STORE", "1:3", "(UNCHANGEDSINCE 0)", "-FLAGS", "(\\Deleted)"
        )
        assert (typ, data) == ("OK", [b"[MODIFIED 1:3] Conditional STORE failed"])

        # SEARCH MODSEQ: the messages changed since, then the highest MODSEQ among them.
        typ, data = client.search(None, "MODSEQ", str(h2))
        assert (typ, data) == ("OK", [f"1 2 3 (MODSEQ {h3})".encode()])
        typ, data = client.uid("SEARCH", "MODSEQ", str(h3), "NOT", "SEEN")
        assert (typ, data) == ("OK", [f"2 3 (MODSEQ {h3})".encode()])
        typ, data = client.search(None, "MODSEQ", str(h3 + 1))
        assert (typ, data) == ("OK", [b""])
        assert _status_highest(client) == h3
        # QRESYNC before ENABLE QRESYNC is BAD (rfc/7162 §3.2.5; test_imap_qresync.py).
        with pytest.raises(imaplib.IMAP4.error, match=r"BAD \[b'QRESYNC is not enabled'\]"):
            client._simple_command("EXAMINE", "INBOX", "(QRESYNC (1 1))")
        client.logout()

        # ENABLE CONDSTORE: said once, then every SELECT shows HIGHESTMODSEQ.
        other = _login(imap)
        typ, data = other._simple_command("ENABLE", "CONDSTORE")
        assert typ == "OK" and other.untagged_responses.pop("ENABLED") == [b"CONDSTORE"]
        typ, data = other._simple_command("ENABLE", "CONDSTORE")
        assert typ == "OK" and other.untagged_responses.pop("ENABLED") == [b""]
        typ, data = other.select("INBOX", readonly=True)
        assert typ == "OK" and _highest(other) == h3
        other.logout()

    await _in_thread(scenario)
