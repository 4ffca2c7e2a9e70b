"""The IMAP server as clients see it: the real operator (`mssante.server.start`) on loopback,
real TLS (STARTTLS and implicit), Python's imaplib, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import imaplib
import re
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mssante.config import load_settings
from mssante.operator.delivery import Delivery, InboundEnvelope, Recipient, SessionInfo
from mssante.operator.store import blobs, domains, mailboxes
from mssante.operator.store.migrate import upgrade
from mssante.operator.store.schema import MailboxState, MailboxType, MessageRow
from mssante.server import Running, start, stop

ConfigWriter = Callable[..., Path]
FIXTURES = Path(__file__).parents[3] / "tls-fixtures"
DOMAIN = "hopital-x.mssante.test"
USER = f"jean.martin@{DOMAIN}"
PASSWORD = "correct-horse-battery"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Imap:
    running: Running
    port: int
    tls_port: int

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(FIXTURES / "ca-bundle.pem"))
        ctx.check_hostname = False  # the test certificate names the operator, not 127.0.0.1
        return ctx

    def plain(self) -> imaplib.IMAP4:
        return imaplib.IMAP4("127.0.0.1", self.port, timeout=10)

    def tls(self) -> imaplib.IMAP4_SSL:
        return imaplib.IMAP4_SSL("127.0.0.1", self.tls_port, ssl_context=self.context(), timeout=10)


@pytest.fixture
async def imap(store_url: str, write_config: ConfigWriter) -> AsyncIterator[Imap]:
    await upgrade(store_url)
    port, tls_port = _free_port(), _free_port()
    path = write_config(
        database_url=store_url,
        extra=(
            "[metrics]\nenabled = false\n[relay]\nenabled = false\n"
            "[submission]\nenabled = false\n[dkim]\nverify = false\n"
            f'[imap]\nenabled = true\nlisten = "127.0.0.1:{port}"\n'
            f'implicit_tls_listen = "127.0.0.1:{tls_port}"\nlogin_failures_before_delay = 20\n'
        ),
    )
    running = await start(load_settings(path))
    from mssante.operator.passwords import hash_async

    password_hash = await hash_async(PASSWORD)
    async with running.store.session() as session:
        await domains.add_domain(session, DOMAIN)
        await mailboxes.create_mailbox(session, USER, MailboxType.PER, password_hash=password_hash)
        await mailboxes.create_mailbox(
            session,
            f"parti@{DOMAIN}",
            MailboxType.PER,
            password_hash=password_hash,
            state=MailboxState.DISABLED,
        )
        await session.commit()
    try:
        yield Imap(running, port, tls_port)
    finally:
        await stop(running)


async def _in_thread(fn: Callable[[], Any]) -> Any:
    return await asyncio.to_thread(fn)


def _failure(client: imaplib.IMAP4, user: str, password: str) -> str:
    with pytest.raises(imaplib.IMAP4.error) as info:
        client.login(user, password)
    return str(info.value)


async def test_starttls_login_refusals_and_list(imap: Imap) -> None:
    def scenario() -> None:
        client = imap.plain()
        greeting = client.welcome.decode()
        assert greeting.startswith("* OK [CAPABILITY IMAP4rev1 IMAP4rev2 STARTTLS LOGINDISABLED")
        assert "LOGINDISABLED" in client.capabilities
        assert "AUTH=PLAIN" not in client.capabilities
        typ, data = client._simple_command("LOGIN", USER, PASSWORD)
        assert (typ, data) == ("NO", [b"[PRIVACYREQUIRED] TLS required: use STARTTLS"])
        client.starttls(ssl_context=imap.context())
        assert "AUTH=PLAIN" in client.capabilities
        assert "LOGINDISABLED" not in client.capabilities
        wrong = _failure(client, USER, "not the password at all")
        unknown = _failure(client, f"nobody@{DOMAIN}", PASSWORD)
        disabled = _failure(client, f"parti@{DOMAIN}", PASSWORD)
        assert wrong == unknown == disabled
        assert "[AUTHENTICATIONFAILED] Authentication failed" in wrong
        typ, _ = client.login(USER.upper(), PASSWORD)
        assert typ == "OK"
        typ, lines = client.list()
        assert typ == "OK"
        listed = b"\n".join(x for x in lines if isinstance(x, bytes)).decode()
        assert '(\\HasNoChildren) "/" "INBOX"' in listed
        for name, use in (("Sent", "\\Sent"), ("Drafts", "\\Drafts"), ("Trash", "\\Trash")):
            assert f'(\\HasNoChildren {use}) "/" "{name}"' in listed
        assert '(\\Noselect \\HasNoChildren) "/" "Shared"' in listed
        typ, ns = client.namespace()
        assert ns == [b'(("" "/")) NIL (("Shared/" "/"))']
        typ, status = client.status("INBOX", "(MESSAGES UIDNEXT UIDVALIDITY UNSEEN)")
        assert re.fullmatch(
            rb'"INBOX" \(MESSAGES 0 UIDNEXT 1 UIDVALIDITY \d+ UNSEEN 0\)', status[0] or b""
        )
        # A malformed command gets BAD, an unknown one too, and the session goes on.
        with pytest.raises(imaplib.IMAP4.error, match="BAD"):
            client._simple_command("STATUS", "INBOX", "(MESSAGES")
        with pytest.raises(imaplib.IMAP4.error, match="unknown command"):
            client.xatom("FROBNICATE")
        assert client.noop()[0] == "OK"
        client.logout()

    await _in_thread(scenario)


async def test_authenticate_plain_with_and_without_initial_response(imap: Imap) -> None:
    def scenario() -> None:
        client = imap.tls()
        assert "AUTH=PLAIN" in client.capabilities and "SASL-IR" in client.capabilities
        typ, _ = client.authenticate("PLAIN", lambda _: f"\0{USER}\0{PASSWORD}".encode())
        assert typ == "OK"
        client.logout()
        # SASL-IR (rfc/4959): the response on the command line.
        client = imap.tls()
        wrong = base64.b64encode(f"\0{USER}\0wrong password!".encode()).decode()
        typ, data = client._simple_command("AUTHENTICATE", "PLAIN", wrong)
        assert (typ, data) == ("NO", [b"[AUTHENTICATIONFAILED] Authentication failed"])
        good = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
        typ, data = client._simple_command("AUTHENTICATE", "PLAIN", good)
        assert typ == "OK"
        client.state = "AUTH"
        assert client.select("INBOX")[0] == "OK"
        client.logout()

    await _in_thread(scenario)


MESSAGE = (
    b"From: Dr Pair <dr.pair@peer.mssante.test>\r\n"
    b"To: Jean Martin <" + USER.encode() + b">\r\n"
    b"Subject: Compte rendu\r\n"
    b"Date: Mon, 24 Nov 2025 09:30:00 +0100\r\n"
    b"Message-ID: <cr-42@peer.mssante.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n'
    b"\r\n"
    b"--b1\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Bonjour,\r\nfin.\r\n"
    b"--b1\r\n"
    b"Content-Type: application/pdf; name=cr.pdf\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"JVBERi0xLjQK\r\n"
    b"--b1--\r\n"
)


async def _deliver(imap: Imap) -> bytes:
    """Deliver MESSAGE to USER's INBOX; returns the bytes stored (trace fields added)."""
    running = imap.running
    delivery = Delivery(running.store, running.settings)
    await delivery.start()
    try:
        await delivery.deliver(
            InboundEnvelope(
                mail_from="dr.pair@peer.mssante.test",
                recipients=(Recipient(USER, None, None),),
                ret=None,
                envid=None,
                smtputf8=False,
                body="8BITMIME",
            ),
            MESSAGE,
            SessionInfo("s1", "192.0.2.10", "smtp.peer.mssante.test", "ESMTPS", None, None, None),
        )
    finally:
        await delivery.close()
    async with running.store.read_session() as session:
        # The message just delivered: the newest row (other messages may be there already).
        newest = select(MessageRow.blob_id).order_by(MessageRow.id.desc()).limit(1)
        blob_id = (await session.execute(newest)).scalar_one()
        return await blobs.get_blob(session, running.store.cipher, blob_id)


def _flags(client: imaplib.IMAP4, what: str = "1") -> str:
    typ, data = client.fetch(what, "(FLAGS)")
    assert typ == "OK"
    return b" ".join(d for d in data if isinstance(d, bytes)).decode()


async def test_delivered_message_select_fetch_store_search_expunge(imap: Imap) -> None:
    stored = await _deliver(imap)
    assert stored.endswith(MESSAGE)

    def scenario() -> None:
        client = imap.tls()
        client.login(USER, PASSWORD)
        typ, data = client.select("INBOX")
        assert (typ, data) == ("OK", [b"1"])
        assert client.untagged_responses.get("UIDVALIDITY")
        assert "\\Seen" not in _flags(client)

        typ, data = client.fetch("1", "(BODY.PEEK[])")
        assert typ == "OK" and isinstance(data[0], tuple)
        assert data[0][1] == stored
        assert "\\Seen" not in _flags(client)

        typ, data = client.fetch("1", "(UID RFC822.SIZE ENVELOPE BODYSTRUCTURE)")
        line = data[0]
        assert isinstance(line, bytes)
        assert b"UID 1 " in line and b"RFC822.SIZE %d " % len(stored) in line
        assert (
            b'ENVELOPE ("Mon, 24 Nov 2025 09:30:00 +0100" "Compte rendu" '
            b'(("Dr Pair" NIL "dr.pair" "peer.mssante.test")) '
            b'(("Dr Pair" NIL "dr.pair" "peer.mssante.test")) '
            b'(("Dr Pair" NIL "dr.pair" "peer.mssante.test")) '
            b'(("Jean Martin" NIL "jean.martin" "hopital-x.mssante.test")) '
            b'NIL NIL NIL "<cr-42@peer.mssante.test>")' in line
        )
        assert (
            b'BODYSTRUCTURE (("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 14 2 NIL NIL NIL '
            b'NIL)("APPLICATION" "PDF" ("NAME" "cr.pdf") NIL NIL "BASE64" 12 NIL NIL NIL NIL) '
            b'"MIXED" ("BOUNDARY" "b1") NIL NIL NIL)' in line
        )

        typ, data = client.fetch(
            "1", "(BODY.PEEK[1] BODY.PEEK[2.MIME] BODY.PEEK[HEADER.FIELDS (Subject)] "
            "BODY.PEEK[TEXT]<0.4>)",
        )  # fmt: skip
        parts = [d for d in data if isinstance(d, tuple)]
        assert parts[0][1] == b"Bonjour,\r\nfin."  # the CRLF before --b1 is the delimiter's
        assert parts[1][1] == (
            b"Content-Type: application/pdf; name=cr.pdf\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n"
        )
        assert parts[2][1] == b"Subject: Compte rendu\r\n\r\n"
        assert parts[3][0].endswith(b"BODY[TEXT]<0> {4}") and parts[3][1] == b"--b1"

        typ, data = client.search(None, "UNSEEN")
        assert data == [b"1"]
        typ, data = client.fetch("1", "(BODY[HEADER])")
        assert data[0][1] == stored[: stored.index(b"\r\n\r\n") + 4]  # type: ignore[index]
        assert b"FLAGS (\\Seen)" in b"".join(x if isinstance(x, bytes) else x[0] for x in data)
        assert client.search(None, "UNSEEN")[1] == [b""]
        assert client.search(None, "SEEN")[1] == [b"1"]
        assert client.search(None, f"LARGER {len(stored) - 1}")[1] == [b"1"]
        assert client.search(None, f"LARGER {len(stored)}")[1] == [b""]
        assert client.uid("SEARCH", "SINCE 1-Jan-2020 UID 1:*")[1] == [b"1"]

        typ, data = client.store("1", "+FLAGS", "(\\Flagged $Important)")
        assert typ == "OK" and b"FLAGS (\\Seen \\Flagged $Important)" in data[0]  # type: ignore[operator]
        typ, data = client.uid("STORE", "1", "-FLAGS.SILENT", "(\\Seen)")
        assert typ == "OK" and data == [None]
        assert "(\\Flagged $Important)" in _flags(client)
        assert client.search(None, "FLAGGED UNSEEN")[1] == [b"1"]

        typ, _ = client.select("INBOX", readonly=True)
        assert typ == "OK"
        assert client.store("1", "+FLAGS", "(\\Deleted)")[0] == "NO"
        client.fetch("1", "(BODY[])")
        assert "\\Seen" not in _flags(client)  # EXAMINE never sets \Seen

        client.select("INBOX")
        client.store("1", "+FLAGS", "(\\Deleted)")
        typ, data = client.expunge()
        assert typ == "OK" and data == [b"1"]
        typ, data = client.select("INBOX")
        assert data == [b"0"]
        typ, status = client.status("INBOX", "(MESSAGES UIDNEXT)")
        assert status == [b'"INBOX" (MESSAGES 0 UIDNEXT 2)']
        client.logout()

    await _in_thread(scenario)


async def test_noop_reports_new_mail(imap: Imap) -> None:
    def login() -> imaplib.IMAP4_SSL:
        client = imap.tls()
        client.login(USER, PASSWORD)
        assert client.select("INBOX")[1] == [b"0"]
        return client

    client = await _in_thread(login)
    await _deliver(imap)

    def scenario() -> None:
        typ, _ = client.noop()
        assert typ == "OK"
        assert client.untagged_responses.get("EXISTS", [])[-1:] == [b"1"]
        # The new message is there for the commands that follow (ESEARCH: test_imap_search).
        typ, _ = client._simple_command("SEARCH", "RETURN", "(COUNT)", "ALL")
        assert typ == "OK"
        (esearch,) = client.untagged_responses.pop("ESEARCH")
        assert esearch.endswith(b'") COUNT 1')
        assert client.noop()[0] == "OK"
        client.logout()

    await _in_thread(scenario)
