"""Initial schema: domains, mailboxes, access, folders, encrypted blobs, messages, queue, audit.

Revision ID: 0001
Revises:
Create Date: 2025-11-22

Written by hand and frozen: it does not import `schema.py`, which will move on. Every
constraint and index name is given in full (`op.f`) so that it does not depend on the naming
convention in force when this runs.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# INTEGER on SQLite so that the primary key is the autoincrementing rowid alias.
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)

_MAILBOX_TYPES = "'PER', 'ORG', 'APP', 'CAB', 'PATIENT'"
_MAILBOX_STATES = "'active', 'disabled', 'pending', 'closed'"
_BINDING_KINDS = "'fingerprint', 'subject_dn', 'national_id'"
_SPECIAL_USES = "'\\Sent', '\\Drafts', '\\Trash', '\\Junk', '\\Archive'"
_QUEUE_STATES = "'queued', 'in_flight', 'delivered', 'deferred', 'failed', 'expired'"
_OUTCOMES = "'ok', 'refused', 'error'"


def _pk(table: str) -> sa.PrimaryKeyConstraint:
    return sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{table}"))


def _fk(table: str, column: str, target: str, ondelete: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=op.f(f"fk_{table}_{column}_{target}"), ondelete=ondelete
    )


def upgrade() -> None:
    op.create_table(
        "domains",
        sa.Column("id", _ID, nullable=False),
        sa.Column("name", sa.String(253), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        _pk("domains"),
        sa.UniqueConstraint("name", name=op.f("uq_domains_name")),
        sa.CheckConstraint("name = lower(name)", name=op.f("ck_domains_name_lowercase")),
    )

    op.create_table(
        "mailboxes",
        sa.Column("id", _ID, nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("domain_id", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.String(8), nullable=False),
        sa.Column("display_name", sa.String(256), nullable=False),
        sa.Column("national_id", sa.String(32), nullable=True),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("quota_bytes", sa.BigInteger(), nullable=True),
        sa.Column("last_uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        _pk("mailboxes"),
        _fk("mailboxes", "domain_id", "domains", "RESTRICT"),
        sa.UniqueConstraint("address", name=op.f("uq_mailboxes_address")),
        sa.CheckConstraint("address = lower(address)", name=op.f("ck_mailboxes_address_lowercase")),
        sa.CheckConstraint(f"type IN ({_MAILBOX_TYPES})", name=op.f("ck_mailboxes_type")),
        sa.CheckConstraint(f"state IN ({_MAILBOX_STATES})", name=op.f("ck_mailboxes_state")),
        sa.CheckConstraint(
            "quota_bytes IS NULL OR quota_bytes >= 0", name=op.f("ck_mailboxes_quota_bytes")
        ),
    )
    op.create_index(op.f("ix_mailboxes_domain_id"), "mailboxes", ["domain_id"])
    op.create_index(op.f("ix_mailboxes_national_id"), "mailboxes", ["national_id"])

    op.create_table(
        "credentials",
        sa.Column("mailbox_id", sa.BigInteger(), nullable=False),
        sa.Column("password_hash", sa.String(256), nullable=False),
        sa.Column("password_changed_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("mailbox_id", name=op.f("pk_credentials")),
        _fk("credentials", "mailbox_id", "mailboxes", "CASCADE"),
    )

    op.create_table(
        "certificate_bindings",
        sa.Column("id", _ID, nullable=False),
        sa.Column("mailbox_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.String(1024), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        _pk("certificate_bindings"),
        _fk("certificate_bindings", "mailbox_id", "mailboxes", "CASCADE"),
        sa.UniqueConstraint(
            "kind",
            "value",
            "mailbox_id",
            name=op.f("uq_certificate_bindings_kind_value_mailbox_id"),
        ),
        sa.CheckConstraint(
            f"kind IN ({_BINDING_KINDS})", name=op.f("ck_certificate_bindings_kind")
        ),
    )
    op.create_index(
        op.f("ix_certificate_bindings_mailbox_id"), "certificate_bindings", ["mailbox_id"]
    )

    op.create_table(
        "grants",
        sa.Column("id", _ID, nullable=False),
        sa.Column("owner_id", sa.BigInteger(), nullable=False),
        sa.Column("grantee_id", sa.BigInteger(), nullable=False),
        sa.Column("can_read", sa.Boolean(), nullable=False),
        sa.Column("can_write", sa.Boolean(), nullable=False),
        sa.Column("can_send_as", sa.Boolean(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        _pk("grants"),
        _fk("grants", "owner_id", "mailboxes", "CASCADE"),
        _fk("grants", "grantee_id", "mailboxes", "CASCADE"),
        sa.UniqueConstraint("owner_id", "grantee_id", name=op.f("uq_grants_owner_id_grantee_id")),
        sa.CheckConstraint("owner_id <> grantee_id", name=op.f("ck_grants_not_self")),
    )
    op.create_index(op.f("ix_grants_grantee_id"), "grants", ["grantee_id"])

    op.create_table(
        "folders",
        sa.Column("id", _ID, nullable=False),
        sa.Column("mailbox_id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(1024), nullable=False),
        sa.Column("special_use", sa.String(16), nullable=True),
        sa.Column("subscribed", sa.Boolean(), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column("uidnext", sa.BigInteger(), nullable=False),
        sa.Column("highest_modseq", sa.BigInteger(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        _pk("folders"),
        _fk("folders", "mailbox_id", "mailboxes", "CASCADE"),
        sa.UniqueConstraint("mailbox_id", "name", name=op.f("uq_folders_mailbox_id_name")),
        sa.CheckConstraint(
            f"special_use IS NULL OR special_use IN ({_SPECIAL_USES})",
            name=op.f("ck_folders_special_use"),
        ),
        sa.CheckConstraint(
            "uidvalidity > 0 AND uidvalidity <= 4294967295", name=op.f("ck_folders_uidvalidity")
        ),
        sa.CheckConstraint("uidnext > 0", name=op.f("ck_folders_uidnext")),
    )

    op.create_table(
        "blobs",
        sa.Column("id", _ID, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("nonce", sa.LargeBinary(12), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        _pk("blobs"),
        sa.UniqueConstraint("digest", name=op.f("uq_blobs_digest")),
    )
    op.create_index(op.f("ix_blobs_key_id"), "blobs", ["key_id"])

    op.create_table(
        "messages",
        sa.Column("id", _ID, nullable=False),
        sa.Column("folder_id", sa.BigInteger(), nullable=False),
        sa.Column("uid", sa.BigInteger(), nullable=False),
        sa.Column("blob_id", sa.BigInteger(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("internal_date", _TS, nullable=False),
        sa.Column("modseq", sa.BigInteger(), nullable=False),
        sa.Column("seen", sa.Boolean(), nullable=False),
        sa.Column("answered", sa.Boolean(), nullable=False),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("draft", sa.Boolean(), nullable=False),
        sa.Column("keywords", sa.Text(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        _pk("messages"),
        _fk("messages", "folder_id", "folders", "CASCADE"),
        _fk("messages", "blob_id", "blobs", "RESTRICT"),
        sa.UniqueConstraint("folder_id", "uid", name=op.f("uq_messages_folder_id_uid")),
    )
    op.create_index(op.f("ix_messages_folder_id_modseq"), "messages", ["folder_id", "modseq"])
    op.create_index(op.f("ix_messages_blob_id"), "messages", ["blob_id"])
    for flag in ("seen", "answered", "flagged", "deleted", "draft"):
        op.create_index(op.f(f"ix_messages_folder_id_{flag}"), "messages", ["folder_id", flag])

    op.create_table(
        "expunged",
        sa.Column("id", _ID, nullable=False),
        sa.Column("folder_id", sa.BigInteger(), nullable=False),
        sa.Column("uid", sa.BigInteger(), nullable=False),
        sa.Column("modseq", sa.BigInteger(), nullable=False),
        _pk("expunged"),
        _fk("expunged", "folder_id", "folders", "CASCADE"),
        sa.UniqueConstraint("folder_id", "uid", name=op.f("uq_expunged_folder_id_uid")),
    )
    op.create_index(op.f("ix_expunged_folder_id_modseq"), "expunged", ["folder_id", "modseq"])

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

    op.create_table(
        "audit_events",
        sa.Column("id", _ID, nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(320), nullable=True),
        sa.Column("peer_ip", sa.String(45), nullable=True),
        sa.Column("peer_dn", sa.String(1024), nullable=True),
        sa.Column("target", sa.String(1024), nullable=True),
        sa.Column("outcome", sa.String(8), nullable=False),
        sa.Column("details", sa.Text(), nullable=True),
        _pk("audit_events"),
        sa.CheckConstraint(f"outcome IN ({_OUTCOMES})", name=op.f("ck_audit_events_outcome")),
    )
    op.create_index(op.f("ix_audit_events_at"), "audit_events", ["at"])
    op.create_index(op.f("ix_audit_events_event_at"), "audit_events", ["event", "at"])


def downgrade() -> None:
    # Children before parents; indexes go with their tables.
    for table in (
        "audit_events",
        "queue_attempts",
        "queue_recipients",
        "queue_messages",
        "expunged",
        "messages",
        "blobs",
        "folders",
        "grants",
        "certificate_bindings",
        "credentials",
        "mailboxes",
        "domains",
    ):
        op.drop_table(table)
