"""Property: whatever sequence of $find, $book, $hold, $confirm, $cancel, clock moves and hold
sweeps happens on one schedule, no two live bookings overlap, every 409 is a real conflict, and
no Slot outlives its Appointment except a lapsed hold not yet swept.

Runs against the versioned fake store; an independent check recomputes overlaps from what the
store holds, not from the engine."""

from __future__ import annotations

import copy
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from operations.booking import BookingRequest, Clock, book
from operations.errors import Conflict, Unprocessable
from operations.fhir_values import parse_instant
from operations.find import FindRequest, find_appointments
from operations.lifecycle import cancel, confirm, expire_holds
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
    def __init__(self, before: int, after: int) -> None:
        self.now = START
        self.store = FakeFhirStore(
            practitioner("alice", "America/New_York"),
            service(
                hours=[hours("mon", "09:00", "13:00")],
                duration=30,
                bufferBefore=before,
                bufferAfter=after,
                alignmentInterval=15,
            ),
            schedule("alice", "Practitioner/alice", ["checkup"]),
        )
        self.buffers = (timedelta(minutes=before), timedelta(minutes=after))

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
    actions=st.lists(action, min_size=1, max_size=25),
)
def test_no_sequence_of_operations_double_books(
    buffers: tuple[int, int], actions: list[tuple[str, int, int]]
) -> None:
    world = World(*buffers)
    reference = world.proposals()  # the day's grid before anything is booked
    for kind, index, minutes in actions:
        if kind in ("book", "hold"):
            proposal = shifted(reference[index % len(reference)], minutes)
            start = parse_instant(proposal["start"])
            footprint = (start - world.buffers[0], parse_instant(proposal["end"]) + world.buffers[1])
            taken = [f for f in world.live_footprints() if f[0] < footprint[1] and footprint[0] < f[1]]
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
                assert taken, "a 409 must mean the time really is taken"
            except Unprocessable:
                event("422")  # outside the hours once shifted: a fair refusal
            else:
                event("201")
                assert not taken, f"booked over {taken}"
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

        live = sorted(world.live_footprints())
        for (_, a_end, a_id), (b_start, _, b_id) in itertools.pairwise(live):
            assert a_end <= b_start, f"{a_id} and {b_id} overlap"
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
            assert not [f for f in world.live_footprints() if f[0] < span[1] and span[0] < f[1]]
