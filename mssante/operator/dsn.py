"""Delivery status notifications as bytes: RFC 3464 reports in an RFC 6522 multipart/report.

Pure: the caller (the outbound queue, or the "delivered" receipts owed by local delivery) gives
the facts and gets the message to deliver to the original sender with the null reverse-path
(RFC 3461 §6.2: a DSN is never answered by another DSN). The human-readable part is in French
and English: the readers are French health professionals and the software they use.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.header import Header
from email.utils import format_datetime
from enum import StrEnum

CRLF = b"\r\n"
# RFC 5322 §2.1.1: lines of at most 998 octets; field values here stay well under that.
MAX_VALUE = 900
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_HEADER_END = re.compile(rb"\r?\n\r?\n")


class Action(StrEnum):
    """RFC 3464 §2.3.3."""

    FAILED = "failed"
    DELAYED = "delayed"
    DELIVERED = "delivered"
    RELAYED = "relayed"


class Ret(StrEnum):
    """RFC 3461 §4.3: what of the original message comes back."""

    FULL = "FULL"
    HDRS = "HDRS"


@dataclass(frozen=True)
class RecipientReport:
    final_recipient: str
    action: Action
    status: str  # RFC 3463 x.y.z
    original_recipient: str | None = None  # the ORCPT parameter as given: "rfc822;addr"
    diagnostic: str | None = None  # the remote reply, "550 5.1.1 no such user"
    remote_mta: str | None = None
    last_attempt: datetime | None = None
    will_retry_until: datetime | None = None


@dataclass(frozen=True)
class Report:
    reporting_mta: str  # our host name
    recipient_of_report: str  # the original envelope sender; never empty
    arrival_date: datetime
    recipients: tuple[RecipientReport, ...]
    envid: str | None = None  # RFC 3461 §4.4 ENVID, as given


_SUBJECTS = {
    Action.FAILED: "Non remis / Undelivered Mail Returned to Sender",
    Action.DELAYED: "Remise retardée / Delayed Mail (still being retried)",
    Action.DELIVERED: "Remis / Successful Mail Delivery Report",
    Action.RELAYED: "Relayé / Relayed Mail Report",
}

_EXPLANATIONS = {
    Action.FAILED: (
        "Votre message n'a pas pu être remis aux destinataires suivants.",
        "Your message could not be delivered to the following recipients.",
    ),
    Action.DELAYED: (
        "Votre message n'a pas encore pu être remis ; de nouvelles tentatives auront lieu.",
        "Your message has not been delivered yet; delivery will be retried.",
    ),
    Action.DELIVERED: (
        "Votre message a été remis aux destinataires suivants.",
        "Your message was delivered to the following recipients.",
    ),
    Action.RELAYED: (
        "Votre message a été transmis à un système qui ne renvoie pas d'avis de remise.",
        "Your message was relayed to a system that does not return delivery reports.",
    ),
}


def _value(text: str) -> str:
    """A field value from untrusted text (a peer's reply): one line, bounded, 7-bit."""
    flat = _CONTROL.sub(" ", text).strip()
    ascii_only = flat.encode("ascii", "replace").decode("ascii")
    return ascii_only[:MAX_VALUE]


def _address_type(address: str) -> str:
    # RFC 3464 §2.3.2: "rfc822;" for Internet addresses.
    return f"rfc822;{_value(address)}"


def _headers_of(original: bytes) -> bytes:
    match = _HEADER_END.search(original)
    head = original[: match.start()] if match else original
    return head.rstrip(b"\r\n") + CRLF


def _delivery_status(report: Report) -> bytes:
    lines = [f"Reporting-MTA: dns;{_value(report.reporting_mta)}"]
    if report.envid is not None:
        lines.append(f"Original-Envelope-Id: {_value(report.envid)}")
    lines.append(f"Arrival-Date: {format_datetime(report.arrival_date)}")
    for item in report.recipients:
        lines.append("")
        if item.original_recipient is not None:
            # RFC 3464 §2.3.1: the ORCPT value, type and all.
            lines.append(f"Original-Recipient: {_value(item.original_recipient)}")
        lines.append(f"Final-Recipient: {_address_type(item.final_recipient)}")
        lines.append(f"Action: {item.action.value}")
        lines.append(f"Status: {_value(item.status)}")
        if item.remote_mta is not None:
            lines.append(f"Remote-MTA: dns;{_value(item.remote_mta)}")
        if item.diagnostic is not None:
            lines.append(f"Diagnostic-Code: smtp;{_value(item.diagnostic)}")
        if item.last_attempt is not None:
            lines.append(f"Last-Attempt-Date: {format_datetime(item.last_attempt)}")
        if item.will_retry_until is not None:
            lines.append(f"Will-Retry-Until: {format_datetime(item.will_retry_until)}")
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def _human(report: Report, action: Action) -> bytes:
    french, english = _EXPLANATIONS[action]
    lines = [french, ""]
    for item in report.recipients:
        line = f"  <{_value(item.final_recipient)}> : {item.status}"
        if item.diagnostic is not None:
            line += f" ({_value(item.diagnostic)})"
        lines.append(line)
    lines += ["", english, "", f"-- {_value(report.reporting_mta)}"]
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def build(
    report: Report,
    original: bytes,
    *,
    ret: Ret | None,
    now: datetime,
    message_id_domain: str,
    boundary: str | None = None,
) -> bytes:
    """The DSN message, CRLF line ends, to be sent from `<>` to `report.recipient_of_report`.

    `ret`: FULL returns the whole original message, HDRS or None its header only (RFC 3461
    §4.3 leaves the default to us; a health message's body stays out of bounces unless its
    sender asked for it). All recipients of one report must share one action (one DSN per
    kind of event, as the queue sends them).
    """
    if not report.recipients:
        raise ValueError("a DSN reports on at least one recipient")
    if not report.recipient_of_report:
        raise ValueError("no DSN is sent for a message with the null sender (RFC 3461 §6.2)")
    actions = {item.action for item in report.recipients}
    if len(actions) != 1:
        raise ValueError("one DSN reports one action")
    action = actions.pop()
    boundary = boundary or f"=_dsn_{secrets.token_hex(12)}"
    message_id = f"<dsn.{secrets.token_hex(12)}@{message_id_domain}>"
    header = [
        f"From: Mail Delivery System <MAILER-DAEMON@{_value(report.reporting_mta)}>",
        f"To: <{_value(report.recipient_of_report)}>",
        "Subject: " + Header(_SUBJECTS[action], "utf-8").encode(linesep="\r\n"),
        f"Date: {format_datetime(now)}",
        f"Message-ID: {message_id}",
        # RFC 3834 §5: an automatic message; nobody should answer it automatically.
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f'\tboundary="{boundary}"',
    ]
    if ret is Ret.FULL:
        returned_type, returned = "message/rfc822", original
    else:
        returned_type, returned = "text/rfc822-headers", _headers_of(original)
    sep = f"--{boundary}".encode()
    parts = [
        ("\r\n".join(header) + "\r\n\r\n").encode("ascii"),
        b"This is a delivery status notification (RFC 3464).\r\n\r\n",
        sep + CRLF,
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
        _human(report, action),
        CRLF + sep + CRLF,
        b"Content-Type: message/delivery-status\r\n\r\n",
        _delivery_status(report),
        CRLF + sep + CRLF,
        f"Content-Type: {returned_type}\r\n\r\n".encode("ascii"),
        returned if returned.endswith(CRLF) else returned + CRLF,
        CRLF + sep + b"--" + CRLF,
    ]
    return b"".join(parts)


def sender_is_reportable(envelope_from: str, notify: Sequence[str] | None, action: Action) -> bool:
    """Whether a DSN of this kind is owed to this sender (RFC 3461 §4.1, §6.2).

    Never to the null sender. Without NOTIFY, failures and delays are reported (the RFC's
    default), successes are not. NOTIFY=NEVER: nothing.
    """
    if envelope_from == "":
        return False
    wanted = {n.upper() for n in notify} if notify is not None else {"FAILURE", "DELAY"}
    if "NEVER" in wanted:
        return False
    return {
        Action.FAILED: "FAILURE",
        Action.DELAYED: "DELAY",
        Action.DELIVERED: "SUCCESS",
        Action.RELAYED: "SUCCESS",
    }[action] in wanted
