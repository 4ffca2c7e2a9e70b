"""IMAP SEARCH: a keyed Bloom filter of the searched header fields per stored message.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22

- `blob_meta.search_filter`: 256 octets per blob (`store/searchfilter.py`), NULL for the
  rows already stored (a NULL filter makes the message a candidate for every header search,
  which stays correct, only slower).

Written by hand. Only an addition: no table is rebuilt.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("blob_meta", sa.Column("search_filter", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    op.drop_column("blob_meta", "search_filter")
