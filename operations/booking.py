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

import itertools
import logging
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta

from operations.decision import (
    decide,
    deciding_spans,
    exact_plan,
    footprints,
    request_legs,
    search_spans,
    speculative_plan,
    visits_of,
)
from operations.errors import Conflict, InvalidRequest, OutcomeUnknown, StoreFailure
from operations.locks import LockPlan, Locks, fence, read_planned
from operations.model import Interval
from operations.participants import check_participants, participant_reads
from operations.proposal import BookingRequest
from operations.retries import Attempts, Clock, RetryPolicy, retrying
from operations.store import FhirStore, Resource, Stores, Together, as_stores
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
    With ``request.recurrence``, every occurrence of the series in the one transaction, or none.

    Three upstream round trips of latency (docs/performance.md), the very first booking of a
    time included: (1) the Schedules with their actors, the service and the locks, together;
    (2) the deciding Slot search, the identifier look-up and the participants besides the
    actors, together, strictly after the lock read; (3) the transaction. The lock read of (1)
    is planned from the proposal alone (``operations/decision.py``); a lock it could not
    foresee -- an occurrence of a series moved by a DST change of other than an hour -- is read
    before (2), one round trip more. A lost version check repeats the lock read, the Slot
    search and look-up, and the transaction.

    ``marker`` is the booking request id (generated when not given): it travels on the
    Appointments and the Slots, so a booking whose answer was lost can be found.
    """
    stores = as_stores(stores)
    store = stores.service
    reads = participant_reads(request)
    recurrence = request.recurrence
    configuration, service_resource, speculated = stores.together(
        lambda: stores.caller.read_schedules(request.schedule_ids),
        lambda: stores.caller.read_service(request.service_id),
        lambda: read_planned(store, speculative_plan(request, recurrence), together=stores.together),
    )
    service, legs = request_legs(request, configuration, service_resource)
    visits = visits_of(request, legs, recurrence)
    _check_occurrences_apart(request, visits)
    plan = exact_plan(legs, request, visits)
    spans = deciding_spans(legs, visits)
    actors = {leg.schedule.actor.reference for leg in legs}
    # The actors came with the Schedules; the other participants are read with the deciding
    # reads of the first attempt (no round trip of their own).
    remaining = reads.excluding(actors)
    participant_searches = remaining.searches(stores.caller)
    participants_checked: list[bool] = []
    marker = marker or uuid.uuid4().hex
    series_id = uuid.uuid4().hex if recurrence is not None else None
    first_read: list[Locks] = [speculated]

    def attempt() -> BookingResult:
        # Lock, then Slots and the identifier look-up. A twin request (same identifier) that
        # committed before our Slot search is found by the look-up (its Appointment and Slots
        # landed together): at the same time as the Slot search, or, when the Slots already
        # say "taken", once more after it. One that commits after our lock read fails our
        # version check, and the next attempt finds it.
        locks = _taken_locks(store, plan, first_read.pop() if first_read else None, stores.together)
        now = clock.now()
        replay: BookingResult | None
        *participants, replay, slot_lists = stores.together(
            *participant_searches,  # first: a refusal of the caller's credentials wins
            lambda: existing_booking(store, request),
            lambda: search_spans(store, request.schedule_ids, spans, stores.together),
        )
        slot_resources: list[Resource] = slot_lists
        if not participants_checked:
            check_participants(remaining, dict(participants), actors)
            participants_checked.append(True)
            participant_searches.clear()  # checked once; a retry does not read them again
        if replay is not None:
            return replay
        try:
            decide(service, legs, slot_resources, visits, now, request.root)
        except Conflict:
            replay = existing_booking(store, request)
            if replay is not None:
                return replay
            raise
        expires = now + hold_ttl if hold else None
        bundle = booking_bundle(
            request,
            legs,
            locks,
            hold=hold,
            expires=expires,
            marker=marker,
            visits=visits,
            series_id=series_id,
        )
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


def _taken_locks(store: FhirStore, plan: LockPlan, speculated: Locks | None, together: Together) -> Locks:
    """The locks of ``plan`` at their current versions: from the speculative read of the first
    round trip where it has them (the rest read now), else read afresh."""
    if speculated is None:
        return read_planned(store, plan, together=together)
    known = {lock.lock_id for lock in speculated.taken}
    missing = {lock_id: where for lock_id, where in plan.items() if lock_id not in known}
    locks = speculated.keeping(plan)
    return locks.merged(read_planned(store, missing, together=together)) if missing else locks


def _check_occurrences_apart(request: BookingRequest, visits: Sequence[Interval]) -> None:
    """Occurrences of one series must not overlap one another (with their buffers)."""
    longest = max((before + after for before, after in request.buffers.values()), default=timedelta(0))
    for earlier, later in itertools.pairwise(visits):
        if earlier.end + longest > later.start:
            raise InvalidRequest(
                "The occurrences of this series would overlap one another (with their buffers)",
                code="invalid",
                expression="Parameters.recurrence",
            )


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
