"""Shared and delegated mailboxes: per-reader \\Seen.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22

- `private_seen`: the \\Seen flag of a grantee (delegate, ORG member) on a message of another
  mailbox, one row per (message, reader) seen; the owner's own \\Seen stays in `messages.seen`.

Written by hand and frozen. Only additions.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "private_seen",
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.Column("reader_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("message_id", "reader_id", name=op.f("pk_private_seen")),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_private_seen_message_id_messages"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["reader_id"],
            ["mailboxes.id"],
            name=op.f("fk_private_seen_reader_id_mailboxes"),
            ondelete="CASCADE",
        ),
    )
    op.create_index(op.f("ix_private_seen_reader_id"), "private_seen", ["reader_id"])


def downgrade() -> None:
    op.drop_table("private_seen")
