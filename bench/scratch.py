"""A scratch database for a benchmark run: a temporary SQLite file, or a PostgreSQL database
created on the given server and dropped afterwards."""

from __future__ import annotations

import secrets
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
from sqlalchemy import make_url


@asynccontextmanager
async def scratch_postgresql(admin_url: str) -> AsyncIterator[str]:
    dsn = make_url(admin_url).set(drivername="postgresql")
    name = f"mssante_bench_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(dsn.render_as_string(hide_password=False))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        try:
            yield dsn.set(database=name).render_as_string(hide_password=False)
        finally:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@asynccontextmanager
async def scratch_database(kind: str, url: str | None) -> AsyncIterator[str]:
    """`kind` is sqlite or postgresql; `url` the PostgreSQL server, or an SQLite file."""
    if kind == "postgresql":
        if not url:
            sys.exit("--url is required with --db postgresql")
        async with scratch_postgresql(url) as scratch:
            yield scratch
        return
    if url:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="mssante-bench-") as tmp:
        yield f"sqlite:///{Path(tmp) / 'bench.db'}"
