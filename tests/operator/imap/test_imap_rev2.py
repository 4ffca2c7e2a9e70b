"""IMAP4rev2 (rfc/9051) on the real server: IMAP4rev1 behaviour until `ENABLE IMAP4rev2`, then
UTF-8 mailbox names both ways, SELECT with LIST instead of RECENT/UNSEEN, `[CLOSED]`, and SEARCH
answered with ESEARCH. Byte-exact lines over real TLS, on SQLite and PostgreSQL."""

from __future__ import annotations

import re

from imap_client import Client
from test_imap_server import (  # the shared server fixture
    PASSWORD,
    USER,
    Imap,
    _deliver,
    imap,  # noqa: F401 - a fixture
)

UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")


async def _client(imap: Imap) -> Client:  # noqa: F811
    client = await Client.connect(imap.tls_port, imap.context())
    assert (await client.command(f"LOGIN {USER} {PASSWORD}")).status == "OK"
    return client


async def test_rev1_until_enabled_then_rev2(imap: Imap) -> None:  # noqa: F811
    await _deliver(imap)
    client = await _client(imap)
    caps = await client.command("CAPABILITY")
    assert caps.untagged[0].split()[2:4] == [b"IMAP4rev1", b"IMAP4rev2"]

    # IMAP4rev1 until enabled: RECENT and the UNSEEN code at SELECT, SEARCH answers SEARCH.
    selected = await client.command("SELECT INBOX")
    assert b"* 0 RECENT\r\n" in selected.untagged
    assert b"* OK [UNSEEN 1] first unseen\r\n" in selected.untagged
    assert not any(line.startswith(b"* LIST") for line in selected.untagged)
    assert (await client.command("SEARCH ALL")).untagged == [b"* SEARCH 1\r\n"]

    enabled = await client.command("ENABLE IMAP4rev2")
    assert enabled.untagged == [b"* ENABLED IMAP4rev2\r\n"]
    assert (await client.command("ENABLE IMAP4rev2")).untagged == [b"* ENABLED\r\n"]

    # rfc/9051 §6.4.4: SEARCH always answers ESEARCH (ALL when nothing is asked).
    search = await client.command("SEARCH UNSEEN")
    assert search.untagged == [b'* ESEARCH (TAG "' + search.line.split()[0] + b'") ALL 1\r\n']
    uid_search = await client.command("UID SEARCH ALL")
    assert uid_search.untagged == [
        b'* ESEARCH (TAG "' + uid_search.line.split()[0] + b'") UID ALL 1\r\n'
    ]
    nothing = await client.command("SEARCH DELETED")
    assert nothing.untagged == [b'* ESEARCH (TAG "' + nothing.line.split()[0] + b'")\r\n']

    # rfc/9051 §6.3.2: SELECT of another mailbox closes this one first ([CLOSED]); FLAGS,
    # EXISTS and LIST (accurate attributes), no RECENT, no UNSEEN code.
    sent = await client.command("EXAMINE Sent")
    assert sent.untagged[0] == b"* OK [CLOSED] previous mailbox closed\r\n"
    assert sent.untagged[1].startswith(b"* FLAGS (")
    assert sent.untagged[2] == b"* 0 EXISTS\r\n"
    assert sent.untagged[3] == b'* LIST (\\HasNoChildren \\Sent) "/" "Sent"\r\n'
    assert not any(b"RECENT" in line or b"[UNSEEN" in line for line in sent.untagged)
    assert sent.line.endswith(b"OK [READ-ONLY] EXAMINE completed\r\n")
    inbox = await client.command("SELECT INBOX")
    assert b'* LIST (\\HasNoChildren) "/" "INBOX"\r\n' in inbox.untagged
    assert inbox.code(UIDVALIDITY) is not None
    await client.close()


async def test_rev2_mailbox_names_are_utf8(imap: Imap) -> None:  # noqa: F811
    client = await _client(imap)
    assert (await client.command("ENABLE IMAP4rev2")).status == "OK"
    name = "Dossiers/Cardiologie – Été".encode()
    created = await client.command(b'CREATE "' + name + b'"')
    assert created.status == "OK", created.line
    listed = await client.command('LIST "" "Dossiers/*"')
    assert listed.untagged == [b'* LIST (\\HasNoChildren) "/" "' + name + b'"\r\n']
    parent = await client.command('LIST "" "Dossiers"')
    assert parent.untagged == [b'* LIST (\\HasChildren) "/" "Dossiers"\r\n']
    status = await client.command(b'STATUS "' + name + b'" (MESSAGES)')
    assert status.untagged == [b'* STATUS "' + name + b'" (MESSAGES 0)\r\n']
    selected = await client.command(b'SELECT "' + name + b'"')
    assert b'* LIST (\\HasNoChildren) "/" "' + name + b'"\r\n' in selected.untagged
    await client.close()

    # A client that did not enable IMAP4rev2 sees the same folder in modified UTF-7.
    rev1 = await _client(imap)
    listed = await rev1.command('LIST "" "Dossiers/*"')
    assert listed.untagged == [
        b'* LIST (\\HasNoChildren) "/" "Dossiers/Cardiologie &IBM- &AMk-t&AOk-"\r\n'
    ]
    await rev1.close()
