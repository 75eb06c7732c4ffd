"""``$book``, ``$hold``, ``$confirm``, ``$cancel`` and hold expiry against the versioned fake store.

The fake enforces ``ifMatch`` like the upstream, so the race-freedom protocol is exercised here
by interleaving a competing writer just before a transaction; the integration suite repeats it
against real HAPI with many processes.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from operations.booking import BookingRequest, Clock, RetryPolicy, book, footprints
from operations.cancel import cancel
from operations.confirm import confirm
from operations.errors import Conflict, InvalidRequest, NotFound, Unprocessable
from operations.fhir_values import transaction_bundle
from operations.find import FindRequest, find_appointments
from operations.housekeeping import expire_holds
from operations.locks import lock_entries, read_locks
from operations.model import HOLD_EXPIRES_URL, SLOT_CAPACITY_URL
from tests.unit.builders import hours, practitioner, schedule, service
from tests.unit.fake_store import FakeFhirStore

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
TTL = timedelta(minutes=5)


class FakeClock:
    def __init__(self, now: datetime = NOW) -> None:
        self.current = now
        self.slept: list[float] = []

    def clock(self) -> Clock:
        return Clock(now=lambda: self.current, monotonic=lambda: 0.0, sleep=self.slept.append)


def clinic(**params: Any) -> FakeFhirStore:
    """Alice, Mondays 09:00-12:00: 30-minute visits with 10 minutes before and 5 after on a
    15-minute grid; ``params`` adds scheduling parameters (``slotCapacity=2``)."""
    return FakeFhirStore(
        practitioner("alice", "America/New_York"),
        service(
            hours=[hours("mon", "09:00", "12:00")],
            duration=30,
            bufferBefore=10,
            bufferAfter=5,
            alignmentInterval=15,
            **params,
        ),
        schedule("alice", "Practitioner/alice", ["checkup"]),
    )


def proposals(store: FakeFhirStore, now: datetime = NOW) -> list[dict[str, Any]]:
    request = FindRequest.from_parameters(
        [
            ("start", "2026-12-07T00:00:00-05:00"),
            ("end", "2026-12-08T00:00:00-05:00"),
            ("service-type-reference", "HealthcareService/checkup"),
            ("schedule", "Schedule/alice"),
        ],
        now=now,
        max_range_days=31,
    )
    return [
        e["resource"]
        for e in find_appointments(store, request).get("entry", [])
        if e["search"]["mode"] == "match"
    ]


def at(store: FakeFhirStore, hhmm: str) -> dict[str, Any]:
    """The proposal starting at ``hhmm`` on Monday 2026-12-07 (New York)."""
    return next(p for p in proposals(store) if p["start"] == f"2026-12-07T{hhmm}:00-05:00")


def do_book(
    store: FakeFhirStore, proposal: dict[str, Any], *, hold: bool = False, clock: FakeClock | None = None
) -> Any:
    body = {"resourceType": "Parameters", "parameter": [{"name": "appointment", "resource": proposal}]}
    request = BookingRequest.from_body(body)
    return book(store, request, hold=hold, hold_ttl=TTL, clock=(clock or FakeClock()).clock())


def of_type(store: FakeFhirStore, resource_type: str) -> list[dict[str, Any]]:
    return [r for r in store.resources.values() if r["resourceType"] == resource_type]


class TestBook:
    def test_books_visit_and_buffers_in_one_transaction(self) -> None:
        store = clinic()
        result = do_book(store, at(store, "09:15"))
        assert result.status == 201
        entries = result.bundle["entry"]
        assert entries[0]["resource"]["resourceType"] == "Appointment"
        appointment = entries[0]["resource"]
        assert appointment["status"] == "booked"
        assert "contained" not in appointment
        slots = [e["resource"] for e in entries[1:]]
        assert [(s["status"], s["start"][11:16], s["end"][11:16]) for s in slots] == [
            ("busy-unavailable", "09:05", "09:15"),
            ("busy", "09:15", "09:45"),
            ("busy-unavailable", "09:45", "09:50"),
        ]
        assert sorted(r["reference"] for r in appointment["slot"]) == sorted(f"Slot/{s['id']}" for s in slots)
        assert all({"url": SLOT_CAPACITY_URL, "valuePositiveInt": 1} in s["extension"] for s in slots)
        assert len(store.transactions) == 1  # the locks are created in the booking's transaction
        booking = store.transactions[-1]
        assert booking["entry"][0]["request"]["ifMatch"] == 'W/"0"'  # created, unless it exists by then

    def test_booked_time_is_no_longer_offered_and_cannot_be_booked_twice(self) -> None:
        store = clinic()
        proposal = proposals(store)[0]
        do_book(store, copy.deepcopy(proposal))
        assert proposal["start"] not in [p["start"] for p in proposals(store)]
        with pytest.raises(Conflict):
            do_book(store, copy.deepcopy(proposal))
        assert len(of_type(store, "Appointment")) == 1

    def test_a_concurrent_booking_of_the_same_time_loses_with_409(self) -> None:
        store = clinic()
        proposal = at(store, "09:15")
        do_book(store, at(store, "11:15"))  # creates the lock
        rival = copy.deepcopy(proposal)
        store.before_transaction.append(lambda: do_book(store, rival))
        with pytest.raises(Conflict):
            do_book(store, copy.deepcopy(proposal))
        assert len([a for a in of_type(store, "Appointment") if a["start"] == proposal["start"]]) == 1

    def test_a_concurrent_booking_of_another_time_does_not_even_cause_a_retry(self) -> None:
        store = clinic()
        first, other = at(store, "09:15"), at(store, "10:15")  # footprints do not overlap
        do_book(store, at(store, "11:15"))  # creates the locks of the day's buckets
        store.before_transaction.append(lambda: do_book(store, copy.deepcopy(other)))
        clock = FakeClock()
        result = do_book(store, copy.deepcopy(first), clock=clock)
        assert (result.status, result.attempts) == (201, 1)
        assert clock.slept == []  # different buckets: no version conflict, no re-decision
        assert len(of_type(store, "Appointment")) == 3

    def test_a_concurrent_booking_in_a_shared_bucket_causes_one_retry(self) -> None:
        store = clinic()
        # 09:05-09:50 and 09:50-10:35 with their buffers: no overlap, one shared 15-minute bucket
        first, other = at(store, "09:15"), at(store, "10:00")
        do_book(store, at(store, "11:15"))
        store.before_transaction.append(lambda: do_book(store, copy.deepcopy(other)))
        clock = FakeClock()
        result = do_book(store, copy.deepcopy(first), clock=clock)
        assert (result.status, result.attempts) == (201, 2)
        assert len(clock.slept) == 1  # a shared bucket: one version conflict, one re-decision
        assert len(of_type(store, "Appointment")) == 3

    def test_retries_stop_at_the_deadline(self) -> None:
        store = clinic()
        proposal = proposals(store)[0]
        request = BookingRequest.from_body(proposal)
        store.transaction(transaction_bundle(lock_entries(read_locks(store, footprints(request)))))

        def rival() -> None:
            for lock in of_type(store, "Basic"):
                lock["meta"]["versionId"] = str(int(lock["meta"]["versionId"]) + 1)
            store.before_transaction.append(rival)

        store.before_transaction.append(rival)
        with pytest.raises(Conflict, match="did not settle"):
            book(
                store,
                request,
                hold=False,
                hold_ttl=TTL,
                clock=FakeClock().clock(),
                policy=RetryPolicy(max_attempts=4),
            )

    def test_identifier_makes_a_retry_return_the_first_result(self) -> None:
        store = clinic()
        proposal = proposals(store)[0] | {"identifier": [{"system": "urn:app", "value": "req-1"}]}
        first = do_book(store, copy.deepcopy(proposal))
        again = do_book(store, copy.deepcopy(proposal))
        assert (first.status, again.status) == (201, 200)
        assert again.bundle["entry"][0]["resource"]["id"] == first.bundle["entry"][0]["resource"]["id"]
        assert len(again.bundle["entry"]) == 4
        assert len(of_type(store, "Appointment")) == 1


def _bad(proposal: dict[str, Any], change: Any) -> dict[str, Any]:
    proposal = copy.deepcopy(proposal)
    change(proposal)
    return proposal


BAD_REQUESTS = [
    (
        "no busy slot",
        lambda p: p.update(contained=[c for c in p["contained"] if c["status"] != "busy"]),
        "Parameters.appointment.contained",
    ),
    ("slot references", lambda p: p.update(slot=[{"reference": "Slot/x"}]), "Parameters.appointment.slot"),
    ("no service", lambda p: p.update(serviceType=[]), "Parameters.appointment.serviceType"),
    (
        "two services",
        lambda p: p["serviceType"].append(
            {
                "extension": [
                    {
                        **p["serviceType"][0]["extension"][0],
                        "valueReference": {"reference": "HealthcareService/x"},
                    }
                ]
            }
        ),
        "Parameters.appointment.serviceType",
    ),
    ("start mismatch", lambda p: p.update(start="2026-12-07T09:05:00-05:00"), "Parameters.appointment.start"),
    (
        "detached buffer",
        lambda p: p["contained"][0].update(end="2026-12-07T09:05:00-05:00"),
        "Parameters.appointment.contained[0]",
    ),
    ("booked status", lambda p: p.update(status="booked"), "Parameters.appointment.status"),
    ("slot without end", lambda p: p["contained"][1].pop("end"), "Parameters.appointment.contained[1].end"),
]


@pytest.mark.parametrize(("case", "change", "expression"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_malformed_proposals_are_400_and_write_nothing(case: str, change: Any, expression: str) -> None:
    store = clinic()
    proposal = _bad(proposals(store)[0], change)
    with pytest.raises(InvalidRequest) as caught:
        do_book(store, proposal)
    assert expression in caught.value.expression, case
    assert store.transactions == []


def test_body_must_be_parameters_or_appointment() -> None:
    bodies: list[Any] = [[], {"resourceType": "Patient"}, {"resourceType": "Parameters", "parameter": []}]
    for body in bodies:
        with pytest.raises(InvalidRequest):
            BookingRequest.from_body(body)
    proposal = proposals(clinic())[0]
    alias = {
        "resourceType": "Parameters",
        "parameter": [{"name": "appointment-resource", "resource": proposal}],
    }
    assert BookingRequest.from_body(alias).root == "Parameters.appointment-resource"
    assert BookingRequest.from_body(proposal).root == "Appointment"


class TestUnprocessable:
    def test_duration_or_buffers_differ(self) -> None:
        store = clinic()
        proposal = proposals(store)[0]
        shorter = _bad(proposal, lambda p: p["contained"].pop(2))
        with pytest.raises(Unprocessable, match="buffer after"):
            do_book(store, shorter)

    def test_in_the_past_or_outside_availability(self) -> None:
        store = clinic()
        proposal = proposals(store)[0]
        with pytest.raises(Unprocessable, match="past"):
            do_book(store, proposal, clock=FakeClock(datetime(2026, 12, 8, tzinfo=UTC)))

        def move(p: dict[str, Any]) -> None:  # the same proposal one day later (a Tuesday)
            for item in [p, *p["contained"]]:
                for key in ("start", "end"):
                    item[key] = item[key].replace("2026-12-07", "2026-12-08")

        with pytest.raises(Unprocessable, match="outside the availability"):
            do_book(store, _bad(proposal, move))
        assert len(of_type(store, "Slot")) == 0

    def test_off_grid_start_inside_availability_is_accepted(self) -> None:
        store = clinic()

        def shift(p: dict[str, Any]) -> None:
            for item in [p, *p["contained"]]:
                for key in ("start", "end"):
                    moved = datetime.fromisoformat(item[key]) + timedelta(minutes=7)
                    item[key] = moved.isoformat()

        assert do_book(store, _bad(proposals(store)[0], shift)).status == 201


class TestHoldsAndLifecycle:
    def test_hold_blocks_until_it_lapses_then_the_time_is_bookable(self) -> None:
        store = clinic()
        clock = FakeClock()
        proposal = proposals(store)[0]
        held = do_book(store, copy.deepcopy(proposal), hold=True, clock=clock)
        assert held.expires == NOW + TTL
        appointment = held.bundle["entry"][0]["resource"]
        assert appointment["status"] == "pending"
        assert {"url": HOLD_EXPIRES_URL, "valueInstant": "2026-12-01T12:05:00Z"} in appointment["extension"]
        assert "busy-tentative" in [e["resource"]["status"] for e in held.bundle["entry"][1:]]
        assert proposal["start"] not in [p["start"] for p in proposals(store, now=NOW)]
        later = NOW + TTL + timedelta(seconds=1)
        assert proposal["start"] in [p["start"] for p in proposals(store, now=later)]
        assert do_book(store, copy.deepcopy(proposal), clock=FakeClock(later)).status == 201

    def test_confirm_turns_a_live_hold_into_a_booking(self) -> None:
        store = clinic()
        held = do_book(store, proposals(store)[0], hold=True)
        appointment_id = held.bundle["entry"][0]["resource"]["id"]
        result = confirm(store, appointment_id, clock=FakeClock().clock())
        assert result.status == 200
        assert result.bundle["entry"][0]["resource"]["status"] == "booked"
        statuses = sorted(e["resource"]["status"] for e in result.bundle["entry"][1:])
        assert statuses == ["busy", "busy-unavailable", "busy-unavailable"]
        for entry in result.bundle["entry"]:
            assert HOLD_EXPIRES_URL not in [x["url"] for x in entry["resource"].get("extension", [])]
        with pytest.raises(Unprocessable):
            confirm(store, appointment_id, clock=FakeClock().clock())

    def test_confirm_of_an_expired_hold_is_422_and_unknown_is_404(self) -> None:
        store = clinic()
        held = do_book(store, proposals(store)[0], hold=True)
        appointment_id = held.bundle["entry"][0]["resource"]["id"]
        with pytest.raises(Unprocessable, match="expired"):
            confirm(store, appointment_id, clock=FakeClock(NOW + TTL).clock())
        with pytest.raises(NotFound):
            confirm(store, "nope", clock=FakeClock().clock())

    def test_cancel_frees_the_time(self) -> None:
        store = clinic()
        proposal = proposals(store)[0]
        booked = do_book(store, copy.deepcopy(proposal))
        appointment_id = booked.bundle["entry"][0]["resource"]["id"]
        result = cancel(store, appointment_id, reason={"text": "patient called"}, clock=FakeClock().clock())
        assert result.bundle["status"] == "cancelled"
        assert result.bundle["cancelationReason"] == {"text": "patient called"}
        assert of_type(store, "Slot") == []
        assert proposal["start"] in [p["start"] for p in proposals(store)]
        with pytest.raises(Unprocessable):
            cancel(store, appointment_id, reason=None, clock=FakeClock().clock())
        with pytest.raises(NotFound):
            cancel(store, "nope", reason=None, clock=FakeClock().clock())

    def test_expiry_cancels_lapsed_holds_once_and_leaves_confirmed_ones(self) -> None:
        store = clinic()
        lapsing = do_book(store, proposals(store)[0], hold=True).bundle["entry"][0]["resource"]["id"]
        kept = do_book(store, at(store, "11:15"), hold=True).bundle["entry"][0]["resource"]["id"]
        confirm(store, kept, clock=FakeClock().clock())
        assert expire_holds(store, NOW) == 0
        assert expire_holds(store, NOW + TTL) == 1
        assert expire_holds(store, NOW + TTL) == 0
        assert store.resources[f"Appointment/{lapsing}"]["status"] == "cancelled"
        assert store.resources[f"Appointment/{kept}"]["status"] == "booked"
        assert len(of_type(store, "Slot")) == 3

    def test_expiry_racing_a_confirm_leaves_the_confirmed_booking(self) -> None:
        store = clinic()
        held = do_book(store, proposals(store)[0], hold=True).bundle["entry"][0]["resource"]["id"]
        store.before_transaction.append(lambda: confirm(store, held, clock=FakeClock().clock()))
        assert expire_holds(store, NOW + TTL) == 0
        assert store.resources[f"Appointment/{held}"]["status"] == "booked"


def test_identifier_of_a_cancelled_booking_books_anew() -> None:
    store = clinic()
    proposal = at(store, "09:15") | {"identifier": [{"system": "urn:app", "value": "req-2"}]}
    held = do_book(store, copy.deepcopy(proposal), hold=True)
    assert expire_holds(store, NOW + TTL) == 1
    again = do_book(store, copy.deepcopy(proposal), clock=FakeClock(NOW + TTL))
    assert again.status == 201
    assert again.bundle["entry"][0]["resource"]["id"] != held.bundle["entry"][0]["resource"]["id"]


def test_errors_about_schedules_point_at_their_busy_slot() -> None:
    store = clinic()
    store.add(schedule("bob", "Practitioner/alice", []))  # offers nothing
    proposal = copy.deepcopy(at(store, "09:15"))
    for slot in proposal["contained"]:
        slot["schedule"] = {"reference": "Schedule/bob"}
    with pytest.raises(Unprocessable) as caught:
        do_book(store, proposal)
    assert caught.value.expression == ["Parameters.appointment.contained[1]"]
    assert "does not offer" in caught.value.diagnostics
