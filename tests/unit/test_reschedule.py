"""``$reschedule`` (SPEC §7.3): the same Appointment moves to a new time in one transaction, its
old Slots go; a taken new time leaves the old booking untouched; ``$find`` with
``ignore-appointment`` counts the Appointment's own time as free."""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest

from operations.booking import BookingRequest, book
from operations.errors import Conflict, NotFound, Unprocessable
from operations.find import FindRequest, find_appointments
from operations.reschedule import reschedule
from tests.unit.builders import location, schedule
from tests.unit.fake_store import FakeFhirStore
from tests.unit.test_booking import NOW, TTL, FakeClock, at, clinic, do_book, of_type


def moved_to(store: FakeFhirStore, appointment_id: str, hhmm: str) -> dict[str, Any]:
    """The proposal at ``hhmm`` from ``$find`` with ``ignore-appointment``."""
    request = FindRequest.from_parameters(
        [
            ("start", "2026-12-07T00:00:00-05:00"),
            ("end", "2026-12-08T00:00:00-05:00"),
            ("service-type-reference", "HealthcareService/checkup"),
            ("schedule", "Schedule/alice"),
            ("ignore-appointment", f"Appointment/{appointment_id}"),
        ],
        now=NOW,
        max_range_days=31,
    )
    found = [
        e["resource"]
        for e in find_appointments(store, request).get("entry", [])
        if e["search"]["mode"] == "match"
    ]
    return next(p for p in found if p["start"] == f"2026-12-07T{hhmm}:00-05:00")


def do_reschedule(
    store: FakeFhirStore, appointment_id: str, proposal: dict[str, Any], clock: FakeClock | None = None
) -> Any:
    return reschedule(
        store,
        appointment_id,
        BookingRequest.from_body(copy.deepcopy(proposal)),
        clock=(clock or FakeClock()).clock(),
    )


def booked(store: FakeFhirStore, hhmm: str, **extra: Any) -> dict[str, Any]:
    result = do_book(store, at(store, hhmm) | extra)
    appointment: dict[str, Any] = result.bundle["entry"][0]["resource"]
    return appointment


def test_the_same_appointment_moves_and_its_old_slots_go() -> None:
    store = clinic()
    original = booked(store, "09:15", identifier=[{"system": "urn:app", "value": "a-1"}])
    old_slots = {r["reference"] for r in original["slot"]}
    result = do_reschedule(store, original["id"], moved_to(store, original["id"], "10:30"))
    assert result.status == 200
    moved = result.bundle["entry"][0]["resource"]
    assert (moved["id"], moved["status"], moved["start"]) == (
        original["id"],
        "booked",
        "2026-12-07T10:30:00-05:00",
    )
    assert moved["identifier"] == original["identifier"]
    assert moved["participant"] == original["participant"]
    assert len(store.transactions) == 2
    assert not any(ref[5:] in {s["id"] for s in of_type(store, "Slot")} for ref in old_slots)
    assert sorted(s["start"][11:16] for s in of_type(store, "Slot")) == ["10:20", "10:30", "11:00"]
    assert len(of_type(store, "Appointment")) == 1


def test_its_own_time_counts_as_free_so_it_can_move_by_a_quarter_hour() -> None:
    store = clinic()
    original = booked(store, "09:15")
    with pytest.raises(StopIteration):
        at(store, "09:30")  # overlaps the booking: not offered without ignore-appointment
    result = do_reschedule(store, original["id"], moved_to(store, original["id"], "09:30"))
    assert result.bundle["entry"][0]["resource"]["start"] == "2026-12-07T09:30:00-05:00"


def test_a_taken_new_time_is_409_and_the_old_booking_stands() -> None:
    store = clinic()
    original = booked(store, "09:15")
    proposal = moved_to(store, original["id"], "10:30")
    booked(store, "10:30")
    before = copy.deepcopy(store.resources)
    with pytest.raises(Conflict):
        do_reschedule(store, original["id"], proposal)
    assert store.resources == before


def test_a_reschedule_and_a_booking_racing_for_the_new_time_one_wins() -> None:
    store = clinic()
    booked(store, "11:15")  # locks exist
    original = booked(store, "09:15")
    proposal = moved_to(store, original["id"], "10:30")
    rival = BookingRequest.from_body(at(store, "10:30"))
    # The rival books the new time right after the reschedule's Slot search: the reschedule's
    # lock check fails, it re-reads, sees the time taken and answers 409; its Appointment stands.
    store.pause_after(
        "search_slots", lambda: book(store, rival, hold=False, hold_ttl=TTL, clock=FakeClock().clock())
    )
    with pytest.raises(Conflict):
        do_reschedule(store, original["id"], proposal)
    stored = store.resources[f"Appointment/{original['id']}"]
    assert (stored["start"], stored["status"], stored["slot"]) == (
        original["start"],
        "booked",
        original["slot"],
    )
    assert len([a for a in of_type(store, "Appointment") if a["start"].endswith("10:30:00-05:00")]) == 1


def test_a_live_hold_moves_and_stays_a_hold_with_its_expiry() -> None:
    store = clinic()
    result = do_book(store, at(store, "09:15"), hold=True)
    hold = result.bundle["entry"][0]["resource"]
    moved = do_reschedule(store, hold["id"], moved_to(store, hold["id"], "10:30")).bundle["entry"]
    assert moved[0]["resource"]["status"] == "pending"
    assert moved[0]["resource"]["extension"] == hold["extension"]
    assert [e["resource"]["status"] for e in moved[1:]] == [
        "busy-unavailable",
        "busy-tentative",
        "busy-unavailable",
    ]


def test_an_expired_hold_or_a_cancelled_appointment_is_422_and_unknown_is_404() -> None:
    store = clinic()
    hold = do_book(store, at(store, "09:15"), hold=True).bundle["entry"][0]["resource"]
    proposal = moved_to(store, hold["id"], "10:30")
    with pytest.raises(Unprocessable, match="expired"):
        do_reschedule(store, hold["id"], proposal, clock=FakeClock(NOW + TTL + timedelta(seconds=1)))
    stored = store.resources[f"Appointment/{hold['id']}"]
    store.resources[f"Appointment/{hold['id']}"] = stored | {"status": "cancelled"}
    with pytest.raises(Unprocessable, match="'cancelled'"):
        do_reschedule(store, hold["id"], proposal)
    with pytest.raises(NotFound):
        do_reschedule(store, "nope", proposal)


def test_a_proposal_for_other_schedules_is_422() -> None:
    store = clinic()
    store.add(location("room", "America/New_York"))
    store.add(schedule("room", "Location/room", ["checkup"]))
    original = booked(store, "09:15")
    other = copy.deepcopy(moved_to(store, original["id"], "10:30"))
    for slot in other["contained"]:
        slot["schedule"]["reference"] = "Schedule/room"
    with pytest.raises(Unprocessable, match="moves the time only"):
        do_reschedule(store, original["id"], other)


def test_find_with_an_unknown_ignore_appointment_is_422() -> None:
    store = clinic()
    with pytest.raises(Unprocessable, match="does not exist"):
        moved_to(store, "nope", "10:30")
