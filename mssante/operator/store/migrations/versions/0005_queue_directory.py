"""Outbound queue as the submission path uses it; the national directory mirror.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22

- `queue_messages`, `queue_recipients`, `queue_attempts` are rebuilt. 0001 created them before
  any code wrote to them; the queue (`operator/queue.py`) needs more: the content reference
  becomes nullable (released once every recipient is final), the message keeps its size and
  its BODY/SMTPUTF8 parameters, a recipient gets a claim token and lease (a worker that dies
  gives its recipients back), the remote MTA, the DSN owed and whether the delay DSN went out.
  The upgrade refuses to run if a queue table holds rows: nothing written by earlier versions
  may be dropped silently.
- `directory_entries`: the mirror of the national MSSanté directory (filled by issue 6's LDAP
  sync and extraction import; read at RCPT by submission).

Written by hand and frozen. The rebuilt tables are dropped and created, never altered in
Alembic's batch mode (on SQLite that copies and drops tables with foreign keys enforced).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from alembic.util import CommandError

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)

_QUEUE_STATES = "'queued', 'in_flight', 'delivered', 'deferred', 'failed', 'expired'"
_QUEUE_DSN = "'failed', 'delayed', 'relayed'"
_QUEUE_TABLES = ("queue_attempts", "queue_recipients", "queue_messages")


def _pk(table: str) -> sa.PrimaryKeyConstraint:
    return sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{table}"))


def _fk(table: str, column: str, target: str, ondelete: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=op.f(f"fk_{table}_{column}_{target}"), ondelete=ondelete
    )


def _refuse_if_rows() -> None:
    bind = op.get_bind()
    for table in _QUEUE_TABLES:
        count = bind.execute(sa.select(sa.func.count()).select_from(sa.table(table))).scalar_one()
        if count:
            raise CommandError(
                f"migration 0005 rebuilds {table}, which holds {count} row(s): no released "
                f"version writes it, so these rows were put there by hand; remove them first"
            )


def upgrade() -> None:
    _refuse_if_rows()
    for table in _QUEUE_TABLES:
        op.drop_table(table)

    op.create_table(
        "queue_messages",
        sa.Column("id", _ID, nullable=False),
        sa.Column("blob_id", sa.BigInteger(), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("envelope_from", sa.String(320), nullable=False),
        sa.Column("submitter_id", sa.BigInteger(), nullable=True),
        sa.Column("message_id", sa.String(998), nullable=True),
        sa.Column("ret", sa.String(4), nullable=True),
        sa.Column("envid", sa.String(100), nullable=True),
        sa.Column("body", sa.String(8), nullable=True),
        sa.Column("smtputf8", sa.Boolean(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        _pk("queue_messages"),
        _fk("queue_messages", "blob_id", "blobs", "RESTRICT"),
        _fk("queue_messages", "submitter_id", "mailboxes", "SET NULL"),
        sa.CheckConstraint(
            "ret IS NULL OR ret IN ('FULL', 'HDRS')", name=op.f("ck_queue_messages_ret")
        ),
        sa.CheckConstraint(
            "body IS NULL OR body IN ('7BIT', '8BITMIME')", name=op.f("ck_queue_messages_body")
        ),
    )
    op.create_index(op.f("ix_queue_messages_blob_id"), "queue_messages", ["blob_id"])
    op.create_index(op.f("ix_queue_messages_created_at"), "queue_messages", ["created_at"])

    op.create_table(
        "queue_recipients",
        sa.Column("id", _ID, nullable=False),
        sa.Column("queue_message_id", sa.BigInteger(), nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("domain", sa.String(253), nullable=False),
        sa.Column("orcpt", sa.String(500), nullable=True),
        sa.Column("notify", sa.String(64), nullable=True),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _TS, nullable=True),
        sa.Column("claim_token", sa.String(32), nullable=True),
        sa.Column("lease_until", _TS, nullable=True),
        sa.Column("last_code", sa.Integer(), nullable=True),
        sa.Column("last_enhanced", sa.String(16), nullable=True),
        sa.Column("last_text", sa.Text(), nullable=True),
        sa.Column("remote_mta", sa.String(253), nullable=True),
        sa.Column("delay_dsn_sent", sa.Boolean(), nullable=False),
        sa.Column("dsn_owed", sa.String(10), nullable=True),
        sa.Column("updated_at", _TS, nullable=False),
        _pk("queue_recipients"),
        _fk("queue_recipients", "queue_message_id", "queue_messages", "CASCADE"),
        sa.CheckConstraint(f"state IN ({_QUEUE_STATES})", name=op.f("ck_queue_recipients_state")),
        sa.CheckConstraint(
            f"dsn_owed IS NULL OR dsn_owed IN ({_QUEUE_DSN})",
            name=op.f("ck_queue_recipients_dsn_owed"),
        ),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_queue_recipients_attempts")),
    )
    op.create_index(
        op.f("ix_queue_recipients_state_next_attempt_at"),
        "queue_recipients",
        ["state", "next_attempt_at"],
    )
    op.create_index(
        op.f("ix_queue_recipients_queue_message_id"), "queue_recipients", ["queue_message_id"]
    )
    op.create_index(op.f("ix_queue_recipients_domain"), "queue_recipients", ["domain"])
    op.create_index(op.f("ix_queue_recipients_address"), "queue_recipients", ["address"])
    op.create_index(op.f("ix_queue_recipients_dsn_owed"), "queue_recipients", ["dsn_owed"])

    _create_attempts()

    op.create_table(
        "directory_entries",
        sa.Column("id", _ID, nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("mailbox_type", sa.String(3), nullable=False),
        sa.Column("national_id_type", sa.String(8), nullable=True),
        sa.Column("national_id", sa.String(32), nullable=True),
        sa.Column("civility", sa.String(32), nullable=True),
        sa.Column("family_name", sa.String(256), nullable=True),
        sa.Column("given_name", sa.String(256), nullable=True),
        sa.Column("profession_code", sa.String(16), nullable=True),
        sa.Column("profession_label", sa.String(256), nullable=True),
        sa.Column("speciality_code", sa.String(16), nullable=True),
        sa.Column("speciality_label", sa.String(256), nullable=True),
        sa.Column("structure_id_type", sa.String(8), nullable=True),
        sa.Column("structure_id", sa.String(32), nullable=True),
        sa.Column("structure_name", sa.String(512), nullable=True),
        sa.Column("service", sa.String(512), nullable=True),
        sa.Column("postal_code", sa.String(16), nullable=True),
        sa.Column("city", sa.String(256), nullable=True),
        sa.Column("liste_rouge", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(16), nullable=True),
        sa.Column("updated_at", _TS, nullable=False),
        _pk("directory_entries"),
        sa.UniqueConstraint("address", name=op.f("uq_directory_entries_address")),
        sa.CheckConstraint(
            "address = lower(address)", name=op.f("ck_directory_entries_address_lowercase")
        ),
        sa.CheckConstraint(
            "mailbox_type IN ('PER', 'ORG', 'APP', 'CAB')",
            name=op.f("ck_directory_entries_mailbox_type"),
        ),
    )
    op.create_index(op.f("ix_directory_entries_national_id"), "directory_entries", ["national_id"])
    op.create_index(
        op.f("ix_directory_entries_structure_id"), "directory_entries", ["structure_id"]
    )


def _create_attempts() -> None:
    # The same in both directions: attempts did not change.
    op.create_table(
        "queue_attempts",
        sa.Column("id", _ID, nullable=False),
        sa.Column("recipient_id", sa.BigInteger(), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("host", sa.String(253), nullable=True),
        sa.Column("code", sa.Integer(), nullable=True),
        sa.Column("enhanced", sa.String(16), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        _pk("queue_attempts"),
        _fk("queue_attempts", "recipient_id", "queue_recipients", "CASCADE"),
    )
    op.create_index(op.f("ix_queue_attempts_recipient_id"), "queue_attempts", ["recipient_id"])


def downgrade() -> None:
    # The queue's content goes with it, as 0001's shape cannot hold a released message.
    op.drop_table("directory_entries")
    for table in _QUEUE_TABLES:
        op.drop_table(table)
    # 0001's shape, as 0001 created it.
    op.create_table(
        "queue_messages",
        sa.Column("id", _ID, nullable=False),
        sa.Column("blob_id", sa.BigInteger(), nullable=False),
        sa.Column("envelope_from", sa.String(320), nullable=False),
        sa.Column("submitter_id", sa.BigInteger(), nullable=True),
        sa.Column("message_id", sa.String(998), nullable=True),
        sa.Column("ret", sa.String(4), nullable=True),
        sa.Column("envid", sa.String(100), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        _pk("queue_messages"),
        _fk("queue_messages", "blob_id", "blobs", "RESTRICT"),
        _fk("queue_messages", "submitter_id", "mailboxes", "SET NULL"),
        sa.CheckConstraint(
            "ret IS NULL OR ret IN ('FULL', 'HDRS')", name=op.f("ck_queue_messages_ret")
        ),
    )
    op.create_index(op.f("ix_queue_messages_blob_id"), "queue_messages", ["blob_id"])
    op.create_table(
        "queue_recipients",
        sa.Column("id", _ID, nullable=False),
        sa.Column("queue_message_id", sa.BigInteger(), nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("domain", sa.String(253), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _TS, nullable=True),
        sa.Column("last_code", sa.Integer(), nullable=True),
        sa.Column("last_enhanced", sa.String(16), nullable=True),
        sa.Column("last_text", sa.Text(), nullable=True),
        sa.Column("notify", sa.String(64), nullable=True),
        sa.Column("orcpt", sa.String(500), nullable=True),
        sa.Column("updated_at", _TS, nullable=False),
        _pk("queue_recipients"),
        _fk("queue_recipients", "queue_message_id", "queue_messages", "CASCADE"),
        sa.CheckConstraint(f"state IN ({_QUEUE_STATES})", name=op.f("ck_queue_recipients_state")),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_queue_recipients_attempts")),
    )
    op.create_index(
        op.f("ix_queue_recipients_state_next_attempt_at"),
        "queue_recipients",
        ["state", "next_attempt_at"],
    )
    op.create_index(
        op.f("ix_queue_recipients_queue_message_id"), "queue_recipients", ["queue_message_id"]
    )
    _create_attempts()
