"""Trust-space decisions as pure functions: who may send what to whom.

Each function answers with `None` (allowed) or the `MailError` to send, whose `reason` is the
tag written to the audit trail. No I/O here: the caller gathers the facts (the verified
certificate, the whitelist snapshot) and acts on the answer.
"""

from __future__ import annotations

from typing import Protocol

from mssante.operator.errors import MailError
from mssante.pki.errors import ValidationError


class WhitelistView(Protocol):
    """What policy needs of a whitelist snapshot (mssante.whitelist)."""

    def allows(self, domain: str, dn: str) -> bool: ...

    def is_listed_operator(self, dn: str) -> bool: ...


def tls_required() -> MailError:
    # RFC 3207 §4: 530 "Must issue a STARTTLS command first".
    return MailError(530, "5.7.0", "Must issue a STARTTLS command first", reason="no_tls")


def client_certificate_missing() -> MailError:
    return MailError(
        530,
        "5.7.0",
        "A client certificate of the health PKI is required",
        reason="no_client_certificate",
    )


def client_certificate_refused(error: ValidationError) -> MailError:
    # The reason names the failed check (expired, revoked, unknown_ca, wrong_usage…); the
    # certificate subject stays in the audit trail, not on the wire.
    return MailError(
        550,
        "5.7.1",
        f"Client certificate refused ({error.reason.replace('_', ' ')})",
        reason=f"certificate_{error.reason}",
    )


def peer_may_send_from(whitelist: WhitelistView, peer_dn: str, sender: str) -> MailError | None:
    """May the operator whose verified certificate DN is `peer_dn` send mail from `sender`?

    ANS whitelist rule: the DN must be listed for the sender's domain. The null sender `<>`
    (a DSN or MDN) has no domain and is accepted from any listed operator.
    """
    if sender == "":
        if whitelist.is_listed_operator(peer_dn):
            return None
        return MailError(
            550,
            "5.7.1",
            "Operator certificate not in the ANS whitelist",
            reason="dn_not_whitelisted",
        )
    domain = sender.rpartition("@")[2].lower().rstrip(".")
    if whitelist.allows(domain, peer_dn):
        return None
    listed = whitelist.is_listed_operator(peer_dn)
    return MailError(
        550,
        "5.7.1",
        f"Operator certificate not authorised by the ANS whitelist for domain {domain}",
        reason="dn_not_listed_for_domain" if listed else "dn_not_whitelisted",
    )
