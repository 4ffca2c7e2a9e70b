"""`mssante demo` as a user runs it: a real process, real listeners, Ctrl-C to stop."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mssante.config import load_settings
from mssante.demo import PORT_OFFSETS
from mssante.operator.addresses import validate_ins
from mssante.operator.dkim import DkimVerifier
from mssante.operator.dkim_sign import DkimSigner
from mssante.pki.anchors import TrustStore, load_certificates
from mssante.pki.validation import Purpose, validate_chain

MSSANTE = str(Path(sys.executable).with_name("mssante"))


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port_base() -> int:
    """A base below the ephemeral port range (where clients' own ports come from, so a busy
    machine does not take ours between the check and the demo's start) whose every listener
    port is free right now."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(10_000, 31_000)
        if all(_port_free(base + offset) for offset in PORT_OFFSETS.values()):
            return base
    raise RuntimeError("no free port")


class Demo:
    def __init__(self, directory: Path, port_base: int, *extra: str) -> None:
        self.directory = directory
        self.proc = subprocess.Popen(
            [MSSANTE, "demo", "--dir", str(directory), "--port-base", str(port_base), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_ready(self, timeout: float = 60.0) -> dict[str, object]:
        state = self.directory / "demo.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"demo exited: {self.proc.communicate()}")
            if state.is_file():
                info = json.loads(state.read_text())
                if info.get("pid") == self.proc.pid:
                    return dict(info)
            time.sleep(0.05)
        raise AssertionError("demo did not become ready")

    def interrupt(self) -> tuple[int, str, str]:
        self.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        out, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, out, err


@pytest.fixture
def demo_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "demo"


def test_demo_starts_describes_itself_and_stops_cleanly(demo_dir: Path) -> None:
    base = _free_port_base()
    demo = Demo(demo_dir, base)
    try:
        info = demo.wait_ready()
    except BaseException:
        demo.proc.kill()
        raise
    try:
        listeners = info["listeners"]
        assert isinstance(listeners, dict)
        assert listeners["metrics"] == f"127.0.0.1:{base + 80}"
        assert listeners["submission"] == f"127.0.0.1:{base + 587}"
        assert listeners["smtps"] == f"127.0.0.1:{base + 465}"
        with urllib.request.urlopen(f"http://{listeners['metrics']}/metrics", timeout=5) as r:
            body = r.read().decode()
        assert "mssante_build_info" in body
        with urllib.request.urlopen(f"http://{listeners['metrics']}/healthz", timeout=5) as r:
            assert r.read() == b"ok\n"

        boxes = info["mailboxes"]
        assert isinstance(boxes, list)
        assert {b["type"] for b in boxes} == {"PER", "ORG", "APP", "CAB", "PATIENT"}
        assert all(len(b["password"]) >= 12 for b in boxes)
        patient = next(b for b in boxes if b["type"] == "PATIENT")
        validate_ins(patient["address"].split("@")[0])

        # The peer's certificate is a whitelisted operator that validates against `ca`.
        peer = info["peer"]
        assert isinstance(peer, dict)
        trust = TrustStore.from_file(Path(str(info["ca"])))
        cert = load_certificates(Path(peer["cert"]))[0]
        validate_chain(cert, trust, Purpose.PEER_OPERATOR)
        assert Path(peer["key"]).is_file()
        assert peer["sender"].endswith("@" + peer["domain"])
        whitelist = Path(str(info["whitelist"])).read_text()
        assert peer["domain"] in whitelist and "listeblanche.mssante.fr/schema" in whitelist
        assert oct((demo_dir / "demo.json").stat().st_mode & 0o777) == "0o600"

        # The demo signs with its own DKIM key, and verifies that signature.
        settings = load_settings(Path(str(info["config"])))
        signer = DkimSigner.from_settings(settings.dkim)
        assert signer is not None and signer.domains == ("demo.mssante.test",)
        assert oct((demo_dir / "dkim" / "demo.key").stat().st_mode & 0o777) == "0o600"
        message = b"From: <jean.dupont@demo.mssante.test>\r\nSubject: x\r\n\r\nbody\r\n"
        signed = asyncio.run(signer.sign(message))
        field = signed[: -len(message)].decode().partition(":")[2]
        verdict = asyncio.run(DkimVerifier(settings.dkim).verify(signed, [field]))
        assert verdict.summary == "pass"
    finally:
        code, out, err = demo.interrupt()
    assert code == 0, err
    assert "Traceback" not in err
    assert "is running" in out and "146026322000196@patient.mssante.test" in out


def test_demo_restarts_on_what_it_built_and_resets(demo_dir: Path) -> None:
    base = _free_port_base()
    first = Demo(demo_dir, base)
    try:
        passwords = {b["address"]: b["password"] for b in first.wait_ready()["mailboxes"]}  # type: ignore[attr-defined]
    finally:
        code, _, err = first.interrupt()
        assert code == 0, err
    second = Demo(demo_dir, base)
    try:
        again = {b["address"]: b["password"] for b in second.wait_ready()["mailboxes"]}  # type: ignore[attr-defined]
    finally:
        code, _, err = second.interrupt()
        assert code == 0, err
    assert again == passwords
    third = Demo(demo_dir, base, "--reset")
    try:
        fresh = {b["address"]: b["password"] for b in third.wait_ready()["mailboxes"]}  # type: ignore[attr-defined]
    finally:
        code, _, err = third.interrupt()
        assert code == 0, err
    assert fresh.keys() == passwords.keys() and fresh != passwords


def test_demo_refuses_a_directory_that_is_not_a_demo(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    for extra in ((), ("--reset",)):
        done = subprocess.run(
            [MSSANTE, "demo", "--dir", str(precious), *extra],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 1
        assert "not a demo directory" in done.stderr and "Traceback" not in done.stderr
    assert (precious / "thesis.txt").read_text() == "do not delete"


def test_demo_reports_a_busy_port(demo_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [MSSANTE, "demo", "--dir", str(demo_dir), "--port-base", str(port - 80)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 1, done.stderr
    assert f"127.0.0.1:{port}" in done.stderr and "Traceback" not in done.stderr
    # The directory it built is a demo: once the port is free, the same command works.
    demo = Demo(demo_dir, _free_port_base())
    try:
        assert len(demo.wait_ready()["mailboxes"]) == 7  # type: ignore[arg-type]
    finally:
        code, _, err = demo.interrupt()
        assert code == 0, err
