"""SASL EXTERNAL (rfc/4422 App. A) with a health-PKI client certificate: which mailbox a
certificate logs in to.

The TLS layer asks every IMAP client for a certificate (optionally: password users have none);
the certificate is judged by the PKI layer like the relay's peers (`Pki.validate`, chain to the
trust anchors, dates, revocation, extendedKeyUsage clientAuth). A valid certificate maps to
ACTIVE mailboxes two ways:

- the PER mailbox whose `national_id` is the certificate's national id (the professional's own);
- any non-patient mailbox with a certificate binding (`mssante mailbox bind-cert`) on the
  certificate's SHA-256 fingerprint, its subject DN (stored as written by RFC 4514 or in the
  normalised form) or its national id.

Choice (`choose`): with an authorization identity, it must be one of the mapped mailboxes. Without
one, the professional's own PER mailbox is chosen when there is exactly one; otherwise the single
mapped mailbox; several and no PER → refused as ambiguous (the client must name one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sqlalchemy import ColumnElement, and_, false, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from mssante.operator.imap.queries import Account
from mssante.operator.store.schema import (
    BindingKind,
    CertificateBindingRow,
    CredentialRow,
    MailboxRow,
    MailboxState,
    MailboxType,
)
from mssante.pki.identity import CertIdentity

# Patients' mailboxes are reached with their own credentials, never a professional certificate.
_BINDABLE_TYPES: Final = tuple(t.value for t in MailboxType if t is not MailboxType.PATIENT)

MAX_CANDIDATES: Final = 64  # bound what one certificate can map to (a binding per mailbox)


@dataclass(frozen=True, slots=True)
class Candidate:
    account: Account
    own: bool  # the PER mailbox of the certificate's national id


async def candidates(session: AsyncSession, identity: CertIdentity) -> list[Candidate]:
    """The ACTIVE mailboxes this (already validated) certificate may log in to."""
    national_id = identity.national_id.upper() if identity.national_id else None
    binding_match = or_(
        and_(
            CertificateBindingRow.kind == BindingKind.FINGERPRINT.value,
            CertificateBindingRow.value == identity.sha256.lower(),
        ),
        and_(
            CertificateBindingRow.kind == BindingKind.SUBJECT_DN.value,
            CertificateBindingRow.value.in_({identity.subject_dn, identity.normalized_dn}),
        ),
    )
    if national_id is not None:
        binding_match = or_(
            binding_match,
            and_(
                CertificateBindingRow.kind == BindingKind.NATIONAL_ID.value,
                CertificateBindingRow.value == national_id,
            ),
        )
    bound = select(CertificateBindingRow.mailbox_id).where(binding_match)
    own: ColumnElement[bool] = (
        and_(MailboxRow.type == MailboxType.PER.value, MailboxRow.national_id == national_id)
        if national_id is not None
        else false()
    )
    mapped = MailboxRow.id.in_(bound) & MailboxRow.type.in_(_BINDABLE_TYPES)
    rows = (
        await session.execute(
            select(MailboxRow.id, MailboxRow.address, CredentialRow.password_hash, own)
            .outerjoin(CredentialRow, CredentialRow.mailbox_id == MailboxRow.id)
            .where(
                MailboxRow.state == MailboxState.ACTIVE.value,
                or_(own, mapped),
            )
            .order_by(MailboxRow.id)
            .limit(MAX_CANDIDATES)
        )
    ).all()
    return [Candidate(Account(row[0], row[1], row[2]), bool(row[3])) for row in rows]


def choose(found: list[Candidate], authzid: str) -> Account | str:
    """The mailbox to log in to, or why none (an audit reason, never shown to the client)."""
    if not found:
        return "no_mailbox"
    if authzid:
        wanted = authzid.strip().lower()
        for candidate in found:
            if candidate.account.address == wanted:
                return candidate.account
        return "authzid_not_mapped"
    own = [c for c in found if c.own]
    if len(own) == 1:
        return own[0].account
    if len(found) == 1:
        return found[0].account
    return "ambiguous"
