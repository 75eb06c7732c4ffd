"""Re-deciding after a version conflict: the clock the use cases see, and the bounded retry loop.

A failed version check means "something changed since you looked", not "your time is taken":
the attempt re-reads and decides again, with jittered exponential backoff, until a deadline
(docs/consistency.md).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from operations.errors import ConcurrentChange, Conflict

T = TypeVar("T")
logger = logging.getLogger(__name__)


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
    max_backoff_seconds: float = 0.25
    seniority_seconds: float = 1.0
    """An attempt that has been re-deciding this long waits at most ``base_backoff_seconds``
    between tries: it goes ahead of newer arrivals (whose backoff is still growing), so an
    unlucky writer is not starved by a stream of fresh ones."""


@dataclass
class Attempts:
    """Counts the reads-and-decisions of one operation, for its result and the benchmarks."""

    count: int = 0


def backoff(policy: RetryPolicy, tries: int, elapsed: float) -> float:
    """The longest pause after the ``tries``-th lost version check, ``elapsed`` seconds in."""
    if elapsed >= policy.seniority_seconds:
        return policy.base_backoff_seconds
    return min(policy.max_backoff_seconds, policy.base_backoff_seconds * 2.0 ** min(tries, 10))


def retrying(
    policy: RetryPolicy,
    clock: Clock,
    attempt: Callable[[], T],
    *,
    operation: str = "write",
    attempts: Attempts | None = None,
) -> T:
    """Run ``attempt`` until it stops raising ``ConcurrentChange`` or the deadline passes.

    Each retry is counted (``attempts``) and logged with the operation, the attempt number and
    the time spent so far. Fair and bounded: jittered exponential backoff while young, short
    pauses once senior (:class:`RetryPolicy`), never past the deadline or ``max_attempts``.
    """
    counter = attempts if attempts is not None else Attempts()
    started = clock.monotonic()
    for tries in range(1, policy.max_attempts + 1):
        counter.count = tries
        try:
            return attempt()
        except ConcurrentChange as exc:
            elapsed = clock.monotonic() - started
            if elapsed >= policy.deadline_seconds or tries == policy.max_attempts:
                logger.warning(
                    "concurrent changes did not settle before the deadline",
                    extra={"operation": operation, "attempts": tries, "elapsed_ms": round(elapsed * 1000)},
                )
                break
            pause = random.uniform(0, backoff(policy, tries, elapsed))  # jitter, not security
            logger.info(
                "version conflict: re-reading and deciding again",
                extra={
                    "operation": operation,
                    "attempt": tries,
                    "elapsed_ms": round(elapsed * 1000),
                    "backoff_ms": round(pause * 1000),
                    "reason": str(exc)[:200],
                },
            )
            clock.sleep(pause)
    raise Conflict("Concurrent changes to the same schedules did not settle before the deadline; try again")
