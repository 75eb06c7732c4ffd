"""The re-decide loop: bounded, counted, and an old attempt goes ahead of new ones."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from operations.errors import ConcurrentChange, Conflict
from operations.retries import Attempts, Clock, RetryPolicy, backoff, retrying


def test_a_young_attempt_backs_off_more_and_more_an_old_one_hardly_at_all() -> None:
    policy = RetryPolicy()
    young = [backoff(policy, tries, elapsed=0.1) for tries in range(1, 8)]
    assert young == sorted(young) and young[0] == 0.04 and young[-1] == policy.max_backoff_seconds
    # Past seniority_seconds, at most the base pause: it retries before newer arrivals.
    assert backoff(policy, 7, elapsed=policy.seniority_seconds) == policy.base_backoff_seconds


def test_retries_are_counted_and_stop_at_max_attempts() -> None:
    now = [0.0]
    clock = Clock(
        now=lambda: datetime(2026, 1, 1, tzinfo=UTC),
        monotonic=lambda: now[0],
        sleep=lambda seconds: now.__setitem__(0, now[0] + seconds),
    )
    counted = Attempts()

    def always_losing() -> None:
        raise ConcurrentChange("lock moved")

    with pytest.raises(Conflict, match="did not settle"):
        retrying(RetryPolicy(max_attempts=5), clock, always_losing, attempts=counted)
    assert counted.count == 5
