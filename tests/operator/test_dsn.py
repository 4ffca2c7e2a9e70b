"""Delivery status notifications (RFC 3464 / RFC 6522) built as bytes, read back with `email`."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime
from email.message import Message

import pytest

from mssante.operator import dsn

NOW = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)
ORIGINAL = (
    b"From: Dr Jean Dupont <jean.dupont@hopital-x.mssante.test>\r\n"
    b"To: <dr.martin@clinique-y.mssante.test>\r\n"
    b"Subject: Compte rendu\r\n"
    b"Message-ID: <cr-42@hopital-x.mssante.test>\r\n"
    b"\r\n"
    b"Patient vu ce jour, bilan joint.\r\n"
)


def report(*recipients: dsn.RecipientReport, envid: str | None = "ENV-7") -> dsn.Report:
    return dsn.Report(
        reporting_mta="mx.hopital-x.mssante.test",
        recipient_of_report="jean.dupont@hopital-x.mssante.test",
        arrival_date=datetime(2026, 11, 22, 8, 0, tzinfo=UTC),
        recipients=recipients,
        envid=envid,
    )


FAILED = dsn.RecipientReport(
    final_recipient="dr.martin@clinique-y.mssante.test",
    original_recipient="rfc822;dr.martin@clinique-y.mssante.test",
    action=dsn.Action.FAILED,
    status="5.1.1",
    diagnostic="550 5.1.1 <dr.martin@clinique-y.mssante.test>: no such user",
    remote_mta="mx.clinique-y.mssante.test",
    last_attempt=datetime(2026, 11, 22, 9, 29, tzinfo=UTC),
)


def parse(data: bytes) -> Message:
    assert b"\n" not in data.replace(b"\r\n", b""), "bare LF in a DSN"
    return email.message_from_bytes(data, policy=email.policy.default)


def test_failure_report_structure_and_fields() -> None:
    data = dsn.build(report(FAILED), ORIGINAL, ret=None, now=NOW, message_id_domain="mx.test")
    msg = parse(data)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["To"] == "jean.dupont@hopital-x.mssante.test"
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@mx.hopital-x.mssante.test>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert str(msg["Subject"]) == "Non remis / Undelivered Mail Returned to Sender"
    assert msg["Message-ID"].endswith("@mx.test>")
    human, status, returned = msg.iter_parts()
    assert human.get_content_type() == "text/plain"
    text = human.get_content()
    assert "n'a pas pu être remis" in text and "could not be delivered" in text
    assert "<dr.martin@clinique-y.mssante.test> : 5.1.1" in text
    assert status.get_content_type() == "message/delivery-status"
    groups = [dict(block.items()) for block in status.get_payload()]
    assert groups[0] == {
        "Reporting-MTA": "dns;mx.hopital-x.mssante.test",
        "Original-Envelope-Id": "ENV-7",
        "Arrival-Date": "Sun, 22 Nov 2026 08:00:00 +0000",
    }
    assert groups[1] == {
        "Original-Recipient": "rfc822;dr.martin@clinique-y.mssante.test",
        "Final-Recipient": "rfc822;dr.martin@clinique-y.mssante.test",
        "Action": "failed",
        "Status": "5.1.1",
        "Remote-MTA": "dns;mx.clinique-y.mssante.test",
        "Diagnostic-Code": "smtp;550 5.1.1 <dr.martin@clinique-y.mssante.test>: no such user",
        "Last-Attempt-Date": "Sun, 22 Nov 2026 09:29:00 +0000",
    }
    # Without RET (and with HDRS) only the header comes back: the body stays out.
    assert returned.get_content_type() == "text/rfc822-headers"
    assert b"Patient vu ce jour" not in data
    assert b"Subject: Compte rendu" in data


def test_ret_full_returns_the_whole_message() -> None:
    data = dsn.build(report(FAILED), ORIGINAL, ret=dsn.Ret.FULL, now=NOW, message_id_domain="x.t")
    returned = list(parse(data).iter_parts())[2]
    assert returned.get_content_type() == "message/rfc822"
    assert b"Patient vu ce jour, bilan joint.\r\n" in data


def test_delay_report_with_several_recipients_and_no_envid() -> None:
    delayed = [
        dsn.RecipientReport(
            final_recipient=f"{name}@clinique-y.mssante.test",
            action=dsn.Action.DELAYED,
            status="4.4.1",
            will_retry_until=datetime(2026, 11, 27, 8, 0, tzinfo=UTC),
        )
        for name in ("a", "b")
    ]
    data = dsn.build(
        report(*delayed, envid=None), ORIGINAL, ret=None, now=NOW, message_id_domain="x.t"
    )
    msg = parse(data)
    assert str(msg["Subject"]).startswith("Remise retardée")
    groups = [dict(block.items()) for block in list(msg.iter_parts())[1].get_payload()]
    assert "Original-Envelope-Id" not in groups[0]
    assert [g["Final-Recipient"] for g in groups[1:]] == [
        "rfc822;a@clinique-y.mssante.test",
        "rfc822;b@clinique-y.mssante.test",
    ]
    assert {g["Will-Retry-Until"] for g in groups[1:]} == {"Fri, 27 Nov 2026 08:00:00 +0000"}


def test_a_peers_reply_cannot_inject_fields_or_lines() -> None:
    hostile = dsn.RecipientReport(
        final_recipient="x@clinique-y.mssante.test",
        action=dsn.Action.FAILED,
        status="5.0.0",
        diagnostic="550 no\r\nAction: delivered\r\n\r\n--boundary" + "z" * 5000,
    )
    data = dsn.build(
        report(hostile), ORIGINAL, ret=None, now=NOW, message_id_domain="x.t", boundary="b1"
    )
    groups = [dict(b.items()) for b in list(parse(data).iter_parts())[1].get_payload()]
    assert groups[1]["Action"] == "failed"
    assert groups[1]["Diagnostic-Code"].startswith("smtp;550 no Action: delivered --boundary")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


def test_reports_that_must_not_be_built() -> None:
    with pytest.raises(ValueError, match="at least one"):
        dsn.build(report(), ORIGINAL, ret=None, now=NOW, message_id_domain="x.t")
    delivered = dsn.RecipientReport("y@h.test", dsn.Action.DELIVERED, "2.0.0")
    with pytest.raises(ValueError, match="one action"):
        dsn.build(report(FAILED, delivered), ORIGINAL, ret=None, now=NOW, message_id_domain="x")
    null_sender = dsn.Report("mx.test", "", NOW, (FAILED,))
    with pytest.raises(ValueError, match="null sender"):
        dsn.build(null_sender, ORIGINAL, ret=None, now=NOW, message_id_domain="x.t")


@pytest.mark.parametrize(
    ("sender", "notify", "action", "owed"),
    [
        ("a@h.test", None, dsn.Action.FAILED, True),
        ("a@h.test", None, dsn.Action.DELAYED, True),
        ("a@h.test", None, dsn.Action.DELIVERED, False),
        ("a@h.test", ["SUCCESS"], dsn.Action.DELIVERED, True),
        ("a@h.test", ["success"], dsn.Action.RELAYED, True),
        ("a@h.test", ["SUCCESS"], dsn.Action.FAILED, False),
        ("a@h.test", ["FAILURE"], dsn.Action.DELAYED, False),
        ("a@h.test", ["NEVER"], dsn.Action.FAILED, False),
        ("", None, dsn.Action.FAILED, False),
        ("", ["SUCCESS", "FAILURE"], dsn.Action.DELIVERED, False),
    ],
)
def test_when_a_dsn_is_owed(
    sender: str, notify: list[str] | None, action: dsn.Action, owed: bool
) -> None:
    assert dsn.sender_is_reportable(sender, notify, action) is owed
