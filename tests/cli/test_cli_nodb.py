"""CLI commands that need no database: config checks, keys, PKI, usage errors, help."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mssante.cli import build_parser, main
from mssante.operator.store.crypto import parse_key

ConfigWriter = Callable[..., Path]  # the `write_config` fixture of tests/conftest.py

FIXTURES = Path(__file__).parents[2] / "tls-fixtures"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_config_ok_and_refusals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], write_config: ConfigWriter
) -> None:
    path = write_config()
    code, out, _ = run(capsys, "check-config", str(path))
    assert code == 0 and "ok" in out and "TLS profile mssante" in out
    bad = write_config(pki='tls_profile = "tls13"')
    code, _, err = run(capsys, "check-config", str(bad))
    assert code == 1
    assert err == (
        "mssante: error: pki.tls_profile: expected one of 'mssante', 'modern', got string 'tls13'\n"
    )
    code, _, err = run(capsys, "--config", str(tmp_path / "missing.toml"), "check-config")
    assert code == 1 and "missing.toml: configuration file not found" in err


def test_check_config_uses_environment_for_the_path(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    write_config: ConfigWriter,
) -> None:
    monkeypatch.setenv("MSSANTE_CONFIG", str(write_config()))
    code, out, _ = run(capsys, "check-config")
    assert code == 0 and str(tmp_path) in out


def test_keygen_makes_a_usable_key(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "keygen")
    assert code == 0 and len(parse_key(out.strip())) == 32
    _, again, _ = run(capsys, "keygen")
    assert again != out


def test_pki_show(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "pki", "show", str(FIXTURES / "pro-1.pem"))
    info = json.loads(out)
    assert code == 0 and info["national_id"] == "810001234567"


@pytest.mark.parametrize(
    ("name", "purpose", "valid", "reason"),
    [
        ("peer-a.pem", "peer", True, None),
        ("operator.pem", "server", True, None),
        ("pro-1.pem", "client", True, None),
        ("peer-revoked.pem", "peer", False, "revoked"),
        ("pro-revoked.pem", "client", False, "revoked"),
        ("peer-expired.pem", "peer", False, "expired"),
        ("foreign.pem", "peer", False, "unknown_ca"),
        ("pro-1.pem", "server", False, "wrong_usage"),
    ],
)
def test_pki_verify(
    capsys: pytest.CaptureFixture[str], name: str, purpose: str, valid: bool, reason: str | None
) -> None:
    crls = [str(FIXTURES / f"{ca}.crl.pem") for ca in ("root-ca", "org-ca", "pro-ca")]
    argv = [
        "pki",
        "verify",
        str(FIXTURES / name),
        "--purpose",
        purpose,
        "--trust",
        str(FIXTURES / "ca-bundle.pem"),
    ]
    for crl in crls:
        argv += ["--crl", crl]
    code, out, _ = run(capsys, *argv)
    report = json.loads(out)
    assert report["valid"] is valid and code == (0 if valid else 1)
    assert report.get("reason") == reason


def test_pki_verify_with_configured_trust(
    capsys: pytest.CaptureFixture[str], write_config: ConfigWriter
) -> None:
    crl = FIXTURES / "org-ca.crl.pem"
    path = write_config(pki=f'crls = ["{crl}"]')
    code, out, _ = run(
        capsys, "--config", str(path), "pki", "verify", str(FIXTURES / "peer-revoked.pem")
    )
    assert code == 1 and json.loads(out)["reason"] == "revoked"


def test_pki_test_hierarchy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = run(
        capsys, "pki", "test-hierarchy", str(tmp_path / "pki"), "--operator-host", "mx.other.test"
    )
    assert code == 0
    code, out, _ = run(capsys, "pki", "show", str(tmp_path / "pki" / "operator.pem"))
    assert json.loads(out)["cn"] == "mx.other.test"


def test_pki_errors_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("junk")
    code, _, err = run(capsys, "pki", "show", str(tmp_path / "junk.pem"))
    assert code == 1 and err.startswith("mssante: error: ") and "junk.pem" in err
    assert err.count("\n") == 1


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["frobnicate"],
        ["mailbox"],
        ["mailbox", "add", "x@y.fr", "--type", "BOB"],
        ["delegate", "grant", "a@b.fr"],
        [],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert "error:" in capsys.readouterr().err


def _commands(parser: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    import argparse

    found = [prefix]
    assert isinstance(parser, argparse.ArgumentParser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _commands(sub, (*prefix, name))
    return found


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    commands = _commands(build_parser())
    assert ("mailbox", "passwd") in commands and ("delegate", "revoke") in commands
    for command in commands:
        with pytest.raises(SystemExit) as exc:
            main([*command, "--help"])
        assert exc.value.code == 0
        assert "usage: mssante" in capsys.readouterr().out


def test_every_command_is_documented() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "cli.md").read_text()
    for command in _commands(build_parser())[1:]:
        assert f"mssante {' '.join(command)}" in doc, command


def test_module_and_console_script_run() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mssante", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("mssante ")
    script = Path(sys.executable).with_name("mssante")
    done = subprocess.run(
        [str(script), "--config", "/nonexistent.toml", "mailbox", "list"],
        capture_output=True,
        text=True,
        check=False,
    )
    # The error goes through the same one-line path in a real process.
    assert done.returncode == 1
    assert done.stderr == ("mssante: error: /nonexistent.toml: configuration file not found\n")
