"""The relay as real processes: an acknowledged message survives SIGKILL; swaks delivers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parents[3] / "tls-fixtures"
MSSANTE = str(Path(sys.executable).with_name("mssante"))
ConfigWriter = Callable[..., Path]  # the `write_config` fixture of tests/conftest.py
DOMAIN = "demo.mssante.test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(64).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"port {port} never answered")


def _cli(config: Path, *argv: str) -> str:
    done = subprocess.run(
        [MSSANTE, "--config", str(config), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def operator_config(write_config: ConfigWriter) -> Iterator[tuple[Path, int]]:
    port = _free_port()
    config = write_config(
        extra=f"""
[metrics]
enabled = false
[imap]
enabled = false
[submission]
enabled = false
[relay]
listen = "127.0.0.1:{port}"
[whitelist]
source = "{FIXTURES / "whitelist.xml"}"
""",
    )
    _cli(config, "db", "upgrade")
    _cli(config, "domain", "add", DOMAIN)
    _cli(
        config,
        "mailbox",
        "add",
        f"jean.dupont@{DOMAIN}",
        "--type",
        "PER",
        "--national-id",
        "810001234567",
    )
    yield config, port


def _serve(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [MSSANTE, "--config", str(config), "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _inbox_count(config: Path, address: str) -> int:
    shown = json.loads(_cli(config, "mailbox", "show", address))
    return int(shown["messages"])


def test_acknowledged_message_survives_sigkill(operator_config: tuple[Path, int]) -> None:
    config, port = operator_config
    proc = _serve(config)
    try:
        _wait_port(port, proc)
        msg = EmailMessage()
        msg["From"] = "dr.house@hopital-a.mssante.test"
        msg["To"] = f"jean.dupont@{DOMAIN}"
        msg["Subject"] = "Lettre de sortie"
        msg.set_content("Patient sorti le 21/11.")
        context = ssl.create_default_context(cafile=str(FIXTURES / "ca-bundle.pem"))
        context.check_hostname = False
        context.load_cert_chain(FIXTURES / "peer-a.pem", FIXTURES / "peer-a.key")
        smtp = smtplib.SMTP("127.0.0.1", port, timeout=10)
        smtp.starttls(context=context)
        smtp.ehlo()
        smtp.mail("dr.house@hopital-a.mssante.test")
        smtp.rcpt(f"jean.dupont@{DOMAIN}")
        code, _ = smtp.data(msg.as_bytes())
        # Kill the server the moment the 250 is read: no graceful shutdown, no flush.
        os.kill(proc.pid, signal.SIGKILL)
        assert code == 250
        smtp.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert _inbox_count(config, f"jean.dupont@{DOMAIN}") == 1
    # And the operator starts again on that database.
    again = _serve(config)
    try:
        _wait_port(port, again)
    finally:
        again.send_signal(signal.SIGTERM)
        again.communicate(timeout=30)
    assert again.returncode == 0


@pytest.mark.skipif(
    # In CI a missing swaks is a failure, not a skip.
    shutil.which("swaks") is None and os.environ.get("CI") != "true",
    reason="swaks not installed (Debian package swaks; ./dev.sh test installs it)",
)
def test_swaks_delivers_into_the_demo(tmp_path: Path) -> None:
    base = _free_port() - 80
    demo = subprocess.Popen(
        [MSSANTE, "demo", "--dir", str(tmp_path / "demo"), "--port-base", str(base)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        state = tmp_path / "demo" / "demo.json"
        deadline = time.monotonic() + 60
        while True:
            assert demo.poll() is None, demo.communicate()
            assert time.monotonic() < deadline
            if state.is_file():
                info = json.loads(state.read_text())
                if info.get("pid") == demo.pid:
                    break
            time.sleep(0.05)
        host, port = info["listeners"]["relay"].rsplit(":", 1)
        peer = info["peer"]
        rcpt = next(b["address"] for b in info["mailboxes"] if b["type"] == "PER")
        done = subprocess.run(
            [
                "swaks",
                "--server",
                host,
                "--port",
                port,
                "--tls",
                "--tls-cert",
                peer["cert"],
                "--tls-key",
                peer["key"],
                "--from",
                peer["sender"],
                "--to",
                rcpt,
                "--header",
                "Subject: swaks test",
                "--body",
                "Bonjour",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "<~  250 2.0.0 Ok: delivered" in done.stdout
        shown = json.loads(
            subprocess.run(
                [MSSANTE, "--config", info["config"], "mailbox", "show", rcpt],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        assert shown["messages"] == 1
    finally:
        demo.send_signal(signal.SIGINT)
        demo.communicate(timeout=30)
    assert demo.returncode == 0
