"""Local delivery: per-mailbox used bytes, sealed message structure, DSN parameters.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-24

- `mailboxes.used_bytes`: octets of the mailbox's messages, maintained by every append, so
  the quota check at RCPT is one read. Filled here from the messages already stored.
- `blob_meta`: per blob, the sealed JSON of its ENVELOPE, BODYSTRUCTURE and part offsets.
- `dsn_requests`: RFC 3461 parameters of locally delivered recipients and whether a
  "delivered" DSN is owed.

Written by hand and frozen, like 0001. Only additions: no table is rebuilt, which matters on
SQLite, where rebuilding `mailboxes` with foreign keys enforced would cascade deletes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)

_DSN_STATES = "'pending', 'sent', 'not_requested'"


def upgrade() -> None:
    op.add_column(
        "mailboxes",
        sa.Column("used_bytes", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
    )
    op.execute(
        "UPDATE mailboxes SET used_bytes = COALESCE(("
        "SELECT SUM(messages.size) FROM messages JOIN folders ON messages.folder_id = folders.id "
        "WHERE folders.mailbox_id = mailboxes.id), 0)"
    )

    op.create_table(
        "blob_meta",
        sa.Column("blob_id", sa.BigInteger(), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("nonce", sa.LargeBinary(12), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("blob_id", name=op.f("pk_blob_meta")),
        sa.ForeignKeyConstraint(
            ["blob_id"], ["blobs.id"], name=op.f("fk_blob_meta_blob_id_blobs"), ondelete="CASCADE"
        ),
    )
    op.create_index(op.f("ix_blob_meta_key_id"), "blob_meta", ["key_id"])

    op.create_table(
        "dsn_requests",
        sa.Column("id", _ID, nullable=False),
        sa.Column("message_id", sa.BigInteger(), nullable=True),
        sa.Column("blob_id", sa.BigInteger(), nullable=False),
        sa.Column("envelope_from", sa.String(320), nullable=False),
        sa.Column("recipient", sa.String(320), nullable=False),
        sa.Column("orcpt", sa.String(500), nullable=True),
        sa.Column("notify", sa.String(64), nullable=True),
        sa.Column("ret", sa.String(4), nullable=True),
        sa.Column("envid", sa.String(100), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dsn_requests")),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_dsn_requests_message_id_messages"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["blob_id"],
            ["blobs.id"],
            name=op.f("fk_dsn_requests_blob_id_blobs"),
            ondelete="RESTRICT",
        ),
        sa.CheckConstraint(f"state IN ({_DSN_STATES})", name=op.f("ck_dsn_requests_state")),
        sa.CheckConstraint(
            "ret IS NULL OR ret IN ('FULL', 'HDRS')", name=op.f("ck_dsn_requests_ret")
        ),
    )
    op.create_index(
        op.f("ix_dsn_requests_state_created_at"), "dsn_requests", ["state", "created_at"]
    )
    op.create_index(op.f("ix_dsn_requests_message_id"), "dsn_requests", ["message_id"])
    op.create_index(op.f("ix_dsn_requests_blob_id"), "dsn_requests", ["blob_id"])


def downgrade() -> None:
    op.drop_table("dsn_requests")
    op.drop_table("blob_meta")
    # A plain ALTER TABLE … DROP COLUMN (SQLite 3.35+), not Alembic's batch mode, which would
    # rebuild `mailboxes` and cascade-delete every row that references it.
    op.execute("ALTER TABLE mailboxes DROP COLUMN used_bytes")
