"""Alembic environment: runs on the connection handed over by `mssante.operator.store.migrate`.

There is no alembic.ini and no URL here on purpose: `migrate.py` opens the database with the
same engine set-up as the servers (SQLite pragmas, URL normalisation, masked errors) and passes
the connection in `config.attributes["connection"]`.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from mssante.operator.store.schema import Base


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        # Only used when a developer autogenerates a draft of the next migration.
        target_metadata=Base.metadata,
        compare_type=True,
        # SQLite cannot ALTER most things: future migrations use batch mode (copy and move).
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported: use `mssante db upgrade`")
_connection = context.config.attributes.get("connection")
if not isinstance(_connection, Connection):
    raise RuntimeError(
        "migrations run through mssante.operator.store.migrate (`mssante db upgrade`), "
        "not the alembic command line"
    )
_run(_connection)
