"""``plugin/shared_reads.py``: identical reads at the same time go out once, and an answer is
shared only with requests that arrived before it was sent.

Each test pauses the read in the air on an event, so the interleaving is fixed, not hoped for.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from plugin.shared_reads import SharedReads
from plugin.upstream_errors import BudgetExhausted, UpstreamUnavailable
from tests.unit.test_booking_groups import until

KEY = ("Slot", "service", ("s1",), "2031-01-06", "2031-01-07")
WAIT = 5.0


class Store:
    """A store whose state is a version; each read answers the version it saw when sent, and
    the reads named in ``paused`` wait for their event once sent."""

    def __init__(self) -> None:
        self.version = 1
        self.sent = 0
        self.paused: dict[int, threading.Event] = {}
        self.in_air: dict[int, threading.Event] = {}
        self._lock = threading.Lock()

    def pause(self, read: int) -> threading.Event:
        self.paused[read] = threading.Event()
        self.in_air[read] = threading.Event()
        return self.paused[read]

    def fetch(self) -> list[int]:
        with self._lock:
            self.sent += 1
            number, seen = self.sent, self.version
        if number in self.paused:
            self.in_air[number].set()
            assert self.paused[number].wait(WAIT)
        return [seen]


@pytest.fixture
def pool() -> Any:
    with ThreadPoolExecutor(8) as executor:
        yield executor


def test_a_read_alone_is_sent_at_once_and_nothing_is_kept() -> None:
    shared, store = SharedReads(), Store()
    assert shared.read(KEY, store.fetch) == [1]
    store.version = 2
    assert shared.read(KEY, store.fetch) == [2]  # not a cache: the next call reads again
    assert store.sent == 2 and shared.out() == 0


def test_a_request_never_rides_a_read_sent_before_it_arrived(pool: ThreadPoolExecutor) -> None:
    """A's read is in the air; a booking lands; B and C arrive. They must see the booking: they
    wait for A's read to land, then share one read sent after they arrived."""
    shared, store = SharedReads(), Store()
    release_a = store.pause(1)
    a = pool.submit(shared.read, KEY, store.fetch)
    until(store.in_air[1].is_set, "read 1 is in the air")
    store.version = 2  # a booking landed after A's read was sent
    b = pool.submit(shared.read, KEY, store.fetch)
    c = pool.submit(shared.read, KEY, store.fetch)
    until(lambda: shared.waiting(KEY) == 2, "2 waiting for the next read")
    assert store.sent == 1, "nothing more goes out while A's read is in the air"
    release_a.set()
    assert a.result(WAIT) == [1]
    assert b.result(WAIT) == [2] and c.result(WAIT) == [2]
    assert store.sent == 2, "B and C went out once, together"
    assert shared.out() == 0


def test_arrivals_during_the_boarding_read_wait_for_the_one_after_it(pool: ThreadPoolExecutor) -> None:
    """At most one read in the air and one boarding: while B's read (sent after A's landed) is
    in the air, D arrives and waits for a third read."""
    shared, store = SharedReads(), Store()
    release_a, release_b = store.pause(1), store.pause(2)
    a = pool.submit(shared.read, KEY, store.fetch)
    until(store.in_air[1].is_set, "read 1 is in the air")
    b = pool.submit(shared.read, KEY, store.fetch)
    until(lambda: shared.waiting(KEY) == 1, "1 waiting for the next read")
    release_a.set()
    until(store.in_air[2].is_set, "read 2 is in the air")
    store.version = 3
    d = pool.submit(shared.read, KEY, store.fetch)
    until(lambda: shared.waiting(KEY) == 1, "1 waiting for the next read")
    release_b.set()
    assert (a.result(WAIT), b.result(WAIT), d.result(WAIT)) == ([1], [1], [3])
    assert store.sent == 3


def test_each_rider_gets_a_list_of_its_own(pool: ThreadPoolExecutor) -> None:
    shared, store = SharedReads(), Store()
    release_a = store.pause(1)
    pool.submit(shared.read, KEY, store.fetch)
    until(store.in_air[1].is_set, "read 1 is in the air")
    riders = [pool.submit(shared.read, KEY, store.fetch) for _ in range(3)]
    until(lambda: shared.waiting(KEY) == 3, "3 waiting for the next read")
    release_a.set()
    answers = [r.result(WAIT) for r in riders]
    assert answers == [[1], [1], [1]]
    answers[0].append(99)
    assert answers[1] == [1], "one rider changing its list changes no other's"


def test_a_failed_read_fails_every_request_that_rode_it(pool: ThreadPoolExecutor) -> None:
    shared, store = SharedReads(), Store()
    release_a = store.pause(1)
    calls = 0

    def failing() -> list[int]:
        nonlocal calls
        calls += 1
        raise UpstreamUnavailable("HAPI is down")

    a = pool.submit(shared.read, KEY, store.fetch)
    until(store.in_air[1].is_set, "read 1 is in the air")
    b = pool.submit(shared.read, KEY, failing)
    c = pool.submit(shared.read, KEY, failing)
    until(lambda: shared.waiting(KEY) == 2, "2 waiting for the next read")
    release_a.set()
    assert a.result(WAIT) == [1]
    for rider in (b, c):
        with pytest.raises(UpstreamUnavailable, match="HAPI is down"):
            rider.result(WAIT)
    assert calls == 1, "the failing read went out once"
    assert shared.out() == 0


@pytest.mark.parametrize(
    "failure",
    [
        BudgetExhausted("the sender's budget is spent"),
        SystemExit(1),  # gunicorn stopping the worker while the read was in the air
    ],
    ids=["sender out of time", "sender thread stopped"],
)
def test_a_rider_reads_itself_when_the_sender_failed_for_its_own_reasons(
    pool: ThreadPoolExecutor, failure: BaseException
) -> None:
    shared, store = SharedReads(), Store()
    release_a = store.pause(1)

    def failing() -> list[int]:
        raise failure

    pool.submit(shared.read, KEY, store.fetch)
    until(store.in_air[1].is_set, "read 1 is in the air")
    sender = pool.submit(shared.read, KEY, failing)
    until(lambda: shared.waiting(KEY) == 1, "1 waiting for the next read")
    rider = pool.submit(shared.read, KEY, store.fetch)
    until(lambda: shared.waiting(KEY) == 2, "2 waiting for the next read")
    release_a.set()
    with pytest.raises(type(failure)):
        sender.result(WAIT)
    assert rider.result(WAIT) == [1] and store.sent == 2  # its own read, after the sender's failed


def test_a_rider_waits_no_longer_than_its_own_budget(pool: ThreadPoolExecutor) -> None:
    shared, store = SharedReads(), Store()
    release_a = store.pause(1)
    a = pool.submit(shared.read, KEY, store.fetch)
    until(store.in_air[1].is_set, "read 1 is in the air")
    release_b = store.pause(2)
    b = pool.submit(shared.read, KEY, store.fetch)
    until(lambda: shared.waiting(KEY) == 1, "1 waiting for the next read")
    began = time.monotonic()
    late: Future[list[int]] = pool.submit(shared.read, KEY, store.fetch, time.monotonic() + 0.2)
    with pytest.raises(BudgetExhausted):
        late.result(WAIT)
    assert time.monotonic() - began < 2.0
    release_a.set()
    release_b.set()
    assert a.result(WAIT) == [1] and b.result(WAIT) == [1]
    assert shared.out() == 0


def test_different_keys_never_wait_for_each_other(pool: ThreadPoolExecutor) -> None:
    shared, store = SharedReads(), Store()
    release_a = store.pause(1)
    a = pool.submit(shared.read, KEY, store.fetch)
    until(store.in_air[1].is_set, "read 1 is in the air")
    other = ("Slot", "service", ("s2",), "2031-01-06", "2031-01-07")
    assert shared.read(other, store.fetch) == [1] and store.sent == 2
    release_a.set()
    assert a.result(WAIT) == [1]
