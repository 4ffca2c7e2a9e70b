"""Engines and sessions: the one place that knows how to open SQLite and PostgreSQL safely.

SQLite is the embedded default (one file, one node); PostgreSQL is for larger or multi-node
deployments. Both are reached through SQLAlchemy's async engine.

SQLite connections are set up for durability first, because an SMTP 250 makes us responsible
for the message, which must survive a crash (RFC 5321 §6.1; our two-phase delivery): WAL
journal with `synchronous=FULL` (NORMAL may lose the last transactions on power loss), foreign
keys enforced, and a busy timeout so concurrent writers queue instead of failing.

SQLite transactions are started by us rather than by the sqlite3 module, which otherwise runs
SELECTs outside any transaction and begins only at the first write. Ours begin with the first
statement, so a session reads one consistent snapshot. A transaction that reads and then
writes must, however, take the write lock up front: in WAL mode a reader that tries to become
a writer after another connection committed fails at once with SQLITE_BUSY_SNAPSHOT, without
waiting. So `Store.session()`, the default, issues `BEGIN IMMEDIATE` on SQLite: writers queue
on the busy timeout and never fail that way. Read-only work (IMAP FETCH, webmail pages) uses
`Store.read_session()`, a plain deferred BEGIN that does not hold up writers. On PostgreSQL the
two are the same (READ COMMITTED, row locks taken by the statements themselves).

Within one process, SQLite write sessions also take turns on an asyncio lock before they
begin. Without it, writers of one process meet at SQLite's lock, and SQLite's busy handler
waits by sleeping (1, 2, 5, 10… up to 100 ms at a time): with several committers (local
delivery, APPEND, the outbound queue, the audit trail) the process then spends its time
asleep. With it they queue in order and each begins the moment the previous one ends; the
busy timeout is left for other processes (the CLI) sharing the file.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import URL, event, make_url, text
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.ext.asyncio import create_async_engine as _create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from mssante.operator.store import _aiosqlite, _sql
from mssante.operator.store.crypto import BlobCipher
from mssante.operator.store.errors import StoreError

SQLITE_BUSY_TIMEOUT_MS = 30_000
# Execution option read by our BEGIN hook; only SQLite looks at it.
_BEGIN_OPTION = "mssante_sqlite_begin"

_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


def database_url(url: str) -> URL:
    """Parse a database URL and map it onto the async driver we use for its database.

    Accepts `sqlite:///path`, `sqlite+aiosqlite:///path`, `postgresql://…`, `postgres://…`
    and `postgresql+asyncpg://…`.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        # SQLAlchemy's message quotes the whole URL, password included.
        raise StoreError(
            "invalid database URL: expected sqlite:///path/to/file.db or "
            "postgresql://user:password@host/dbname"
        ) from None
    driver = _DRIVERS.get(parsed.drivername)
    if driver is None:
        raise StoreError(
            f"unsupported database URL scheme {parsed.drivername!r}: "
            f"use sqlite:///path/to/file.db or postgresql://user:password@host/dbname"
        )
    parsed = parsed.set(drivername=driver)
    if driver.startswith("sqlite") and parsed.database in (None, "", ":memory:"):
        # Each pooled connection would get its own empty in-memory database, and nothing
        # acknowledged would survive a restart.
        raise StoreError(
            "in-memory SQLite is not supported: give a file, sqlite:///path/mssante.db"
        )
    return parsed


def mask_url(url: str | URL) -> str:
    """The URL with its password replaced by `***`, fit for messages and logs."""
    try:
        parsed = url if isinstance(url, URL) else make_url(url)
    except (ArgumentError, ValueError):
        return "<unparsable database URL>"
    return parsed.render_as_string(hide_password=True)


def _sqlite_on_connect(dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
    # Stop the sqlite3 module from issuing its own BEGINs: `_sqlite_on_begin` does it.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        row = cursor.fetchone()
        if row is None or str(row[0]).lower() != "wal":
            # Without WAL, readers block the writer; refusing is better than a silent slowdown
            # (WAL needs shared memory: it fails on some network file systems).
            raise StoreError(f"SQLite refused the WAL journal mode (got {row!r})")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS:d}")
    finally:
        cursor.close()
    # IMAP SEARCH tests its keyed filters in the query (`_sql.MaskSet`).
    dbapi_connection.create_function(_sql.SQLITE_MASK_SET, -1, _sql.mask_set, deterministic=True)


def _sqlite_on_begin(conn: Any) -> None:
    mode = conn.get_execution_options().get(_BEGIN_OPTION, "")
    conn.exec_driver_sql("BEGIN IMMEDIATE" if mode == "IMMEDIATE" else "BEGIN")


def create_engine(url: str) -> AsyncEngine:
    """An async engine for a SQLite file or a PostgreSQL database (no connection made yet).

    The SQLite file's directory is created if missing.
    """
    parsed = database_url(url)
    if parsed.drivername == "sqlite+aiosqlite":
        assert parsed.database is not None  # checked by database_url
        path = Path(parsed.database)
        if path.is_dir():
            raise StoreError(f"the SQLite database path {path} is a directory, not a file")
        directory = path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the directory {directory} for the SQLite database: "
                f"{exc.strerror or exc}"
            ) from None
        engine = _create_async_engine(
            parsed,
            module=_aiosqlite.DBAPI(),  # one trip to the SQLite thread per statement
            # Writers serialise on the file anyway; the connections serve concurrent readers.
            # Kept open: an overflow connection is closed when handed back, and opening one
            # (a thread, the file, the pragmas, our SQL functions) costs more than a query, so
            # the pool holds what a busy operator uses at once (sessions, committers, worker).
            pool_size=20,
            max_overflow=10,
            pool_timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,
        )
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_on_begin)
        return engine
    return _create_async_engine(
        parsed,
        pool_size=10,
        max_overflow=20,
        pool_timeout=30,
        # Connections die with server restarts and failovers; check before handing one out,
        # and renew them before common idle timeouts of proxies and firewalls.
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={"timeout": 10, "server_settings": {"application_name": "mssante"}},
    )


def _reason(exc: BaseException, url: URL) -> str:
    orig = getattr(exc, "orig", None)
    message = str(orig if orig is not None else exc).strip().splitlines()
    reason = message[0] if message else type(exc).__name__
    if url.password:
        # Belt and braces: no driver should echo the password, but this text reaches logs.
        reason = reason.replace(str(url.password), "***")
    return reason or type(exc).__name__


async def ping(engine: AsyncEngine) -> None:
    """Open one connection and run a trivial query; StoreError with a readable reason if not."""
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except StoreError:
        raise
    except Exception as exc:
        # Broad on purpose: only connecting and `SELECT 1` happen here, and drivers raise their
        # own types for refused connections, unknown databases or bad credentials.
        raise StoreError(
            f"cannot connect to the database {mask_url(engine.url)}: {_reason(exc, engine.url)}"
        ) from None


async def open_engine(url: str) -> AsyncEngine:
    """`create_engine` then `ping`: an engine known to reach its database, or StoreError."""
    engine = create_engine(url)
    try:
        await ping(engine)
    except BaseException:
        await engine.dispose()
        raise
    return engine


class _WriteTurn:
    """The process's turn to write to its SQLite file. A task that asks for it while holding
    it (a write session opened inside another) is a bug that SQLite would answer with a
    30-second wait and an error; here it fails at once, naming the cause."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None

    async def acquire(self) -> None:
        task = asyncio.current_task()
        if task is not None and task is self._owner:
            raise RuntimeError("a write session was opened inside another one (SQLite)")
        await self._lock.acquire()
        self._owner = task

    def release(self) -> None:
        self._owner = None
        self._lock.release()


class _TurnSession(AsyncSession):
    """A write session that waits for its turn on the process's SQLite write lock, from the
    start of its `async with` block to its end."""

    def __init__(self, *args: Any, write_turn: _WriteTurn, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._turn = write_turn
        self._holding = False

    async def __aenter__(self) -> _TurnSession:
        await self._turn.acquire()
        self._holding = True
        return self

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        try:
            await super().__aexit__(type_, value, traceback)
        finally:
            if self._holding:
                self._holding = False
                self._turn.release()


class Store:
    """The engine, the session factories and the blob cipher, opened once per process.

    Repository functions take an `AsyncSession` and never commit: the caller owns the
    transaction, so a delivery can store the blob, the messages and the audit trace atomically.
    """

    def __init__(self, engine: AsyncEngine, cipher: BlobCipher) -> None:
        self.engine = engine
        self.cipher = cipher
        # Objects stay readable after commit: values are handed to the caller, never re-read.
        writer = engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
        if engine.dialect.name == "sqlite":
            self.sessionmaker: async_sessionmaker[AsyncSession] = async_sessionmaker(
                writer,
                class_=_TurnSession,
                expire_on_commit=False,
                write_turn=_WriteTurn(),
            )
        else:
            self.sessionmaker = async_sessionmaker(writer, expire_on_commit=False)
        self.read_sessionmaker = async_sessionmaker(engine, expire_on_commit=False)

    @classmethod
    async def open(cls, url: str, cipher: BlobCipher) -> Store:
        """Create the engine and check the database answers (StoreError if it does not)."""
        return cls(await open_engine(url), cipher)

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        return self.engine.dialect.name

    def session(self) -> AsyncSession:
        """A session for any work; on SQLite it takes the write lock at its first statement."""
        return self.sessionmaker()

    def write_session(self) -> AsyncSession:
        """Same as `session()`; the name states the intent in code that writes."""
        return self.sessionmaker()

    def read_session(self) -> AsyncSession:
        """A session for read-only work: on SQLite, readers do not wait for one another.

        Writing in it after reading can fail on SQLite under concurrency (SQLITE_BUSY_SNAPSHOT,
        see the module docstring): write in `session()`.
        """
        return self.read_sessionmaker()

    async def close(self) -> None:
        await self.engine.dispose()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
