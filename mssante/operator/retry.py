"""When the outbound queue tries a recipient again, and when it gives up (issue 5 §5).

The schedule is data: a list of waits after each failed attempt, then a fixed wait, and an
expiry counted from when the message was queued. Pure functions: the queue passes the clock
and the random draw, so every decision is testable without waiting.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class RetrySchedule:
    """Waits in seconds. Defaults: 1 min, 5 min, 15 min, 30 min, 1 h, 2 h, 4 h, then every
    4 h; expiry after 5 days (RFC 5321 §4.5.4.1 suggests giving up after 4–5 days); a delay
    notice (RFC 3464 `Action: delayed`) once a recipient has waited 4 h."""

    delays: tuple[float, ...] = (60, 300, 900, 1800, 3600, 7200, 14400)
    then_every: float = 14400
    expire_after: float = 5 * 86400
    delay_notice_after: float = 4 * 3600
    jitter: float = 0.1
    """Each wait is spread by ± this fraction, so that recipients deferred together (a peer
    down for an hour) do not all come back in the same second."""

    def __post_init__(self) -> None:
        if any(d <= 0 for d in self.delays) or self.then_every <= 0:
            raise ValueError("retry delays must be positive")
        if self.expire_after <= 0 or self.delay_notice_after <= 0:
            raise ValueError("expiry and delay notice must be positive")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")

    def wait_after(self, failed_attempts: int, draw: float) -> timedelta:
        """The wait after the `failed_attempts`-th failure (1 for the first); `draw` in [0, 1)
        picks the jitter (0.5: none)."""
        if failed_attempts < 1:
            raise ValueError("failed_attempts starts at 1")
        base = (
            self.delays[failed_attempts - 1]
            if failed_attempts <= len(self.delays)
            else self.then_every
        )
        return timedelta(seconds=base * (1 + self.jitter * (2 * draw - 1)))

    def next_attempt(
        self, queued_at: datetime, failed_attempts: int, now: datetime, draw: float
    ) -> datetime | None:
        """When to try again after a temporary failure at `now`; `None`: the recipient expires
        (the next try would come after the expiry)."""
        expires_at = queued_at + timedelta(seconds=self.expire_after)
        if now >= expires_at:
            return None
        at = now + self.wait_after(failed_attempts, draw)
        # One last attempt at the expiry itself rather than none at all.
        return min(at, expires_at)

    def delay_notice_due(self, queued_at: datetime, now: datetime, already_sent: bool) -> bool:
        """A delay DSN is owed once, when the recipient has waited `delay_notice_after`."""
        return not already_sent and now - queued_at >= timedelta(seconds=self.delay_notice_after)
