"""Structured logs: one line per event, `key=value` or JSON, with the session id on every line.

A session id is bound for the duration of a connection (`bind_session`) through a context
variable, so every line logged while serving that connection carries it, whichever module logs.
Message bodies and passwords are never passed to a logger: log the facts (sizes, ids, codes).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import secrets
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

_session: contextvars.ContextVar[str] = contextvars.ContextVar("mssante_session", default="-")

# Attributes every LogRecord has; anything else was passed through `extra=` and is a field.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def new_session_id() -> str:
    """Short, unguessable, log-safe: 12 URL-safe characters."""
    return secrets.token_urlsafe(9)


@contextlib.contextmanager
def bind_session(session_id: str | None = None) -> Iterator[str]:
    """Tag every log line emitted inside the block (and tasks it starts) with a session id."""
    sid = session_id or new_session_id()
    token = _session.set(sid)
    try:
        yield sid
    finally:
        _session.reset(token)


def current_session() -> str:
    return _session.get()


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname.lower(),
        "logger": record.name,
        "session": _session.get(),
        "msg": record.getMessage(),
    }
    for key, value in record.__dict__.items():
        if key not in _STANDARD and not key.startswith("_"):
            fields[key] = value
    if record.exc_info and record.exc_info[0] is not None:
        fields["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), ensure_ascii=False, default=str)


def _kv_value(value: object) -> str:
    text = str(value)
    if text and not any(c in text for c in ' ="\n\t\\'):
        return text
    return json.dumps(text, ensure_ascii=False)


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_kv_value(v)}" for k, v in _fields(record).items())


def setup(fmt: str = "kv", level: str = "info", stream: TextIO | None = None) -> None:
    """Install the formatter on the root logger (idempotent: replaces our previous handler)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    handler.set_name("mssante")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "mssante"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Library chatter (SQL statements, HTTP requests) is not ours to print at info.
    for noisy in ("sqlalchemy", "aiosqlite", "httpx", "httpcore", "asyncio", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def event(logger: logging.Logger, msg: str, /, **fields: object) -> None:
    """Log at info with structured fields: `event(log, "listener started", port=25)`."""
    logger.info(msg, extra=_safe(fields))


def _safe(fields: Mapping[str, object]) -> dict[str, object]:
    # A field must not shadow a LogRecord attribute (logging raises KeyError on that).
    return {(f"{k}_" if k in _STANDARD else k): v for k, v in fields.items()}
