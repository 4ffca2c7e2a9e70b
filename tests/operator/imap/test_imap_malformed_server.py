"""Bad input through the real server over real TLS, on SQLite and PostgreSQL: the parser's
corpus (`test_imap_malformed.CORPUS`) plus commands that only the server can judge (wrong
state, sequence numbers, unsupported forms, AUTHENTICATE and IDLE misuse, binary junk, over-long
lines, deep nesting). Each gets its BAD (or the documented NO) with its tag and the same session
answers the next NOOP; ten errors in a row end the session with `* BYE`; meanwhile another
user's session goes on untouched and the server keeps accepting connections."""

from __future__ import annotations

import asyncio
import random

from imap_client import Client
from test_imap_malformed import CORPUS
from test_imap_server import (  # the shared server fixture
    DOMAIN,
    PASSWORD,
    USER,
    Imap,
    imap,  # noqa: F401 - a fixture
)

from mssante.operator.passwords import hash_async
from mssante.operator.store import mailboxes
from mssante.operator.store.schema import MailboxType

OTHER = f"claire.durand@{DOMAIN}"
T = "t1"

# (wire, tag, the tagged answer's start) in a session logged in with INBOX selected (INBOX
# holds one message).
SELECTED: list[tuple[bytes, str | None, bytes]] = [
    (b"t1 XYZZY\r\n", T, b"BAD unknown command"),
    (b"t1 FROBNICATE INBOX\r\n", T, b"BAD unknown command"),
    (b"t1 STARTTLS\r\n", T, b"BAD TLS already active"),
    (b"t1 LOGIN a b\r\n", T, b"BAD already authenticated"),
    (b"t1 AUTHENTICATE PLAIN\r\n", T, b"BAD already authenticated"),
    (b"t1 SEARCH CHARSET KOI8-R ALL\r\n", T, b"NO [BADCHARSET (US-ASCII UTF-8)]"),
    (b"t1 COPY 1 Nulle-part\r\n", T, b"NO [TRYCREATE] no such mailbox"),
    (b"t1 STORE 1 +FLAGS (\\Bogus)\r\n", T, b"BAD invalid flag"),
    (b"t1 APPEND Nulle-part {1+}\r\nx\r\n", T, b"NO [TRYCREATE] no such mailbox"),
    (b"t1 APPEND INBOX (\\Bogus) {1+}\r\nx\r\n", T, b"BAD invalid flag"),
    (b"t1 APPEND INBOX {99999999}\r\n", T, b"NO [TOOBIG] too big: literal"),
    (b"t1 CREATE Shared/x\r\n", T, b"NO [CANNOT]"),
    (b"t1 CREATE INBOX\r\n", T, b"NO [ALREADYEXISTS]"),
    (b"t1 DELETE INBOX\r\n", T, b"NO [CANNOT]"),
    (b"t1 DELETE Nulle-part\r\n", T, b"NO [NONEXISTENT]"),
    (b"t1 RENAME INBOX INBOX/Sous\r\n", T, b"NO [CANNOT] invalid new name"),
    (b"t1 SUBSCRIBE Nulle-part\r\n", T, b"NO [NONEXISTENT]"),
    (b't1 SETQUOTA "" (STORAGE 1)\r\n', T, b"NO [NOPERM] quotas are set by the operator"),
    (b't1 GETQUOTA "#user/autre"\r\n', T, b"NO [NONEXISTENT] no such quota root"),
    (b"t1 FETCH 1 (FLAGS) (CHANGEDSINCE 1 VANISHED)\r\n", T, b"BAD"),
    (b"t1 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)\r\n", T, b"BAD VANISHED needs"),
    (b"t1 SEARCH RETURN (BOGUS) ALL\r\n", T, b"BAD"),
    (b"t1 SEARCH HEADER\r\n", T, b"BAD"),
    (b"t1 AUTHENTICATE EXTERNAL =\r\n", T, b"BAD already authenticated"),
    (b"t1 STATUS Shared/nobody@nowhere.test/INBOX (MESSAGES)\r\n", T, b"NO [NONEXISTENT]"),
    (b"t1 CREATE Shared/nobody@nowhere.test/Dossier\r\n", T, b"NO [CANNOT]"),
    (b"t1 CREATE &Jjo\r\n", T, b"BAD"),  # modified UTF-7 left open (rfc/3501 §5.1.3)
    (b"t1 CREATE &ZeVnLIqe\r\n", T, b"BAD"),
    (b"t1 CREATE &AEE-\r\n", T, b"BAD"),  # "A" encoded: not the canonical form
    (b"t1 SEARCH " + b"(" * 40 + b"ALL" + b")" * 40 + b"\r\n", T, b"BAD [TOOBIG] too big: depth"),
    (b"t1 SEARCH " + b"NOT " * 40 + b"ALL\r\n", T, b"BAD [TOOBIG] too big: depth"),
    (b"t1 NOOP " + b"x" * 70_000 + b"\r\n", T, b"BAD [TOOBIG] too big: line"),
    (b"t1 FETCH " + b"1," * 17_000 + b"1 FLAGS\r\n", T, b"BAD [TOOBIG] too big:"),
    (b"t1 LOGIN {5000+}\r\n" + b"x" * 5000 + b"\r\n", T, b"BAD [TOOBIG] too big: nonsync-literal"),
    (b"DONE\r\n", None, b"BAD"),  # DONE without IDLE
    (b"t1 \x00\x01\x02\xff\xfe\r\n", T, b"BAD"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n", None, b"BAD"),  # a TLS hello inside
    (b"GET / HTTP/1.1\r\n", "GET", b"BAD unknown command"),
    (b"t1 UID FETCH 1:* (FLAGS) (CHANGEDSINCE x)\r\n", T, b"BAD"),
    (b"t1 FETCH 1 BODY[1.2.3.4.5.6.7.8.9.10.11.12.13.14.15.16.17.18.19.20.21.22.23.24.25"
     b".26.27.28.29.30.31.32.33.34]\r\n", T, b"BAD [TOOBIG] too big: depth"),
]  # fmt: skip
for junk in range(5):
    noise = bytes(random.Random(junk).randrange(256) for _ in range(200))
    noise = noise.replace(b"\r", b"").replace(b"\n", b"").replace(b"{", b"")
    SELECTED.append((b"junk%d " % junk + noise + b"\r\n", f"junk{junk}", b"BAD"))

# Sent after LOGIN, before any SELECT.
AUTHENTICATED: list[tuple[bytes, str | None, bytes]] = [
    (b"t1 FETCH 1 FLAGS\r\n", T, b"BAD select a mailbox first"),
    (b"t1 STORE 1 +FLAGS (\\Seen)\r\n", T, b"BAD select a mailbox first"),
    (b"t1 SEARCH ALL\r\n", T, b"BAD select a mailbox first"),
    (b"t1 EXPUNGE\r\n", T, b"BAD select a mailbox first"),
    (b"t1 UID EXPUNGE 1\r\n", T, b"BAD select a mailbox first"),
    (b"t1 CLOSE\r\n", T, b"BAD select a mailbox first"),
    (b"t1 UNSELECT\r\n", T, b"BAD select a mailbox first"),
    (b"t1 COPY 1 INBOX\r\n", T, b"BAD select a mailbox first"),
    (b"t1 MOVE 1 INBOX\r\n", T, b"BAD select a mailbox first"),
    # A failed SELECT leaves no folder selected (rfc/3501 §6.3.1), so these come here.
    (b"t1 SELECT INBOX (QRESYNC (1 2))\r\n", T, b"BAD QRESYNC is not enabled"),
    (b"t1 SELECT Nulle-part\r\n", T, b"NO [NONEXISTENT] no such mailbox"),
]

# Sent before login.
ANONYMOUS: list[tuple[bytes, str | None, bytes]] = [
    (b"t1 SELECT INBOX\r\n", T, b"BAD log in first"),
    (b't1 LIST "" *\r\n', T, b"BAD log in first"),
    (b"t1 STATUS INBOX (MESSAGES)\r\n", T, b"BAD log in first"),
    (b"t1 APPEND INBOX {1+}\r\nx\r\n", T, b"BAD log in first"),
    (b"t1 APPEND INBOX {100000}\r\n", T, b"NO [TOOBIG] literal too large"),
    (b"t1 IDLE\r\n", T, b"BAD log in first"),
    (b"t1 ENABLE CONDSTORE\r\n", T, b"BAD log in first"),
    (b"t1 AUTHENTICATE CRAM-MD5\r\n", T, b"NO [CANNOT] unsupported mechanism"),
    (b"t1 AUTHENTICATE PLAIN !!!!\r\n", T, b"BAD"),
    (b"t1 AUTHENTICATE PLAIN\r\n*\r\n", T, b"BAD authentication cancelled"),
    (b"t1 AUTHENTICATE PLAIN\r\nnot base64 at all\r\n", T, b"BAD"),
    (b"t1 AUTHENTICATE PLAIN\r\nAGpvZQ==\r\n", T, b"BAD malformed PLAIN response (rfc 4616)"),
    (b"t1 AUTHENTICATE PLAIN AAAA\r\n", T, b"BAD malformed PLAIN response (rfc 4616)"),
]


async def _logged_in(server: Imap, name: str, user: str = USER) -> Client:
    client = await Client.connect(server.tls_port, server.context(), name)
    response = await client.command(f'LOGIN {user} "{PASSWORD}"')
    assert response.status == "OK", response.line
    return client


async def _answer(client: Client, wire: bytes, tag: str | None) -> bytes:
    """Send `wire`; return the answer carrying `tag` (or the untagged BAD), without the tag."""
    client.writer.write(wire)
    while True:
        line = await client.read_response()
        if tag is None and line.startswith(b"* BAD"):
            return line[2:]
        if tag is not None and line.startswith(tag.encode() + b" "):
            return line[len(tag) + 1 :]


async def _check(client: Client, cases: list[tuple[bytes, str | None, bytes]]) -> None:
    for n, (wire, tag, expected) in enumerate(cases):
        try:
            # A guard, not a timing check: a server that never answers fails here, by name.
            answer = await asyncio.wait_for(_answer(client, wire, tag), 30)
        except TimeoutError:
            raise AssertionError(f"no answer to {wire[:80]!r}") from None
        assert answer.startswith(expected), (wire[:80], answer)
        noop = await client.command("NOOP")  # the session goes on (and the error streak ends)
        assert noop.status == "OK", (n, wire[:80], noop.line)


async def _other_user_reads(other: Client) -> None:
    response = await other.command("FETCH 1:* (UID FLAGS)")
    assert response.status == "OK" and len(response.untagged) == 1, response


async def test_bad_input_answered_and_the_session_goes_on(imap: Imap) -> None:  # noqa: F811
    async with imap.running.store.session() as session:
        await mailboxes.create_mailbox(
            session, OTHER, MailboxType.PER, password_hash=await hash_async(PASSWORD)
        )
        await session.commit()
    other = await _logged_in(imap, "o", OTHER)
    assert (await other.command("APPEND INBOX {4+}\r\nA: b")).status == "OK"
    assert (await other.command("SELECT INBOX")).status == "OK"

    anonymous = await Client.connect(imap.tls_port, imap.context(), "a")
    await _check(anonymous, ANONYMOUS)
    await _other_user_reads(other)

    client = await _logged_in(imap, "c")
    await _check(client, AUTHENTICATED)
    assert (await client.command("APPEND INBOX {10+}\r\nSubject: x")).status == "OK"
    assert (await client.command("SELECT INBOX")).status == "OK"
    await _check(client, SELECTED)
    await _other_user_reads(other)
    await _check(client, [(wire, tag, b"BAD") for wire, tag in CORPUS])
    # IDLE ended by a line other than DONE: BAD, and the session goes on.
    await _check(client, [(b"t1 IDLE\r\nNOT DONE\r\n", T, b"BAD expected DONE")])
    assert len(SELECTED) + len(AUTHENTICATED) + len(ANONYMOUS) + len(CORPUS) >= 250
    await _other_user_reads(other)
    response = await client.command("FETCH 1 (UID)")
    assert response.status == "OK" and response.untagged == [b"* 1 FETCH (UID 1)\r\n"]
    for c in (anonymous, client):
        await c.close()

    # Ten errors in a row end the session (limits.max_errors); the others are unaffected.
    streak = await _logged_in(imap, "s")
    for n in range(9):
        assert (await _answer(streak, b"e%d XYZZY\r\n" % n, f"e{n}")).startswith(b"BAD")
    streak.writer.write(b"e9 XYZZY\r\n")
    assert await streak.read_response() == b"e9 BAD unknown command\r\n"
    assert await streak.read_response() == b"* BYE Too many errors, closing connection\r\n"
    assert await streak.reader.read() == b""
    await streak.close()
    await _other_user_reads(other)
    fresh = await _logged_in(imap, "f")
    assert (await fresh.command("NOOP")).status == "OK"
    for c in (fresh, other):
        await c.close()
    await asyncio.sleep(0)
