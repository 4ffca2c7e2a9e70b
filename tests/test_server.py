"""`mssante serve`: refuses an outdated schema, starts listeners, stops on SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from mssante.config import load_settings
from mssante.operator.store.errors import SchemaOutdated
from mssante.operator.store.migrate import upgrade
from mssante.server import StartupError, start, stop

ConfigWriter = Callable[..., Path]  # the `write_config` fixture of tests/conftest.py
FIXTURES = Path(__file__).parents[1] / "tls-fixtures"

MSSANTE = str(Path(sys.executable).with_name("mssante"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(write_config: ConfigWriter, url: str, port: int) -> Path:
    crls = [str(FIXTURES / f"{ca}.crl.pem") for ca in ("root-ca", "org-ca", "pro-ca")]
    return write_config(
        database_url=url,
        pki=f"crls = {json.dumps(crls)}",
        extra=(
            f'[logging]\nformat = "json"\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
            "[relay]\nenabled = false\n[imap]\nenabled = false\n[submission]\nenabled = false\n"
        ),
    )


async def test_start_refuses_an_outdated_schema(
    store_url: str, tmp_path: Path, write_config: ConfigWriter
) -> None:
    settings = load_settings(_config(write_config, store_url, _free_port()))
    with pytest.raises(SchemaOutdated, match="mssante db upgrade"):
        await start(settings)


async def test_start_loads_pki_and_serves_metrics(
    store_url: str, tmp_path: Path, write_config: ConfigWriter
) -> None:
    await upgrade(store_url)
    port = _free_port()
    running = await start(load_settings(_config(write_config, store_url, port)))
    try:
        assert running.listeners == {"metrics": f"127.0.0.1:{port}"}
        # CRLs were loaded (and cached for a restart without network).
        assert all(s.issuer for s in running.pki.crls.status())
        assert len(list((tmp_path / "data" / "crl").iterdir())) == 3
        reader, writer = await __import__("asyncio").open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        response = await reader.read()
        writer.close()
        assert response.startswith(b"HTTP/1.1 200 OK") and b"mssante_build_info" in response
    finally:
        await stop(running)


async def test_metrics_listener_rejects_bad_requests(
    store_url: str, tmp_path: Path, write_config: ConfigWriter
) -> None:
    import asyncio

    await upgrade(store_url)
    port = _free_port()
    running = await start(load_settings(_config(write_config, store_url, port)))
    try:
        for request, status in (
            (b"POST /metrics HTTP/1.1\r\n\r\n", b"405"),
            (b"GET /nothing HTTP/1.1\r\n\r\n", b"404"),
            (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 10000 + b"\r\n\r\n", b"431"),
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            response = await reader.read()
            writer.close()
            assert response.split()[1] == status, response[:80]
        # The listener is still there for well-formed requests.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\n\r\n")
        assert (await reader.read()).endswith(b"ok\n")
        writer.close()
    finally:
        await stop(running)


async def test_busy_port_is_a_clear_startup_error(
    store_url: str, tmp_path: Path, write_config: ConfigWriter
) -> None:
    await upgrade(store_url)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        settings = load_settings(_config(write_config, store_url, port))
        with pytest.raises(
            StartupError, match=f"metrics.listen: cannot listen on 127.0.0.1:{port}"
        ):
            await start(settings)


def test_serve_process_stops_cleanly_on_sigterm(tmp_path: Path, write_config: ConfigWriter) -> None:
    url = f"sqlite:///{tmp_path / 'serve.db'}"
    port = _free_port()
    config = _config(write_config, url, port)
    subprocess.run(
        [MSSANTE, "--config", str(config), "db", "upgrade"], check=True, capture_output=True
    )
    proc = subprocess.Popen(
        [MSSANTE, "--config", str(config), "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    assert r.read() == b"ok\n"
                    break
            except OSError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in err.splitlines()]
    assert [e["msg"] for e in events][-2:] == ["shutdown requested", "operator stopped"]
    assert any(e["msg"] == "listener started" and e["listener"] == "metrics" for e in events)
    assert all({"ts", "level", "logger", "session", "msg"} <= e.keys() for e in events)
    assert "MDEyMzQ1" not in err  # the storage key never reaches the log


def test_serve_refuses_outdated_schema_in_one_line(
    tmp_path: Path, write_config: ConfigWriter
) -> None:
    config = _config(write_config, f"sqlite:///{tmp_path / 'empty.db'}", _free_port())
    done = subprocess.run(
        [MSSANTE, "--config", str(config), "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("mssante: error: ") and "mssante db upgrade" in done.stderr
    assert done.stderr.count("\n") == 1
