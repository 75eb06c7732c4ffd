"""Deterministic interleavings of the races issue 6 found, against the versioned fake store.

Each test pauses one request at its dangerous point (``pause_after`` / ``before_transaction``
run another request right there) or loses a transaction's answer (``lose_next_answer``), and
checks what is stored afterwards. Each fails on the code before the trust-model change; the
comment on each says how. The integration and reliability suites repeat the claims against
real HAPI with real processes.
"""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest

from operations.booking import BookingRequest, Clock, book
from operations.cancel import cancel
from operations.confirm import confirm
from operations.errors import (
    ConcurrentChange,
    Conflict,
    InvalidRequest,
    OutcomeUnknown,
    ReferencedElsewhere,
    Unprocessable,
)
from operations.find import FindRequest, find_appointments
from operations.housekeeping import expire_holds, release_ended, release_missed
from operations.model import HOLD_EXPIRES_URL
from operations.store import Stores
from operations.writes import BOOKING_REQUEST_SYSTEM, HOLD_TAG, booking_marker
from tests.unit.builders import hours, patient, practitioner, schedule, service
from tests.unit.fake_store import FakeFhirStore
from tests.unit.test_booking import NOW, TTL, FakeClock, at, clinic, of_type

Resource = dict[str, Any]


def request_for(proposal: Resource) -> BookingRequest:
    return BookingRequest.from_body(
        {
            "resourceType": "Parameters",
            "parameter": [{"name": "appointment", "resource": copy.deepcopy(proposal)}],
        }
    )


def visits(store: FakeFhirStore) -> list[tuple[str, str]]:
    """Every stored Slot that takes the visit time: (start, status)."""
    return sorted(
        (s["start"], s["status"]) for s in of_type(store, "Slot") if s["status"] in ("busy", "busy-tentative")
    )


def appointment_of(result: Any) -> Resource:
    resource: Resource = result.bundle["entry"][0]["resource"]
    return resource


# ---- $confirm takes the locks -----------------------------------------------------------------


def test_a_confirm_and_a_booking_of_the_lapsing_hold_cannot_both_land() -> None:
    """The confirm reads the hold while it is live; before it commits, the hold lapses and a
    $book of the same time commits. Before the fix the confirm took no lock and committed too:
    two visits in one place."""
    store = clinic()
    proposal = at(store, "09:15")
    held = appointment_of(
        book(store, request_for(proposal), hold=True, hold_ttl=TTL, clock=FakeClock().clock())
    )
    time = FakeClock(NOW + TTL - timedelta(seconds=1))  # the hold is still live when confirm reads it

    def lapse_and_book() -> None:
        time.current = NOW + TTL + timedelta(seconds=1)
        booked = book(store, request_for(proposal), hold=False, hold_ttl=TTL, clock=time.clock())
        assert booked.status == 201

    store.before_transaction.append(lapse_and_book)
    with pytest.raises(Unprocessable, match="expired"):
        confirm(store, held["id"], clock=time.clock())
    assert visits(store) == [
        ("2026-12-07T09:15:00-05:00", "busy"),
        ("2026-12-07T09:15:00-05:00", "busy-tentative"),
    ]
    assert store.resources[f"Appointment/{held['id']}"]["status"] == "pending"  # lapsed, never booked


def test_a_confirm_that_wins_makes_the_racing_booking_see_the_time_taken() -> None:
    store = clinic()
    proposal = at(store, "09:15")
    held = appointment_of(
        book(store, request_for(proposal), hold=True, hold_ttl=TTL, clock=FakeClock().clock())
    )
    late = FakeClock(NOW + TTL + timedelta(seconds=1))  # the booking sees the hold as lapsed
    store.pause_after("search_slots", lambda: confirm(store, held["id"], clock=FakeClock().clock()))
    with pytest.raises(Conflict, match="already booked"):
        book(store, request_for(proposal), hold=False, hold_ttl=TTL, clock=late.clock())
    assert visits(store) == [("2026-12-07T09:15:00-05:00", "busy")]


# ---- the identifier look-up follows the lock and Slot reads ------------------------------------


def test_a_request_racing_its_own_twin_gets_the_twins_booking_not_409() -> None:
    """B is paused right after its identifier look-up (which found nothing) while its twin A
    commits. Before the fix, B then read the new lock version, saw A's Slots and answered 409."""
    store = clinic()
    proposal = at(store, "09:15") | {"identifier": [{"system": "urn:app", "value": "visit-7"}]}
    book(store, request_for(at(store, "11:15")), hold=False, hold_ttl=TTL, clock=FakeClock().clock())  # lock
    first: list[Any] = []
    store.pause_after(
        "search Appointment",
        lambda: first.append(
            book(store, request_for(proposal), hold=False, hold_ttl=TTL, clock=FakeClock().clock())
        ),
    )
    second = book(store, request_for(proposal), hold=False, hold_ttl=TTL, clock=FakeClock().clock())
    assert first[0].status == 201 and second.status == 200
    assert appointment_of(second)["id"] == appointment_of(first[0])["id"]
    assert len([a for a in of_type(store, "Appointment") if a["start"] == proposal["start"]]) == 1


def test_a_twin_that_committed_before_the_slot_search_is_found_not_409() -> None:
    store = clinic()
    proposal = at(store, "09:15") | {"identifier": [{"system": "urn:app", "value": "visit-8"}]}
    book(store, request_for(at(store, "11:15")), hold=False, hold_ttl=TTL, clock=FakeClock().clock())
    twin: list[Any] = []
    store.pause_after(
        "search Basic",  # B has read the lock; A commits before B's Slot search
        lambda: twin.append(
            book(store, request_for(proposal), hold=False, hold_ttl=TTL, clock=FakeClock().clock())
        ),
    )
    again = book(store, request_for(proposal), hold=False, hold_ttl=TTL, clock=FakeClock().clock())
    assert again.status == 200 and appointment_of(again)["id"] == appointment_of(twin[0])["id"]


# ---- a lost answer is settled, not guessed ----------------------------------------------------


def test_a_booking_whose_answer_was_lost_after_it_landed_is_201_once() -> None:
    """The connection is cut after the transaction committed. Before the fix the caller got a
    5xx, and a retry without an identifier got 409: the first Appointment was orphaned."""
    store = clinic()
    book(store, request_for(at(store, "11:15")), hold=False, hold_ttl=TTL, clock=FakeClock().clock())
    store.lose_next_answer("yes")
    result = book(store, request_for(at(store, "09:15")), hold=False, hold_ttl=TTL, clock=FakeClock().clock())
    assert result.status == 201
    stored = [a for a in of_type(store, "Appointment") if a["start"] == "2026-12-07T09:15:00-05:00"]
    assert [a["id"] for a in stored] == [appointment_of(result)["id"]]
    assert [e["resource"]["resourceType"] for e in result.bundle["entry"]] == [
        "Appointment",
        "Slot",
        "Slot",
        "Slot",
    ]


def test_a_booking_still_in_flight_is_fenced_and_the_caller_told_nothing_was_stored() -> None:
    """The upstream is slower than the timeout: the transaction arrives after the sidecar gave
    up. The fence on the lock makes it fail then, so "nothing was stored" stays true."""
    store = clinic()
    book(store, request_for(at(store, "11:15")), hold=False, hold_ttl=TTL, clock=FakeClock().clock())
    store.lose_next_answer("later")
    with pytest.raises(OutcomeUnknown) as caught:
        book(store, request_for(at(store, "09:15")), hold=False, hold_ttl=TTL, clock=FakeClock().clock())
    assert caught.value.resolution is not None and "Nothing was stored" in caught.value.resolution
    assert store.deliver_in_flight() == ["refused"]
    assert visits(store) == [("2026-12-07T11:15:00-05:00", "busy")]


def test_a_booking_that_never_arrived_is_reported_as_not_stored() -> None:
    store = clinic()
    store.lose_next_answer("no")
    with pytest.raises(OutcomeUnknown) as caught:
        book(store, request_for(at(store, "09:15")), hold=False, hold_ttl=TTL, clock=FakeClock().clock())
    assert "Nothing was stored" in (caught.value.resolution or "")
    assert of_type(store, "Appointment") == []
    # The caller asks again and gets the time: the fence left nothing behind that blocks it.
    assert (
        book(
            store, request_for(at(store, "09:15")), hold=False, hold_ttl=TTL, clock=FakeClock().clock()
        ).status
        == 201
    )


def test_when_the_upstream_stays_down_the_caller_is_told_the_outcome_is_unknown() -> None:
    store = clinic()
    book(store, request_for(at(store, "11:15")), hold=False, hold_ttl=TTL, clock=FakeClock().clock())
    store.lose_next_answer("later")
    store.unreachable = 100  # the fence cannot reach the upstream either
    clock = FakeClock()
    with pytest.raises(OutcomeUnknown) as caught:
        book(store, request_for(at(store, "09:15")), hold=False, hold_ttl=TTL, clock=clock.clock())
    assert caught.value.resolution is None  # rendered as "may or may not have been stored"
    assert len(clock.slept) == 6  # the fence was tried six times, with backoff


@pytest.mark.parametrize("landed", ["yes", "later"])
def test_a_confirm_whose_answer_was_lost_answers_the_truth(landed: str) -> None:
    store = clinic()
    held = appointment_of(
        book(store, request_for(at(store, "09:15")), hold=True, hold_ttl=TTL, clock=FakeClock().clock())
    )
    store.lose_next_answer(landed)
    if landed == "yes":
        result = confirm(store, held["id"], clock=FakeClock().clock())
        assert result.status == 200 and appointment_of(result)["status"] == "booked"
    else:
        with pytest.raises(OutcomeUnknown, match="the upstream FHIR server did not answer"):
            confirm(store, held["id"], clock=FakeClock().clock())
        assert store.deliver_in_flight() == ["refused"]
        assert store.resources[f"Appointment/{held['id']}"]["status"] == "pending"


def test_a_booking_found_landed_is_201_even_when_its_slots_cannot_be_read_back() -> None:
    store = clinic()
    book(store, request_for(at(store, "11:15")), hold=False, hold_ttl=TTL, clock=FakeClock().clock())
    store.lose_next_answer("yes")
    store.pause_after("search Appointment", lambda: setattr(store, "unreachable_reads", 1))
    result = book(store, request_for(at(store, "09:15")), hold=False, hold_ttl=TTL, clock=FakeClock().clock())
    assert result.status == 201
    assert [e["resource"]["resourceType"] for e in result.bundle["entry"]] == ["Appointment"]
    assert len(appointment_of(result)["slot"]) == 3


@pytest.mark.parametrize("operation", ["cancel", "confirm"])
def test_a_lost_answer_then_no_answer_to_the_re_read_is_unknown_not_nothing(operation: str) -> None:
    """The write landed, its answer was lost, and finding out fails too: the caller must be
    told it may have been stored, not a plain error that reads "nothing happened"."""
    store = clinic()
    held = appointment_of(
        book(store, request_for(at(store, "09:15")), hold=True, hold_ttl=TTL, clock=FakeClock().clock())
    )
    store.lose_next_answer("yes")
    now = FakeClock()
    flaky = Clock(
        now=lambda: now.current, monotonic=lambda: 0.0, sleep=lambda _: setattr(store, "unreachable_reads", 1)
    )
    with pytest.raises(OutcomeUnknown) as caught:
        if operation == "cancel":
            cancel(store, held["id"], reason=None, clock=flaky)
        else:
            store.pause_after(
                "transaction", lambda: setattr(store, "unreachable_reads", 1)
            )  # after the fence
            confirm(store, held["id"], clock=flaky)
    assert caught.value.resolution is None  # "may or may not have been stored"


def test_a_cancel_whose_answer_was_lost_after_it_landed_is_200() -> None:
    store = clinic()
    booked = appointment_of(
        book(store, request_for(at(store, "09:15")), hold=False, hold_ttl=TTL, clock=FakeClock().clock())
    )
    store.lose_next_answer("yes")
    result = cancel(store, booked["id"], reason=None, clock=FakeClock().clock())
    assert result.status == 200 and result.bundle["status"] == "cancelled"


# ---- a refused delete is not a version conflict ------------------------------------------------


def test_a_cancel_whose_slot_is_referenced_elsewhere_is_409_at_once() -> None:
    """HAPI answers 409 for both; before the fix $cancel retried for 20 s, then "did not settle"."""
    store = clinic()
    booked = appointment_of(
        book(store, request_for(at(store, "09:15")), hold=False, hold_ttl=TTL, clock=FakeClock().clock())
    )
    store.add(
        {"resourceType": "Appointment", "id": "ehr-copy", "status": "booked", "slot": booked["slot"][:1]}
    )
    clock = FakeClock()
    with pytest.raises(ReferencedElsewhere, match="still referenced") as caught:
        cancel(store, booked["id"], reason=None, clock=clock.clock())
    assert caught.value.status == 409 and clock.slept == []  # no retries
    assert store.resources[f"Appointment/{booked['id']}"]["status"] == "booked"


def test_the_sweep_cancels_a_lapsed_hold_whose_slots_are_referenced_elsewhere() -> None:
    """Before the fix such a hold stayed pending forever, retried on every pass."""
    store = clinic()
    held = appointment_of(
        book(store, request_for(at(store, "09:15")), hold=True, hold_ttl=TTL, clock=FakeClock().clock())
    )
    store.add({"resourceType": "Appointment", "id": "ehr-copy", "status": "booked", "slot": held["slot"][:1]})
    assert expire_holds(store, NOW + TTL) == 1
    assert store.resources[f"Appointment/{held['id']}"]["status"] == "cancelled"
    assert len(of_type(store, "Slot")) == 3  # kept: lapsed, they block nothing


# ---- the sweep touches only what the sidecar made ----------------------------------------------


def forged_hold(slot_references: list[str], marker: str | None) -> Resource:
    forged: Resource = {
        "resourceType": "Appointment",
        "id": "forged",
        "status": "pending",
        "meta": {"tag": [HOLD_TAG]},
        "extension": [{"url": HOLD_EXPIRES_URL, "valueInstant": "2026-01-01T00:00:00Z"}],
        "slot": [{"reference": ref} for ref in slot_references],
    }
    if marker is not None:
        forged["meta"]["tag"].append({"system": BOOKING_REQUEST_SYSTEM, "code": marker})
    return forged


def test_a_forged_hold_cannot_make_the_sweep_delete_someone_elses_block() -> None:
    """Before the fix the sweep deleted every Slot a pending, tagged, lapsed Appointment named."""
    store = clinic()
    store.add(
        {
            "resourceType": "Slot",
            "id": "vacation",
            "schedule": {"reference": "Schedule/alice"},
            "status": "busy-unavailable",
            "start": "2026-12-07T14:00:00Z",
            "end": "2026-12-07T17:00:00Z",
        }
    )
    store.add(forged_hold(["Slot/vacation"], marker="made-up"))
    expire_holds(store, NOW)
    assert "Slot/vacation" in store.resources


def test_a_forged_hold_copying_a_live_holds_marker_cannot_free_its_time() -> None:
    store = clinic()
    live = appointment_of(
        book(store, request_for(at(store, "09:15")), hold=True, hold_ttl=TTL, clock=FakeClock().clock())
    )
    store.add(forged_hold([r["reference"] for r in live["slot"]], marker=booking_marker(live)))
    expire_holds(store, NOW + timedelta(seconds=1))
    assert visits(store) == [("2026-12-07T09:15:00-05:00", "busy-tentative")]
    assert store.resources[f"Appointment/{live['id']}"]["status"] == "pending"


def test_a_hold_without_the_sidecars_marker_is_not_touched() -> None:
    store = clinic()
    store.add(forged_hold([], marker=None))
    assert expire_holds(store, NOW) == 0
    assert store.resources["Appointment/forged"]["status"] == "pending"


def test_the_sweep_reads_bounded_pages_oldest_first() -> None:
    store = clinic()
    for n in range(7):
        store.add(forged_hold([], marker=f"m{n}") | {"id": f"lapsed-{n}"})
    assert expire_holds(store, NOW, page_size=2, max_pages=2) == 4
    assert len([c for c in store.calls if c == "search Appointment"]) == 2
    assert expire_holds(store, NOW, page_size=2, max_pages=5) == 3
    assert {a["status"] for a in of_type(store, "Appointment")} == {"cancelled"}


# ---- appointments ended directly on the upstream ------------------------------------------------


def test_an_appointment_cancelled_directly_gets_its_slots_deleted_once() -> None:
    store = clinic()
    booked = appointment_of(
        book(store, request_for(at(store, "09:15")), hold=False, hold_ttl=TTL, clock=FakeClock().clock())
    )
    store.add(
        {
            "resourceType": "Slot",
            "id": "admin-block",
            "schedule": {"reference": "Schedule/alice"},
            "status": "busy-unavailable",
            "start": "2026-12-07T20:00:00Z",
            "end": "2026-12-07T21:00:00Z",
        }
    )
    stored = store.resources[f"Appointment/{booked['id']}"]
    stored["status"] = "cancelled"  # a plain PUT by an EHR, not $cancel
    stored["slot"] = [*stored["slot"], {"reference": "Slot/admin-block"}]
    # A second replica handles the same notification while the first is about to commit.
    store.before_transaction.append(lambda: release_ended(store, booked["id"], clock=FakeClock().clock()))
    assert release_ended(store, booked["id"], clock=FakeClock().clock()) == 0  # the other one did it
    assert [s["id"] for s in of_type(store, "Slot")] == ["admin-block"]  # not the sidecar's: kept
    assert release_ended(store, booked["id"], clock=FakeClock().clock()) == 0
    assert at(store, "09:15")["start"] == "2026-12-07T09:15:00-05:00"  # offered again


def test_the_sweep_frees_what_a_lost_notification_did_not() -> None:
    """HAPI drops a notification after a minute of failed deliveries (every sidecar down)."""
    store = clinic()
    booked = appointment_of(
        book(store, request_for(at(store, "09:15")), hold=False, hold_ttl=TTL, clock=FakeClock().clock())
    )
    kept = appointment_of(
        book(store, request_for(at(store, "10:15")), hold=False, hold_ttl=TTL, clock=FakeClock().clock())
    )
    store.resources[f"Appointment/{booked['id']}"]["status"] = "noshow"
    assert release_missed(store, NOW) == 3
    assert release_missed(store, NOW) == 0
    assert visits(store) == [("2026-12-07T10:15:00-05:00", "busy")]
    assert store.resources[f"Appointment/{kept['id']}"]["status"] == "booked"


def test_a_booked_appointment_is_left_alone_by_the_webhook() -> None:
    store = clinic()
    booked = appointment_of(
        book(store, request_for(at(store, "09:15")), hold=False, hold_ttl=TTL, clock=FakeClock().clock())
    )
    assert release_ended(store, booked["id"], clock=FakeClock().clock()) == 0
    assert release_ended(store, "unknown", clock=FakeClock().clock()) == 0
    assert len(of_type(store, "Slot")) == 3


# ---- decisions see every Slot; callers book for what they may read ------------------------------


class CallerView(FakeFhirStore):
    """The same data as the caller's credentials see it: some resources hidden."""

    def __init__(self, store: FakeFhirStore, hidden: set[str]) -> None:
        super().__init__()
        self._store, self._hidden = store, hidden

    def _visible(self) -> None:
        self.resources = {
            k: v
            for k, v in self._store.resources.items()
            if k not in self._hidden and k.split("/")[0] not in self._hidden
        }

    def read(self, resource_type: str, resource_id: str) -> Resource | None:
        self._visible()
        return super().read(resource_type, resource_id)

    def search(self, resource_type: str, params: Any, *, limit: int | None = None) -> list[Resource]:
        self._visible()
        return super().search(resource_type, params, limit=limit)

    def read_schedules(self, ids: Any) -> Any:
        self._visible()
        return super().read_schedules(ids)

    def read_service(self, service_id: str) -> Resource | None:
        self._visible()
        return super().read_service(service_id)


def test_time_the_caller_cannot_see_is_still_taken() -> None:
    """Before the fix the deciding Slot search ran with the caller's token: a caller that may
    not read Slots was offered, and could book, time that was taken."""
    store = clinic()
    proposal = at(store, "09:15")
    book(store, request_for(proposal), hold=False, hold_ttl=TTL, clock=FakeClock().clock())
    stores = Stores(caller=CallerView(store, {"Slot"}), service=store)
    request = FindRequest.from_parameters(
        [
            ("start", "2026-12-07T00:00:00-05:00"),
            ("end", "2026-12-08T00:00:00-05:00"),
            ("service-type-reference", "HealthcareService/checkup"),
            ("schedule", "Schedule/alice"),
        ],
        now=NOW,
        max_range_days=31,
    )
    offered = [e["resource"]["start"] for e in find_appointments(stores, request).get("entry", [])]
    assert offered and proposal["start"] not in offered
    with pytest.raises(Conflict):
        book(stores, request_for(proposal), hold=False, hold_ttl=TTL, clock=FakeClock().clock())


def test_a_caller_books_only_for_participants_it_may_read() -> None:
    store = clinic()
    store.add(patient("mine"))
    store.add(patient("someone-else"))
    stores = Stores(caller=CallerView(store, {"Patient/someone-else"}), service=store)
    mine = at(store, "09:15") | {
        "participant": [{"actor": {"reference": "Patient/mine"}, "status": "accepted"}]
    }
    assert book(stores, request_for(mine), hold=False, hold_ttl=TTL, clock=FakeClock().clock()).status == 201
    theirs = at(store, "10:15") | {
        "participant": [{"actor": {"reference": "Patient/someone-else"}, "status": "accepted"}]
    }
    with pytest.raises(Unprocessable, match="Patient/someone-else") as caught:
        book(stores, request_for(theirs), hold=False, hold_ttl=TTL, clock=FakeClock().clock())
    assert caught.value.expression == ["Parameters.appointment.participant[0].actor.reference"]
    assert len(of_type(store, "Appointment")) == 1


# ---- fan-out is bounded ---------------------------------------------------------------------


def test_at_most_max_schedules_per_request() -> None:
    params = [
        ("start", "2026-12-07T00:00:00-05:00"),
        ("end", "2026-12-08T00:00:00-05:00"),
        ("service-type-reference", "HealthcareService/checkup"),
        *[("schedule", f"Schedule/s{n}") for n in range(21)],
    ]
    with pytest.raises(InvalidRequest, match="At most 20 schedules"):
        FindRequest.from_parameters(params, now=NOW, max_range_days=31)
    FindRequest.from_parameters(params[:-1], now=NOW, max_range_days=31)
    proposal = at(clinic(), "09:15")
    visit = next(c for c in proposal["contained"] if c["status"] == "busy")
    proposal["contained"] = [visit | {"schedule": {"reference": f"Schedule/s{n}"}} for n in range(3)]
    with pytest.raises(InvalidRequest, match="At most 2 schedules") as caught:
        BookingRequest.from_body(proposal, max_schedules=2)
    assert caught.value.status == 400


def test_every_written_resource_carries_the_booking_request_id_and_identifiers_stay_the_callers() -> None:
    store = clinic()
    proposal = at(store, "09:15") | {"identifier": [{"system": "urn:app", "value": "v1"}]}
    result = book(store, request_for(proposal), hold=True, hold_ttl=TTL, clock=FakeClock().clock())
    markers = {booking_marker(e["resource"]) for e in result.bundle["entry"]}
    assert len(markers) == 1 and None not in markers
    assert appointment_of(result)["identifier"] == [{"system": "urn:app", "value": "v1"}]


# ---- bucket locks (issue 7): no queue behind one Schedule, overlaps still exclusive -----------


def book_now(store: FakeFhirStore, proposal: Resource, **stores: Any) -> Any:
    target: Any = Stores(caller=store, service=store, **stores) if stores else store
    return book(target, request_for(proposal), hold=False, hold_ttl=TTL, clock=FakeClock().clock())


def test_two_first_bookings_of_a_time_cannot_both_create_its_locks() -> None:
    """A and B both find the buckets' locks missing and decide on the same free time; B creates
    the locks and commits first. A's transaction would create them too; it is checked against
    their absence (``ifMatch: W/"0"``), so it fails, re-reads, sees B's visit and answers 409.
    With a plain create-or-update instead, both visits land."""
    store = clinic()
    proposal = at(store, "09:15")
    store.pause_after("search_slots", lambda: book_now(store, proposal))
    with pytest.raises(Conflict, match="already booked"):
        book_now(store, proposal)
    assert visits(store) == [("2026-12-07T09:15:00-05:00", "busy")]


def test_a_booking_that_found_a_lock_missing_loses_to_one_that_updated_it_since() -> None:
    """The race a master lock did not close (HAPI's search may find a resource's newest version
    yet miss a resource created meanwhile): A saw the 09:30 bucket missing, B (created it
    earlier, then) updated it by booking 09:30. A's creation of it, checked against absence,
    fails; A re-reads and finds 09:30 taken."""
    store = clinic()
    book_now(store, at(store, "10:30"))
    proposal = at(store, "09:15")
    # A reads no locks at all (as if its search missed them), then B creates them and books.
    real_search = store.search

    def blind(resource_type: str, params: Any, **kwargs: Any) -> Any:
        store.search = real_search  # type: ignore[method-assign]
        book_now(store, at(store, "09:30"))
        return [] if resource_type == "Basic" else real_search(resource_type, params, **kwargs)

    store.search = blind  # type: ignore[method-assign]
    with pytest.raises(Conflict):
        book_now(store, proposal)
    assert [start for start, _ in visits(store)] == ["2026-12-07T09:30:00-05:00", "2026-12-07T10:30:00-05:00"]


def test_a_booking_overlapping_another_by_one_bucket_still_loses() -> None:
    """09:30 (09:20-10:05 with buffers) commits while 09:15 (09:05-09:50) is paused after its
    Slot search: they share the 09:15 and 09:30 buckets, so 09:15 fails its version check,
    re-reads and finds the time taken."""
    store = clinic()
    book_now(store, at(store, "11:15"))
    store.pause_after("search_slots", lambda: book_now(store, at(store, "09:30")))
    with pytest.raises(Conflict):
        book_now(store, at(store, "09:15"))
    assert [start for start, _ in visits(store)] == ["2026-12-07T09:30:00-05:00", "2026-12-07T11:15:00-05:00"]


def test_the_last_place_of_a_shared_time_goes_to_one_booking() -> None:
    """Capacity 2, one place left: A pauses after its Slot search (one place free), B takes
    the place. A shares every bucket with B, fails its version check and finds the time full."""
    store = FakeFhirStore(
        practitioner("alice", "America/New_York"),
        service(hours=[hours("mon", "09:00", "12:00")], duration=30, alignmentInterval=15, slotCapacity=2),
        schedule("alice", "Practitioner/alice", ["checkup"]),
    )
    proposal = at(store, "09:15")
    book_now(store, proposal)
    store.pause_after("search_slots", lambda: book_now(store, proposal))
    with pytest.raises(Conflict):
        book_now(store, proposal)
    assert len(visits(store)) == 2


def test_a_twin_seen_by_the_slot_search_but_not_by_the_look_up_is_found_by_a_second_look_up() -> None:
    """The Slot search and the identifier look-up run at the same time. Here the look-up goes
    first and finds nothing, then the twin commits, then the Slot search sees the twin's
    visit: the decision says "taken", and a second look-up finds the twin -- 200, not 409."""
    store = clinic()
    proposal = at(store, "09:15") | {"identifier": [{"system": "urn:app", "value": "visit-9"}]}
    book_now(store, at(store, "11:15"))
    first: list[Any] = []
    store.pause_after("search Appointment", lambda: first.append(book_now(store, proposal)))

    def look_up_first(*calls: Any) -> list[Any]:
        return list(reversed([call() for call in reversed(calls)]))

    second = book_now(store, proposal, together=look_up_first)
    assert (first[0].status, second.status) == (201, 200)
    assert appointment_of(second)["id"] == appointment_of(first[0])["id"]


def test_a_fence_refused_while_the_lock_did_not_move_is_tried_again() -> None:
    """Under repeatable read or serializable isolation the database may refuse the fence for a
    concurrent write that has not committed: a refusal alone does not prove the lost booking
    landed. The fence looks at the lock; unmoved, it fences again, and then "nothing stored"
    is true."""
    store = clinic()
    proposal = at(store, "09:15")
    store.lose_next_answer("later")  # the booking is still in flight
    refusals = [1]
    real_transaction = store.transaction

    def refuse_once(bundle: Resource) -> Resource:
        if refusals and all(e["resource"]["resourceType"] == "Basic" for e in bundle["entry"]):
            refusals.pop()
            raise ConcurrentChange("could not serialize access due to read/write dependencies")
        return real_transaction(bundle)

    store.transaction = refuse_once  # type: ignore[method-assign]
    with pytest.raises(OutcomeUnknown) as caught:
        book_now(store, proposal)
    assert "Nothing was stored" in (caught.value.resolution or "")
    assert not refusals  # the fence was refused once, then fenced
    assert store.deliver_in_flight() == ["refused"]  # fenced: the late booking cannot land
    assert visits(store) == []
