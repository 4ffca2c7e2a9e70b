"""A small asyncio IMAP client for the tests that need every response in order: it keeps its
own model of the selected folder (sequence number → UID, flags) from the untagged responses it
receives (EXISTS, EXPUNGE, FETCH), as a real client must (rfc/3501 §7.4.1, §7.3.1)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from dataclasses import dataclass, field

_LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")
_EXISTS = re.compile(rb"\* (\d+) EXISTS\r\n$")
_EXPUNGE = re.compile(rb"\* (\d+) EXPUNGE\r\n$")
_FETCH = re.compile(rb"\* (\d+) FETCH \((.*)\)\r\n$", re.S)
_UID = re.compile(rb"\bUID (\d+)")
_FLAGS = re.compile(rb"\bFLAGS \(([^)]*)\)")
_MODSEQ = re.compile(rb"\bMODSEQ \((\d+)\)")
_APPENDUID = re.compile(rb"\[APPENDUID (\d+) ([\d:,]+)\]")
_COPYUID = re.compile(rb"\[COPYUID (\d+) ([\d:,]+) ([\d:,]+)\]")
_HIGHESTMODSEQ = re.compile(rb"\[HIGHESTMODSEQ (\d+)\]")


def uid_set(text: bytes) -> list[int]:
    """The UIDs of a uid-set as sent in APPENDUID/COPYUID, in the order given (rfc/4315 §3)."""
    out: list[int] = []
    for part in text.split(b","):
        lo, _, hi = part.partition(b":")
        a, b = int(lo), int(hi or lo)
        out.extend(range(a, b + 1) if a <= b else range(a, b - 1, -1))
    return out


class ProtocolViolationError(AssertionError):
    """The server sent something a correct server cannot send at this point."""


@dataclass
class Response:
    untagged: list[bytes]
    status: str  # OK, NO or BAD
    line: bytes  # the whole tagged line

    def code(self, pattern: re.Pattern[bytes]) -> re.Match[bytes] | None:
        for line in [*self.untagged, self.line]:
            found = pattern.search(line)
            if found:
                return found
        return None


@dataclass
class Client:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    name: str = "c"
    uids: list[int | None] = field(default_factory=list)  # sequence number n → uids[n - 1]
    flags: dict[int, frozenset[str]] = field(default_factory=dict)
    modseqs: dict[int, int] = field(default_factory=dict)
    selected: str | None = None
    _tags: int = 0

    @classmethod
    async def connect(cls, port: int, context: ssl.SSLContext, name: str = "c") -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        client = cls(reader, writer, name)
        greeting = await client.read_response()
        if not greeting.startswith(b"* OK"):
            raise ProtocolViolationError(greeting)
        return client

    async def read_response(self) -> bytes:
        """One response with its literals inlined."""
        parts: list[bytes] = []
        while True:
            line = await self.reader.readuntil(b"\r\n")
            parts.append(line)
            size = _LITERAL.search(line)
            if size is None:
                return b"".join(parts)
            parts.append(await self.reader.readexactly(int(size.group(1))))

    def _tag(self) -> str:
        self._tags += 1
        return f"{self.name}{self._tags}"

    async def command(self, text: str | bytes) -> Response:
        tag = self._tag()
        raw = text.encode() if isinstance(text, str) else text
        self.writer.write(tag.encode() + b" " + raw + b"\r\n")
        return await self.until_tagged(tag)

    async def until_tagged(self, tag: str) -> Response:
        untagged: list[bytes] = []
        prefix = tag.encode() + b" "
        while True:
            line = await self.read_response()
            if line.startswith(prefix):
                status = line[len(prefix) :].split(b" ", 1)[0].decode()
                return Response(untagged, status, line)
            untagged.append(line)
            self.observe(line)

    # --- the model ----------------------------------------------------------------------------

    def observe(self, line: bytes) -> None:
        """Apply one untagged response to the model of the selected folder."""
        if self.selected is None:
            return
        if m := _EXISTS.match(line):
            n = int(m.group(1))
            if n < len(self.uids):  # rfc/3501 §7.3.1: only EXPUNGE makes the count go down
                raise ProtocolViolationError(f"{self.name}: EXISTS {n} below {len(self.uids)}")
            self.uids.extend([None] * (n - len(self.uids)))
        elif m := _EXPUNGE.match(line):
            n = int(m.group(1))
            if not 1 <= n <= len(self.uids):
                raise ProtocolViolationError(f"{self.name}: EXPUNGE {n} of {len(self.uids)}")
            uid = self.uids.pop(n - 1)
            if uid is not None:
                self.flags.pop(uid, None)
        elif m := _FETCH.match(line):
            n = int(m.group(1))
            if not 1 <= n <= len(self.uids):
                raise ProtocolViolationError(f"{self.name}: FETCH {n} of {len(self.uids)}")
            body = m.group(2)
            uid_match = _UID.search(body)
            known = self.uids[n - 1]
            if uid_match is not None:
                uid = int(uid_match.group(1))
                if known is not None and known != uid:
                    raise ProtocolViolationError(f"{self.name}: {n} is UID {known}, not {uid}")
                neighbours = [u for u in self.uids if u is not None]
                if known is None and uid in neighbours:
                    raise ProtocolViolationError(f"{self.name}: UID {uid} twice in the view")
                self.uids[n - 1] = uid
                known = uid
            if known is None:
                return
            flags = _FLAGS.search(body)
            if flags is not None:
                self.flags[known] = frozenset(flags.group(1).decode().split())
            modseq = _MODSEQ.search(body)
            if modseq is not None:
                self.modseqs[known] = int(modseq.group(1))

    async def select(self, folder: str) -> Response:
        self.selected = folder
        self.uids, self.flags, self.modseqs = [], {}, {}
        response = await self.command(f'SELECT "{folder}" (CONDSTORE)')
        if response.status != "OK":
            self.selected = None
        return response

    async def learn_new(self) -> None:
        """Ask for the UIDs and flags of the messages the model knows only by number, as a
        client does after EXISTS."""
        while None in self.uids:
            unknown = self.uids.count(None)
            first = self.uids.index(None) + 1
            response = await self.command(f"FETCH {first}:{len(self.uids)} (UID FLAGS)")
            if response.status != "OK":
                raise ProtocolViolationError(f"{self.name}: {response.line!r}")
            if self.uids.count(None) == unknown:
                # Expunged by another session before we learnt its UID: the server leaves
                # it out of FETCH (rfc/3501 §7.4.1) and reports the EXPUNGE at the next NOOP.
                await self.command("NOOP")

    def view(self) -> list[int]:
        if None in self.uids:
            raise ProtocolViolationError(f"{self.name}: unknown UIDs in the view")
        return [u for u in self.uids if u is not None]

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


APPENDUID = _APPENDUID
COPYUID = _COPYUID
HIGHESTMODSEQ = _HIGHESTMODSEQ
