"""Database fixtures: every store test runs on a real SQLite file and a real PostgreSQL.

PostgreSQL comes from, in order:
1. `MSSANTE_TEST_POSTGRES_URL` (e.g. `postgresql://postgres@127.0.0.1:5432/postgres`): a server
   whose user may CREATE DATABASE; each test gets its own database, dropped afterwards;
2. otherwise a throwaway cluster started once per test session with `initdb`/`pg_ctl` found on
   PATH or under /usr/lib/postgresql/*/bin (as the `postgres` user when running as root);
3. otherwise the PostgreSQL tests are skipped, except when `CI=true`: there they fail, because
   a CI run that silently skips half the store tests proves nothing.

Select or deselect them with `-m postgres` / `-m "not postgres"`.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, Protocol

import asyncpg
import pytest
from sqlalchemy import make_url

from mssante.operator.store.crypto import BlobCipher
from mssante.operator.store.db import Store
from mssante.operator.store.migrate import upgrade

POSTGRES_URL_ENV = "MSSANTE_TEST_POSTGRES_URL"
TEST_KEY = bytes(range(32))
# Trust auth on 127.0.0.1 only; no fsync: a throwaway cluster needs speed, not durability.
_INITDB_OPTIONS = ["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C"]


def _unavailable(reason: str) -> NoReturn:
    message = f"PostgreSQL not available: {reason}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _version_key(path: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/<version>/bin: prefer the newest installed server.
    return tuple(int(n) for n in re.findall(r"\d+", path.parent.name))


def _find_binaries() -> tuple[str, str] | None:
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return initdb, pg_ctl
    for bindir in sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True):
        if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists():
            return str(bindir / "initdb"), str(bindir / "pg_ctl")
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class _Cluster:
    base: Path
    pg_ctl: str
    prefix: list[str]
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        subprocess.run(
            [*self.prefix, self.pg_ctl, "-D", str(self.base / "data"), "-m", "immediate", "stop"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(self.base, ignore_errors=True)


def _start_cluster(initdb: str, pg_ctl: str) -> _Cluster:
    # Not under pytest's tmp_path: that is private to root, and the server runs as `postgres`.
    base = Path(tempfile.mkdtemp(prefix="mssante-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        # initdb refuses to run as root.
        runuser = shutil.which("runuser")
        if runuser is None:
            shutil.rmtree(base)
            raise OSError("running as root and runuser(1) is missing")
        postgres = pwd.getpwnam("postgres")
        os.chown(base, postgres.pw_uid, postgres.pw_gid)
        prefix = [runuser, "-u", "postgres", "--"]
    cluster = _Cluster(base, pg_ctl, prefix, 0)
    try:
        subprocess.run(
            [*prefix, initdb, "-D", str(base / "data"), *_INITDB_OPTIONS],
            capture_output=True,
            check=True,
        )
        for _ in range(3):  # the free port may be taken between probing and binding
            cluster.port = _free_port()
            options = [
                "-p", str(cluster.port),
                "-c", "listen_addresses=127.0.0.1",
                "-c", f"unix_socket_directories={base}",
                "-c", "fsync=off",
                "-c", "full_page_writes=off",
            ]  # fmt: skip
            control = [*prefix, pg_ctl, "-D", str(base / "data"), "-l", str(base / "server.log")]
            started = subprocess.run(
                [*control, "-w", "-t", "60", "-o", shlex.join(options), "start"],
                capture_output=True,
                check=False,
            )
            if started.returncode == 0:
                return cluster
        log = (base / "server.log").read_text(errors="replace")[-2000:]
        raise OSError(f"pg_ctl start failed: {started.stderr.decode(errors='replace')} {log}")
    except BaseException:
        cluster.stop()
        raise


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """A URL to a PostgreSQL server and database where we may CREATE DATABASE."""
    configured = os.environ.get(POSTGRES_URL_ENV)
    if configured:
        yield configured
        return
    binaries = _find_binaries()
    if binaries is None:
        _unavailable(f"no initdb found and {POSTGRES_URL_ENV} unset")
    try:
        cluster = _start_cluster(*binaries)
    except (OSError, KeyError, subprocess.CalledProcessError) as exc:
        detail = (
            exc.stderr.decode(errors="replace")
            if isinstance(exc, subprocess.CalledProcessError)
            else exc
        )
        _unavailable(f"could not start a throwaway cluster ({detail}) and {POSTGRES_URL_ENV} unset")
    try:
        yield cluster.url
    finally:
        cluster.stop()


def _asyncpg_dsn(url: str) -> str:
    # asyncpg speaks libpq URLs; ours may carry SQLAlchemy's driver suffix.
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _create_database(admin_url: str) -> str:
    name = f"mssante_test_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(_asyncpg_dsn(admin_url))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


async def _drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(_asyncpg_dsn(admin_url))
    try:
        # FORCE (PostgreSQL 13+): a test that failed may have left connections open.
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of an empty database of each kind, private to the test."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'mssante.db'}"
        return
    admin_url: str = request.getfixturevalue("postgres_admin_url")
    name = await _create_database(admin_url)
    try:
        yield (
            make_url(_asyncpg_dsn(admin_url))
            .set(database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        await _drop_database(admin_url, name)


@pytest.fixture
def cipher() -> BlobCipher:
    return BlobCipher({"k1": TEST_KEY}, "k1")


@pytest.fixture
async def store(store_url: str, cipher: BlobCipher) -> AsyncIterator[Store]:
    """A migrated database, opened."""
    await upgrade(store_url)
    opened = await Store.open(store_url, cipher)
    try:
        yield opened
    finally:
        await opened.close()


FIXTURES = Path(__file__).parents[1] / "tls-fixtures"


class ConfigWriter(Protocol):
    def __call__(
        self,
        *,
        database_url: str | None = None,
        pki: str = "",
        storage: str = "",
        extra: str = "",
    ) -> Path: ...


@pytest.fixture
def write_config(tmp_path: Path) -> ConfigWriter:
    """Writes `tmp_path/mssante.toml` for the committed test PKI; returns its path.

    `pki` and `storage` add lines to those tables, `extra` appends tables. Without
    `database_url` the default embedded SQLite file under `tmp_path/data` is used.
    """

    def write(
        *, database_url: str | None = None, pki: str = "", storage: str = "", extra: str = ""
    ) -> Path:
        database = f'[database]\nurl = "{database_url}"\n' if database_url else ""
        path = tmp_path / "mssante.toml"
        path.write_text(
            f"""
[operator]
hostname = "mx.test.mssante.test"
data_dir = "{tmp_path / "data"}"
patient_domain = "patient.mssante.test"
{database}
[pki]
trust_anchors = "{FIXTURES / "ca-bundle.pem"}"
certificate = "{FIXTURES / "operator.pem"}"
private_key = "{FIXTURES / "operator.key"}"
{pki}
[storage]
{storage}
[storage.keys]
k1 = "{TEST_KEY.hex()}"
{extra}
"""
        )
        return path

    return write
