"""Property: whatever sequence of $find, $book, $hold, $confirm, $cancel, clock moves and hold
sweeps happens on one schedule, no instant ever holds more live bookings than the capacity (one,
or a group visit's 2 or 3), every 409 is a real conflict, and no Slot outlives its Appointment.

Runs against the versioned fake store; an independent check recomputes overlaps from what the
store holds, not from the engine."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from operations.booking import BookingRequest, Clock, book
from operations.cancel import cancel
from operations.confirm import confirm
from operations.errors import Conflict, Unprocessable
from operations.fhir_values import parse_instant
from operations.find import FindRequest, find_appointments
from operations.housekeeping import expire_holds
from operations.model import HOLD_EXPIRES_URL
from tests.unit.builders import hours, practitioner, schedule, service
from tests.unit.fake_store import FakeFhirStore

START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
TTL = timedelta(minutes=10)
DAY = ("2026-12-07T00:00:00-05:00", "2026-12-08T00:00:00-05:00")

action = st.one_of(
    st.tuples(st.sampled_from(["book", "hold"]), st.integers(0, 40), st.integers(-20, 20)),
    st.tuples(st.sampled_from(["cancel", "confirm"]), st.integers(0, 30), st.just(0)),
    st.tuples(st.just("advance"), st.integers(1, 15), st.just(0)),
    st.tuples(st.just("sweep"), st.just(0), st.just(0)),
)


class World:
    def __init__(self, before: int, after: int, capacity: int = 1) -> None:
        self.now = START
        self.store = FakeFhirStore(
            practitioner("alice", "America/New_York"),
            service(
                hours=[hours("mon", "09:00", "13:00")],
                duration=30,
                bufferBefore=before,
                bufferAfter=after,
                slotCapacity=capacity,
                alignmentInterval=15,
            ),
            schedule("alice", "Practitioner/alice", ["checkup"]),
        )
        self.buffers = (timedelta(minutes=before), timedelta(minutes=after))
        self.capacity = capacity

    def clock(self) -> Clock:
        return Clock(now=lambda: self.now, monotonic=lambda: 0.0, sleep=lambda _: None)

    def proposals(self) -> list[dict[str, Any]]:
        request = FindRequest.from_parameters(
            [
                ("start", DAY[0]),
                ("end", DAY[1]),
                ("service-type-reference", "HealthcareService/checkup"),
                ("schedule", "Schedule/alice"),
                ("_count", "100"),
            ],
            now=self.now,
            max_range_days=31,
        )
        bundle = find_appointments(self.store, request)
        return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]

    def live_footprints(self) -> list[tuple[datetime, datetime, str]]:
        """(start, end, id) of every booking that still holds its time, buffers included."""
        found = []
        for appointment in self.store.resources.values():
            if appointment["resourceType"] != "Appointment" or appointment["status"] not in (
                "booked",
                "pending",
            ):
                continue
            expiry = next(
                (
                    parse_instant(e["valueInstant"])
                    for e in appointment.get("extension", [])
                    if e["url"] == HOLD_EXPIRES_URL
                ),
                None,
            )
            if appointment["status"] == "pending" and expiry is not None and expiry <= self.now:
                continue
            start, end = parse_instant(appointment["start"]), parse_instant(appointment["end"])
            found.append((start - self.buffers[0], end + self.buffers[1], appointment["id"]))
        return found

    def appointments(self) -> list[dict[str, Any]]:
        return sorted(
            (r for r in self.store.resources.values() if r["resourceType"] == "Appointment"),
            key=lambda a: a["id"],
        )


def peak(footprints: list[tuple[datetime, datetime, str]], span: tuple[datetime, datetime]) -> int:
    """The most footprints that cover one instant of ``span`` (0 when none touches it)."""
    inside = [(max(s, span[0]), min(e, span[1])) for s, e, _ in footprints if s < span[1] and span[0] < e]
    points = sorted({t for s, e in inside for t in (s, e)})
    return max((sum(1 for s, e in inside if s <= t < e) for t in points), default=0)


def shifted(proposal: dict[str, Any], minutes: int) -> dict[str, Any]:
    """The proposal moved by some minutes: staff may place visits off the grid."""
    moved = copy.deepcopy(proposal)
    for item in [moved, *moved["contained"]]:
        for key in ("start", "end"):
            item[key] = (datetime.fromisoformat(item[key]) + timedelta(minutes=minutes)).isoformat()
    return moved


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    buffers=st.tuples(st.sampled_from([0, 5, 10]), st.sampled_from([0, 5, 15])),
    capacity=st.sampled_from([1, 1, 2, 3]),
    actions=st.lists(action, min_size=1, max_size=25),
)
def test_no_sequence_of_operations_double_books(
    buffers: tuple[int, int], capacity: int, actions: list[tuple[str, int, int]]
) -> None:
    world = World(*buffers, capacity=capacity)
    reference = world.proposals()  # the day's grid before anything is booked
    for kind, index, minutes in actions:
        if kind in ("book", "hold"):
            proposal = shifted(reference[index % len(reference)], minutes)
            start = parse_instant(proposal["start"])
            footprint = (start - world.buffers[0], parse_instant(proposal["end"]) + world.buffers[1])
            already = peak(world.live_footprints(), footprint)
            try:
                book(
                    world.store,
                    BookingRequest.from_body(proposal),
                    hold=kind == "hold",
                    hold_ttl=TTL,
                    clock=world.clock(),
                )
            except Conflict:
                event("409")
                assert already >= world.capacity, "a 409 must mean the time really is full"
            except Unprocessable:
                event("422")  # outside the hours once shifted: a fair refusal
            else:
                event("201")
                assert already < world.capacity, f"booked into a full time ({already} of {world.capacity})"
        elif kind in ("cancel", "confirm"):
            appointments = world.appointments()
            if not appointments:
                continue
            target = appointments[index % len(appointments)]["id"]
            try:
                if kind == "cancel":
                    cancel(world.store, target, reason=None, clock=world.clock())
                else:
                    confirm(world.store, target, clock=world.clock())
            except Unprocessable:
                pass  # wrong status or a lapsed hold: refusals are allowed, effects are checked below
        elif kind == "advance":
            world.now += timedelta(minutes=index)
        else:
            expire_holds(world.store, world.now)

        live = world.live_footprints()
        if live:
            whole = (min(f[0] for f in live), max(f[1] for f in live))
            assert peak(live, whole) <= world.capacity, "more bookings at once than the capacity"
        referenced = {
            ref["reference"].split("/")[1]
            for appointment in world.appointments()
            if appointment["status"] in ("booked", "pending", "proposed")
            for ref in appointment.get("slot", [])
        }
        for resource in world.store.resources.values():
            if resource["resourceType"] == "Slot":
                assert resource["id"] in referenced, "a Slot outlived its Appointment"
        # Every free proposal now really is free.
        for proposal in world.proposals():
            start = parse_instant(proposal["start"])
            span = (start - world.buffers[0], parse_instant(proposal["end"]) + world.buffers[1])
            assert peak(world.live_footprints(), span) < world.capacity, "a full time was proposed"
