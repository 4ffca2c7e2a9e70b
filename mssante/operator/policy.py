"""Trust-space decisions as pure functions: who may send what to whom.

Each function answers with `None` (allowed) or the `MailError` to send, whose `reason` is the
tag written to the audit trail. No I/O here: the caller gathers the facts (the verified
certificate, the whitelist snapshot) and acts on the answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from mssante.operator.addresses import AddressError, parse_address
from mssante.operator.errors import MailError
from mssante.pki.errors import ValidationError


class WhitelistView(Protocol):
    """What policy needs of a whitelist snapshot (mssante.whitelist)."""

    def allows(self, domain: str, dn: str) -> bool: ...

    def is_listed_operator(self, dn: str) -> bool: ...


def tls_required() -> MailError:
    # RFC 3207 §4: 530 "Must issue a STARTTLS command first".
    return MailError(530, "5.7.0", "Must issue a STARTTLS command first", reason="no_tls")


def authentication_required() -> MailError:
    # RFC 4954 §6: 530 5.7.0 "Authentication required" (submission, RFC 6409 §4.3).
    return MailError(530, "5.7.0", "Authentication required", reason="no_auth")


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


# --- Submission: who may send as whom (issue 5 §2) ---------------------------------------------


@dataclass(frozen=True)
class SendRights:
    """The addresses an authenticated identity may put in MAIL FROM and From:.

    `own`: its own mailbox, and APP mailboxes bound to its certificate. `on_behalf`: mailboxes
    it sends for without being their holder (a PER delegated with the send right, an ORG it is a
    member of with the send right); mail sent as one of these carries a `Sender:` naming the
    identity (RFC 5322 §3.6.2). Addresses are lower-case.
    """

    identity: str
    own: frozenset[str]
    on_behalf: frozenset[str] = frozenset()

    def may_send_as(self, address: str) -> bool:
        value = address.lower()
        return value in self.own or value in self.on_behalf


def submission_sender_refused(rights: SendRights, envelope_from: str) -> MailError | None:
    """MAIL FROM on the submission port: a mailbox the identity may send as.

    The null reverse-path is refused: delivery status notifications are the operator's to
    send (RFC 3461 §6.2), never a client's.
    """
    if envelope_from == "":
        return MailError(
            550, "5.7.1", "The null sender is reserved to the operator", reason="null_sender"
        )
    if rights.may_send_as(envelope_from):
        return None
    return MailError(
        550,
        "5.7.1",
        f"<{envelope_from}>: you may not send as this address",
        reason="envelope_sender_not_allowed",
    )


def header_from_refused(rights: SendRights, header_from: Sequence[str]) -> MailError | None:
    """Every address of the From: header must be one the identity may send as.

    A message without a From: address is refused too (RFC 5322 §3.6: From is required).
    """
    if not header_from:
        return MailError(550, "5.6.0", "The message has no From: address", reason="no_from")
    for address in header_from:
        if not rights.may_send_as(address):
            return MailError(
                550,
                "5.7.1",
                f"From: <{address}>: you may not send as this address",
                reason="header_from_not_allowed",
            )
    return None


def needs_sender_header(rights: SendRights, header_from: Sequence[str]) -> bool:
    """A delegate or member sending for someone else is named in `Sender:` (RFC 5322 §3.6.2)."""
    return any(address.lower() not in rights.own for address in header_from)


# --- Submission: where a recipient goes (issue 5 §3) ------------------------------------------


class Route(StrEnum):
    LOCAL = "local"  # a domain we host: the same delivery path as the relay
    REMOTE = "remote"  # another operator of the trust space: the outbound queue


def route_recipient(
    address: str,
    *,
    hosted: Callable[[str], bool],
    whitelisted: Callable[[str], bool],
    in_directory: Callable[[str], bool] | None,
    patient_domain: str,
) -> Route | MailError:
    """Decide at RCPT what happens to one recipient of a submitted message.

    `hosted(domain)`: we host the domain (the mailbox itself is checked by delivery, like on the
    relay). `whitelisted(domain)`: the ANS list names an operator for the domain.
    `in_directory(address)`: the national directory mirror lists the address; `None` when
    directory checking is off. Patient addresses are checked by their INS key first.
    """
    try:
        parsed = parse_address(address, patient_domain)
    except AddressError as exc:
        return MailError(553, "5.1.3", f"<{address}>: {exc}", reason="bad_address")
    if hosted(parsed.domain):
        return Route.LOCAL
    if not whitelisted(parsed.domain):
        return MailError(
            550,
            "5.7.1",
            f"<{address}>: domain {parsed.domain} is not in the MSSante trust space",
            reason="domain_not_whitelisted",
        )
    if in_directory is not None and not in_directory(str(parsed)):
        return not_in_directory(address)
    return Route.REMOTE


def not_in_directory(address: str) -> MailError:
    """A remote recipient the national directory mirror does not list (issue 5 §3)."""
    return MailError(
        550,
        "5.1.1",
        f"<{address}>: not in the national MSSante directory",
        reason="not_in_directory",
    )


# --- Outbound: may this peer receive for that domain (issue 5 §5) ------------------------------


def peer_may_receive_for(whitelist: WhitelistView, peer_dn: str, domain: str) -> MailError | None:
    """May we hand mail for `domain` to the server whose verified certificate DN is `peer_dn`?

    ANS whitelist rule: we relay only to a server whose DN is listed for the recipient's
    domain. A refusal is temporary (4.7.x): the list changes daily and the DNS may be fixed, so
    the queue retries until the message expires.
    """
    domain = domain.lower().rstrip(".")
    if whitelist.allows(domain, peer_dn):
        return None
    listed = whitelist.is_listed_operator(peer_dn)
    return MailError(
        451,
        "4.7.1",
        f"Peer certificate not authorised by the ANS whitelist for domain {domain}",
        reason="dn_not_listed_for_domain" if listed else "dn_not_whitelisted",
    )
