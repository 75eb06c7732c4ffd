"""Re-deciding after a version conflict: the clock the use cases see, and the bounded retry loop.

A failed version check means "something changed since you looked", not "your time is taken":
the attempt re-reads and decides again, with jittered exponential backoff, until a deadline
(docs/consistency.md).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from operations.errors import ConcurrentChange, Conflict

T = TypeVar("T")


@dataclass(frozen=True)
class Clock:
    """Time as the use cases see it; the plugin passes real clocks, tests fake ones."""

    now: Callable[[], datetime]
    monotonic: Callable[[], float]
    sleep: Callable[[float], None]


@dataclass(frozen=True)
class RetryPolicy:
    """How long conflicting writers keep re-deciding before a 409 reaches the caller."""

    deadline_seconds: float = 20.0
    max_attempts: int = 60
    base_backoff_seconds: float = 0.02
    max_backoff_seconds: float = 0.5


def retrying(policy: RetryPolicy, clock: Clock, attempt: Callable[[], T]) -> T:
    """Run ``attempt`` until it stops raising ``ConcurrentChange`` or the deadline passes."""
    started = clock.monotonic()
    for tries in range(1, policy.max_attempts + 1):
        try:
            return attempt()
        except ConcurrentChange:
            elapsed = clock.monotonic() - started
            if elapsed >= policy.deadline_seconds or tries == policy.max_attempts:
                break
            backoff = min(policy.max_backoff_seconds, policy.base_backoff_seconds * (2 ** min(tries, 10)))
            clock.sleep(random.uniform(0, backoff))  # jitter, not security
    raise Conflict("Concurrent changes to the same schedules did not settle before the deadline; try again")
