"""Identical reads asked at the same time in one process go out once, never older than the asking.

On a busy day every patient's ``$find`` asks for the same Slots: one Schedule, one day, up to
1,800 Slots that HAPI must load for each of them (the full mass booking spent about half of
HAPI's time on them). A read-only operation's Slot search therefore goes through
:class:`SharedReads`: while such a read is *in the air*, identical reads that arrive wait for
it to land and then go out **once**, together; each waiter gets that next answer.

The rule that keeps this as fresh as reading alone: an answer is shared only with requests that
had arrived **before it was sent**. A request never rides a read already in the air (its answer
may predate a booking the request must see, e.g. the caller's own one just before); it waits
for the next one, which leaves after it arrived. So each answer reflects the store at some
moment after its request arrived -- what the request's own read would have given -- and at most
two reads of one key are out per process (one in the air, one boarding). It is not a cache:
nothing is kept once a read lands.

Deciding reads (bookings) never come here (``plugin/context.py`` shares only the reads of
operations that write nothing); their freshness argument is in docs/consistency.md.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from plugin.metrics import record_shared_read
from plugin.upstream_errors import BudgetExhausted

T = TypeVar("T")

logger = logging.getLogger("plugin.upstream")


@dataclass
class _Flight:
    """One read of a key: boarding until it is sent, then in the air until it lands."""

    landed: threading.Event = field(default_factory=threading.Event)
    riders: int = 0
    answer: Any = None
    failure: BaseException | None = None


@dataclass
class _Key:
    in_air: _Flight | None = None
    boarding: _Flight | None = None


class SharedReads:
    """Per process (its state is only locks and the reads out right now).

    ``read(key, fetch, deadline)``: ``fetch()``'s answer, or that of an identical read sent after
    this call began. ``key`` must hold everything the answer depends on, the identity asking
    included. ``deadline`` (``time.monotonic()``) bounds the wait for a read of another
    request; past it the caller's budget is spent (:class:`BudgetExhausted`).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[Hashable, _Key] = {}

    def read(self, key: Hashable, fetch: Callable[[], T], deadline: float | None = None) -> T:
        with self._lock:
            state = self._keys.setdefault(key, _Key())
            flight = state.boarding
            rides = flight is not None
            if flight is not None:  # a read not yet sent: board it
                flight.riders += 1
                ahead = None
            else:
                flight = _Flight()
                ahead = state.in_air
                if ahead is None:
                    state.in_air = flight  # nothing out: send at once
                else:
                    state.boarding = flight  # wait for the read in the air, then go
        if rides:
            return self._ride(key, flight, fetch, deadline)
        if ahead is not None:
            ahead.landed.wait(self._left(deadline))
            with self._lock:
                if state.boarding is flight:
                    state.boarding = None
                state.in_air = flight
        return self._fly(key, state, flight, fetch)

    def waiting(self, key: Hashable) -> int:
        """Requests waiting for a read of ``key`` not yet sent (its sender and its riders)."""
        with self._lock:
            state = self._keys.get(key)
            flight = state.boarding if state is not None else None
            return 0 if flight is None else 1 + flight.riders

    def out(self) -> int:
        """Keys with a read in the air or boarding now (0 once every read has landed)."""
        with self._lock:
            return len(self._keys)

    def _fly(self, key: Hashable, state: _Key, flight: _Flight, fetch: Callable[[], T]) -> T:
        try:
            flight.answer = fetch()
            return copy.copy(flight.answer)  # type: ignore[no-any-return]
        except BaseException as exc:
            flight.failure = exc
            raise
        finally:
            with self._lock:
                if state.in_air is flight:
                    state.in_air = None
                if state.in_air is None and state.boarding is None and self._keys.get(key) is state:
                    del self._keys[key]
                riders = flight.riders
            flight.landed.set()
            record_shared_read("sent")
            if riders:
                record_shared_read("joined", riders)
                logger.debug("a read went out once for %d more requests", riders, extra={"riders": riders})

    def _ride(self, key: Hashable, flight: _Flight, fetch: Callable[[], T], deadline: float | None) -> T:
        if not flight.landed.wait(self._left(deadline)):
            exhausted = BudgetExhausted("the operation ran out of time waiting for the upstream FHIR server")
            exhausted.never_sent = True
            raise exhausted
        if flight.failure is None:
            answer: T = copy.copy(flight.answer)  # a list of its own: the resources are only read
            return answer
        if isinstance(flight.failure, BudgetExhausted) or not isinstance(flight.failure, Exception):
            # The request that sent it ran out of time, or its thread is being stopped
            # (SystemExit, KeyboardInterrupt: never raised in another thread): this one reads.
            return self.read(key, fetch, deadline)
        raise _copied(flight.failure)

    def _left(self, deadline: float | None) -> float | None:
        return None if deadline is None else max(0.0, deadline - self._clock())


def _copied(failure: BaseException) -> BaseException:
    """The sender's failure for one rider: a copy, so threads do not share one traceback."""
    try:
        return copy.copy(failure)
    except Exception:  # an exception type copy cannot rebuild: the original will do
        return failure
