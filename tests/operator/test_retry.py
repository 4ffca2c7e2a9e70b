"""The outbound retry schedule: waits, jitter bounds, expiry, the one delay notice."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mssante.operator.retry import RetrySchedule

T0 = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


def test_default_waits_follow_the_documented_schedule() -> None:
    schedule = RetrySchedule()
    minutes = [schedule.wait_after(n, 0.5) / timedelta(minutes=1) for n in range(1, 11)]
    assert minutes == [1, 5, 15, 30, 60, 120, 240, 240, 240, 240]


def test_jitter_stays_within_its_fraction() -> None:
    schedule = RetrySchedule(jitter=0.1)
    assert schedule.wait_after(1, 0.0) == timedelta(seconds=54)
    assert schedule.wait_after(1, 0.999999) < timedelta(seconds=66)
    assert schedule.wait_after(1, 0.999999) > timedelta(seconds=65.99)
    assert RetrySchedule(jitter=0).wait_after(3, 0.0) == timedelta(minutes=15)


def test_next_attempt_and_expiry() -> None:
    schedule = RetrySchedule(jitter=0)
    assert schedule.next_attempt(T0, 1, T0, 0.3) == T0 + timedelta(minutes=1)
    late = T0 + timedelta(days=5) - timedelta(hours=1)
    # The last wait is cut to the expiry: one final attempt there, then nothing.
    assert schedule.next_attempt(T0, 30, late, 0.5) == T0 + timedelta(days=5)
    assert schedule.next_attempt(T0, 31, T0 + timedelta(days=5), 0.5) is None


def test_delay_notice_once_after_four_hours() -> None:
    schedule = RetrySchedule()
    assert not schedule.delay_notice_due(T0, T0 + timedelta(hours=3, minutes=59), False)
    assert schedule.delay_notice_due(T0, T0 + timedelta(hours=4), False)
    assert not schedule.delay_notice_due(T0, T0 + timedelta(hours=5), True)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"delays": (60, 0)},
        {"then_every": 0},
        {"expire_after": 0},
        {"delay_notice_after": -1},
        {"jitter": 1.0},
        {"jitter": -0.1},
    ],
)
def test_invalid_schedules_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RetrySchedule(**kwargs)  # type: ignore[arg-type]


def test_attempt_numbers_start_at_one() -> None:
    with pytest.raises(ValueError):
        RetrySchedule().wait_after(0, 0.5)
