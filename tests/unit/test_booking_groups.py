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
from tests.unit.builders import hours, patient, practitioner, schedule, service
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


def test_bookings_queued_behind_a_write_go_together_in_one_transaction() -> None:
    store = clinic()
    calls = Calls(store, BookingGroups(max_size=30))
    queued(calls, [("b", at(store, "10:00")), ("c", at(store, "10:45"))])
    calls.start("a", at(store, "09:15"))
    results = calls.finish()
    assert {name: r.status for name, r in results.items()} == {"a": 201, "b": 201, "c": 201}
    assert appointments_per_transaction(store) == [1, 2]
    assert all(r.attempts == 1 for r in results.values())  # nobody lost a version check
    assert [r.group for r in (results["a"], results["b"], results["c"])] == [1, 2, 2]
    # A's speculative lock read and the group's: B and C, which found A being written, did not
    # read the locks in their first round trip for nothing.
    assert store.calls.count("search Basic") == 2
    # Each member gets its own Appointment and Slots, not the group's.
    for name, start in (("b", "10:00"), ("c", "10:45")):
        entries = results[name].bundle["entry"]
        assert [e["resource"]["resourceType"] for e in entries] == ["Appointment", "Slot", "Slot", "Slot"]
        assert entries[0]["resource"]["start"] == f"2026-12-07T{start}:00-05:00"
        slot_ids = {f"Slot/{e['resource']['id']}" for e in entries[1:]}
        assert {r["reference"] for r in entries[0]["resource"]["slot"]} == slot_ids


def capacity_clinic(capacity: int) -> FakeFhirStore:
    return FakeFhirStore(
        practitioner("alice", "America/New_York"),
        service(
            hours=[hours("mon", "09:00", "12:00")], duration=30, alignmentInterval=15, slotCapacity=capacity
        ),
        schedule("alice", "Practitioner/alice", ["checkup"]),
    )


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


def test_a_group_that_loses_the_version_check_decides_again() -> None:
    """Another process books B's time between the group's lock read and its transaction: the
    transaction fails its version check, and the group decides again: B is 409, C still lands."""
    store = clinic()
    other = clinic()  # the proposal builder needs a store; times are the same
    calls = Calls(store, BookingGroups(max_size=30))
    b, c = at(other, "10:00"), at(other, "10:45")

    def another_process_books_b() -> None:
        taken = book(store, request_for(b), hold=False, hold_ttl=TTL, clock=FakeClock().clock())
        assert taken.status == 201

    queued(calls, [("b", b), ("c", c)], then=lambda: store.before_transaction.append(another_process_books_b))
    calls.start("a", at(store, "09:15"))
    results = calls.finish()
    assert isinstance(results["b"], Conflict)
    assert results["c"].status == 201 and results["c"].attempts == 2
    assert busy_at(store, "2026-12-07T10:00:00-05:00") == 1
    assert busy_at(store, "2026-12-07T10:45:00-05:00") == 1


def test_a_group_that_lost_its_version_check_writes_half_of_its_members_next() -> None:
    """A big group's transaction is slower to decide and commit than a small one of another
    process, and could keep losing to them until the deadline (measured: one group of 15 lost
    46 times in a row in the full mass booking). After a loss, the next transaction writes half
    of the members still open, the rest follow in the next one: here 4 -> 2 + 2."""
    store = capacity_clinic(2)
    other = capacity_clinic(2)
    calls = Calls(store, BookingGroups(max_size=30))
    queued_times = [at(other, t) for t in ("09:30", "10:00", "10:30", "11:00")]

    def another_process_books_a_place_at_0930() -> None:
        taken = book(store, request_for(queued_times[0]), hold=False, hold_ttl=TTL, clock=FakeClock().clock())
        assert taken.status == 201

    queued(
        calls,
        [(f"q{n}", proposal) for n, proposal in enumerate(queued_times)],
        then=lambda: store.before_transaction.append(another_process_books_a_place_at_0930),
    )
    calls.start("a", at(store, "09:00"))
    results = calls.finish()
    assert all(r.status == 201 for r in results.values()), results
    assert appointments_per_transaction(store) == [1, 1, 2, 2]
    assert {results[f"q{n}"].attempts for n in range(4)} == {3}  # lost, then two transactions


def test_each_member_keeps_its_own_answer() -> None:
    """In one group: a twin of a booking already made (200, its replay), one naming a patient
    its caller may not read (422), one that is fine (201)."""
    store = clinic()
    store.add(patient("hidden"))
    stores = Stores(caller=CallerView(store, {"Patient/hidden"}), service=store)
    twin = at(store, "10:00") | {"identifier": [{"system": "urn:app", "value": "visit-1"}]}
    first = book(stores, request_for(twin), hold=False, hold_ttl=TTL, clock=FakeClock().clock())
    hidden = at(store, "10:45") | {
        "participant": [{"actor": {"reference": "Patient/hidden"}, "status": "accepted"}]
    }
    calls = Calls(store, BookingGroups(max_size=30), stores)
    queued(calls, [("twin", twin), ("hidden", hidden), ("fine", at(store, "11:15"))])
    calls.start("a", at(store, "09:15"))
    results = calls.finish()
    assert results["twin"].status == 200
    assert results["twin"].bundle["entry"][0]["resource"]["id"] == first.bundle["entry"][0]["resource"]["id"]
    assert isinstance(results["hidden"], Unprocessable)
    assert results["fine"].status == 201
    assert appointments_per_transaction(store) == [1, 1, 1]


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
    seed = clinic()
    store = RefusingStore(*list(seed.resources.values()))
    calls = Calls(store, BookingGroups(max_size=30))
    refused = at(store, "10:00") | {"comment": "refuse me"}
    queued(calls, [("refused", refused), ("fine", at(store, "10:45"))])
    calls.start("a", at(store, "09:15"))
    results = calls.finish()
    assert isinstance(results["refused"], Unprocessable)
    assert results["fine"].status == 201
    assert busy_at(store, "2026-12-07T10:00:00-05:00") == 0
    assert busy_at(store, "2026-12-07T10:45:00-05:00") == 1


@pytest.mark.parametrize("landed", ["yes", "no"])
def test_a_group_whose_answer_was_lost_tells_each_member_the_truth(landed: str) -> None:
    store = clinic()
    calls = Calls(store, BookingGroups(max_size=30))
    queued(
        calls,
        [("b", at(store, "10:00")), ("c", at(store, "10:45"))],
        then=lambda: store.before_transaction.append(lambda: store.lose_next_answer(landed)),  # the group's
    )
    calls.start("a", at(store, "09:15"))
    results = calls.finish()
    if landed == "yes":
        assert results["b"].status == results["c"].status == 201
        assert busy_at(store, "2026-12-07T10:00:00-05:00") == busy_at(store, "2026-12-07T10:45:00-05:00") == 1
    else:
        for name in ("b", "c"):
            assert "Nothing was stored" in (results[name].resolution or "")
        assert busy_at(store, "2026-12-07T10:00:00-05:00") == busy_at(store, "2026-12-07T10:45:00-05:00") == 0
    assert results["a"].status == 201


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
