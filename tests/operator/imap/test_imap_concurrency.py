"""Ten IMAP sessions on one mailbox doing random APPEND / STORE / EXPUNGE / MOVE / COPY / IDLE /
NOOP / SELECT at once, on SQLite and PostgreSQL. Every session keeps its own model of the
selected folder from the responses it receives (`imap_client.Client`); each FETCH response is
checked against that model as it arrives. At the end every session's view must equal a fresh
`UID FETCH 1:* (FLAGS)` and the store's rows; no UID handed out (APPENDUID, COPYUID) may have
been handed out twice, and a folder's MODSEQs never go backwards.

The random choices come from a seed printed at the start (`-s` shows it); set
`MSSANTE_IMAP_CONCURRENCY_SEED` to replay one."""

from __future__ import annotations

import asyncio
import os
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from imap_client import APPENDUID, COPYUID, HIGHESTMODSEQ, Client, ProtocolViolationError, uid_set
from test_imap_server import (  # the shared server fixture
    PASSWORD,
    USER,
    Imap,
    imap,  # noqa: F401 - a fixture
)

from mssante.operator.imap import queries
from mssante.operator.store import folders as store_folders

SESSIONS = 10
# Seconds of random traffic. PostgreSQL gets half: its commits are slower on the shared test
# machine and 15 s already makes thousands of interleaved writes.
DURATION_SECONDS = {"sqlite": 30.0, "postgresql": 15.0}
FOLDERS = ("INBOX", "Archive", "Projets")
FLAGS = ("\\Seen", "\\Flagged", "\\Answered", "\\Draft", "$Important", "$Label1")


@dataclass
class Ledger:
    """Every UID the server said it assigned, per folder, in the order each session saw them."""

    handed_out: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    operations: Counter[str] = field(default_factory=Counter)

    def record(self, client: Client, folder: str, uids: list[int], last: dict[str, int]) -> None:
        # A session's commands run one after the other, so the UIDs it is given in a folder
        # ascend (rfc/3501 §2.3.1.1: strictly ascending, never reused).
        for uid in uids:
            if uid <= last.get(folder, 0):
                raise ProtocolViolationError(f"{client.name}: UID {uid} in {folder} not ascending")
            last[folder] = uid
        self.handed_out[folder].extend(uids)


def _message(rng: random.Random, name: str, n: int) -> bytes:
    body = b"ligne de texte\r\n" * rng.randint(1, 40)
    return (
        f"From: {name} <{name}@hopital-x.mssante.test>\r\n"
        f"To: {USER}\r\nSubject: message {n} de {name}\r\n"
        f"Message-ID: <{name}-{n}@hopital-x.mssante.test>\r\n\r\n"
    ).encode() + body


def _set(rng: random.Random, count: int) -> str:
    first = rng.randint(1, count)
    last = min(count, first + rng.randint(0, 3))
    return f"{first}:{last}" if last > first else str(first)


async def _login(server: Imap, name: str) -> Client:
    client = await Client.connect(server.tls_port, server.context(), name)
    response = await client.command(f'LOGIN {USER} "{PASSWORD}"')
    assert response.status == "OK", response.line
    return client


async def _expect_ok(client: Client, command: str | bytes) -> tuple[list[bytes], bytes]:
    response = await client.command(command)
    if response.status != "OK":
        raise ProtocolViolationError(f"{client.name}: {command!r} → {response.line!r}")
    return response.untagged, response.line


class Worker:
    def __init__(self, client: Client, rng: random.Random, ledger: Ledger) -> None:
        self.client = client
        self.rng = rng
        self.ledger = ledger
        self.last_uid: dict[str, int] = {}
        self.highest_seen: dict[str, int] = {}  # per folder, the largest MODSEQ observed
        self.appended = 0

    def _note_modseqs(self) -> None:
        folder = self.client.selected
        if folder is None:
            return
        top = max(self.client.modseqs.values(), default=0)
        self.highest_seen[folder] = max(self.highest_seen.get(folder, 0), top)

    async def select(self, folder: str) -> None:
        response = await self.client.select(folder)
        assert response.status == "OK", response.line
        found = response.code(HIGHESTMODSEQ)
        assert found is not None, response.untagged
        highest = int(found.group(1))
        # rfc/7162 §3.1.2.1: HIGHESTMODSEQ never goes down.
        if highest < self.highest_seen.get(folder, 0):
            raise ProtocolViolationError(f"{self.client.name}: HIGHESTMODSEQ of {folder} went down")
        self.highest_seen[folder] = highest
        await self.client.learn_new()

    async def run(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        await self.select(self.rng.choice(FOLDERS))
        operations = (
            (self.append, 25),
            (self.store, 20),
            (self.expunge, 10),
            (self.move, 10),
            (self.copy, 5),
            (self.idle, 10),
            (self.noop, 8),
            (self.check_view, 7),
            (self.reselect, 5),
        )
        functions = [f for f, _ in operations]
        weights = [w for _, w in operations]
        while loop.time() < deadline:
            operation = self.rng.choices(functions, weights)[0]
            await operation()
            self.ledger.operations[operation.__name__] += 1
            await self.client.learn_new()
            self._note_modseqs()

    async def append(self) -> None:
        folder = self.rng.choice(FOLDERS)
        self.appended += 1
        data = _message(self.rng, self.client.name, self.appended)
        flags = " ".join(self.rng.sample(FLAGS, self.rng.randint(0, 2)))
        # LITERAL- (rfc/7888): a non-synchronising literal up to 4096 octets.
        command = f'APPEND "{folder}" ({flags}) {{{len(data)}+}}\r\n'.encode() + data
        _, line = await _expect_ok(self.client, command)
        found = APPENDUID.search(line)
        assert found is not None, line
        self.ledger.record(self.client, folder, uid_set(found.group(2)), self.last_uid)

    async def store(self) -> None:
        count = len(self.client.uids)
        if not count:
            return
        action = self.rng.choice(("+FLAGS", "-FLAGS", "FLAGS"))
        flags = " ".join(self.rng.sample(FLAGS, self.rng.randint(1, 3)))
        if self.rng.random() < 0.5:
            uids = self.client.view()
            await _expect_ok(self.client, f"UID STORE {self.rng.choice(uids)} {action} ({flags})")
        else:
            await _expect_ok(self.client, f"STORE {_set(self.rng, count)} {action} ({flags})")

    async def expunge(self) -> None:
        count = len(self.client.uids)
        if not count:
            return
        await _expect_ok(self.client, f"STORE {_set(self.rng, count)} +FLAGS.SILENT (\\Deleted)")
        # STORE may report new messages (EXISTS, rfc/3501 §7.4.1 allows it): learn their UIDs.
        await self.client.learn_new()
        if self.rng.random() < 0.5:
            await _expect_ok(self.client, "EXPUNGE")
        else:
            uid = self.rng.choice(self.client.view())
            await _expect_ok(self.client, f"UID EXPUNGE {uid}")

    async def _transfer(self, verb: str) -> None:
        source = self.client.selected
        count = len(self.client.uids)
        if not count or source is None:
            return
        choices = [f for f in FOLDERS if f != source] if verb == "MOVE" else list(FOLDERS)
        target = self.rng.choice(choices)
        untagged, line = await _expect_ok(self.client, f'{verb} {_set(self.rng, count)} "{target}"')
        found = COPYUID.search(line) or next(
            (m for u in untagged if (m := COPYUID.search(u))), None
        )
        if found is not None:
            self.ledger.record(self.client, target, uid_set(found.group(3)), self.last_uid)

    async def move(self) -> None:
        await self._transfer("MOVE")

    async def copy(self) -> None:
        await self._transfer("COPY")

    async def idle(self) -> None:
        client = self.client
        tag = f"{client.name}idle{self.rng.randrange(10**6)}"
        client.writer.write(f"{tag} IDLE\r\n".encode())
        while True:
            line = await client.read_response()
            if line.startswith(b"+"):
                break
            client.observe(line)
        loop = asyncio.get_running_loop()
        end = loop.time() + self.rng.uniform(0.1, 1.0)
        while (remaining := end - loop.time()) > 0:
            try:
                # Pushes are single lines (EXISTS, EXPUNGE): cancelling the read loses nothing.
                line = await asyncio.wait_for(client.reader.readuntil(b"\r\n"), remaining)
            except TimeoutError:
                break
            client.observe(line)
        client.writer.write(b"DONE\r\n")
        response = await client.until_tagged(tag)
        assert response.status == "OK", response.line

    async def noop(self) -> None:
        await _expect_ok(self.client, "NOOP")

    async def check_view(self) -> None:
        """The server's numbering is the model's: every FETCH response is checked by
        `observe` (a message expunged elsewhere may be left out, rfc/3501 §7.4.1)."""
        if self.client.uids:
            await _expect_ok(self.client, "FETCH 1:* (UID FLAGS)")

    async def reselect(self) -> None:
        await self.select(self.rng.choice(FOLDERS))


_FETCHED = re.compile(rb"\* (\d+) FETCH \(UID (\d+) FLAGS \(([^)]*)\)")


async def test_ten_sessions_agree_with_the_store(imap: Imap, store_url: str) -> None:  # noqa: F811
    kind = "sqlite" if store_url.startswith("sqlite") else "postgresql"
    seed = int(os.environ.get("MSSANTE_IMAP_CONCURRENCY_SEED", random.randrange(2**32)))
    print(f"concurrency seed {seed} ({kind})")
    ledger = Ledger()
    setup = await _login(imap, "setup")
    await _expect_ok(setup, 'CREATE "Projets"')
    setup_last: dict[str, int] = {}
    rng = random.Random(seed)
    for folder in FOLDERS:
        for n in range(5):
            data = _message(rng, "setup", n)
            command = f'APPEND "{folder}" () {{{len(data)}+}}\r\n'.encode() + data
            _, line = await _expect_ok(setup, command)
            found = APPENDUID.search(line)
            assert found is not None
            ledger.record(setup, folder, uid_set(found.group(2)), setup_last)
    await setup.close()

    clients = [await _login(imap, f"s{i}_") for i in range(SESSIONS)]
    workers = [Worker(c, random.Random(seed * 1000 + i), ledger) for i, c in enumerate(clients)]
    deadline = asyncio.get_running_loop().time() + DURATION_SECONDS[kind]
    await asyncio.gather(*(w.run(deadline) for w in workers))
    print(f"operations: {dict(ledger.operations)}")
    assert ledger.operations["append"] > SESSIONS and ledger.operations["move"] > 0

    store = imap.running.store
    async with store.read_session() as session:
        account = await queries.find_account(session, USER)
        assert account is not None
        folders = {f.name: f for f in await store_folders.list_folders(session, account.mailbox_id)}
        stored: dict[str, dict[int, frozenset[str]]] = {}
        modseqs: dict[str, list[int]] = {}
        for name in FOLDERS:
            uids = await queries.folder_uids(session, folders[name].id)
            rows = await queries.fetch_messages(
                session, store.cipher, folders[name].id, uids, body=False, structure=False
            )
            stored[name] = {m.state.uid: frozenset(m.state.flags) for m in rows}
            modseqs[name] = [m.state.modseq for m in rows]

    for name in FOLDERS:
        handed = ledger.handed_out[name]
        repeated = [uid for uid, times in Counter(handed).items() if times > 1]
        assert repeated == [], f"{name}: UIDs handed out twice: {repeated}"
        # Every stored message came from an APPEND, COPY or MOVE that reported its UID.
        assert set(stored[name]) <= set(handed), set(stored[name]) - set(handed)
        assert folders[name].uidnext > max(handed)
        assert max(modseqs[name], default=0) <= folders[name].highest_modseq

    for worker in workers:
        client = worker.client
        await _expect_ok(client, "NOOP")
        await client.learn_new()
        view = client.view()
        assert client.selected is not None
        untagged, _ = await _expect_ok(client, "UID FETCH 1:* (FLAGS)")
        fetched = [m for line in untagged if (m := _FETCHED.match(line))]
        assert [int(m.group(1)) for m in fetched] == list(range(1, len(view) + 1))
        assert [int(m.group(2)) for m in fetched] == view == sorted(stored[client.selected])
        flags = {int(m.group(2)): frozenset(m.group(3).decode().split()) for m in fetched}
        assert flags == stored[client.selected]
        assert {u: client.flags[u] for u in view} == flags
        await _expect_ok(client, "LOGOUT")
        await client.close()
