"""Group commit (``operations/booking_group.py`` with ``plugin/booking_groups.py``): bookings of
one Schedule that arrive while another is being written wait, then are decided and written
together -- against the versioned fake store, with real threads paused at chosen points.

Each test holds the first booking inside its transaction until the others are queued behind it
(``Queued``), so which group forms is deterministic, not a matter of timing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from operations.booking import book
from operations.errors import ConcurrentChange, Conflict, Unprocessable
from operations.store import Resource, Stores
from plugin.booking_groups import BookingGroups
from tests.unit.builders import patient
from tests.unit.fake_store import FakeFhirStore
from tests.unit.test_booking import TTL, FakeClock, at, clinic, of_type
from tests.unit.test_races import CallerView, request_for


class Calls:
    """Books in threads, through one ``BookingGroups`` (one process)."""

    def __init__(self, store: FakeFhirStore, groups: BookingGroups, stores: Stores | None = None) -> None:
        self.store, self.groups, self.stores = store, groups, stores
        self.threads: list[threading.Thread] = []
        self.results: dict[str, Any] = {}

    def start(self, name: str, proposal: Resource) -> None:
        def run() -> None:
            try:
                self.results[name] = book(
                    self.stores or self.store,
                    request_for(proposal),
                    hold=False,
                    hold_ttl=TTL,
                    clock=FakeClock().clock(),
                    grouping=self.groups,
                )
            except Exception as exc:
                self.results[name] = exc

        thread = threading.Thread(target=run, name=f"booking-{name}")
        self.threads.append(thread)
        thread.start()

    def finish(self) -> dict[str, Any]:
        for thread in self.threads:
            thread.join(timeout=10)
            assert not thread.is_alive(), "a booking never finished"
        return self.results


def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.005)


def queued(
    calls: Calls, start: list[tuple[str, Resource]], then: Callable[[], object] = lambda: None
) -> None:
    """Once the first booking is inside its transaction: start ``start`` and wait until each is
    queued behind it, then run ``then``; the first booking's transaction goes on afterwards."""

    def hold_first() -> None:
        for name, proposal in start:
            calls.start(name, proposal)
        until(lambda: calls.groups.waiting() == len(start), f"{len(start)} bookings are queued")
        then()

    calls.store.before_transaction.append(hold_first)


def appointments_per_transaction(store: FakeFhirStore) -> list[int]:
    return [
        sum(1 for e in t["entry"] if e["resource"]["resourceType"] == "Appointment")
        for t in store.transactions
    ]


def busy_at(store: FakeFhirStore, start: str) -> int:
    return sum(1 for s in of_type(store, "Slot") if s["status"] == "busy" and s["start"] == start)


def capacity_clinic(capacity: int) -> FakeFhirStore:
    """``clinic()`` with ``capacity`` places at each time."""
    return clinic(slotCapacity=capacity)


def another_process_books(store: FakeFhirStore, proposal: Resource) -> Callable[[], None]:
    """A booking by another process (no grouping with ours), to interleave before a transaction."""

    def books() -> None:
        taken = book(store, request_for(proposal), hold=False, hold_ttl=TTL, clock=FakeClock().clock())
        assert taken.status == 201

    return books


def test_bookings_queued_behind_a_write_go_together_in_one_transaction() -> None:
    store = capacity_clinic(3)
    calls = Calls(store, BookingGroups(max_size=30))
    b, c = at(store, "10:00") | {"comment": "b"}, at(store, "10:00") | {"comment": "c"}
    queued(calls, [("b", b), ("c", c)])
    calls.start("a", at(store, "10:00"))
    results = calls.finish()
    assert {name: r.status for name, r in results.items()} == {"a": 201, "b": 201, "c": 201}
    assert appointments_per_transaction(store) == [1, 2]
    assert all(r.attempts == 1 for r in results.values())  # nobody lost a version check
    assert [r.group for r in (results["a"], results["b"], results["c"])] == [1, 2, 2]
    # A's speculative lock read and the group's: B and C, which found A being written, did not
    # read the locks in their first round trip for nothing.
    assert store.calls.count("search Basic") == 2
    # Each member gets its own Appointment and Slots, not the group's.
    for name in ("b", "c"):
        entries = results[name].bundle["entry"]
        assert [e["resource"]["resourceType"] for e in entries] == ["Appointment", "Slot", "Slot", "Slot"]
        assert entries[0]["resource"]["comment"] == name
        slot_ids = {f"Slot/{e['resource']['id']}" for e in entries[1:]}
        assert {r["reference"] for r in entries[0]["resource"]["slot"]} == slot_ids


def test_a_group_fills_the_places_left_and_not_one_more() -> None:
    """Each member is decided on the Slots found plus those of the members accepted before it.
    Decided on the Slots found alone, all three would see one place left and all would land."""
    store = capacity_clinic(2)
    time_ = at(store, "09:15")
    calls = Calls(store, BookingGroups(max_size=30))
    queued(calls, [("b", time_), ("c", time_), ("d", time_)])
    calls.start("a", time_)
    results = calls.finish()
    statuses = sorted(r.status if not isinstance(r, Exception) else 409 for r in results.values())
    assert statuses == [201, 201, 409, 409]
    assert sum(isinstance(r, Conflict) for r in results.values()) == 2
    assert busy_at(store, "2026-12-07T09:15:00-05:00") == 2
    assert appointments_per_transaction(store) == [1, 1]


def test_a_booking_of_another_time_does_not_wait_for_the_group() -> None:
    """Groups are per time bucket: while A's transaction is held, a booking of another time of
    the same Schedule (other buckets) is written at once, alone; one of A's time waits."""
    store = capacity_clinic(2)
    calls = Calls(store, BookingGroups(max_size=30))
    elsewhere: dict[str, Any] = {}

    def hold_a() -> None:
        elsewhere["other time"] = book(
            store,
            request_for(at(store, "11:00")),
            hold=False,
            hold_ttl=TTL,
            clock=FakeClock().clock(),
            grouping=calls.groups,
        )
        calls.start("same time", at(store, "09:15"))
        until(lambda: calls.groups.waiting() == 1, "the booking of A's time is queued")

    store.before_transaction.append(hold_a)
    calls.start("a", at(store, "09:15"))
    results = calls.finish()
    assert elsewhere["other time"].status == 201 and elsewhere["other time"].group == 1
    assert results["a"].status == results["same time"].status == 201
    assert results["same time"].group == 1  # alone in its group, but it waited for A's


def test_a_booking_of_a_neighbouring_time_waits_for_the_bucket_they_share() -> None:
    """09:15 and 09:30 (30-minute visits) are two times, two groups, but share the 09:30 bucket.
    While A (09:15) is inside its transaction, B (09:30) waits instead of reading the lock A is
    about to move: B lands at its first attempt rather than losing its version check."""
    store = capacity_clinic(2)
    calls = Calls(store, BookingGroups(max_size=30))

    def hold_a() -> None:
        calls.start("b", at(store, "09:30"))
        until(lambda: calls.groups.waiting() == 1, "B waits for the bucket it shares with A")

    store.before_transaction.append(hold_a)
    calls.start("a", at(store, "09:15"))
    results = calls.finish()
    assert results["a"].status == results["b"].status == 201
    assert results["a"].attempts == results["b"].attempts == 1
    assert results["b"].group == 1  # not grouped with A: another time


def test_a_group_that_loses_the_version_check_decides_again() -> None:
    """Another process takes a place of the group's time between the group's lock read and its
    transaction: the transaction fails its version check, and the group decides again: of
    three places left when it read, two are left, so one member is 409 and one lands."""
    store = capacity_clinic(4)
    calls = Calls(store, BookingGroups(max_size=30))
    time_ = at(store, "10:00")

    queued(
        calls,
        [("b", time_ | {"comment": "b"}), ("c", time_ | {"comment": "c"}), ("d", time_ | {"comment": "d"})],
        then=lambda: store.before_transaction.append(another_process_books(store, time_)),
    )
    calls.start("a", time_)
    results = calls.finish()
    # The queue's order is the order in which the three finished reading their configuration.
    booked = [results[n] for n in ("b", "c", "d") if not isinstance(results[n], Exception)]
    assert sum(isinstance(results[n], Conflict) for n in ("b", "c", "d")) == 1
    # Lost; then one of the three written (attempt 2); then the other two decided again (3).
    assert sorted(r.attempts for r in booked) == [2, 3] and {r.status for r in booked} == {201}
    assert busy_at(store, "2026-12-07T10:00:00-05:00") == 4


def another_process_books_each_time(
    store: FakeFhirStore, proposal: Resource, times: int
) -> Callable[[], None]:
    """Another process books ``proposal`` before each of our next ``times`` transactions."""
    left = [times]

    def books() -> None:
        another_process_books(store, proposal)()
        left[0] -= 1
        if left[0]:
            store.before_transaction.append(books)

    return books


def group_losing(*, capacity: int, members: int, losses: int) -> tuple[FakeFhirStore, dict[str, Any]]:
    """ "a" books 09:30 and is held in its transaction until ``members`` bookings of that time
    (``q0``...) queue behind it; then another process books 09:30 just before each of the next
    ``losses`` transactions, so the group loses its version check that many times in a row."""
    store = capacity_clinic(capacity)
    calls = Calls(store, BookingGroups(max_size=30))
    time_ = at(store, "09:30")
    queued(
        calls,
        [(f"q{n}", time_ | {"comment": f"q{n}"}) for n in range(members)],
        then=lambda: store.before_transaction.append(another_process_books_each_time(store, time_, losses)),
    )
    calls.start("a", time_)
    return store, calls.finish()


def test_a_group_that_lost_its_version_check_writes_half_of_its_members_next() -> None:
    """A big group's transaction is slower to decide and commit than a small one of another
    process, and could keep losing to them until the deadline (measured: groups losing 20 to
    46 times in a row in the full mass booking). After a loss, the next transaction writes half
    of the members still open, the rest follow in the next one: here 4 -> 2 + 2."""
    store, results = group_losing(capacity=6, members=4, losses=1)
    assert all(r.status == 201 for r in results.values()), results
    assert appointments_per_transaction(store) == [1, 1, 2, 2]
    assert sorted(results[f"q{n}"].attempts for n in range(4)) == [2, 2, 3, 3]  # lost, then two


def test_a_group_whose_transaction_lands_writes_twice_as_many_members_next() -> None:
    """After three losses in a row a group of 8 writes one member at a time (8 -> 4 -> 2 -> 1);
    each transaction that lands doubles that again, so the rest go 2, then 4, not one by one."""
    store, results = group_losing(capacity=30, members=8, losses=3)
    assert all(r.status == 201 for r in results.values()), results
    # "a" alone, the other process's three (each just before one of the group's lost ones), then
    # the group's four that landed.
    assert appointments_per_transaction(store) == [1, 1, 1, 1, 1, 2, 4, 1]
    assert sorted(results[f"q{n}"].attempts for n in range(8)) == [4, 5, 5, 6, 6, 6, 6, 7]


def test_each_member_keeps_its_own_answer() -> None:
    """In one group: a twin of a booking already made (200, its replay), one naming a patient
    its caller may not read (422), one that is fine (201)."""
    store = capacity_clinic(4)
    store.add(patient("hidden"))
    stores = Stores(caller=CallerView(store, {"Patient/hidden"}), service=store)
    time_ = at(store, "10:00")
    twin = time_ | {"identifier": [{"system": "urn:app", "value": "visit-1"}]}
    first = book(stores, request_for(twin), hold=False, hold_ttl=TTL, clock=FakeClock().clock())
    hidden = time_ | {"participant": [{"actor": {"reference": "Patient/hidden"}, "status": "accepted"}]}
    calls = Calls(store, BookingGroups(max_size=30), stores)
    queued(calls, [("twin", twin), ("hidden", hidden), ("fine", time_)])
    calls.start("a", time_)
    results = calls.finish()
    assert results["twin"].status == 200
    assert results["twin"].bundle["entry"][0]["resource"]["id"] == first.bundle["entry"][0]["resource"]["id"]
    assert isinstance(results["hidden"], Unprocessable)
    assert results["fine"].status == 201 and results["fine"].group == 3
    assert appointments_per_transaction(store) == [1, 1, 1]
    assert busy_at(store, "2026-12-07T10:00:00-05:00") == 3


class RefusingStore(FakeFhirStore):
    """Refuses, as the upstream does with a 422, a transaction with an Appointment whose
    ``comment`` is ``refuse me``."""

    def transaction(self, bundle: Resource) -> Resource:
        if any(e["resource"].get("comment") == "refuse me" for e in bundle["entry"] if "resource" in e):
            self.calls.append("transaction")
            self.before_transaction, pending = [], self.before_transaction
            for interleaved in pending:
                interleaved()
            raise Unprocessable("The FHIR server refused to store the change")
        return super().transaction(bundle)


def test_a_group_whose_content_is_refused_is_committed_one_by_one() -> None:
    """Which member's content the upstream refused is not known: each is committed alone, and
    only the one at fault is 422."""
    store = RefusingStore(*list(capacity_clinic(3).resources.values()))
    calls = Calls(store, BookingGroups(max_size=30))
    time_ = at(store, "10:00")
    queued(calls, [("refused", time_ | {"comment": "refuse me"}), ("fine", time_)])
    calls.start("a", time_)
    results = calls.finish()
    assert isinstance(results["refused"], Unprocessable)
    assert results["fine"].status == 201
    assert busy_at(store, "2026-12-07T10:00:00-05:00") == 2


def test_a_409_that_counted_a_member_whose_write_failed_is_decided_again() -> None:
    """The last place went to the first member in the group's decision, so the second was
    refused -- provisionally: the first member's content is refused and never lands, and the
    second is decided again and gets the place (answering it 409 would be a false 409). Then the
    first, committed alone, finds the time full."""
    store = RefusingStore(*list(capacity_clinic(2).resources.values()))
    calls = Calls(store, BookingGroups(max_size=30))
    time_ = at(store, "10:00")
    queued(calls, [("refused", time_ | {"comment": "refuse me"}), ("second", time_)])
    calls.start("a", time_)
    results = calls.finish()
    assert results["second"].status == 201
    assert isinstance(results["refused"], Conflict)
    assert busy_at(store, "2026-12-07T10:00:00-05:00") == 2


@pytest.mark.parametrize("landed", ["yes", "no"])
def test_a_group_whose_answer_was_lost_tells_each_member_the_truth(landed: str) -> None:
    store = capacity_clinic(3)
    calls = Calls(store, BookingGroups(max_size=30))
    time_ = at(store, "10:00")
    queued(
        calls,
        [("b", time_), ("c", time_)],
        then=lambda: store.before_transaction.append(lambda: store.lose_next_answer(landed)),  # the group's
    )
    calls.start("a", time_)
    results = calls.finish()
    assert results["a"].status == 201
    if landed == "yes":
        assert results["b"].status == results["c"].status == 201
        assert busy_at(store, "2026-12-07T10:00:00-05:00") == 3
    else:
        for name in ("b", "c"):
            assert "Nothing was stored" in (results[name].resolution or "")
        assert busy_at(store, "2026-12-07T10:00:00-05:00") == 1


# ---- the queue itself (plugin/booking_groups.py) ----------------------------------------------


def test_groups_are_at_most_max_size_and_every_queued_booking_is_answered() -> None:
    groups = BookingGroups(max_size=2)
    seen: list[list[str]] = []
    release = threading.Event()
    answers: dict[str, Any] = {}

    def commit(members: Any, waited: bool) -> list[Any]:
        seen.append(list(members))
        if len(seen) == 1:
            release.wait(5)
        return [f"done {m}" for m in members]

    def run(name: str) -> None:
        answers[name] = groups("key", name, commit)  # type: ignore[arg-type]

    threads = [threading.Thread(target=run, args=("first",))]
    threads[0].start()
    until(lambda: len(seen) == 1, "the first group is being written")
    for name in ("q1", "q2", "q3"):
        threads.append(threading.Thread(target=run, args=(name,)))
        threads[-1].start()
        until(_waiting(groups, len(threads) - 1), f"{name} is queued")
    release.set()
    for thread in threads:
        thread.join(5)
    assert seen == [["first"], ["q1", "q2"], ["q3"]]
    assert answers == {n: f"done {n}" for n in ("first", "q1", "q2", "q3")}
    assert groups.waiting() == 0


def _waiting(groups: BookingGroups, count: int) -> Callable[[], bool]:
    return lambda: groups.waiting() == count


def test_a_group_that_fails_as_a_whole_still_hands_over_to_the_next() -> None:
    groups = BookingGroups(max_size=30)
    release = threading.Event()
    answers: dict[str, Any] = {}
    calls: list[list[str]] = []

    def commit(members: Any, waited: bool) -> list[Any]:
        calls.append(list(members))
        if len(calls) == 1:
            release.wait(5)
            raise ConcurrentChange("a defect")  # commit should answer each member; it did not
        return ["ok" for _ in members]

    def run(name: str) -> None:
        answers[name] = groups("key", name, commit)  # type: ignore[arg-type]

    first = threading.Thread(target=run, args=("first",))
    first.start()
    until(lambda: len(calls) == 1, "the first group is being written")
    second = threading.Thread(target=run, args=("second",))
    second.start()
    until(lambda: groups.waiting() == 1, "the second is queued")
    release.set()
    first.join(5)
    second.join(5)
    assert isinstance(answers["first"], ConcurrentChange)
    assert answers["second"] == "ok"
