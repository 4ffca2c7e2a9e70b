"""Administration: the operations behind `mssante domain|mailbox|delegate|audit|db`.

The trust-space rules for creating mailboxes live here, in front of the store: a patient's
address carries a valid INS, a PER mailbox a professional's national id, an ORG/APP/CAB mailbox
optionally a structure id. Every change is written to the audit trail in the same transaction.
"""

from __future__ import annotations

import contextlib
import getpass
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from sqlalchemy import func, select, update

from mssante.config import Settings
from mssante.operator import passwords
from mssante.operator.addresses import (
    AddressError,
    AddressKind,
    parse_address,
    validate_professional_id,
    validate_structure_id,
)
from mssante.operator.store import audit, domains, folders, grants, mailboxes, migrate
from mssante.operator.store.blobs import rekey
from mssante.operator.store.crypto import BlobCipher
from mssante.operator.store.db import Store
from mssante.operator.store.errors import StoreError
from mssante.operator.store.schema import (
    BindingKind,
    FolderRow,
    MailboxRow,
    MailboxState,
    MailboxType,
    MessageRow,
    Outcome,
)
from mssante.pki.anchors import load_certificates
from mssante.pki.identity import identity_of

RIGHTS = ("read", "write", "send-as")


class AdminError(Exception):
    """An administrative operation that is refused; the message says why."""


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int | None:
    """`default` → None; `0` → 0 (no quota); `500M`, `2G`, `1048576` → bytes."""
    value = text.strip().upper().removesuffix("B")
    if value == "DEFAULT":
        return None
    number, unit = value[:-1], value[-1:]
    if unit.isdigit():
        number, unit = value, ""
    if not number.isdigit() or unit not in _SIZE_UNITS:
        raise AdminError(f"quota {text!r}: expected a size like 500M or 2G, 0 or 'default'")
    return int(number) * _SIZE_UNITS[unit]


def parse_rights(text: str) -> frozenset[str]:
    rights = frozenset(r.strip().lower() for r in text.split(",") if r.strip())
    unknown = rights - set(RIGHTS)
    if unknown or not rights:
        raise AdminError(f"rights {text!r}: expected a comma-separated list of {', '.join(RIGHTS)}")
    return rights


@dataclass(frozen=True)
class MailboxLine:
    address: str
    type: str
    state: str
    display_name: str
    national_id: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "type": self.type,
            "state": self.state,
            "display_name": self.display_name,
            "national_id": self.national_id,
        }


@dataclass(frozen=True)
class GrantRow:
    owner: str
    grantee: str
    rights: tuple[str, ...]


async def db_upgrade(settings: Settings) -> tuple[str | None, str]:
    """Migrate the schema to the code's head; returns (revision before, revision after)."""
    before = await migrate.current_revision(settings.database_url)
    await migrate.upgrade(settings.database_url)
    return before, migrate.head_revision()


async def db_status(settings: Settings) -> tuple[str | None, str]:
    return await migrate.current_revision(settings.database_url), migrate.head_revision()


async def db_rekey(settings: Settings) -> int:
    await migrate.check_schema(settings.database_url)
    async with await Store.open(settings.database_url, _cipher(settings)) as store:
        return await rekey(store)


def _cipher(settings: Settings) -> BlobCipher:
    return BlobCipher.from_text(settings.storage.keys, settings.storage.current_key_id)


def _default_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


class Admin:
    """Administrative operations on an open store; each one is its own transaction."""

    def __init__(self, store: Store, settings: Settings, actor: str) -> None:
        self.store = store
        self.settings = settings
        self.actor = actor

    async def _audit(self, event: str, target: str, **details: object) -> None:
        async with self.store.session() as session, session.begin():
            await audit.record(
                session, event, Outcome.OK, actor=self.actor, target=target, details=details or None
            )

    # -- domains ---------------------------------------------------------------------------

    async def add_domain(self, name: str) -> str:
        try:
            value = domains.normalize_domain(name)
            parse_address(f"postmaster@{value}")  # full host-name syntax check
        except (ValueError, AddressError):
            raise AdminError(f"domain {name!r}: not a valid domain name") from None
        async with self.store.write_session() as session, session.begin():
            await domains.add_domain(session, value)
            await audit.record(session, "domain.add", Outcome.OK, actor=self.actor, target=value)
        return value

    async def list_domains(self) -> list[str]:
        async with self.store.session() as session:
            return [d.name for d in await domains.list_domains(session)]

    # -- mailboxes -------------------------------------------------------------------------

    def _check_identity(
        self, address: str, type_: MailboxType, national_id: str | None
    ) -> tuple[str, str | None]:
        """The normalised address and national id, under the trust-space rules."""
        patient_domain = self.settings.operator.patient_domain
        parsed = parse_address(address, patient_domain)
        if type_ is MailboxType.PATIENT:
            if parsed.kind is not AddressKind.PATIENT:
                raise AdminError(f"{address}: a PATIENT mailbox must be <INS>@{patient_domain}")
            if national_id and national_id.strip().upper() != parsed.local:
                raise AdminError(f"{address}: --national-id must be the INS of the address")
            return str(parsed), parsed.local
        if parsed.kind is AddressKind.PATIENT:
            raise AdminError(f"{address}: the patient domain only holds PATIENT mailboxes")
        if type_ is MailboxType.PER:
            if not national_id:
                raise AdminError(
                    f"{address}: a PER mailbox needs --national-id (8 + RPPS, or 0 + ADELI)"
                )
            return str(parsed), validate_professional_id(national_id)
        return str(parsed), validate_structure_id(national_id) if national_id else None

    async def add_mailbox(
        self,
        address: str,
        type: str,
        *,
        display_name: str = "",
        national_id: str | None = None,
        password: str | None = None,
        state: str | None = None,
    ) -> mailboxes.Mailbox:
        type_ = MailboxType(type.upper())
        value, nid = self._check_identity(address, type_, national_id)
        if state is None:
            # A patient's mailbox waits for their space to be activated (mssante.md).
            state = "pending" if type_ is MailboxType.PATIENT else "active"
        if state == "pending" and type_ is not MailboxType.PATIENT:
            raise AdminError("state pending is for PATIENT mailboxes only")
        hashed = await passwords.hash_async(password) if password is not None else None
        async with self.store.write_session() as session, session.begin():
            box = await mailboxes.create_mailbox(
                session,
                value,
                type_,
                display_name=display_name,
                national_id=nid,
                state=MailboxState(state),
                password_hash=hashed,
            )
            await audit.record(
                session,
                "mailbox.add",
                Outcome.OK,
                actor=self.actor,
                target=value,
                details={"type": type_.value, "state": state, "password": hashed is not None},
            )
        return box

    async def list_mailboxes(self, type: str | None = None) -> list[MailboxLine]:
        async with self.store.session() as session:
            rows = await mailboxes.list_mailboxes(session, MailboxType(type) if type else None)
        return [
            MailboxLine(b.address, b.type.value, b.state.value, b.display_name, b.national_id)
            for b in rows
        ]

    async def show_mailbox(self, address: str) -> dict[str, Any]:
        async with self.store.session() as session:
            box = await mailboxes.get_mailbox(session, address)
            has_password = await mailboxes.get_password_hash(session, address) is not None
            folder_list = await folders.list_folders(session, box.id)
            result = await session.execute(
                select(MessageRow.folder_id, func.count(MessageRow.id))
                .join(FolderRow, MessageRow.folder_id == FolderRow.id)
                .where(FolderRow.mailbox_id == box.id)
                .group_by(MessageRow.folder_id)
            )
            # Not dict(result): a Result has keys() (its column names) and would be read as
            # a mapping.
            counts = {folder_id: count for folder_id, count in result.tuples()}
            owners = await grants.list_for_owner(session, address)
            grantee_of = await grants.list_for_grantee(session, address)
            bindings = await mailboxes.list_bindings(session, address)
        return {
            "address": box.address,
            "type": box.type.value,
            "state": box.state.value,
            "display_name": box.display_name,
            "national_id": box.national_id,
            "password_login": has_password,
            "created_at": box.created_at.isoformat(),
            "quota_bytes": (
                box.quota_bytes
                if box.quota_bytes is not None
                else self.settings.storage.default_quota_bytes
            ),
            "quota_is_default": box.quota_bytes is None,
            "used_bytes": box.used_bytes,
            "messages": sum(counts.values()),
            "folders": [
                {
                    "name": f.name,
                    "special_use": f.special_use.value if f.special_use else None,
                    "uidvalidity": f.uidvalidity,
                    "messages": counts.get(f.id, 0),
                }
                for f in folder_list
            ],
            "access_granted_to": [_grant_json(g) for g in owners],
            "has_access_to": [_grant_json(g) for g in grantee_of],
            "certificates": [{"kind": b.kind.value, "value": b.value} for b in bindings],
        }

    async def change_state(self, address: str, action: str) -> mailboxes.Mailbox:
        """disable / enable / activate / close, with the transitions each type allows."""
        async with self.store.write_session() as session, session.begin():
            box = await mailboxes.get_mailbox(session, address)
            patient = box.type is MailboxType.PATIENT
            current = box.state
            target = {
                "disable": MailboxState.DISABLED,
                "enable": MailboxState.ACTIVE,
                "activate": MailboxState.ACTIVE,
                "close": MailboxState.CLOSED,
            }[action]
            if current is MailboxState.CLOSED:
                raise AdminError(f"{box.address} is closed; a closed mailbox stays closed")
            if action in ("activate", "close") and not patient:
                raise AdminError(
                    f"{box.address}: {action} is for PATIENT mailboxes (use disable/enable)"
                )
            if action == "enable" and current is not MailboxState.DISABLED:
                raise AdminError(f"{box.address} is {current.value}, not disabled")
            if action == "activate" and current is not MailboxState.PENDING:
                raise AdminError(f"{box.address} is {current.value}, not pending")
            if current is target:
                raise AdminError(f"{box.address} is already {current.value}")
            box = await mailboxes.set_state(session, box.address, target)
            await audit.record(
                session,
                f"mailbox.{action}",
                Outcome.OK,
                actor=self.actor,
                target=box.address,
                details={"from": current.value, "to": target.value},
            )
        return box

    async def set_quota(self, address: str, quota: str) -> tuple[str, int | None]:
        """`quota`: a size (`500M`, `2G`, bytes), `0` for none, `default` for the default."""
        value = parse_size(quota)
        async with self.store.write_session() as session, session.begin():
            box = await mailboxes.get_mailbox(session, address)
            await session.execute(
                update(MailboxRow).where(MailboxRow.id == box.id).values(quota_bytes=value)
            )
            await audit.record(
                session,
                "mailbox.quota",
                Outcome.OK,
                actor=self.actor,
                target=box.address,
                details={"quota_bytes": value},
            )
        return box.address, value

    async def set_password(self, address: str, password: str) -> None:
        hashed = await passwords.hash_async(password)
        async with self.store.write_session() as session, session.begin():
            await mailboxes.set_password_hash(session, address, hashed)
            await audit.record(
                session,
                "mailbox.passwd",
                Outcome.OK,
                actor=self.actor,
                target=mailboxes.normalize_address(address),
            )

    async def bind_certificate(self, address: str, certificate: Path) -> str:
        """Bind the certificate's SHA-256 fingerprint to the mailbox (for AUTH EXTERNAL)."""
        certs = load_certificates(certificate)
        cert: x509.Certificate = certs[0]
        ident = identity_of(cert)
        async with self.store.write_session() as session, session.begin():
            binding = await mailboxes.bind_certificate(
                session, address, BindingKind.FINGERPRINT, ident.sha256
            )
            await audit.record(
                session,
                "mailbox.bind_cert",
                Outcome.OK,
                actor=self.actor,
                target=binding.address,
                details={"subject": ident.subject_dn, "fingerprint": binding.value},
            )
        return f"{ident.subject_dn} (sha256 {binding.value})"

    # -- delegations and memberships -------------------------------------------------------

    async def grant(self, owner: str, grantee: str, rights: frozenset[str]) -> None:
        async with self.store.write_session() as session, session.begin():
            owner_box = await mailboxes.get_mailbox(session, owner)
            grantee_box = await mailboxes.get_mailbox(session, grantee)
            if owner_box.type is MailboxType.PATIENT or grantee_box.type is MailboxType.PATIENT:
                # A patient's mailbox is theirs alone; patients get no access to others'.
                raise AdminError("patient mailboxes cannot be delegated or shared")
            if grantee_box.type in (MailboxType.ORG, MailboxType.CAB):
                raise AdminError(
                    f"{grantee_box.address} is a shared {grantee_box.type.value} "
                    f"mailbox: grant rights to the people who use it"
                )
            await grants.grant(
                session,
                owner_box.address,
                grantee_box.address,
                read="read" in rights,
                write="write" in rights,
                send_as="send-as" in rights,
            )
            await audit.record(
                session,
                "delegate.grant",
                Outcome.OK,
                actor=self.actor,
                target=owner_box.address,
                details={"grantee": grantee_box.address, "rights": sorted(rights)},
            )

    async def revoke(self, owner: str, grantee: str) -> None:
        async with self.store.write_session() as session, session.begin():
            await grants.revoke(session, owner, grantee)
            await audit.record(
                session,
                "delegate.revoke",
                Outcome.OK,
                actor=self.actor,
                target=mailboxes.normalize_address(owner),
                details={"grantee": mailboxes.normalize_address(grantee)},
            )

    async def list_grants(self, address: str | None) -> list[GrantRow]:
        async with self.store.session() as session:
            if address is None:
                found = await grants.list_all(session)
            else:
                found = await grants.list_for_owner(session, address)
                found += await grants.list_for_grantee(session, address)
        return [GrantRow(g.owner, g.grantee, _rights(g)) for g in found]

    # -- audit -----------------------------------------------------------------------------

    async def audit(self, limit: int, event: str | None) -> list[dict[str, Any]]:
        async with self.store.session() as session:
            events = await audit.recent(session, limit, event)
        return [
            {
                "at": e.at.isoformat(),
                "event": e.event,
                "outcome": e.outcome.value,
                "actor": e.actor,
                "peer_ip": e.peer_ip,
                "peer_dn": e.peer_dn,
                "target": e.target,
                "details": e.details,
            }
            for e in events
        ]


def _rights(g: grants.Grant) -> tuple[str, ...]:
    return tuple(
        r
        for r, on in (("read", g.can_read), ("write", g.can_write), ("send-as", g.can_send_as))
        if on
    )


def _grant_json(g: grants.Grant) -> dict[str, Any]:
    return {"owner": g.owner, "grantee": g.grantee, "rights": list(_rights(g))}


@contextlib.asynccontextmanager
async def open_admin(settings: Settings, actor: str | None = None) -> AsyncIterator[Admin]:
    """Check the schema, open the store, and hand out an `Admin`; closes the store after."""
    await migrate.check_schema(settings.database_url)
    store = await Store.open(settings.database_url, _cipher(settings))
    try:
        yield Admin(store, settings, actor or _default_actor())
    except ValueError as exc:
        # The store's own input checks (e.g. a malformed folder or binding) are refusals too.
        if isinstance(exc, StoreError | AdminError):
            raise
        raise AdminError(str(exc)) from None
    finally:
        await store.close()
