"""The one error type of mail handling: it carries its SMTP meaning.

Whatever refuses a command, a recipient or a message raises `MailError` with the reply code,
the enhanced status code (RFC 3463) and a short text safe to send to the peer. The detailed
reason (a DN, a database error) goes to the log and the audit trail, never to the wire.
"""

from __future__ import annotations


class MailError(Exception):
    """An SMTP refusal: `code` (4xx temporary, 5xx permanent), `enhanced`, `text`.

    `reason` is a short machine-friendly tag for the audit trail and metrics
    (e.g. `not_whitelisted`, `unknown_user`, `db_unavailable`).
    """

    def __init__(self, code: int, enhanced: str, text: str, *, reason: str) -> None:
        if not 400 <= code < 600:
            raise ValueError(f"MailError code must be 4xx or 5xx, not {code}")
        if enhanced[0] != str(code)[0]:
            raise ValueError(f"enhanced code {enhanced} does not match reply code {code}")
        super().__init__(f"{code} {enhanced} {text}")
        self.code = code
        self.enhanced = enhanced
        self.text = text
        self.reason = reason

    @property
    def temporary(self) -> bool:
        return self.code < 500

    @property
    def reply(self) -> str:
        """The SMTP reply line, without CRLF."""
        return f"{self.code} {self.enhanced} {self.text}"


# The refusals shared by several components, so every one of them words them the same way.


def temporary_failure(reason: str = "db_unavailable") -> MailError:
    """A local problem (database outage…): the peer keeps the message and retries."""
    return MailError(451, "4.3.0", "Temporary local problem, please try again later", reason=reason)


def unknown_user(address: str) -> MailError:
    return MailError(550, "5.1.1", f"<{address}>: no such mailbox here", reason="unknown_user")


def mailbox_disabled(address: str) -> MailError:
    return MailError(550, "5.2.1", f"<{address}>: mailbox disabled", reason="mailbox_disabled")


def over_quota(address: str) -> MailError:
    return MailError(552, "5.2.2", f"<{address}>: mailbox full", reason="over_quota")


def relay_denied(address: str) -> MailError:
    # RFC 5321 §3.6.2: we are not an open relay; 5.7.1 "delivery not authorized".
    return MailError(
        550, "5.7.1", f"<{address}>: relaying denied, domain not hosted here", reason="relay_denied"
    )


def too_big(limit: int) -> MailError:
    return MailError(552, "5.3.4", f"Message too big (limit {limit} bytes)", reason="too_big")
