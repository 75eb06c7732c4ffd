"""What a booking already stored: the Appointment an identifier answers for (an idempotent
retry is a replay, 200), and after a transaction whose answer was lost, whether it landed.

Lost answers (docs/reliability.md): the sidecar fences the lock version the transaction was
checked against, then looks the bookings up by their booking request ids. The transaction then
either has landed (201, as if nothing happened) or never will (the caller is told nothing was
stored); when neither can be established the caller learns the outcome is unknown.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from operations.errors import OutcomeUnknown, StoreFailure
from operations.locks import Locks, fence
from operations.proposal import BookingRequest
from operations.retries import Clock
from operations.store import FhirStore, Resource
from operations.writes import (
    BOOKING_REQUEST_SYSTEM,
    ENDED_STATUSES,
    BookingResult,
    _bundle_of,
    hold_expiry,
    replay_bundle,
)

NOTHING_STORED = "Nothing was stored (checked): ask again."


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


def look_up(store: FhirStore, request: BookingRequest) -> Callable[[], BookingResult | None]:
    """:func:`existing_booking` as a read to run with others."""
    return lambda: existing_booking(store, request)


def settle_lost(
    store: FhirStore, locks: Locks, markers: Sequence[str], clock: Clock, lost: OutcomeUnknown
) -> list[BookingResult | OutcomeUnknown]:
    """After a transaction's answer was lost, per booking request id in ``markers`` (all written
    by that one transaction): its 201 when it landed; otherwise ``lost`` with the resolution
    "nothing was stored"; ``lost`` without one when neither can be established. Each an object
    of its own (they may be raised in different threads)."""
    try:
        nothing = fence(store, locks, clock)
        landed = [None] * len(markers) if nothing else [_landed_booking(store, m) for m in markers]
    except StoreFailure:
        return [_unknown(lost, None) for _ in markers]
    settled: list[BookingResult | OutcomeUnknown] = []
    for appointment in landed:
        if appointment is None:
            settled.append(_unknown(lost, NOTHING_STORED))
            continue
        try:
            bundle = replay_bundle(store, appointment)
        except StoreFailure:
            # It is stored: say so with what is already known (the Appointment, whose ``slot``
            # names its Slots), not with an error that reads "nothing happened".
            bundle = _bundle_of([appointment])
        settled.append(BookingResult(201, bundle, hold_expiry(appointment)))
    return settled


def _landed_booking(store: FhirStore, marker: str) -> Resource | None:
    found = store.search("Appointment", [("_tag", f"{BOOKING_REQUEST_SYSTEM}|{marker}")])
    return found[0] if found else None


def _unknown(lost: OutcomeUnknown, resolution: str | None) -> OutcomeUnknown:
    own = OutcomeUnknown(lost.cause)
    own.resolution = resolution
    return own
