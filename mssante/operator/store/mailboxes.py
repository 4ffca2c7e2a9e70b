"""Mailboxes (BAL), their password credential and their certificate bindings.

Addresses are stored lower-cased: MSSanté operators and the national directory treat local
parts case-insensitively, and one spelling per mailbox keeps the unique constraint meaningful.
Syntax and classification (PER vs patient `<INS>@…`) are checked by `operator.addresses`
before a mailbox reaches the store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from mssante.operator.store import _sql
from mssante.operator.store.domains import normalize_domain
from mssante.operator.store.errors import AlreadyExists, NotFound
from mssante.operator.store.folders import INBOX, STANDARD_FOLDERS, create_folder
from mssante.operator.store.schema import (
    BindingKind,
    CertificateBindingRow,
    CredentialRow,
    DomainRow,
    FolderRow,
    MailboxRow,
    MailboxState,
    MailboxType,
    utcnow,
)

_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Mailbox:
    id: int
    address: str
    domain: str
    type: MailboxType
    display_name: str
    national_id: str | None
    state: MailboxState
    quota_bytes: int | None
    created_at: datetime
    updated_at: datetime
    used_bytes: int = 0  # octets of its messages, all folders (see messages.py)


@dataclass(frozen=True)
class DeliveryTarget:
    """What local delivery needs about a recipient mailbox, read in one query."""

    mailbox_id: int
    address: str
    type: MailboxType
    state: MailboxState
    quota_bytes: int | None  # as stored: NULL means the configured default, 0 no quota
    used_bytes: int
    inbox_id: int | None  # None only if the INBOX was lost, which nothing should allow


@dataclass(frozen=True)
class CertificateBinding:
    address: str
    kind: BindingKind
    value: str
    created_at: datetime


def _mailbox(row: MailboxRow) -> Mailbox:
    return Mailbox(
        id=row.id,
        address=row.address,
        domain=row.address.rpartition("@")[2],
        type=MailboxType(row.type),
        display_name=row.display_name,
        national_id=row.national_id,
        state=MailboxState(row.state),
        quota_bytes=row.quota_bytes,
        created_at=row.created_at,
        updated_at=row.updated_at,
        used_bytes=row.used_bytes,
    )


def normalize_address(address: str) -> str:
    """Lower-cased `local@domain`, angle brackets removed; ValueError if there is no `@`."""
    value = address.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    local, sep, domain = value.rpartition("@")
    if not sep or not local or not domain:
        raise ValueError(f"address {address!r}: expected local-part@domain")
    if len(local.encode("utf-8")) > 64:  # RFC 5321 §4.5.3.1.1
        raise ValueError(f"address {address!r}: local part longer than 64 octets")
    return f"{local.lower()}@{normalize_domain(domain)}"


def _check_password_hash(password_hash: str) -> None:
    # The store only ever holds argon2 PHC strings (argon2-cffi's PasswordHasher output);
    # anything else is most likely a password passed by mistake, which must not be stored.
    if not password_hash.startswith("$argon2") or len(password_hash) > 256:
        raise ValueError("password_hash: expected an argon2 PHC string ($argon2id$…)")


def normalize_binding(kind: BindingKind, value: str) -> str:
    """The stored form of a binding value; ValueError if it cannot be one."""
    text = value.strip()
    if kind is BindingKind.FINGERPRINT:
        # Accept the common `AB:CD:…` display form as well as bare hex.
        text = text.replace(":", "").lower()
        if not _FINGERPRINT.match(text):
            raise ValueError("fingerprint: expected the SHA-256 of the certificate, 64 hex digits")
    elif kind is BindingKind.NATIONAL_ID:
        text = text.upper()
    if not text or len(text) > 1024:
        raise ValueError(f"{kind.value}: expected 1 to 1024 characters")
    return text


async def _row(session: AsyncSession, address: str) -> MailboxRow | None:
    result = await session.execute(select(MailboxRow).where(MailboxRow.address == address))
    return result.scalar_one_or_none()


async def _existing(session: AsyncSession, address: str) -> MailboxRow:
    value = normalize_address(address)
    row = await _row(session, value)
    if row is None:
        raise NotFound(f"mailbox {value} does not exist")
    return row


async def create_mailbox(
    session: AsyncSession,
    address: str,
    type: MailboxType,
    display_name: str = "",
    national_id: str | None = None,
    state: MailboxState = MailboxState.ACTIVE,
    password_hash: str | None = None,
    quota_bytes: int | None = None,
) -> Mailbox:
    """Create a mailbox in a hosted domain, with its standard folders.

    NotFound if the domain is not hosted, AlreadyExists if the address is taken.
    """
    value = normalize_address(address)
    domain = value.rpartition("@")[2]
    if password_hash is not None:
        _check_password_hash(password_hash)
    if quota_bytes is not None and quota_bytes < 0:
        raise ValueError("quota_bytes must be positive (or None for the default)")
    domain_id = await session.scalar(select(DomainRow.id).where(DomainRow.name == domain))
    if domain_id is None:
        raise NotFound(f"domain {domain} is not hosted by this operator: add the domain first")
    if await _row(session, value) is not None:
        raise AlreadyExists(f"mailbox {value} already exists")
    row = MailboxRow(
        address=value,
        domain_id=domain_id,
        type=MailboxType(type).value,
        display_name=display_name.strip(),
        national_id=national_id.strip().upper() if national_id else None,
        state=MailboxState(state).value,
        quota_bytes=quota_bytes,
        last_uidvalidity=0,
    )
    try:
        async with session.begin_nested():
            session.add(row)
    except IntegrityError:
        if await _row(session, value) is not None:
            raise AlreadyExists(f"mailbox {value} already exists") from None
        raise
    if password_hash is not None:
        session.add(CredentialRow(mailbox_id=row.id, password_hash=password_hash))
    for name, special_use in STANDARD_FOLDERS:
        await create_folder(session, row.id, name, special_use)
    await session.flush()
    return _mailbox(row)


async def get_mailbox(session: AsyncSession, address: str) -> Mailbox:
    """The mailbox at this address; NotFound if there is none."""
    return _mailbox(await _existing(session, address))


async def delivery_target(session: AsyncSession, address: str) -> DeliveryTarget | None:
    """The mailbox at `address` (already normalised) with its INBOX id, or None."""
    row = (
        await session.execute(
            select(
                MailboxRow.id,
                MailboxRow.address,
                MailboxRow.type,
                MailboxRow.state,
                MailboxRow.quota_bytes,
                MailboxRow.used_bytes,
                FolderRow.id,
            )
            .outerjoin(
                FolderRow, and_(FolderRow.mailbox_id == MailboxRow.id, FolderRow.name == INBOX)
            )
            .where(MailboxRow.address == address)
        )
    ).one_or_none()
    if row is None:
        return None
    mailbox_id, stored, type_, state, quota, used, inbox_id = row
    return DeliveryTarget(
        mailbox_id=mailbox_id,
        address=stored,
        type=MailboxType(type_),
        state=MailboxState(state),
        quota_bytes=quota,
        used_bytes=used,
        inbox_id=inbox_id,
    )


async def list_mailboxes(
    session: AsyncSession, type: MailboxType | None = None, domain: str | None = None
) -> list[Mailbox]:
    query = select(MailboxRow).order_by(MailboxRow.address)
    if type is not None:
        query = query.where(MailboxRow.type == MailboxType(type).value)
    if domain is not None:
        query = query.join(DomainRow).where(DomainRow.name == normalize_domain(domain))
    result = await session.execute(query)
    return [_mailbox(row) for row in result.scalars()]


async def set_state(session: AsyncSession, address: str, state: MailboxState) -> Mailbox:
    row = await _existing(session, address)
    row.state = MailboxState(state).value
    row.updated_at = utcnow()
    await session.flush()
    return _mailbox(row)


async def set_password_hash(session: AsyncSession, address: str, password_hash: str | None) -> None:
    """Set the mailbox's password (an argon2 hash), or remove password login with None."""
    row = await _existing(session, address)
    if password_hash is None:
        await session.execute(delete(CredentialRow).where(CredentialRow.mailbox_id == row.id))
        return
    _check_password_hash(password_hash)
    now = utcnow()
    stmt = _sql.insert(session, CredentialRow).values(
        mailbox_id=row.id, password_hash=password_hash, password_changed_at=now
    )
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[CredentialRow.mailbox_id],
            set_={"password_hash": password_hash, "password_changed_at": now},
        )
    )


async def get_password_hash(session: AsyncSession, address: str) -> str | None:
    """The stored argon2 hash, or None if the mailbox has no password login."""
    row = await _existing(session, address)
    result = await session.scalar(
        select(CredentialRow.password_hash).where(CredentialRow.mailbox_id == row.id)
    )
    return result


async def bind_certificate(
    session: AsyncSession, address: str, kind: BindingKind, value: str
) -> CertificateBinding:
    """Let a client certificate authenticate as this mailbox; AlreadyExists if bound already."""
    kind = BindingKind(kind)
    normalized = normalize_binding(kind, value)
    row = await _existing(session, address)
    stmt = (
        _sql.insert(session, CertificateBindingRow)
        .values(mailbox_id=row.id, kind=kind.value, value=normalized, created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["kind", "value", "mailbox_id"])
        .returning(CertificateBindingRow.created_at)
    )
    created_at = (await session.execute(stmt)).scalar_one_or_none()
    if created_at is None:
        raise AlreadyExists(f"{kind.value} {normalized!r} is already bound to {row.address}")
    return CertificateBinding(row.address, kind, normalized, created_at)


async def unbind_certificate(
    session: AsyncSession, address: str, kind: BindingKind, value: str
) -> None:
    kind = BindingKind(kind)
    normalized = normalize_binding(kind, value)
    row = await _existing(session, address)
    result = await session.execute(
        delete(CertificateBindingRow)
        .where(
            CertificateBindingRow.mailbox_id == row.id,
            CertificateBindingRow.kind == kind.value,
            CertificateBindingRow.value == normalized,
        )
        .returning(CertificateBindingRow.id)
    )
    if result.scalar_one_or_none() is None:
        raise NotFound(f"{kind.value} {normalized!r} is not bound to {row.address}")


async def list_bindings(session: AsyncSession, address: str) -> list[CertificateBinding]:
    row = await _existing(session, address)
    result = await session.execute(
        select(CertificateBindingRow)
        .where(CertificateBindingRow.mailbox_id == row.id)
        .order_by(CertificateBindingRow.kind, CertificateBindingRow.value)
    )
    return [
        CertificateBinding(row.address, BindingKind(b.kind), b.value, b.created_at)
        for b in result.scalars()
    ]


async def mailboxes_for_certificate(
    session: AsyncSession, kind: BindingKind, value: str
) -> list[Mailbox]:
    """The mailboxes a certificate with this fingerprint / DN / national id may open."""
    kind = BindingKind(kind)
    normalized = normalize_binding(kind, value)
    result = await session.execute(
        select(MailboxRow)
        .join(CertificateBindingRow, CertificateBindingRow.mailbox_id == MailboxRow.id)
        .where(CertificateBindingRow.kind == kind.value, CertificateBindingRow.value == normalized)
        .order_by(MailboxRow.address)
    )
    return [_mailbox(row) for row in result.scalars()]
