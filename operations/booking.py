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
import uuid
from collections.abc import Sequence
from datetime import timedelta

from operations import booking_group
from operations.booking_group import ALONE, Grouping, Prepared, group_key
from operations.decision import (
    decide,
    deciding_spans,
    exact_plan,
    footprints,
    request_legs,
    speculative_plan,
    visits_of,
)
from operations.errors import InvalidRequest
from operations.locks import read_planned
from operations.model import Interval
from operations.participants import participant_reads
from operations.proposal import BookingRequest
from operations.retries import Clock, RetryPolicy
from operations.store import FhirStore, Stores, as_stores
from operations.writes import BookingResult


def book(
    stores: Stores | FhirStore,
    request: BookingRequest,
    *,
    hold: bool,
    hold_ttl: timedelta,
    clock: Clock,
    policy: RetryPolicy | None = None,
    marker: str | None = None,
    grouping: Grouping | None = None,
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

    With ``grouping``, a booking that arrives while another of the same time buckets is being
    written waits for it and is then decided and written together with the others that
    waited (``operations/booking_group.py``): one round trip more for it, and none of the
    retries it would otherwise cost. A series is always committed alone.

    ``marker`` is the booking request id (generated when not given): it travels on the
    Appointments and the Slots, so a booking whose answer was lost can be found.
    """
    key = group_key(request)
    alone = grouping is None or request.recurrence is not None
    # A booking that will wait for a group re-reads the locks when its turn comes: reading them
    # now, speculatively, would be a read for nothing.
    speculate = grouping is None or alone or not grouping.busy(key)
    prepared = prepare(
        as_stores(stores), request, hold=hold, hold_ttl=hold_ttl, marker=marker, speculate=speculate
    )

    def commit(members: Sequence[Prepared], waited: bool) -> list[booking_group.Outcome]:
        return booking_group.commit(members, waited, clock=clock, policy=policy)

    if alone:
        outcome = commit([prepared], False)[0]
    else:
        assert grouping is not None
        outcome = grouping(key, prepared, commit)
        if outcome is ALONE:  # its group's content was refused: find out whether it was this one's
            outcome = commit([prepared], True)[0]
    if isinstance(outcome, BaseException):
        raise outcome
    assert isinstance(outcome, BookingResult)
    return outcome


def prepare(
    stores: Stores,
    request: BookingRequest,
    *,
    hold: bool,
    hold_ttl: timedelta,
    marker: str | None = None,
    speculate: bool = True,
) -> Prepared:
    """The first round trip -- the Schedules with their actors, the service and (``speculate``)
    the locks -- and everything checked that needs no Slot: the booking, ready to commit."""
    store = stores.service
    reads = participant_reads(request)
    recurrence = request.recurrence
    configuration, service_resource, speculated = stores.together(
        lambda: stores.caller.read_schedules(request.schedule_ids),
        lambda: stores.caller.read_service(request.service_id),
        lambda: (
            read_planned(store, speculative_plan(request, recurrence), together=stores.together)
            if speculate
            else None
        ),
    )
    service, legs = request_legs(request, configuration, service_resource)
    visits = visits_of(request, legs, recurrence)
    _check_occurrences_apart(request, visits)
    actors = frozenset(leg.schedule.actor.reference for leg in legs)
    return Prepared(
        request=request,
        stores=stores,
        hold=hold,
        hold_ttl=hold_ttl,
        service=service,
        legs=legs,
        visits=visits,
        plan=exact_plan(legs, request, visits),
        spans=deciding_spans(legs, visits),
        # The actors came with the Schedules; the other participants are read with the
        # deciding reads (no round trip of their own).
        participants=reads.excluding(actors),
        actors=actors,
        marker=marker or uuid.uuid4().hex,
        series_id=uuid.uuid4().hex if recurrence is not None else None,
        speculated=speculated,
    )


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
    "prepare",
]
