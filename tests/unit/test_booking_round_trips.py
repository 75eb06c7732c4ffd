"""How many upstream round trips of latency ``$book`` and ``$hold`` cost (issue 7, deliver 2):
(1) the Schedules with their actors, the service and the locks together, (2) the deciding Slot
search, the identifier look-up and the other participants together, strictly after the lock
read, (3) the transaction."""

from __future__ import annotations

import copy
from typing import Any

from operations.booking import book
from operations.proposal import BookingRequest
from operations.store import Stores
from tests.unit.fake_store import FakeFhirStore, Waves
from tests.unit.test_booking import TTL, FakeClock, at, clinic


def booked(store: FakeFhirStore, proposal: dict[str, Any], *, hold: bool = False) -> Waves:
    waves = Waves(store)
    request = BookingRequest.from_body(copy.deepcopy(proposal))
    book(
        Stores(caller=store, service=store, together=waves),
        request,
        hold=hold,
        hold_ttl=TTL,
        clock=FakeClock().clock(),
    )
    return waves


def with_patient(proposal: dict[str, Any]) -> dict[str, Any]:
    proposal = copy.deepcopy(proposal)
    proposal["participant"].append({"actor": {"reference": "Patient/pat"}, "status": "accepted"})
    proposal["identifier"] = [{"system": "urn:app", "value": "r-1"}]
    return proposal


def test_a_booking_costs_three_round_trips() -> None:
    store = clinic()
    store.add({"resourceType": "Patient", "id": "pat"})
    for hold in (False, True):
        proposal = with_patient(at(store, "09:15" if hold else "10:15"))
        store.calls.clear()
        waves = booked(store, proposal, hold=hold)
        assert waves.count == 3, (store.calls, waves.groups)
        first, second = waves.groups
        assert sorted(first) == ["read_schedules", "read_service", "search Basic"]
        # After the lock read; the patient too (the actor, Practitioner/alice, came with the Schedule).
        assert sorted(second) == ["search Appointment", "search Patient", "search_slots"]
        assert store.calls[-1] == "transaction"
        store.resources = {k: v for k, v in store.resources.items() if not k.startswith("Appointment/")}  # fmt: skip


def test_the_first_booking_of_a_time_costs_three_round_trips_too() -> None:
    store = clinic()
    proposal = at(store, "09:15")
    store.calls.clear()
    waves = booked(store, proposal)
    assert waves.count == 3, store.calls  # its locks are created in its own transaction


def test_a_retry_after_a_version_conflict_repeats_only_the_lock_read_slot_search_and_transaction() -> None:
    store = clinic()
    booked(store, at(store, "11:15"))
    rival = at(store, "10:00")  # no overlap with 09:15, but a shared 15-minute bucket
    store.before_transaction.append(lambda: booked(store, rival) and None)
    proposal = at(store, "09:15")
    store.calls.clear()
    waves = booked(store, proposal)
    ours = [call for call in store.calls if call != "read_schedules"]
    assert len(waves.groups) == 3  # RT 1 and 2 of the first attempt, RT 2 of the retry
    assert waves.groups[2] == ["search_slots"]
    # Lock searches: ours, the rival's, ours again (alone, no configuration read again).
    assert store.calls.count("search Basic") == 3
    assert store.calls.count("read_schedules") == 2  # ours and the rival's, once each
    assert ours[-3:] == ["search Basic", "search_slots", "transaction"]


def test_a_booking_under_a_daily_limit_still_costs_three_round_trips() -> None:
    # The day's lock is among the candidates read with the bucket locks, before the time zone
    # (and so the local day) is known; the Slot search covers the whole local day.
    store = clinic()
    store.resources["HealthcareService/checkup"]["extension"][0]["extension"].append(
        {"url": "bookingLimit", "valueTiming": {"repeat": {"frequency": 5, "period": 1, "periodUnit": "d"}}}
    )
    proposal = at(store, "09:15")
    store.calls.clear()
    waves = booked(store, proposal)
    assert waves.count == 3, (store.calls, waves.groups)
    written = store.transactions[-1]["entry"]
    locks = [e["request"]["url"] for e in written if e["request"]["url"].startswith("Basic/")]
    assert "Basic/fanoni-lock-alice.d2026-12-07" in locks
    assert not any(".w" in lock for lock in locks)  # no weekly limit: no week lock taken
