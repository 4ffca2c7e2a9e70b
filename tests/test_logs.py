"""Structured logs: one line per event, the session id on every line, fields kept apart."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest

from mssante import logs


@pytest.fixture
def stream() -> io.StringIO:
    out = io.StringIO()
    logs.setup("json", "debug", out)
    return out


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_session_and_fields(stream: io.StringIO) -> None:
    log = logging.getLogger("mssante.test")
    logs.event(log, "outside")
    with logs.bind_session("abc123"):
        logs.event(log, "inside", peer="192.0.2.1", size=42, msg_id="x")
    first, second = lines(stream)
    assert first["session"] == "-" and first["msg"] == "outside"
    assert second["session"] == "abc123"
    assert (second["peer"], second["size"], second["level"]) == ("192.0.2.1", 42, "info")


def test_field_names_that_clash_with_logging_are_kept(stream: io.StringIO) -> None:
    logs.event(logging.getLogger("mssante.test"), "clash", name="value", module="m")
    (line,) = lines(stream)
    assert line["name_"] == "value" and line["module_"] == "m"


async def test_session_id_follows_tasks_and_does_not_leak(stream: io.StringIO) -> None:
    log = logging.getLogger("mssante.test")

    async def session(sid: str) -> None:
        with logs.bind_session(sid):
            await asyncio.sleep(0)
            await asyncio.create_task(asyncio.sleep(0))
            logs.event(log, "work", who=sid)

    await asyncio.gather(session("s1"), session("s2"))
    logs.event(log, "after")
    got = {(line["msg"], line["session"], line.get("who")) for line in lines(stream)}
    assert got == {("work", "s1", "s1"), ("work", "s2", "s2"), ("after", "-", None)}


def test_key_value_format_quotes_what_needs_it() -> None:
    out = io.StringIO()
    logs.setup("kv", "info", out)
    with logs.bind_session("s9"):
        logs.event(logging.getLogger("mssante.test"), "two words", reason='say "no"\nnow')
    line = out.getvalue()
    assert line.count("\n") == 1  # a newline in a value cannot forge a second line
    assert 'msg="two words"' in line and "session=s9" in line
    assert r'reason="say \"no\"\nnow"' in line


def test_exceptions_are_one_field_not_a_traceback(stream: io.StringIO) -> None:
    try:
        raise ValueError("bad thing")
    except ValueError:
        logging.getLogger("mssante.test").exception("failed")
    (line,) = lines(stream)
    assert line["error"] == "ValueError: bad thing"


def test_session_ids_are_unique_and_short() -> None:
    ids = {logs.new_session_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 12 for i in ids)
