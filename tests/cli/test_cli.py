"""The `mssante` command, run in-process through `main(argv)` on SQLite and PostgreSQL.

Every refusal is one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mssante.cli import main

ConfigWriter = Callable[..., Path]  # the `write_config` fixture of tests/conftest.py

FIXTURES = Path(__file__).parents[2] / "tls-fixtures"
PATIENT = "146026322000196@patient.mssante.test"


@dataclass
class Cli:
    config: Path
    capsys: pytest.CaptureFixture[str]
    monkeypatch: pytest.MonkeyPatch

    def __call__(self, *argv: str, stdin: str | None = None) -> tuple[int, str, str]:
        if stdin is not None:
            self.monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = main(["--config", str(self.config), *argv])
        out, err = self.capsys.readouterr()
        return code, out, err

    def ok(self, *argv: str, stdin: str | None = None) -> str:
        code, out, err = self(*argv, stdin=stdin)
        assert code == 0, err
        return out

    def refused(self, *argv: str, stdin: str | None = None) -> str:
        code, out, err = self(*argv, stdin=stdin)
        assert code == 1, (out, err)
        assert err.startswith("mssante: error: ")
        assert err.count("\n") == 1 and "Traceback" not in err
        return err


@pytest.fixture
def cli(
    store_url: str,
    write_config: ConfigWriter,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Cli]:
    yield Cli(write_config(database_url=store_url), capsys, monkeypatch)


@pytest.fixture
def ready(cli: Cli) -> Cli:
    cli.ok("db", "upgrade")
    cli.ok("domain", "add", "Test.MSSante.test")
    cli.ok("domain", "add", "patient.mssante.test")
    return cli


def test_outdated_schema_is_refused_with_the_fix(cli: Cli) -> None:
    code, out, _ = cli("db", "status")
    assert code == 1 and "OUTDATED: run `mssante db upgrade`" in out
    err = cli.refused("mailbox", "list")
    assert "mssante db upgrade" in err
    assert "database at revision" in cli.ok("db", "upgrade")
    assert "up to date" in cli.ok("db", "status")
    cli.ok("db", "upgrade")  # idempotent


def test_domains(ready: Cli) -> None:
    assert ready.ok("domain", "list").split() == ["patient.mssante.test", "test.mssante.test"]
    assert "already hosted" in ready.refused("domain", "add", "test.mssante.test")
    assert "not a valid domain name" in ready.refused("domain", "add", "bad_domain")


def test_mailbox_of_every_type(ready: Cli) -> None:
    pw = "correct horse battery"
    ready.ok(
        "mailbox",
        "add",
        "Jean.Dupont@test.mssante.test",
        "--type",
        "per",
        "--national-id",
        "810001234567",
        "--name",
        "Dr Jean DUPONT",
        "--password-stdin",
        stdin=pw + "\n",
    )
    ready.ok(
        "mailbox", "add", "cardio@test.mssante.test", "--type", "ORG", "--national-id", "1750712184"
    )
    ready.ok("mailbox", "add", "dpi@test.mssante.test", "--type", "APP")
    ready.ok("mailbox", "add", "cabinet@test.mssante.test", "--type", "CAB")
    out = ready.ok("mailbox", "add", PATIENT, "--type", "PATIENT", "--generate-password")
    assert "pending" in out and "password: " in out
    rows = json.loads(ready.ok("mailbox", "list", "--json"))
    assert {(r["address"], r["type"], r["state"]) for r in rows} == {
        ("jean.dupont@test.mssante.test", "PER", "active"),
        ("cardio@test.mssante.test", "ORG", "active"),
        ("dpi@test.mssante.test", "APP", "active"),
        ("cabinet@test.mssante.test", "CAB", "active"),
        (PATIENT, "PATIENT", "pending"),
    }
    assert [r["national_id"] for r in rows if r["type"] == "PATIENT"] == ["146026322000196"]
    shown = json.loads(ready.ok("mailbox", "show", "jean.dupont@test.mssante.test"))
    assert shown["password_login"] is True
    assert shown["messages"] == 0 and all(f["messages"] == 0 for f in shown["folders"])
    assert {f["name"] for f in shown["folders"]} == {
        "INBOX",
        "Sent",
        "Drafts",
        "Trash",
        "Junk",
        "Archive",
    }
    assert len(ready.ok("mailbox", "list", "--type", "PER").splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["146026322000197@patient.mssante.test", "--type", "PATIENT"], "wrong key"),
        (["12345@patient.mssante.test", "--type", "PATIENT"], "wrong length"),
        (["jean@test.mssante.test", "--type", "PATIENT"], "must be <INS>@patient"),
        ([PATIENT, "--type", "PER", "--national-id", "810001234567"], "only holds PATIENT"),
        (["jean@test.mssante.test", "--type", "PER"], "needs --national-id"),
        (["jean@test.mssante.test", "--type", "PER", "--national-id", "123"], "RPPS"),
        (
            ["org@test.mssante.test", "--type", "ORG", "--national-id", "373282932000075"],
            "control key",
        ),
        (["jean@elsewhere.mssante.test", "--type", "APP"], "not hosted"),
        (["not-an-address", "--type", "APP"], "expected local-part@domain"),
        (
            ["app@test.mssante.test", "--type", "APP", "--state", "pending"],
            "PATIENT mailboxes only",
        ),
    ],
)
def test_mailbox_add_refusals(ready: Cli, argv: list[str], message: str) -> None:
    assert message in ready.refused("mailbox", "add", *argv)
    assert ready.ok("mailbox", "list") == ""


def test_duplicate_mailbox(ready: Cli) -> None:
    ready.ok("mailbox", "add", "dpi@test.mssante.test", "--type", "APP")
    assert "already exists" in ready.refused(
        "mailbox", "add", "DPI@test.mssante.test", "--type", "APP"
    )


def test_password_policy_and_change(ready: Cli) -> None:
    assert "too short" in ready.refused(
        "mailbox",
        "add",
        "dpi@test.mssante.test",
        "--type",
        "APP",
        "--password-stdin",
        stdin="short\n",
    )
    ready.ok("mailbox", "add", "dpi@test.mssante.test", "--type", "APP")
    shown = json.loads(ready.ok("mailbox", "show", "dpi@test.mssante.test"))
    assert shown["password_login"] is False
    ready.ok(
        "mailbox",
        "passwd",
        "dpi@test.mssante.test",
        "--password-stdin",
        stdin="a long enough password\n",
    )
    assert json.loads(ready.ok("mailbox", "show", "dpi@test.mssante.test"))["password_login"]
    assert "does not exist" in ready.refused(
        "mailbox",
        "passwd",
        "nobody@test.mssante.test",
        "--password-stdin",
        stdin="a long enough password\n",
    )
    assert "no password given" in ready.refused(
        "mailbox", "passwd", "dpi@test.mssante.test", stdin=""
    )


def test_state_transitions(ready: Cli) -> None:
    ready.ok("mailbox", "add", "dpi@test.mssante.test", "--type", "APP")
    ready.ok("mailbox", "add", PATIENT, "--type", "PATIENT")
    assert "is for PATIENT mailboxes" in ready.refused(
        "mailbox", "activate", "dpi@test.mssante.test"
    )
    assert "now disabled" in ready.ok("mailbox", "disable", "dpi@test.mssante.test")
    assert "already disabled" in ready.refused("mailbox", "disable", "dpi@test.mssante.test")
    assert "now active" in ready.ok("mailbox", "enable", "dpi@test.mssante.test")
    assert "not disabled" in ready.refused("mailbox", "enable", "dpi@test.mssante.test")
    assert "now active" in ready.ok("mailbox", "activate", PATIENT)
    assert "now closed" in ready.ok("mailbox", "close", PATIENT)
    assert "stays closed" in ready.refused("mailbox", "enable", PATIENT)


def test_delegations(ready: Cli) -> None:
    ready.ok(
        "mailbox", "add", "jean@test.mssante.test", "--type", "PER", "--national-id", "810001234567"
    )
    ready.ok(
        "mailbox",
        "add",
        "claire@test.mssante.test",
        "--type",
        "PER",
        "--national-id",
        "810005550001",
    )
    ready.ok("mailbox", "add", "cardio@test.mssante.test", "--type", "ORG")
    ready.ok("mailbox", "add", PATIENT, "--type", "PATIENT")
    ready.ok(
        "delegate",
        "grant",
        "jean@test.mssante.test",
        "claire@test.mssante.test",
        "--rights",
        "read,send-as",
    )
    ready.ok(
        "delegate",
        "grant",
        "cardio@test.mssante.test",
        "jean@test.mssante.test",
        "--rights",
        "read,write,send-as",
    )
    lines = ready.ok("delegate", "list").splitlines()
    assert [line.split() for line in lines] == [
        ["cardio@test.mssante.test", "jean@test.mssante.test", "read,write,send-as"],
        ["jean@test.mssante.test", "claire@test.mssante.test", "read,send-as"],
    ]
    # Upsert: granting again replaces the rights.
    ready.ok("delegate", "grant", "jean@test.mssante.test", "claire@test.mssante.test")
    mine = ready.ok("delegate", "list", "claire@test.mssante.test").split()
    assert mine == ["jean@test.mssante.test", "claire@test.mssante.test", "read"]
    assert "expected a comma-separated list" in ready.refused(
        "delegate",
        "grant",
        "jean@test.mssante.test",
        "claire@test.mssante.test",
        "--rights",
        "read,admin",
    )
    assert "cannot be delegated" in ready.refused(
        "delegate", "grant", PATIENT, "jean@test.mssante.test"
    )
    assert "grant rights to the people" in ready.refused(
        "delegate", "grant", "jean@test.mssante.test", "cardio@test.mssante.test"
    )
    ready.ok("delegate", "revoke", "jean@test.mssante.test", "claire@test.mssante.test")
    assert ready.ok("delegate", "list", "claire@test.mssante.test") == ""
    ready.refused("delegate", "revoke", "jean@test.mssante.test", "claire@test.mssante.test")


def test_audit_trail_records_changes_without_secrets(ready: Cli) -> None:
    password = "a very secret password 42"
    ready.ok(
        "mailbox",
        "add",
        "dpi@test.mssante.test",
        "--type",
        "APP",
        "--password-stdin",
        stdin=password + "\n",
    )
    ready.ok("mailbox", "disable", "dpi@test.mssante.test")
    lines = [json.loads(line) for line in ready.ok("audit", "--limit", "10").splitlines()]
    events = [e["event"] for e in lines]
    assert events[:2] == ["mailbox.disable", "mailbox.add"]
    assert "domain.add" in events
    assert lines[1]["target"] == "dpi@test.mssante.test"
    assert lines[1]["details"]["password"] is True
    assert lines[1]["actor"].startswith("cli")
    assert password not in ready.ok("audit", "--limit", "100")
    only = ready.ok("audit", "--event", "mailbox.add").splitlines()
    assert len(only) == 1


def test_bind_certificate(ready: Cli) -> None:
    ready.ok("mailbox", "add", "dpi@test.mssante.test", "--type", "APP")
    out = ready.ok("mailbox", "bind-cert", "dpi@test.mssante.test", str(FIXTURES / "peer-a.pem"))
    assert "sha256" in out
    shown = json.loads(ready.ok("mailbox", "show", "dpi@test.mssante.test"))
    assert shown["certificates"][0]["kind"] == "fingerprint"
    assert "already bound" in ready.refused(
        "mailbox", "bind-cert", "dpi@test.mssante.test", str(FIXTURES / "peer-a.pem")
    )
    assert "not-there.pem" in ready.refused(
        "mailbox", "bind-cert", "dpi@test.mssante.test", str(FIXTURES / "not-there.pem")
    )


def test_quota(ready: Cli) -> None:
    ready.ok("mailbox", "add", "dpi@test.mssante.test", "--type", "APP")
    shown = json.loads(ready.ok("mailbox", "show", "dpi@test.mssante.test"))
    assert (shown["quota_is_default"], shown["used_bytes"]) == (True, 0)
    assert shown["quota_bytes"] == 10 * 1024**3
    assert "524288000 bytes" in ready.ok("mailbox", "quota", "dpi@test.mssante.test", "500M")
    shown = json.loads(ready.ok("mailbox", "show", "dpi@test.mssante.test"))
    assert (shown["quota_bytes"], shown["quota_is_default"]) == (524288000, False)
    assert "none" in ready.ok("mailbox", "quota", "dpi@test.mssante.test", "0")
    assert "the default" in ready.ok("mailbox", "quota", "dpi@test.mssante.test", "default")
    assert "expected a size" in ready.refused("mailbox", "quota", "dpi@test.mssante.test", "lots")
    assert "does not exist" in ready.refused("mailbox", "quota", "x@test.mssante.test", "1G")
