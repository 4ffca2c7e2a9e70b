"""The sans-IO IMAP command reader: bytes from the client in, events out.

The connection feeds whatever it received to `CommandReader.feed` and acts on the events:

- a `Command` (see `commands`): run it;
- `NeedContinuation(tag, size)`: the client sent a synchronising literal `{N}` and waits; send
  `+ Ready` (rfc/9051 §7.5), or answer the tag with NO/BAD and call `refuse_literal()`;
- `ParseError(tag, message)`: answer `<tag> BAD <message>` (`* BAD` when tag is None);
- `TooBig(tag, limit)`: a bound of `Limits` was exceeded; answer `BAD [TOOBIG]` (or `NO
  [TOOBIG]` for a literal over the APPENDLIMIT, rfc/7889 §4);
- `SaslResponse(tag, data)`: one client line of an AUTHENTICATE exchange (data None: the client
  cancelled with "*", rfc/9051 §6.2.2);
- `IdleDone(tag)`: the client ended IDLE (rfc/9051 §6.3.13).

An error event with `close=True` means the stream cannot be trusted any more (too many
consecutive errors, or a non-synchronising literal too big to skip): send `* BYE` and close.

Framing (rfc/9051 §4.3, rfc/7888 §3): a command is a line; when a line ends with `{N}`,
`{N+}` or `~{N}` outside a quoted string, N octets of literal follow, then the command goes on
with another line. A line ends at LF; a CR before it is dropped (clients that send bare LF are
tolerated; literal octets are counted, so this cannot be used to smuggle a line).

The reader pauses after AUTHENTICATE, IDLE and STARTTLS, because what the client sends next is
not a command: the server then calls `expect_sasl_response(tag)` (after each `+` challenge),
`expect_idle_done(tag)` (after `+ idling`), or `resume()` (when the exchange is over). Bytes
that arrive meanwhile wait in the buffer (`pending`); after STARTTLS the server must drop them
(`discard_pending()`), since they were sent in clear before the handshake (the command
injection of CVE-2011-0411 and rfc/9051 §11.1).
"""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass
from typing import Final

from mssante.operator.imap.commands import Authenticate, Command, Idle, StartTLS
from mssante.operator.imap.limits import DEFAULT_LIMITS, Limit, Limits
from mssante.operator.imap.parser import (
    CommandLimitError,
    CommandSyntaxError,
    decode_base64,
    parse_command,
    read_tag,
)


@dataclass(frozen=True, slots=True)
class NeedContinuation:
    """The client waits for `+` before sending a literal of `size` octets."""

    tag: str
    size: int


@dataclass(frozen=True, slots=True)
class ParseError:
    """A malformed command line: answer BAD; `close` says to send BYE and close."""

    tag: str | None
    message: str
    close: bool = False


@dataclass(frozen=True, slots=True)
class TooBig:
    """A bound was exceeded: answer BAD [TOOBIG] (or NO [TOOBIG]); `close` as for ParseError."""

    tag: str | None
    limit: Limit
    close: bool = False


@dataclass(frozen=True, slots=True)
class SaslResponse:
    """One base64 line of an AUTHENTICATE exchange, decoded; None when the client sent "*"."""

    tag: str
    data: bytes | None


@dataclass(frozen=True, slots=True)
class IdleDone:
    tag: str


Event = Command | NeedContinuation | ParseError | TooBig | SaslResponse | IdleDone

# A literal marker at the very end of a line: "{" digits ["+"] "}" (a "~" before it makes it a
# literal8, rfc/3516 §4.1, framed the same way).
_MARKER: Final = re.compile(rb"\{([0-9]+)(\+?)\}")
# A partial line over the bound is dropped, except this tail, enough to see a final marker.
_TAIL: Final = 32
_HUGE: Final = 2**40  # stands for a literal size with too many digits


class _Mode(enum.Enum):
    COMMAND = "command"
    SASL = "sasl"
    IDLE = "idle"
    PAUSED = "paused"
    CLOSED = "closed"


def _inside_quotes(line: bytes, end: int) -> bool:
    """Whether position `end` of `line` is inside a quoted string (rfc/9051 §4.3)."""
    inside = False
    i = 0
    while i < end:
        c = line[i]
        if inside and c == 0x5C:  # backslash escapes the next character inside quotes
            i += 2
            continue
        if c == 0x22:
            inside = not inside
        i += 1
    return inside


def trailing_literal(line: bytes) -> tuple[int, bool] | None:
    """(size, synchronising) of the literal announced at the end of `line`, if any."""
    if not line.endswith(b"}"):
        return None
    start = line.rfind(b"{")
    m = _MARKER.fullmatch(line, start) if start >= 0 else None
    if m is None:
        return None
    if b'"' in line[:start] and _inside_quotes(line, start):
        return None
    digits = m.group(1)
    size = int(digits) if len(digits) <= 12 else _HUGE
    return size, m.group(2) != b"+"


class CommandReader:
    """The state machine; see the module doc. Never raises on network input."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS, *, utf8: bool = False) -> None:
        self.limits = limits
        self.utf8 = utf8
        self._buf = bytearray()
        self._scan = 0  # the first `_scan` bytes of `_buf` hold no LF
        self._mode = _Mode.COMMAND
        self._mode_tag = ""  # the AUTHENTICATE or IDLE in progress
        self._errors = 0  # consecutive errors
        self._overlong = False  # dropping the rest of a line over the bound
        self._discarding = False  # dropping the rest of a refused command
        self._cmd = bytearray()
        self._started = False
        self._tag: str | None = None
        self._line_total = 0
        self._literal_total = 0
        self._literal_count = 0
        self._literal_left = 0

    # --- public API -------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self._mode is _Mode.PAUSED

    @property
    def closed(self) -> bool:
        return self._mode is _Mode.CLOSED

    @property
    def pending(self) -> int:
        """Bytes received but not yet read (non-zero after STARTTLS means injected data)."""
        return len(self._buf)

    def enable_utf8(self) -> None:
        """From now on mailbox names are UTF-8 (ENABLE UTF8=ACCEPT, rfc/6855 §3)."""
        self.utf8 = True

    def feed(self, data: bytes) -> list[Event]:
        """Take `data` from the connection; return the events it completes."""
        if self._mode is _Mode.CLOSED:
            return []
        self._buf += data
        events: list[Event] = []
        self._run(events)
        if self._mode is _Mode.PAUSED and len(self._buf) > self.limits.max_line:
            # The client keeps sending while we wait for the server: bound what we keep.
            self._buf.clear()
            events.append(TooBig(None, Limit.PENDING, close=True))
            self._mode = _Mode.CLOSED
        return events

    def resume(self) -> list[Event]:
        """Read commands again after a pause (AUTHENTICATE, IDLE or STARTTLS is over)."""
        self._require_paused()
        self._mode = _Mode.COMMAND
        return self._run([])

    def expect_sasl_response(self, tag: str) -> list[Event]:
        """The server sent a `+` challenge for AUTHENTICATE `tag`: read one base64 line."""
        self._require_paused()
        self._mode = _Mode.SASL
        self._mode_tag = tag
        return self._run([])

    def expect_idle_done(self, tag: str) -> list[Event]:
        """The server sent `+ idling` for IDLE `tag`: read the DONE line."""
        self._require_paused()
        self._mode = _Mode.IDLE
        self._mode_tag = tag
        return self._run([])

    def refuse_literal(self) -> None:
        """The server answered a `NeedContinuation` with a tagged NO/BAD instead of `+`: the
        client will not send the literal, and the command is dropped (rfc/9051 §7.5)."""
        if not self._started:
            raise RuntimeError("no command in progress")
        self._reset_command()

    def discard_pending(self) -> int:
        """Drop the bytes received but not read; return how many there were."""
        count = len(self._buf)
        self._buf.clear()
        self._scan = 0
        return count

    # --- machinery --------------------------------------------------------------------------

    def _require_paused(self) -> None:
        if self._mode is not _Mode.PAUSED:
            raise RuntimeError(f"the reader is not paused but {self._mode.value}")

    def _reset_command(self) -> None:
        self._cmd = bytearray()
        self._started = False
        self._tag = None
        self._line_total = 0
        self._literal_total = 0
        self._literal_count = 0
        self._literal_left = 0
        self._discarding = False

    def _error(self, events: list[Event], event: ParseError | TooBig) -> None:
        self._errors += 1
        if self._errors >= self.limits.max_errors and not event.close:
            event = dataclasses.replace(event, close=True)
        events.append(event)
        if event.close:
            self._mode = _Mode.CLOSED
            self._buf.clear()

    def _run(self, events: list[Event]) -> list[Event]:
        while self._mode not in (_Mode.PAUSED, _Mode.CLOSED):
            if self._literal_left:
                if not self._buf:
                    break
                n = min(self._literal_left, len(self._buf))
                if not self._discarding:
                    self._cmd += self._buf[:n]
                del self._buf[:n]
                self._literal_left -= n
                continue
            nl = self._buf.find(b"\n", self._scan)
            if nl < 0:
                self._scan = len(self._buf)
                self._partial_line(events)
                break
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            self._scan = 0
            if line.endswith(b"\r"):
                line = line[:-1]
            self._line(line, events)
        return events

    def _partial_line(self, events: list[Event]) -> None:
        """No LF yet: bound the line being received."""
        if self._mode is _Mode.PAUSED:
            return
        already = self._line_total if self._mode is _Mode.COMMAND else 0
        if not self._overlong and already + len(self._buf) <= self.limits.max_line:
            return
        if not self._overlong:
            self._overlong = True
            if self._mode is _Mode.COMMAND:
                if not self._discarding:
                    if not self._started:
                        self._tag = read_tag(bytes(self._buf[:256]))
                    self._discarding = True
                    self._started = True
                    self._error(events, TooBig(self._tag, Limit.LINE))
            else:
                self._error(events, TooBig(self._mode_tag, Limit.LINE))
        if len(self._buf) > _TAIL:
            del self._buf[:-_TAIL]
            self._scan = len(self._buf)

    def _line(self, line: bytes, events: list[Event]) -> None:
        if self._overlong:
            # The end of a line already refused (the event went out when it grew too long).
            self._overlong = False
            if self._mode is _Mode.COMMAND:
                self._discard_rest(line, events)
            elif self._mode is _Mode.SASL:
                self._mode = _Mode.PAUSED
            elif self._mode is _Mode.IDLE:
                self._mode = _Mode.COMMAND
            return
        if self._mode is _Mode.SASL:
            self._sasl_line(line, events)
        elif self._mode is _Mode.IDLE:
            self._idle_line(line, events)
        elif self._discarding:
            self._discard_rest(line, events)
        else:
            self._command_line(line, events)

    def _sasl_line(self, line: bytes, events: list[Event]) -> None:
        # rfc/9051 §6.2.2: each client line is base64 (empty for an empty response) or "*".
        tag = self._mode_tag
        self._mode = _Mode.PAUSED
        if len(line) > self.limits.max_line:
            self._error(events, TooBig(tag, Limit.LINE))
        elif line == b"*":
            events.append(SaslResponse(tag, None))
        else:
            data = decode_base64(line) if line else b""
            if data is None:
                self._error(events, ParseError(tag, "invalid base64 in SASL response"))
            else:
                events.append(SaslResponse(tag, data))

    def _idle_line(self, line: bytes, events: list[Event]) -> None:
        tag = self._mode_tag
        self._mode = _Mode.COMMAND
        if line.upper() == b"DONE":  # rfc/9051 §6.3.13, case-insensitive like every keyword
            events.append(IdleDone(tag))
        else:
            self._error(events, ParseError(tag, "expected DONE"))

    def _discard_rest(self, line: bytes, events: list[Event]) -> None:
        """The command was refused: drop its remaining lines and the literals the client sends
        without waiting (non-synchronising); a synchronising one ends it (no `+` will come)."""
        self._discarding = True
        self._started = True
        marker = trailing_literal(line)
        if marker is None or marker[1]:
            self._reset_command()
            return
        size = marker[0]
        if size > self.limits.max_literal:
            # Skipping that many octets would keep the connection busy for nothing.
            self._error(events, TooBig(self._tag, Limit.LITERAL, close=True))
            return
        self._literal_left = size

    def _command_line(self, line: bytes, events: list[Event]) -> None:
        if not self._started:
            self._started = True
            self._tag = read_tag(line)
            if self._tag is None:
                message = "empty command line" if not line else "missing or invalid tag"
                self._error(events, ParseError(None, message))
                self._discard_rest(line, events)
                return
        tag = self._tag
        assert tag is not None
        if self._line_total + len(line) > self.limits.max_line:
            self._error(events, TooBig(tag, Limit.LINE))
            self._discard_rest(line, events)
            return
        self._line_total += len(line)
        marker = trailing_literal(line)
        if marker is None:
            self._cmd += line
            self._cmd += b"\r\n"
            data = bytes(self._cmd)
            self._reset_command()
            self._complete(data, events)
            return
        size, sync = marker
        limits = self.limits
        over: Limit | None = None
        if self._literal_count >= limits.max_literals:
            over = Limit.LITERAL_COUNT
        elif size > limits.max_literal:
            over = Limit.LITERAL
        elif self._literal_total + size > limits.max_literal_total:
            over = Limit.LITERAL_TOTAL
        elif not sync and size > limits.max_nonsync_literal:
            over = Limit.NONSYNC_LITERAL  # rfc/7888 §4 (LITERAL-): BAD, then skip it
        if over is not None:
            if sync:
                # The client waits for "+" that will not come: the command ends here.
                self._error(events, TooBig(tag, over))
                self._reset_command()
            elif size > limits.max_literal:
                self._error(events, TooBig(tag, over, close=True))
            else:
                self._error(events, TooBig(tag, over))
                self._discarding = True
                self._literal_left = size
            return
        self._literal_count += 1
        self._literal_total += size
        self._cmd += line
        self._cmd += b"\r\n"
        self._literal_left = size
        if sync:
            events.append(NeedContinuation(tag, size))

    def _complete(self, data: bytes, events: list[Event]) -> None:
        try:
            command = parse_command(data, utf8=self.utf8, limits=self.limits)
        except CommandSyntaxError as exc:
            self._error(events, ParseError(exc.tag, exc.message))
            return
        except CommandLimitError as exc:
            self._error(events, TooBig(exc.tag, exc.limit))
            return
        self._errors = 0
        events.append(command)
        if isinstance(command, Authenticate | Idle | StartTLS):
            self._mode = _Mode.PAUSED
