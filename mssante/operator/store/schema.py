"""The relational schema: one declarative model per table, portable between SQLite and PostgreSQL.

This module is the reference the migrations are checked against (`tests/store/test_migrate.py`
compares this metadata with a migrated database). A change here needs a new migration in
`migrations/versions/`; old migrations never import from this module, so they stay frozen.

Portability rules followed throughout:
- identifiers are BIGINT on PostgreSQL but INTEGER on SQLite, where only `INTEGER PRIMARY KEY`
  aliases the rowid and autoincrements;
- enumerations are short strings with a CHECK constraint (no native ENUM type: adding a value
  must not need an `ALTER TYPE` that SQLite cannot do);
- datetimes go through `UtcDateTime`, so both databases hand back timezone-aware UTC values;
- IMAP UIDs, UIDVALIDITY and MODSEQ are BIGINT: UIDs are unsigned 32-bit (RFC 3501 §2.3.1.1)
  and do not fit PostgreSQL's signed INTEGER, mod-sequences are 63-bit (RFC 7162 §3.1.1).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class MailboxType(StrEnum):
    """Mailbox ("BAL") types of the national directory, plus patients' mailboxes."""

    PER = "PER"  # nominative: one professional, tied to their national id
    ORG = "ORG"  # organisational: a service or team
    APP = "APP"  # applicative: a piece of software
    CAB = "CAB"  # practice: shared mailbox of a liberal practice
    PATIENT = "PATIENT"  # <INS>@patient domain


class MailboxState(StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"  # kept, refuses logins and deliveries; can be re-enabled
    PENDING = "pending"  # created, not yet usable (e.g. a patient whose space is not active)
    # End of life. The row stays: for traceability, and so that UIDVALIDITY stays monotonic.
    CLOSED = "closed"


class SpecialUse(StrEnum):
    """RFC 6154 special-use attributes we assign to the standard folders."""

    SENT = "\\Sent"
    DRAFTS = "\\Drafts"
    TRASH = "\\Trash"
    JUNK = "\\Junk"
    ARCHIVE = "\\Archive"


class BindingKind(StrEnum):
    """How a client certificate is tied to a mailbox."""

    FINGERPRINT = "fingerprint"  # SHA-256 of the DER certificate, lower-case hex
    SUBJECT_DN = "subject_dn"  # normalised subject DN (normalisation is pki's job)
    NATIONAL_ID = "national_id"  # the holder's national id read from the certificate


class QueueState(StrEnum):
    QUEUED = "queued"
    IN_FLIGHT = "in_flight"
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    FAILED = "failed"
    EXPIRED = "expired"


class DsnState(StrEnum):
    """Whether a delivery status notification is owed for a locally delivered recipient."""

    PENDING = "pending"  # NOTIFY=SUCCESS was asked (RFC 3461 §4.1): a "delivered" DSN is owed
    SENT = "sent"
    NOT_REQUESTED = "not_requested"  # parameters kept for the trace, no DSN owed


class DsnRet(StrEnum):
    """RFC 3461 §4.3 RET parameter: how much of the message a DSN returns."""

    FULL = "FULL"
    HDRS = "HDRS"


class Outcome(StrEnum):
    OK = "ok"
    REFUSED = "refused"
    ERROR = "error"


def _in(column: str, values: type[StrEnum]) -> str:
    """SQL `column IN ('a', 'b')` for a CHECK constraint (values are our own constants)."""
    quoted = ", ".join("'" + v.value.replace("'", "''") + "'" for v in values)
    return f"{column} IN ({quoted})"


# Deterministic constraint names: later migrations must be able to drop or alter a constraint by
# name, and SQLite/PostgreSQL would otherwise invent different ones.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Only `INTEGER PRIMARY KEY` is SQLite's autoincrementing rowid alias; BIGINT would not be.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on both databases.

    PostgreSQL stores `timestamptz`; SQLite has no time zones, so values are stored in UTC and
    the zone is put back when reading. Naive datetimes are refused: they are always a bug here.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the store needs timezone-aware values")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime from the database, got {type(value).__name__}")
        if value.tzinfo is UTC:  # asyncpg's timestamptz values: already right
            return value
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class DomainRow(Base):
    """A mail domain hosted by this operator (we hold mailboxes under it)."""

    __tablename__ = "domains"
    __table_args__ = (CheckConstraint("name = lower(name)", name="name_lowercase"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(253), unique=True)  # RFC 1035 §2.3.4
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class MailboxRow(Base):
    __tablename__ = "mailboxes"
    __table_args__ = (
        CheckConstraint("address = lower(address)", name="address_lowercase"),
        CheckConstraint(_in("type", MailboxType), name="type"),
        CheckConstraint(_in("state", MailboxState), name="state"),
        CheckConstraint("quota_bytes IS NULL OR quota_bytes >= 0", name="quota_bytes"),
        Index("ix_mailboxes_domain_id", "domain_id"),
        Index("ix_mailboxes_national_id", "national_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    address: Mapped[str] = mapped_column(String(320), unique=True)  # RFC 5321 §4.5.3.1: 64+1+255
    domain_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("domains.id", ondelete="RESTRICT")
    )
    type: Mapped[str] = mapped_column(String(8))
    display_name: Mapped[str] = mapped_column(String(256), default="")
    # `8`+RPPS for PER, `1`+FINESS / `3`+SIRET for structures, the INS for patients.
    national_id: Mapped[str | None] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(8))
    quota_bytes: Mapped[int | None] = mapped_column(BigInteger)  # NULL: the configured default
    # Octets of all messages in the mailbox's folders, maintained by every append in the same
    # transaction: the quota check at RCPT is then one indexed read.
    used_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    # Highest UIDVALIDITY ever given to a folder of this mailbox. Kept on the mailbox, not the
    # folder, so a folder deleted and re-created under the same name gets a greater value
    # (RFC 3501 §2.3.1.1: a UIDVALIDITY must not be reused for a name with other contents).
    last_uidvalidity: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, onupdate=utcnow)


class CredentialRow(Base):
    """The password of a mailbox that can log in (absent row: no password login)."""

    __tablename__ = "credentials"

    mailbox_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("mailboxes.id", ondelete="CASCADE"), primary_key=True
    )
    password_hash: Mapped[str] = mapped_column(String(256))  # argon2 PHC string
    password_changed_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class CertificateBindingRow(Base):
    __tablename__ = "certificate_bindings"
    __table_args__ = (
        UniqueConstraint("kind", "value", "mailbox_id"),
        CheckConstraint(_in("kind", BindingKind), name="kind"),
        Index("ix_certificate_bindings_mailbox_id", "mailbox_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("mailboxes.id", ondelete="CASCADE")
    )
    kind: Mapped[str] = mapped_column(String(16))
    value: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class GrantRow(Base):
    """Access of one mailbox's holder to another mailbox (delegation, team membership)."""

    __tablename__ = "grants"
    __table_args__ = (
        UniqueConstraint("owner_id", "grantee_id"),
        CheckConstraint("owner_id <> grantee_id", name="not_self"),
        Index("ix_grants_grantee_id", "grantee_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    owner_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("mailboxes.id", ondelete="CASCADE")
    )
    grantee_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("mailboxes.id", ondelete="CASCADE")
    )
    can_read: Mapped[bool] = mapped_column(Boolean, default=False)
    can_write: Mapped[bool] = mapped_column(Boolean, default=False)
    can_send_as: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class FolderRow(Base):
    """An IMAP mailbox (called a folder here to keep "mailbox" for the account)."""

    __tablename__ = "folders"
    __table_args__ = (
        UniqueConstraint("mailbox_id", "name"),
        CheckConstraint(
            "special_use IS NULL OR " + _in("special_use", SpecialUse), name="special_use"
        ),
        # RFC 3501 §9: uniqueid = nz-number, a non-zero unsigned 32-bit value.
        CheckConstraint("uidvalidity > 0 AND uidvalidity <= 4294967295", name="uidvalidity"),
        CheckConstraint("uidnext > 0", name="uidnext"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("mailboxes.id", ondelete="CASCADE")
    )
    name: Mapped[str] = mapped_column(String(1024))  # full path, '/' delimiter, UTF-8
    special_use: Mapped[str | None] = mapped_column(String(16))
    subscribed: Mapped[bool] = mapped_column(Boolean, default=True)
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    uidnext: Mapped[int] = mapped_column(BigInteger, default=1)
    # Starts at 1: RFC 7162 §3.1.1 makes HIGHESTMODSEQ a non-zero value even for an empty folder.
    highest_modseq: Mapped[int] = mapped_column(BigInteger, default=1)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class BlobRow(Base):
    """A message body, stored once whatever the number of folders and queue entries using it."""

    __tablename__ = "blobs"
    __table_args__ = (Index("ix_blobs_key_id", "key_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # Keyed HMAC of the plaintext (see crypto.py): deduplicates without revealing, to someone
    # holding only the disk, whether a known document is stored.
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    key_id: Mapped[str] = mapped_column(String(64))
    nonce: Mapped[bytes] = mapped_column(LargeBinary(12))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(BigInteger)  # plaintext octets
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class BlobMetaRow(Base):
    """What IMAP needs about a stored message, computed once at delivery, sealed like the blob.

    The plaintext (`operator.metarecord`) holds the ENVELOPE and BODYSTRUCTURE responses, the
    message's header and the offsets of every part. It holds the subject and the addresses,
    so it is encrypted (AES-256-GCM, see
    `crypto.BlobCipher.seal_record`), bound to its blob's digest.
    """

    __tablename__ = "blob_meta"
    __table_args__ = (Index("ix_blob_meta_key_id", "key_id"),)

    blob_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("blobs.id", ondelete="CASCADE"), primary_key=True
    )
    key_id: Mapped[str] = mapped_column(String(64))
    nonce: Mapped[bytes] = mapped_column(LargeBinary(12))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    # Keyed Bloom filter over the searched header fields (`searchfilter`), built under
    # `key_id`; NULL for rows stored before it existed (always a search candidate).
    search_filter: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


class MessageRow(Base):
    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("folder_id", "uid"),  # also the (folder, uid) index
        Index("ix_messages_folder_id_modseq", "folder_id", "modseq"),
        Index("ix_messages_blob_id", "blob_id"),
        # SEARCH SEEN/UNSEEN/FLAGGED… are per folder: lead with the folder.
        Index("ix_messages_folder_id_seen", "folder_id", "seen"),
        Index("ix_messages_folder_id_answered", "folder_id", "answered"),
        Index("ix_messages_folder_id_flagged", "folder_id", "flagged"),
        Index("ix_messages_folder_id_deleted", "folder_id", "deleted"),
        Index("ix_messages_folder_id_draft", "folder_id", "draft"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    folder_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("folders.id", ondelete="CASCADE"))
    uid: Mapped[int] = mapped_column(BigInteger)
    blob_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("blobs.id", ondelete="RESTRICT"))
    size: Mapped[int] = mapped_column(BigInteger)
    internal_date: Mapped[datetime] = mapped_column(UtcDateTime())
    modseq: Mapped[int] = mapped_column(BigInteger)
    seen: Mapped[bool] = mapped_column(Boolean, default=False)
    answered: Mapped[bool] = mapped_column(Boolean, default=False)
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    draft: Mapped[bool] = mapped_column(Boolean, default=False)
    keywords: Mapped[str] = mapped_column(Text, default="")  # space-separated flag keywords
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class PrivateSeenRow(Base):
    """\\Seen of a message in another holder's mailbox, kept per reader (issue 4 §5).

    A delegate or an ORG member reading a shared mailbox has their own read state; the owner's
    stays in `messages.seen`. A row means "seen by this reader"; no row, not seen.
    """

    __tablename__ = "private_seen"
    __table_args__ = (Index("ix_private_seen_reader_id", "reader_id"),)

    message_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    )
    reader_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("mailboxes.id", ondelete="CASCADE"), primary_key=True
    )


class ExpungedRow(Base):
    """UIDs removed from a folder and the MODSEQ of their removal: QRESYNC VANISHED (RFC 7162)."""

    __tablename__ = "expunged"
    __table_args__ = (
        UniqueConstraint("folder_id", "uid"),
        Index("ix_expunged_folder_id_modseq", "folder_id", "modseq"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    folder_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("folders.id", ondelete="CASCADE"))
    uid: Mapped[int] = mapped_column(BigInteger)
    modseq: Mapped[int] = mapped_column(BigInteger)


class QueueMessageRow(Base):
    """A message waiting for delivery to other operators; one row per submitted message.

    `blob_id` is the sealed content, shared with any other copy of the same bytes (the Sent
    folder); it becomes NULL once every recipient is final and no DSN is owed any more (the
    queue then no longer needs the content, `operator/queue.py`).
    """

    __tablename__ = "queue_messages"
    __table_args__ = (
        CheckConstraint("ret IS NULL OR " + _in("ret", DsnRet), name="ret"),
        CheckConstraint("body IS NULL OR body IN ('7BIT', '8BITMIME')", name="body"),
        Index("ix_queue_messages_blob_id", "blob_id"),
        Index("ix_queue_messages_created_at", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    blob_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("blobs.id", ondelete="RESTRICT")
    )
    size: Mapped[int] = mapped_column(BigInteger)  # plaintext octets, kept after release
    envelope_from: Mapped[str] = mapped_column(String(320))  # '' for the null reverse-path <>
    # The authenticated identity that submitted it (a mailbox we host), for the trace.
    submitter_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("mailboxes.id", ondelete="SET NULL")
    )
    message_id: Mapped[str | None] = mapped_column(String(998))  # RFC 5322 §2.1.1 line limit
    ret: Mapped[str | None] = mapped_column(String(4))  # RFC 3461 §4.3
    envid: Mapped[str | None] = mapped_column(String(100))  # RFC 3461 §4.4: at most 100 chars
    body: Mapped[str | None] = mapped_column(String(8))  # RFC 6152 BODY=, passed on to peers
    smtputf8: Mapped[bool] = mapped_column(Boolean, default=False)  # RFC 6531
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class QueueDsn(StrEnum):
    """A delivery status notification owed for a queued recipient (RFC 3464 §2.3.3 Action)."""

    FAILED = "failed"
    DELAYED = "delayed"
    RELAYED = "relayed"  # delivered to a peer that does not take DSN responsibility


class QueueRecipientRow(Base):
    """Per-recipient delivery state: each recipient is retried, bounced or expired on its own.

    `claim_token` and `lease_until` are set while a worker holds the recipient (`in_flight`):
    a worker that dies leaves them behind, and once the lease has passed the recipient goes
    back to `queued` (at-least-once delivery). `dsn_owed` names the DSN still to be sent.
    """

    __tablename__ = "queue_recipients"
    __table_args__ = (
        CheckConstraint(_in("state", QueueState), name="state"),
        CheckConstraint("dsn_owed IS NULL OR " + _in("dsn_owed", QueueDsn), name="dsn_owed"),
        CheckConstraint("attempts >= 0", name="attempts"),
        Index("ix_queue_recipients_state_next_attempt_at", "state", "next_attempt_at"),
        Index("ix_queue_recipients_queue_message_id", "queue_message_id"),
        Index("ix_queue_recipients_domain", "domain"),
        Index("ix_queue_recipients_address", "address"),
        Index("ix_queue_recipients_dsn_owed", "dsn_owed"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    queue_message_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("queue_messages.id", ondelete="CASCADE")
    )
    address: Mapped[str] = mapped_column(String(320))  # lower-cased
    domain: Mapped[str] = mapped_column(String(253))  # lower-cased: the destination
    orcpt: Mapped[str | None] = mapped_column(String(500))  # RFC 3461 §4.2 ORCPT, as given
    notify: Mapped[str | None] = mapped_column(String(64))  # RFC 3461 §4.1 NOTIFY, as given
    state: Mapped[str] = mapped_column(String(10), default=QueueState.QUEUED.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    claim_token: Mapped[str | None] = mapped_column(String(32))
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime())
    last_code: Mapped[int | None] = mapped_column(Integer)
    last_enhanced: Mapped[str | None] = mapped_column(String(16))  # RFC 3463 x.y.z
    last_text: Mapped[str | None] = mapped_column(Text)
    remote_mta: Mapped[str | None] = mapped_column(String(253))  # RFC 3464 §2.3.5
    delay_dsn_sent: Mapped[bool] = mapped_column(Boolean, default=False)
    dsn_owed: Mapped[str | None] = mapped_column(String(10))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, onupdate=utcnow)


class QueueAttemptRow(Base):
    """One delivery attempt for one recipient: the history a DSN and an operator need."""

    __tablename__ = "queue_attempts"
    __table_args__ = (Index("ix_queue_attempts_recipient_id", "recipient_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    recipient_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("queue_recipients.id", ondelete="CASCADE")
    )
    at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    host: Mapped[str | None] = mapped_column(String(253))
    code: Mapped[int | None] = mapped_column(Integer)
    enhanced: Mapped[str | None] = mapped_column(String(16))
    text: Mapped[str | None] = mapped_column(Text)


class DirectoryEntryRow(Base):
    """One mailbox of the national MSSanté directory (our mirror of it, issue 6).

    Filled by the LDAP sync and the extraction-file import; read at RCPT by the submission
    path (`directory/mirror.py`). The columns are those of the national extraction file that
    an operator needs; all but the address and type are optional.
    """

    __tablename__ = "directory_entries"
    __table_args__ = (
        CheckConstraint("address = lower(address)", name="address_lowercase"),
        CheckConstraint("mailbox_type IN ('PER', 'ORG', 'APP', 'CAB')", name="mailbox_type"),
        Index("ix_directory_entries_national_id", "national_id"),
        Index("ix_directory_entries_structure_id", "structure_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    address: Mapped[str] = mapped_column(String(320), unique=True)
    mailbox_type: Mapped[str] = mapped_column(String(3))
    national_id_type: Mapped[str | None] = mapped_column(String(8))  # "Type Identifiant PP"
    national_id: Mapped[str | None] = mapped_column(String(32))  # 8+RPPS, 0+ADELI
    civility: Mapped[str | None] = mapped_column(String(32))
    family_name: Mapped[str | None] = mapped_column(String(256))
    given_name: Mapped[str | None] = mapped_column(String(256))
    profession_code: Mapped[str | None] = mapped_column(String(16))
    profession_label: Mapped[str | None] = mapped_column(String(256))
    speciality_code: Mapped[str | None] = mapped_column(String(16))
    speciality_label: Mapped[str | None] = mapped_column(String(256))
    structure_id_type: Mapped[str | None] = mapped_column(String(8))
    structure_id: Mapped[str | None] = mapped_column(String(32))  # 1+FINESS, 3+SIRET
    structure_name: Mapped[str | None] = mapped_column(String(512))
    service: Mapped[str | None] = mapped_column(String(512))
    postal_code: Mapped[str | None] = mapped_column(String(16))
    city: Mapped[str | None] = mapped_column(String(256))
    # Hidden from searches, still found by exact address (issue 6 §3).
    liste_rouge: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[str | None] = mapped_column(String(16))  # "ldap", "file", "test"…
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, onupdate=utcnow)


class DsnRequestRow(Base):
    """The DSN parameters of a locally delivered recipient (RFC 3461), for later receipts.

    One row per recipient mailbox a message was delivered to, written with the delivery when
    the envelope carried any DSN parameter. `state` is `pending` when a "delivered" DSN
    (RFC 3464) is owed: NOTIFY included SUCCESS and the reverse-path was not null.
    """

    __tablename__ = "dsn_requests"
    __table_args__ = (
        CheckConstraint(_in("state", DsnState), name="state"),
        CheckConstraint("ret IS NULL OR " + _in("ret", DsnRet), name="ret"),
        Index("ix_dsn_requests_state_created_at", "state", "created_at"),
        Index("ix_dsn_requests_message_id", "message_id"),
        Index("ix_dsn_requests_blob_id", "blob_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # SET NULL: a message expunged before its DSN went out still owes the DSN.
    message_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("messages.id", ondelete="SET NULL")
    )
    # The delivered content, for the headers a DSN returns (RFC 3461 §4.3, RFC 3462).
    blob_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("blobs.id", ondelete="RESTRICT"))
    envelope_from: Mapped[str] = mapped_column(String(320))  # '' for the null reverse-path <>
    recipient: Mapped[str] = mapped_column(String(320))
    orcpt: Mapped[str | None] = mapped_column(String(500))  # RFC 3461 §4.2, as given
    notify: Mapped[str | None] = mapped_column(String(64))  # RFC 3461 §4.1, e.g. SUCCESS,DELAY
    ret: Mapped[str | None] = mapped_column(String(4))  # RFC 3461 §4.3
    envid: Mapped[str | None] = mapped_column(String(100))  # RFC 3461 §4.4
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, onupdate=utcnow)


class AuditEventRow(Base):
    """The trace of an exchange or an access (MSSanté traceability); append-only."""

    __tablename__ = "audit_events"
    __table_args__ = (
        CheckConstraint(_in("outcome", Outcome), name="outcome"),
        Index("ix_audit_events_at", "at"),
        Index("ix_audit_events_event_at", "event", "at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    event: Mapped[str] = mapped_column(String(64))  # dotted: `mailbox.add`, `smtp.reject`
    actor: Mapped[str | None] = mapped_column(String(320))
    peer_ip: Mapped[str | None] = mapped_column(String(45))  # longest textual IPv6
    peer_dn: Mapped[str | None] = mapped_column(String(1024))
    target: Mapped[str | None] = mapped_column(String(1024))
    outcome: Mapped[str] = mapped_column(String(8))
    details: Mapped[str | None] = mapped_column(Text)  # JSON object
