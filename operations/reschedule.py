"""Use case ``$reschedule`` (SPEC §7.3): a booked Appointment, or a live hold, moves to the time of
a proposal from ``$find?ignore-appointment=Appointment/<id>``, in one transaction.

The same Appointment (id, identifiers, participants, status) gets the new ``start``/``end`` and
new Slots; its old Slots are deleted. The new time is decided like a booking's -- the locks of
every bucket (and limited day) of the new footprint read before the Slot search, the
Appointment's own Slots counting as free -- and the transaction also takes the locks of the
old footprint: a ``$book`` that saw a hold as lapsed and took its time makes the reschedule of
that hold fail its version check, re-read and answer 422 "expired", exactly as ``$confirm``
does (docs/consistency.md). The Appointment update is version-checked, so a concurrent
``$cancel``, ``$confirm`` or second reschedule of it is settled by the upstream. A new time
that is taken answers 409 and changes nothing.

Three round trips of latency: (1) the Appointment with the caller's credentials, the
Schedules and the service, the Appointment with its Slots as the sidecar, and the new time's
locks; (2) the old time's locks and the deciding Slot search; (3) the transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from operations.appointment_change import LostWrite, read_appointment
from operations.booking_lookup import NOTHING_STORED
from operations.decision import (
    decide,
    deciding_spans,
    exact_plan,
    request_legs,
    search_spans,
    slot_footprints,
    speculative_plan,
    visits_of,
)
from operations.errors import InvalidRequest, NotFound, OutcomeUnknown, Unprocessable
from operations.fhir_values import format_instant, parse_instant
from operations.locks import Locks, fence, lock_plan, read_planned
from operations.model import Interval, Leg
from operations.parameters import service_references
from operations.proposal import BookingRequest
from operations.retries import Clock, RetryPolicy, retrying
from operations.store import FhirStore, Resource, Stores, as_stores
from operations.writes import (
    BookingResult,
    booking_bundle,
    booking_marker,
    booking_request_tag,
    hold_expiry,
    replay_bundle,
    response_bundle,
    slot_ids,
    version_of,
    versioned_put,
)

RESCHEDULABLE = ("booked", "pending")


@dataclass(frozen=True)
class Current:
    """The Appointment as the sidecar read it, with the Slots it references."""

    appointment: Resource
    slots: list[Resource]

    def footprints(self) -> dict[str, list[Interval]]:
        """Per Schedule, the spans of its Slots: the old time's locks."""
        return slot_footprints(self.slots)


def _read_current(store: FhirStore, appointment_id: str) -> Current:
    matches, included = store.search_including(
        "Appointment", [("_id", appointment_id), ("_include", "Appointment:slot")]
    )
    found = [a for a in matches if a.get("id") == appointment_id]
    if not found:
        raise NotFound(f"Appointment/{appointment_id} does not exist", expression="Appointment")
    wanted = set(slot_ids(found[0]))
    return Current(
        found[0], [s for s in included if s.get("resourceType") == "Slot" and s.get("id") in wanted]
    )


def reschedule(
    stores: Stores | FhirStore,
    appointment_id: str,
    request: BookingRequest,
    *,
    clock: Clock,
    policy: RetryPolicy | None = None,
) -> BookingResult:
    """Move ``Appointment/<appointment_id>`` to the proposal's time: 200 with the
    transaction-response Bundle (the Appointment, then its new Slots)."""
    stores = as_stores(stores)
    store = stores.service
    if request.recurrence is not None:
        raise InvalidRequest(
            "$reschedule moves one Appointment: recurrence is not accepted",
            code="invalid",
            expression="Parameters.recurrence",
        )
    _, configuration, service_resource, first_current, first_locks = stores.together(
        lambda: read_appointment(stores.caller, appointment_id),  # first: permission and 404 win
        lambda: stores.caller.read_schedules(request.schedule_ids),
        lambda: stores.caller.read_service(request.service_id),
        lambda: _read_current(store, appointment_id),
        lambda: read_planned(store, speculative_plan(request, None), together=stores.together),
    )
    service, legs = request_legs(request, configuration, service_resource)
    visits = visits_of(request, legs, None)
    plan = exact_plan(legs, request, visits)
    spans = deciding_spans(legs, visits)
    lost = LostWrite()
    first_read: list[tuple[Current, Locks]] = [(first_current, first_locks.keeping(plan))]

    def attempt() -> BookingResult:
        if first_read:
            current, new_locks = first_read.pop()
        else:
            current, new_locks = stores.together(
                lambda: _read_current(store, appointment_id), lambda: read_planned(store, plan)
            )
        appointment = current.appointment
        if lost.error is not None and _moved(appointment, request):
            return BookingResult(200, replay_bundle(store, appointment))  # the lost write landed
        if lost.error is not None and lost.fenced:
            lost.error.resolution = NOTHING_STORED
            raise lost.error
        _check_movable(appointment, appointment_id, current, legs, request)
        old_plan = lock_plan(current.footprints())
        old_locks, slot_resources = stores.together(
            lambda: read_planned(store, {k: v for k, v in old_plan.items() if k not in plan}),
            lambda: search_spans(store, request.schedule_ids, spans, stores.together),
        )
        # "Now" after the old time's lock read: a booking that took the time of a hold it saw
        # lapse has moved one of those locks, and this transaction will fail on it.
        now = clock.now()
        expires = hold_expiry(appointment)
        if appointment.get("status") == "pending" and expires is not None and expires <= now:
            raise Unprocessable(
                f"The hold on Appointment/{appointment_id} expired at {format_instant(expires)}",
                expression="Appointment.extension",
            )
        own = set(slot_ids(appointment))
        decide(service, legs, slot_resources, visits, now, request.root, ignore=own)
        locks = new_locks.merged(old_locks)
        bundle = _reschedule_bundle(request, legs, locks, current, visits[0])
        try:
            response = store.transaction(bundle)
        except OutcomeUnknown as exc:
            retry = lost.lose(exc, "reschedule")
            fence(store, locks, clock)  # a failure here is answered as ``exc`` (guarding)
            lost.fenced = True
            raise retry from exc
        return BookingResult(200, response_bundle(response))

    return retrying(policy or RetryPolicy(), clock, lost.guarding(attempt), operation="$reschedule")


def _moved(appointment: Resource, request: BookingRequest) -> bool:
    """Whether the stored Appointment already has the proposal's time (a lost write landed)."""
    try:
        return (
            parse_instant(appointment.get("start")) == request.visit.start
            and parse_instant(appointment.get("end")) == request.visit.end
        )
    except ValueError:
        return False


def _check_movable(
    appointment: Resource, appointment_id: str, current: Current, legs: Sequence[Leg], request: BookingRequest
) -> None:
    """Only a booked Appointment or a live hold moves, and only in time: to the same Schedules
    (its participants stay) and the same service."""
    status = appointment.get("status")
    if status not in RESCHEDULABLE:
        raise Unprocessable(
            f"Appointment/{appointment_id} is {status!r}: only a booked or pending appointment can be rescheduled",
            expression="Appointment.status",
        )
    booked_on = set(current.footprints())
    wanted = {leg.schedule.id for leg in legs}
    if booked_on and booked_on != wanted:
        raise Unprocessable(
            f"Appointment/{appointment_id} is booked on {', '.join(sorted(f'Schedule/{s}' for s in booked_on))}; "
            "the proposal names other schedules. A reschedule moves the time only: cancel and book to "
            "change who or where",
            expression=f"{request.root}.contained",
        )
    services = {ref.rsplit("/", 1)[-1] for ref in service_references(appointment.get("serviceType") or [])}
    if services and request.service_id not in services:
        raise Unprocessable(
            f"Appointment/{appointment_id} is for HealthcareService/{sorted(services)[0]}, the proposal for "
            f"HealthcareService/{request.service_id}",
            expression=f"{request.root}.serviceType",
        )


def _reschedule_bundle(
    request: BookingRequest, legs: Sequence[Leg], locks: Locks, current: Current, visit: Interval
) -> Resource:
    """The locks, the new Slots, the Appointment moved (version-checked), the old Slots deleted."""
    appointment = current.appointment
    hold = appointment.get("status") == "pending"
    marker = booking_marker(appointment)
    fresh_marker = marker is None
    if marker is None:
        marker = uuid.uuid4().hex
    written = booking_bundle(request, legs, locks, hold=hold, expires=hold_expiry(appointment), marker=marker)
    # The booking's own entries minus its new Appointment: the lock updates and the new Slots.
    entries = [e for e in written["entry"] if e["request"]["url"] != "Appointment"]
    new_slots = [e for e in entries if e["request"]["url"] == "Slot"]
    zone = legs[0].params.timezone
    moved = {k: v for k, v in appointment.items() if k not in ("slot",)}
    moved["start"] = format_instant(visit.start, zone)
    moved["end"] = format_instant(visit.end, zone)
    moved["slot"] = [{"reference": e["fullUrl"]} for e in new_slots]
    minutes = visit.duration.total_seconds() / 60
    if "minutesDuration" in moved and minutes == int(minutes):
        moved["minutesDuration"] = int(minutes)
    update = versioned_put(moved, version_of(appointment))
    if fresh_marker:
        update["resource"]["meta"] = {"tag": [booking_request_tag(marker)]}
    deletions = [{"request": {"method": "DELETE", "url": f"Slot/{sid}"}} for sid in slot_ids(appointment)]
    return {"resourceType": "Bundle", "type": "transaction", "entry": [*entries, update, *deletions]}
