"""Submission over real TLS on loopback: smtplib and imaplib as clients, the test PKI's
certificates, SQLite and PostgreSQL. Remote recipients go to the real outbound queue (its worker
is off here: tests/operator/test_outbox.py delivers to a second operator) and are checked
against the real directory mirror table."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import imaplib
import json
import os
import shutil
import smtplib
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import TypeVar

import pytest

from mssante.admin import Admin
from mssante.config import load_settings
from mssante.directory import mirror
from mssante.operator.passwords import hash_password
from mssante.operator.queue import MessageView, Queue, Selection
from mssante.operator.store import audit, mailboxes
from mssante.operator.store.migrate import upgrade
from mssante.operator.store.schema import QueueState
from mssante.server import Running, start, stop

FIXTURES = Path(__file__).parents[3] / "tls-fixtures"
INDEX = json.loads((FIXTURES / "fixtures.json").read_text())
ConfigWriter = Callable[..., Path]
T = TypeVar("T")

DOMAIN = "demo.mssante.test"
REMOTE_DOMAIN = "hopital-a.mssante.test"  # whitelisted in tls-fixtures/whitelist.xml
PASSWORD = "correct horse battery staple"
JEAN = f"jean.dupont@{DOMAIN}"  # PER of pro-1's national id
CLAIRE = f"claire.petit@{DOMAIN}"  # secretary: delegated send-as on JEAN
PAUL = f"paul.martin@{DOMAIN}"  # member of CARDIO with send-as
SOPHIE = f"sophie.durand@{DOMAIN}"  # member of CARDIO without send-as
CARDIO = f"cardiologie@{DOMAIN}"
DPI = f"dpi@{DOMAIN}"  # APP bound to pro-1's certificate
PATIENT = "146026322000196@patient.mssante.test"
KNOWN_REMOTE = f"known@{REMOTE_DOMAIN}"
PRO1_NATIONAL_ID = str(INDEX["files"]["pro-1.pem"]["national_id"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@functools.cache
def _password_hash() -> str:
    return hash_password(PASSWORD)


def _client_context(cert: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(FIXTURES / "ca-bundle.pem"))
    context.check_hostname = False
    if cert is not None:
        context.load_cert_chain(FIXTURES / f"{cert}.pem", FIXTURES / f"{cert}.key")
    return context


@dataclass
class Submission:
    running: Running
    port: int
    tls_port: int
    imap_port: int

    @property
    def queue(self) -> Queue:
        assert self.running.queue is not None
        return self.running.queue

    async def queued(self) -> list[MessageView]:
        """Every message in the outbound queue, oldest first."""
        views = await self.queue.list_recipients(Selection(everything=True))
        ids = sorted({v.queue_id for v in views})
        return [await self.queue.show(i) for i in ids]

    def starttls(self, cert: str | None = None) -> smtplib.SMTP:
        smtp = smtplib.SMTP("127.0.0.1", self.port, timeout=10)
        smtp.ehlo("client.test")
        smtp.starttls(context=_client_context(cert))
        smtp.ehlo("client.test")
        return smtp

    def implicit(self, cert: str | None = None) -> smtplib.SMTP_SSL:
        smtp = smtplib.SMTP_SSL(
            "127.0.0.1", self.tls_port, timeout=10, context=_client_context(cert)
        )
        smtp.ehlo("client.test")
        return smtp

    def login(self, user: str) -> smtplib.SMTP:
        smtp = self.starttls()
        smtp.login(user, PASSWORD)
        return smtp

    def imap_fetch(self, user: str, folder: str = "INBOX") -> list[tuple[bytes, bytes]]:
        """(flags, message) of every message of the folder, over IMAP with TLS."""
        with imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=10) as imap:
            imap.starttls(_client_context())
            imap.login(user, PASSWORD)
            imap.select(folder, readonly=True)
            found: list[tuple[bytes, bytes]] = []
            _, data = imap.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[])")
            for item in data:
                if isinstance(item, tuple):
                    found.append((item[0], item[1]))
            return found

    async def audit_events(self) -> list[tuple[str, str, dict[str, object]]]:
        assert self.running.audit is not None
        await self.running.audit.flush()
        async with self.running.store.session() as session:
            events = await audit.recent(session, 500)
        return [(e.event, e.outcome.value, dict(e.details or {})) for e in events]

    async def reasons(self) -> list[str]:
        return [str(d.get("reason")) for _, _, d in await self.audit_events()]


def message(
    sender: str, to: str, *, subject: str = "Compte rendu", extra: dict[str, str] | None = None
) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    for name, value in (extra or {}).items():
        msg[name] = value
    msg.set_content("Bonjour,\nvoici le compte rendu.\n")
    return msg.as_bytes(policy=SMTP)


@contextlib.asynccontextmanager
async def running_submission(
    store_url: str,
    write_config: ConfigWriter,
    *,
    options: str = "",
) -> AsyncIterator[Submission]:
    port, tls_port, imap_port = _free_port(), _free_port(), _free_port()
    config = write_config(
        database_url=store_url,
        storage="max_message_size = 50000",
        extra=f"""
[metrics]
enabled = false
[relay]
enabled = false
[imap]
listen = "127.0.0.1:{imap_port}"
implicit_tls_listen = ""
login_failures_before_delay = 3
[submission]
listen = "127.0.0.1:{port}"
implicit_tls_listen = "127.0.0.1:{tls_port}"
max_recipients = 5
{options}
[queue]
enabled = false
[whitelist]
source = "{FIXTURES / "whitelist.xml"}"
""",
    )
    settings = load_settings(config)
    await upgrade(store_url)
    running = await start(settings)
    await mirror.add_entries(running.store, [mirror.Entry(KNOWN_REMOTE, "PER")])
    ops = Admin(running.store, settings, "test")
    await ops.add_domain(DOMAIN)
    await ops.add_domain("patient.mssante.test")
    await ops.add_mailbox(JEAN, "PER", national_id=PRO1_NATIONAL_ID, state="active")
    await ops.add_mailbox(CLAIRE, "PER", national_id="810000000017", state="active")
    await ops.add_mailbox(PAUL, "PER", national_id="810000000025", state="active")
    await ops.add_mailbox(SOPHIE, "PER", national_id="810000000033", state="active")
    await ops.add_mailbox(CARDIO, "ORG", state="active")
    await ops.add_mailbox(DPI, "APP", state="active")
    await ops.add_mailbox(PATIENT, "PATIENT", state="active")
    # One argon2 hash for every mailbox and test (64 MiB of work each): the logins still verify it.
    async with running.store.write_session() as session, session.begin():
        for address in (JEAN, CLAIRE, PAUL, SOPHIE, PATIENT):
            await mailboxes.set_password_hash(session, address, _password_hash())
    await ops.grant(JEAN, CLAIRE, frozenset({"read", "send-as"}))
    await ops.grant(CARDIO, PAUL, frozenset({"read", "write", "send-as"}))
    await ops.grant(CARDIO, SOPHIE, frozenset({"read", "write"}))
    await ops.bind_certificate(DPI, FIXTURES / "pro-1.pem")
    try:
        yield Submission(running, port, tls_port, imap_port)
    finally:
        await stop(running)


@pytest.fixture
async def submission(store_url: str, write_config: ConfigWriter) -> AsyncIterator[Submission]:
    async with running_submission(store_url, write_config) as started:
        yield started


def _run(function: Callable[[], T]) -> asyncio.Future[T]:
    """Blocking clients run in a thread: the server shares this test's event loop."""
    return asyncio.get_running_loop().run_in_executor(None, function)


# --- authentication ------------------------------------------------------------------------------


async def test_auth_plain_and_login_over_starttls_and_implicit_tls(submission: Submission) -> None:
    def login_over_implicit_tls() -> tuple[int, bytes]:
        with submission.implicit() as smtp:
            smtp.user, smtp.password = PAUL, PASSWORD
            return smtp.auth("LOGIN", smtp.auth_login, initial_response_ok=False)

    def plain_without_initial_response() -> tuple[int, bytes]:
        with submission.implicit() as smtp:
            smtp.user, smtp.password = CLAIRE, PASSWORD
            return smtp.auth("PLAIN", smtp.auth_plain, initial_response_ok=False)

    def plain() -> tuple[int, bytes]:
        with submission.starttls() as smtp:
            assert smtp.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
            smtp.user, smtp.password = JEAN, PASSWORD
            return smtp.auth("PLAIN", smtp.auth_plain)

    assert (await _run(plain))[0] == 235
    assert (await _run(login_over_implicit_tls))[0] == 235
    assert (await _run(plain_without_initial_response))[0] == 235
    events = await submission.audit_events()
    logins = [(d.get("user"), d.get("mechanism")) for e, o, d in events if e == "smtp.auth"]
    assert (JEAN, "PLAIN") in logins and (PAUL, "LOGIN") in logins and (CLAIRE, "PLAIN") in logins


async def test_before_tls_no_auth_and_mail_refused(submission: Submission) -> None:
    def attempt() -> tuple[bool, tuple[int, bytes], tuple[int, bytes]]:
        with smtplib.SMTP("127.0.0.1", submission.port, timeout=10) as smtp:
            smtp.ehlo("client.test")
            advertised = smtp.has_extn("auth")
            auth = smtp.docmd("AUTH", "PLAIN AGplYW4AcHc=")
            mail = smtp.docmd("MAIL", f"FROM:<{JEAN}>")
            return advertised, auth, mail

    advertised, auth, mail = await _run(attempt)
    assert not advertised
    assert auth == (530, b"5.7.0 Must issue a STARTTLS command first")
    assert mail == (530, b"5.7.0 Must issue a STARTTLS command first")
    assert (await submission.reasons()).count("no_tls") == 2


async def test_mail_before_auth_refused(submission: Submission) -> None:
    def attempt() -> tuple[int, bytes]:
        with submission.starttls() as smtp:
            return smtp.docmd("MAIL", f"FROM:<{JEAN}>")

    assert await _run(attempt) == (530, b"5.7.0 Authentication required")
    assert "no_auth" in await submission.reasons()


async def test_bad_password_and_unknown_user_look_alike_and_slow_down(
    submission: Submission,
) -> None:
    def attempt(user: str, password: str) -> tuple[int, bytes]:
        with submission.starttls() as smtp:
            smtp.user, smtp.password = user, password
            try:
                return smtp.auth("PLAIN", smtp.auth_plain)
            except smtplib.SMTPAuthenticationError as exc:
                return exc.smtp_code, exc.smtp_error

    wrong = await _run(lambda: attempt(JEAN, "not the password"))
    unknown = await _run(lambda: attempt(f"nobody@{DOMAIN}", "whatever"))
    assert wrong == unknown == (535, b"5.7.8 Authentication credentials invalid")
    events = await submission.audit_events()
    refused = [d for e, o, d in events if e == "smtp.auth" and o == "refused"]
    assert {d["reason"] for d in refused} == {"bad_password", "unknown_user"}
    assert all("not the password" not in json.dumps(d) for _, _, d in events)
    # One slow-down per process, shared with IMAP (login_failures_before_delay = 3).
    running = submission.running
    assert running.imap is not None and running.submission is not None
    assert running.imap.auth is running.submission.auth
    throttle = running.submission.auth.throttle
    keys = (f"user:{JEAN}", "ip:127.0.0.1")
    assert throttle.delay(keys, time.monotonic()) == 0
    await _run(lambda: attempt(JEAN, "still wrong"))
    assert throttle.delay(keys, time.monotonic()) > 0


async def test_auth_external_with_pro1_certificate(submission: Submission) -> None:
    def external() -> tuple[bool, tuple[int, bytes], dict[str, object]]:
        with submission.starttls(cert="pro-1") as smtp:
            offered = "EXTERNAL" in smtp.esmtp_features.get("auth", "")
            reply = smtp.docmd("AUTH", "EXTERNAL =")
            refused = smtp.sendmail(JEAN, [PAUL], message(JEAN, PAUL))
            # An APP mailbox bound to the certificate is its own: no Sender: needed.
            refused |= smtp.sendmail(DPI, [PAUL], message(DPI, PAUL, subject="from the DPI"))
            return offered, reply, dict(refused)

    offered, reply, refused = await _run(external)
    assert offered
    assert reply == (235, b"2.7.0 Authentication successful")
    assert refused == {}
    events = await submission.audit_events()
    ok = [d for e, o, d in events if e == "smtp.auth" and o == "ok"]
    assert ok[-1]["user"] == JEAN and ok[-1]["mechanism"] == "EXTERNAL"
    received = await _run(lambda: submission.imap_fetch(PAUL))
    assert len(received) == 2
    from_dpi = message_from_bytes(received[1][1])
    assert from_dpi["From"] == DPI and from_dpi["Sender"] is None


async def test_no_external_without_certificate(submission: Submission) -> None:
    def attempt() -> tuple[bool, tuple[int, bytes]]:
        with submission.starttls() as smtp:
            return "EXTERNAL" in smtp.esmtp_features.get("auth", ""), smtp.docmd(
                "AUTH", "EXTERNAL ="
            )

    offered, reply = await _run(attempt)
    assert not offered
    assert reply[0] == 535
    assert "no_certificate" in await submission.reasons()


async def test_auth_sequencing_and_cancel(submission: Submission) -> None:
    def exchange() -> list[tuple[int, bytes]]:
        replies = []
        with smtplib.SMTP("127.0.0.1", submission.port, timeout=10) as smtp:
            replies.append(smtp.docmd("AUTH", "PLAIN"))  # before EHLO
            smtp.ehlo("client.test")
            smtp.starttls(context=_client_context())
            smtp.ehlo("client.test")
            replies.append(smtp.docmd("AUTH", "CRAM-MD5"))
            replies.append(smtp.docmd("AUTH", "PLAIN"))  # 334, then cancelled
            replies.append(smtp.docmd("*"))
            replies.append(smtp.docmd("AUTH", "PLAIN not-base64!"))
            replies.append(smtp.docmd("AUTH", "LOGIN"))  # 334 Username:
            replies.append(smtp.docmd(base64.b64encode(JEAN.encode()).decode()))
            replies.append(smtp.docmd(base64.b64encode(PASSWORD.encode()).decode()))
            replies.append(smtp.docmd("AUTH", "PLAIN"))  # already authenticated
            smtp.ehlo("client.test")
            replies.append((0, b"AUTH" if smtp.has_extn("auth") else b""))
        return replies

    replies = await _run(exchange)
    assert replies[0] == (503, b"5.5.1 Send EHLO first")
    assert replies[1] == (504, b"5.5.4 Unrecognized authentication mechanism")
    assert replies[2] == (334, b"")
    assert replies[3][0] == 501
    assert replies[4] == (501, b"5.5.2 Cannot decode base64")
    assert replies[5] == (334, base64.b64encode(b"Username:"))
    assert replies[6] == (334, base64.b64encode(b"Password:"))
    assert replies[7] == (235, b"2.7.0 Authentication successful")
    assert replies[8] == (503, b"5.5.1 Already authenticated")
    assert replies[9] == (0, b"")  # AUTH no longer offered once logged in


async def test_patient_mailbox_may_not_submit(submission: Submission) -> None:
    def attempt() -> tuple[int, bytes]:
        with submission.starttls() as smtp:
            smtp.user, smtp.password = PATIENT, PASSWORD
            try:
                return smtp.auth("PLAIN", smtp.auth_plain)
            except smtplib.SMTPAuthenticationError as exc:
                return exc.smtp_code, exc.smtp_error

    assert await _run(attempt) == (535, b"5.7.8 Authentication credentials invalid")
    assert "patient_mailbox" in await submission.reasons()


async def test_connections_per_ip_limited(store_url: str, write_config: ConfigWriter) -> None:
    async with running_submission(
        store_url, write_config, options="max_connections_per_ip = 1"
    ) as submission:

        def second() -> bytes:
            with socket.create_connection(("127.0.0.1", submission.port), timeout=10) as first:
                assert first.recv(100).startswith(b"220 ")
                with socket.create_connection(("127.0.0.1", submission.port), timeout=10) as s2:
                    return s2.recv(200)

        assert await _run(second) == b"421 4.7.0 Too many connections from your address\r\n"
        assert "too_many_connections_from_peer" in await submission.reasons()


# --- sender rights -------------------------------------------------------------------------------


async def test_sending_as_someone_else_is_refused(submission: Submission) -> None:
    def attempts() -> tuple[tuple[int, bytes], tuple[int, bytes], tuple[int, bytes]]:
        with submission.login(JEAN) as smtp:
            envelope = smtp.docmd("MAIL", f"FROM:<{CARDIO}>")
            smtp.rset()
            null = smtp.docmd("MAIL", "FROM:<>")
            smtp.rset()
            try:
                smtp.sendmail(JEAN, [PAUL], message(CLAIRE, PAUL))
            except smtplib.SMTPDataError as exc:
                header = (exc.smtp_code, exc.smtp_error)
            return envelope, null, header

    envelope, null, header = await _run(attempts)
    assert envelope == (550, f"5.7.1 <{CARDIO}>: you may not send as this address".encode())
    assert null[0] == 550
    assert header == (550, f"5.7.1 From: <{CLAIRE}>: you may not send as this address".encode())
    reasons = await submission.reasons()
    assert "envelope_sender_not_allowed" in reasons
    assert "header_from_not_allowed" in reasons
    assert "null_sender" in reasons
    assert await _run(lambda: submission.imap_fetch(PAUL)) == []
    # A member of the ORG without the send right may not send as it either.

    def member_without_right() -> tuple[int, bytes]:
        with submission.login(SOPHIE) as smtp:
            return smtp.docmd("MAIL", f"FROM:<{CARDIO}>")

    assert (await _run(member_without_right))[0] == 550


async def test_delegate_with_send_right_gets_sender(submission: Submission) -> None:
    def send() -> dict[str, object]:
        with submission.login(CLAIRE) as smtp:
            data = message(JEAN, PAUL, extra={"Sender": f"<{PAUL}>"})  # replaced by ours
            return dict(smtp.sendmail(JEAN, [PAUL], data))

    assert await _run(send) == {}
    raw = (await _run(lambda: submission.imap_fetch(PAUL)))[0][1]
    delivered = message_from_bytes(raw)
    assert delivered.get_all("Sender") == [f"<{CLAIRE}>"]
    assert delivered["From"] == JEAN
    # The copy goes to the Sent folder of the mailbox sent as (docs/submission.md), \Seen.
    sent = await _run(lambda: submission.imap_fetch(JEAN, "Sent"))
    assert len(sent) == 1 and b"\\Seen" in sent[0][0]
    assert message_from_bytes(sent[0][1])["Message-ID"] == delivered["Message-ID"]
    events = await submission.audit_events()
    accepted = [d for e, o, d in events if e == "submission.accepted"]
    assert accepted[-1]["on_behalf"] is True and accepted[-1]["sender"] == JEAN


async def test_org_member_sends_as_the_org(submission: Submission) -> None:
    def send() -> dict[str, object]:
        with submission.login(PAUL) as smtp:
            return dict(smtp.sendmail(CARDIO, [JEAN], message(CARDIO, JEAN)))

    assert await _run(send) == {}
    delivered = message_from_bytes((await _run(lambda: submission.imap_fetch(JEAN)))[0][1])
    assert delivered["From"] == CARDIO
    assert delivered["Sender"] == f"<{PAUL}>"


# --- local delivery and the Sent copy ------------------------------------------------------------


async def test_local_recipient_reads_it_over_imap_and_sent_has_a_copy(
    submission: Submission,
) -> None:
    msg = EmailMessage()  # no Message-ID, no Date: we add them
    msg["From"] = JEAN
    msg["To"] = PAUL
    msg["Subject"] = "Résultats"
    msg.set_content("Compte rendu.\n")
    data = msg.as_bytes(policy=SMTP)

    def send() -> bytes:
        with submission.login(JEAN) as smtp:
            smtp.sendmail(JEAN, [PAUL], data)
            return smtp.docmd("NOOP")[1]

    await _run(send)
    inbox = await _run(lambda: submission.imap_fetch(PAUL))
    assert len(inbox) == 1
    flags, raw = inbox[0]
    delivered = message_from_bytes(raw)
    assert delivered["Message-ID"].endswith("@mx.test.mssante.test>")
    assert delivered["Date"]
    assert delivered["Sender"] is None  # sent as himself
    received = delivered.get_all("Received")
    assert len(received) == 1  # one trace field of ours, not one per hop inside the operator
    assert "authenticated" in received[0] and "ESMTPSA" in received[0]
    assert PASSWORD not in raw.decode() and JEAN not in received[0]
    assert b"\\Seen" not in flags
    sent = await _run(lambda: submission.imap_fetch(JEAN, "Sent"))
    assert len(sent) == 1 and b"\\Seen" in sent[0][0]
    assert sent[0][1] == raw


async def test_sender_over_quota_still_sends_without_a_sent_copy(submission: Submission) -> None:
    ops = Admin(submission.running.store, submission.running.settings, "test")
    await ops.set_quota(JEAN, "1")  # one byte: full as soon as it holds a message

    def send(sender: str, to: str) -> None:
        with submission.login(sender) as smtp:
            smtp.sendmail(sender, [to], message(sender, to))

    await _run(lambda: send(PAUL, JEAN))  # accepted while empty; now over quota
    await _run(lambda: send(JEAN, PAUL))
    assert len(await _run(lambda: submission.imap_fetch(PAUL))) == 1  # sent all the same
    assert await _run(lambda: submission.imap_fetch(JEAN, "Sent")) == []  # no copy kept


async def test_save_sent_off(store_url: str, write_config: ConfigWriter) -> None:
    async with running_submission(
        store_url, write_config, options="save_sent = false"
    ) as submission:

        def send() -> None:
            with submission.login(JEAN) as smtp:
                smtp.sendmail(JEAN, [PAUL], message(JEAN, PAUL))

        await _run(send)
        assert len(await _run(lambda: submission.imap_fetch(PAUL))) == 1
        assert await _run(lambda: submission.imap_fetch(JEAN, "Sent")) == []


# --- routing -----------------------------------------------------------------------------------


async def test_routing_at_rcpt(submission: Submission) -> None:
    def attempts() -> dict[str, tuple[int, bytes]]:
        with submission.login(JEAN) as smtp:
            smtp.docmd("MAIL", f"FROM:<{JEAN}>")
            return {
                address: smtp.docmd("RCPT", f"TO:<{address}>")
                for address in (
                    "someone@gmail.example",
                    f"unknown@{REMOTE_DOMAIN}",
                    f"nobody@{DOMAIN}",
                    "146026322000197@patient.mssante.test",  # wrong INS key
                    KNOWN_REMOTE,
                    PAUL,
                )
            }

    replies = await _run(attempts)
    assert replies["someone@gmail.example"] == (
        550,
        b"5.7.1 <someone@gmail.example>: domain gmail.example is not in the MSSante trust space",
    )
    assert replies[f"unknown@{REMOTE_DOMAIN}"][0] == 550
    assert replies[f"unknown@{REMOTE_DOMAIN}"][1].startswith(b"5.1.1 ")
    assert replies[f"nobody@{DOMAIN}"] == (
        550,
        f"5.1.1 <nobody@{DOMAIN}>: no such mailbox here".encode(),
    )
    assert replies["146026322000197@patient.mssante.test"][0] == 553
    assert replies[KNOWN_REMOTE] == (250, b"2.1.5 Recipient OK")
    assert replies[PAUL] == (250, b"2.1.5 Recipient OK")
    reasons = await submission.reasons()
    for reason in ("domain_not_whitelisted", "not_in_directory", "unknown_user", "bad_address"):
        assert reason in reasons


async def test_remote_and_local_recipients(submission: Submission) -> None:
    def send() -> dict[str, object]:
        with submission.login(JEAN) as smtp:
            return dict(
                smtp.sendmail(
                    JEAN,
                    [KNOWN_REMOTE, PAUL],
                    message(JEAN, f"{KNOWN_REMOTE}, {PAUL}"),
                    rcpt_options=["NOTIFY=SUCCESS,FAILURE", f"ORCPT=rfc822;{KNOWN_REMOTE}"],
                    mail_options=["RET=HDRS", "ENVID=abc123"],
                )
            )

    assert await _run(send) == {}
    (queued,) = await submission.queued()
    (recipient,) = queued.recipients
    assert (recipient.address, recipient.state) == (KNOWN_REMOTE, QueueState.QUEUED)
    assert recipient.notify == "FAILURE,SUCCESS"
    assert recipient.orcpt == f"rfc822;{KNOWN_REMOTE}"
    assert (queued.envelope_from, queued.ret, queued.envid) == (JEAN, "HDRS", "abc123")
    assert queued.submitter == JEAN
    content = await submission.queue.content(queued.id)
    assert queued.message_id == "<" + (queued.message_id or "").strip("<>") + ">"
    assert message_from_bytes(content)["Message-ID"] == queued.message_id
    assert content.startswith(b"Received: ")  # no [dkim] private_key here: not signed
    inbox = await _run(lambda: submission.imap_fetch(PAUL))
    assert len(inbox) == 1 and inbox[0][1] == content


async def test_too_many_recipients_and_too_big(submission: Submission) -> None:
    def attempts() -> tuple[tuple[int, bytes], int]:
        with submission.login(JEAN) as smtp:
            smtp.docmd("MAIL", f"FROM:<{JEAN}>")
            for _ in range(5):
                assert smtp.docmd("RCPT", f"TO:<{PAUL}>")[0] == 250
            sixth = smtp.docmd("RCPT", f"TO:<{PAUL}>")
            smtp.rset()
            try:
                smtp.sendmail(JEAN, [PAUL], message(JEAN, PAUL) + b"x" * 60_000 + b"\r\n")
            except smtplib.SMTPDataError as exc:
                return sixth, exc.smtp_code
            except smtplib.SMTPSenderRefused as exc:  # SIZE declared and refused at MAIL
                return sixth, exc.smtp_code
            return sixth, 250

    sixth, big = await _run(attempts)
    assert sixth == (452, b"4.5.3 Too many recipients")
    assert big == 552


# --- swaks (Debian package swaks) ---------------------------------------------------------------

needs_swaks = pytest.mark.skipif(
    # In CI a missing swaks is a failure, not a skip.
    shutil.which("swaks") is None and os.environ.get("CI") != "true",
    reason="swaks not installed (Debian package swaks; ./dev.sh test installs it)",
)


async def _swaks(submission: Submission, *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "swaks",
        "--server",
        "127.0.0.1",
        "--port",
        str(submission.port),
        "--tls",
        "--header",
        "Subject: swaks",
        "--body",
        "Bonjour",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    text = out.decode(errors="replace")
    assert process.returncode == 0, text
    return text


@needs_swaks
async def test_swaks_submits_with_auth_over_starttls(submission: Submission) -> None:
    out = await _swaks(
        submission,
        "--auth",
        "PLAIN",
        "--auth-user",
        CLAIRE,
        "--auth-password",
        PASSWORD,
        "--from",
        CLAIRE,
        "--to",
        PAUL,
    )
    assert "<~  235 2.7.0 Authentication successful" in out
    assert "<~  250 2.0.0 Ok: queued" in out
    inbox = await _run(lambda: submission.imap_fetch(PAUL))
    assert len(inbox) == 1 and message_from_bytes(inbox[0][1])["Subject"] == "swaks"


@needs_swaks
async def test_swaks_submits_with_a_client_certificate(submission: Submission) -> None:
    out = await _swaks(
        submission,
        "--tls-cert",
        str(FIXTURES / "pro-1.pem"),
        "--tls-key",
        str(FIXTURES / "pro-1.key"),
        "--from",
        JEAN,
        "--to",
        PAUL,
    )
    assert "<~  250 2.0.0 Ok: queued" in out
    inbox = await _run(lambda: submission.imap_fetch(PAUL))
    assert len(inbox) == 1 and message_from_bytes(inbox[0][1])["From"] == JEAN
    events = await submission.audit_events()
    logins = [d for e, o, d in events if e == "smtp.auth" and o == "ok"]
    assert logins[-1]["user"] == JEAN and logins[-1]["mechanism"] == "certificate"


async def test_certificate_without_mailbox_is_not_a_login(submission: Submission) -> None:
    def attempt() -> tuple[int, bytes]:
        with submission.starttls(cert="pro-2") as smtp:  # no mailbox for its national id
            return smtp.docmd("MAIL", f"FROM:<{JEAN}>")

    assert await _run(attempt) == (530, b"5.7.0 Authentication required")
    assert "no_mailbox" in await submission.reasons()
