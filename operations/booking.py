"""Use cases ``$book`` and ``$hold``: check a proposal against the stored configuration, decide
on the sidecar's own view of the Slots, write it in one transaction.

Race freedom (docs/consistency.md): each booking transaction carries a version-checked
(``ifMatch``) update of the lock of every time bucket its footprint touches on every Schedule
(``operations/locks.py``), read *before* the Slot search that decided the write and the
identifier look-up. Two bookings whose footprints overlap share a bucket: if both saw the time
as free, both hold the same lock version, and the upstream lets only one of them commit. The
other gets 409/412, re-reads and decides again, until a deadline (``operations/retries.py``).

Every booking carries a sidecar-generated *booking request* id, as a ``meta.tag``, on its
Appointment and Slots (``operations/writes.py``). When the answer to the transaction is lost
(timeout, connection cut), the sidecar fences the lock version the transaction was checked
against and looks the tag up: the transaction then either has landed (201, as if nothing
happened) or never will (the caller is told nothing was stored). See docs/reliability.md.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from operations.availability import schedule_windows
from operations.errors import Conflict, OutcomeUnknown, StoreFailure, Unprocessable
from operations.find import check_legs, decode_slots, slot_search_span, widened
from operations.locks import Locks, fence, read_locks
from operations.model import Interval, Leg, Service, SlotStatus
from operations.participants import check_participants, participant_reads
from operations.proposal import BookingRequest
from operations.retries import Attempts, Clock, RetryPolicy, retrying
from operations.store import FhirStore, Resource, Stores, as_stores
from operations.writes import (
    BOOKING_REQUEST_SYSTEM,
    ENDED_STATUSES,
    BookingResult,
    _bundle_of,
    booking_bundle,
    hold_expiry,
    replay_bundle,
    response_bundle,
)

logger = logging.getLogger(__name__)


def check_against_parameters(request: BookingRequest, legs: Sequence[Leg]) -> None:
    """Duration and buffers of the proposal must be those the parameters say (422)."""
    for leg in legs:
        if request.visit.duration != leg.params.duration:
            raise Unprocessable(
                f"The visit lasts {request.visit.duration}, but the duration for Schedule/{leg.schedule.id} "
                f"is {leg.params.duration}",
                expression=f"{request.root}.contained",
            )
        before, after = request.buffers[leg.schedule.id]
        for label, given, wanted in (
            ("before", before, leg.params.buffer_before),
            ("after", after, leg.params.buffer_after),
        ):
            if given != wanted:
                raise Unprocessable(
                    f"The buffer {label} the visit on Schedule/{leg.schedule.id} is {given}, "
                    f"the parameters say {wanted}",
                    expression=f"{request.root}.contained",
                )


def decide(
    service: Service,
    legs: Sequence[Leg],
    slot_resources: Sequence[Resource],
    visit: Interval,
    now: datetime,
    root: str,
) -> None:
    """Is the visit (with each Schedule's buffers) bookable right now? Raises when not:
    422 when it lies outside availability or in the past, 409 when it is taken."""
    if visit.start < now:
        raise Unprocessable("The visit starts in the past", expression=f"{root}.start")
    slots = decode_slots(slot_resources)
    free_only = [s for s in slots if s.status == SlotStatus.FREE]
    for leg in legs:
        if not leg.schedule.active:
            raise Unprocessable(f"Schedule/{leg.schedule.id} is not active", expression=leg.expression)
        span = widened(visit, leg.params)
        if not _fits(schedule_windows(leg.schedule, service, leg.params, free_only, span, now), visit):
            raise Unprocessable(
                f"The time (with its buffers) lies outside the availability of Schedule/{leg.schedule.id}",
                expression=f"{root}.start",
            )
        if not _fits(schedule_windows(leg.schedule, service, leg.params, slots, span, now), visit):
            raise Conflict(
                f"The time (or its buffers) is already booked or held on Schedule/{leg.schedule.id}",
                expression=f"{root}.start",
            )


def _fits(windows: Sequence[Interval], visit: Interval) -> bool:
    return any(w.start <= visit.start and visit.end <= w.end for w in windows)


def existing_booking(store: FhirStore, request: BookingRequest) -> BookingResult | None:
    """An Appointment already written for one of the caller's identifiers (idempotent retry)."""
    for system, value in request.identifiers:
        token = f"{system}|{value}" if system else value
        # A cancelled one (by $cancel or a lapsed hold) no longer answers for the identifier:
        # asking again books anew, which is what a client retrying after a lapse wants.
        found = [
            a
            for a in store.search("Appointment", [("identifier", token)])
            if a.get("status") not in ENDED_STATUSES
        ]
        if found:
            return BookingResult(200, replay_bundle(store, found[0]), hold_expiry(found[0]))
    return None


def _landed_booking(store: FhirStore, marker: str) -> Resource | None:
    found = store.search("Appointment", [("_tag", f"{BOOKING_REQUEST_SYSTEM}|{marker}")])
    return found[0] if found else None


def settle_lost_booking(
    store: FhirStore, locks: Locks, marker: str, clock: Clock, lost: OutcomeUnknown
) -> Resource | None:
    """The stored Appointment when a booking whose answer was ``lost`` has landed; ``None`` when
    it has not and never will (the lock is fenced). Raises ``lost`` itself -- the outcome is
    unknown -- when neither can be established (the upstream stays unreachable, the operation's
    time runs out)."""
    try:
        if fence(store, locks, clock):
            return None
        return _landed_booking(store, marker)
    except StoreFailure:
        raise lost from None


def footprints(request: BookingRequest) -> dict[str, list[Interval]]:
    """Per Schedule, the span a booking decides on and writes: the visit with the buffers the
    proposal carries (checked against the parameters before anything is written)."""
    return {
        schedule_id: [Interval(request.visit.start - before, request.visit.end + after)]
        for schedule_id, (before, after) in request.buffers.items()
    }


def book(
    stores: Stores | FhirStore,
    request: BookingRequest,
    *,
    hold: bool,
    hold_ttl: timedelta,
    clock: Clock,
    policy: RetryPolicy | None = None,
    marker: str | None = None,
) -> BookingResult:
    """``$book`` (``hold=False``) or ``$hold``: 201 with the transaction-response, or a replay.

    Three upstream round trips of latency (docs/performance.md), the very first booking of a
    time included: (1) the Schedules with their actors, the service and the locks, together;
    (2) the deciding Slot search, the identifier look-up and the participants besides the
    actors, together, strictly after the lock read; (3) the transaction. A lost version check
    repeats the lock read, the Slot search and look-up, and the transaction.

    ``marker`` is the booking request id (generated when not given): it travels on the
    Appointment and the Slots, so a booking whose answer was lost can be found.
    """
    stores = as_stores(stores)
    store = stores.service
    reads = participant_reads(request)
    spans = footprints(request)
    configuration, service_resource, lock_read = stores.together(
        lambda: stores.caller.read_schedules(request.schedule_ids),
        lambda: stores.caller.read_service(request.service_id),
        lambda: read_locks(store, spans),
    )
    service, legs = check_legs(
        configuration[0],
        configuration[1],
        request.service_id,
        service_resource,
        request.schedule_ids,
        expressions=[request.visit_paths[s] for s in request.schedule_ids],
        service_expression=f"{request.root}.serviceType",
    )
    check_against_parameters(request, legs)
    actors = {leg.schedule.actor.reference for leg in legs}
    # The actors came with the Schedules; the other participants are read with the deciding
    # reads of the first attempt (no round trip of their own).
    remaining = reads.excluding(actors)
    participant_searches = remaining.searches(stores.caller)
    participants_checked: list[bool] = []
    marker = marker or uuid.uuid4().hex
    first_read: list[Locks] = [lock_read]

    def attempt() -> BookingResult:
        # Lock, then Slots and the identifier look-up. A twin request (same identifier) that
        # committed before our Slot search is found by the look-up (its Appointment and Slots
        # landed together): at the same time as the Slot search, or, when the Slots already
        # say "taken", once more after it. One that commits after our lock read fails our
        # version check, and the next attempt finds it.
        locks = first_read.pop() if first_read else read_locks(store, spans)
        now = clock.now()
        span = slot_search_span(request.visit, legs)
        slot_resources: list[Resource]
        replay: BookingResult | None
        *participants, slot_resources, replay = stores.together(
            *participant_searches,  # first: a refusal of the caller's credentials wins
            lambda: store.search_slots(request.schedule_ids, span.start, span.end),
            lambda: existing_booking(store, request),
        )
        if not participants_checked:
            check_participants(remaining, dict(participants), actors)
            participants_checked.append(True)
            participant_searches.clear()  # checked once; a retry does not read them again
        if replay is not None:
            return replay
        try:
            decide(service, legs, slot_resources, request.visit, now, request.root)
        except Conflict:
            replay = existing_booking(store, request)
            if replay is not None:
                return replay
            raise
        expires = now + hold_ttl if hold else None
        bundle = booking_bundle(request, legs, locks, hold=hold, expires=expires, marker=marker)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "booking transaction",
                extra={
                    "booking_request": marker,
                    "locks": [f"{lock.lock_id}@{lock.version}" for lock in locks.taken],
                    "slots_seen": len(slot_resources),
                },
            )
        try:
            response = store.transaction(bundle)
        except OutcomeUnknown as lost:
            landed = settle_lost_booking(store, locks, marker, clock, lost)
            if landed is None:
                lost.resolution = "Nothing was stored (checked): ask again."
                raise
            try:
                bundle = replay_bundle(store, landed)
            except StoreFailure:
                # It is stored: say so with what is already known (the Appointment, whose
                # ``slot`` names its Slots), not with an error that reads "nothing happened".
                bundle = _bundle_of([landed])
            return BookingResult(201, bundle, hold_expiry(landed))
        return BookingResult(201, response_bundle(response), expires)

    attempts = Attempts()
    result = retrying(
        policy or RetryPolicy(), clock, attempt, operation="$hold" if hold else "$book", attempts=attempts
    )
    return replace(result, attempts=attempts.count)


__all__ = [
    "BookingRequest",
    "BookingResult",
    "Clock",
    "RetryPolicy",
    "book",
    "decide",
    "footprints",
    "settle_lost_booking",
]
