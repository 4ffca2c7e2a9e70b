"""Schema migrations, driven from code: `mssante db upgrade` and the start-up schema check.

The Alembic scripts live in this package (`migrations/`), so an installed operator carries the
migrations of its own version and needs no alembic.ini. They run on a connection of the same
async engine the servers use (`connection.run_sync`), so the SQLite pragmas and the URL
handling are those of production.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from mssante.operator.store.db import mask_url, open_engine
from mssante.operator.store.errors import SchemaOutdated, StoreError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def _config() -> Config:
    config = Config()
    # ConfigParser interpolation: a '%' in the install path must be doubled.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    return config


def head_revision() -> str:
    """The revision this version of the code expects (the newest migration it ships)."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    if head is None:  # only if the package was installed without its migrations
        raise StoreError(f"no migration scripts found in {MIGRATIONS_DIR}")
    return head


def _known_revisions() -> set[str]:
    return {script.revision for script in ScriptDirectory.from_config(_config()).walk_revisions()}


def _run_command(connection: Connection, action: str, revision: str) -> None:
    config = _config()
    config.attributes["connection"] = connection
    if action == "upgrade":
        command.upgrade(config, revision)
    else:
        command.downgrade(config, revision)


async def _migrate(url: str, action: str, revision: str) -> None:
    engine = await open_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_run_command, action, revision)
    except (SQLAlchemyError, CommandError) as exc:
        # CommandError: a migration that refuses to run (it says why).
        raise StoreError(f"{action} of {mask_url(url)} to {revision} failed: {exc}") from exc
    finally:
        await engine.dispose()


async def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema up to `revision` (default: the newest). Idempotent."""
    await _migrate(url, "upgrade", revision)


async def downgrade(url: str, revision: str) -> None:
    """Take the schema back to `revision` (`base` drops every table: data is lost)."""
    await _migrate(url, "downgrade", revision)


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(url: str) -> str | None:
    """The revision the database is at; None for a database never migrated."""
    engine = await open_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_current)
    finally:
        await engine.dispose()


async def check_schema(url: str) -> None:
    """Refuse to run on a schema other than the one this code was written for."""
    current = await current_revision(url)
    expected = head_revision()
    if current == expected:
        return
    if current is None:
        raise SchemaOutdated(
            f"the database {mask_url(url)} has no mssante schema (expected revision "
            f"{expected}): run `mssante db upgrade`"
        )
    if current not in _known_revisions():
        raise SchemaOutdated(
            f"the database {mask_url(url)} is at revision {current}, unknown to this version of "
            f"mssante (which expects {expected}): it was probably upgraded by a newer version; "
            f"run that version, or restore a backup and run `mssante db upgrade`"
        )
    raise SchemaOutdated(
        f"the database {mask_url(url)} is at revision {current}, this version of mssante "
        f"expects {expected}: run `mssante db upgrade`"
    )
