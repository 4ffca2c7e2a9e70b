"""Helpers shared by the IMAP protocol tests: drive a `CommandReader` like a connection would."""

from __future__ import annotations

from collections.abc import Iterable

from mssante.operator.imap.commands import Authenticate, Command, Idle, StartTLS
from mssante.operator.imap.reader import CommandReader, Event, NeedContinuation


def drive(reader: CommandReader, chunks: Iterable[bytes]) -> list[Event]:
    """Feed `chunks`; after AUTHENTICATE/IDLE/STARTTLS resume at once, as a server would that
    refuses them; collect every event."""
    events: list[Event] = []
    for chunk in chunks:
        new = reader.feed(chunk)
        while True:
            events.extend(new)
            if reader.paused and any(isinstance(e, Authenticate | Idle | StartTLS) for e in new):
                new = reader.resume()
                continue
            break
    return events


def commands_of(data: bytes, *, utf8: bool = False) -> list[Event]:
    """Events of `data` fed at once, without the continuation requests."""
    events = drive(CommandReader(utf8=utf8), [data])
    return [e for e in events if not isinstance(e, NeedContinuation)]


def one_command(data: bytes, *, utf8: bool = False) -> Command:
    events = commands_of(data, utf8=utf8)
    assert len(events) == 1, events
    assert isinstance(events[0], Command), events[0]
    return events[0]
