"""Deciding a write that takes time (``$book``, ``$hold``, ``$reschedule``): which visits it
writes, which locks it takes, which Slots it must read, and whether the time is bookable.

The locks are read before the configuration is known (to save a round trip), so they are
*planned* twice: :func:`speculative_plan` from the proposal alone -- every local day and week
the visits could fall on in any time zone, and for a series each occurrence a DST hour either
way -- and :func:`exact_plan` once the Schedules' parameters are known. A booking takes the
exact plan; whatever it needs that the speculation did not read is read before the Slot search
(docs/consistency.md).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime, timedelta

from operations.availability import merge, schedule_windows
from operations.errors import Conflict, SchedulingError, Unprocessable
from operations.fhir_values import dig, format_instant, parse_instant, reference_id
from operations.legs import check_legs, decode_slots, slot_search, slot_search_span, widened
from operations.locks import LockPlan, lock_plan
from operations.model import Interval, Leg, Service, SlotOverlay, SlotStatus
from operations.proposal import BookingRequest
from operations.rules import broken_rule, candidate_period_keys, count_visits, counting_spans, period_keys
from operations.series import Recurrence
from operations.store import FhirStore, Resource, Together

_DST_GUESSES = (timedelta(hours=-1), timedelta(0), timedelta(hours=1))


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


def request_legs(
    request: BookingRequest,
    configuration: tuple[list[Resource], dict[str, Resource]],
    service: Resource | None,
) -> tuple[Service, list[Leg]]:
    """The proposal's Schedules and service as read, checked, with errors pointing at the
    proposal (its busy Slots, its serviceType); duration and buffers checked against them."""
    found, legs = check_legs(
        configuration[0],
        configuration[1],
        request.service_id,
        service,
        request.schedule_ids,
        expressions=[request.visit_paths[s] for s in request.schedule_ids],
        service_expression=f"{request.root}.serviceType",
    )
    check_against_parameters(request, legs)
    return found, legs


def slot_footprints(slots: Sequence[Resource]) -> dict[str, list[Interval]]:
    """Per Schedule, the spans of these stored Slots: what a write changing them locks."""
    found: dict[str, list[Interval]] = {}
    for slot in slots:
        try:
            schedule_id = reference_id(dig(slot, "schedule", "reference"), "Schedule")
            span = Interval(parse_instant(slot["start"]), parse_instant(slot["end"]))
        except (KeyError, TypeError, ValueError):
            continue
        found.setdefault(schedule_id, []).append(span)
    return found


def visits_of(request: BookingRequest, legs: Sequence[Leg], recurrence: Recurrence | None) -> list[Interval]:
    """The visits a booking writes: the proposal's, and for a series every occurrence at the
    first's local wall-clock time in the first Schedule's zone."""
    first = request.visit
    if recurrence is None:
        return [first]
    zone = legs[0].params.timezone
    return [Interval(start, start + first.duration) for start in recurrence.starts(first.start, zone)]


def footprints(
    request: BookingRequest, visits: Sequence[Interval] | None = None
) -> dict[str, list[Interval]]:
    """Per Schedule, the spans a booking decides on and writes: each visit (the proposal's by
    default) with the buffers the proposal carries (checked against the parameters before
    anything is written)."""
    visits = visits if visits is not None else [request.visit]
    return {
        schedule_id: [Interval(v.start - before, v.end + after) for v in visits]
        for schedule_id, (before, after) in request.buffers.items()
    }


def speculative_plan(request: BookingRequest, recurrence: Recurrence | None) -> LockPlan:
    """The locks to read before the configuration is known."""
    first = request.visit
    guesses = [first]
    if recurrence is not None:
        period = timedelta(days=1 if recurrence.unit == "d" else 7)
        guesses += [
            Interval(first.start + k * period + shift, first.end + k * period + shift)
            for k in range(1, recurrence.count)
            for shift in _DST_GUESSES
        ]
    keys = candidate_period_keys(g.start for g in guesses)
    return lock_plan(footprints(request, guesses), dict.fromkeys(request.schedule_ids, keys))


def exact_plan(legs: Sequence[Leg], request: BookingRequest, visits: Sequence[Interval]) -> LockPlan:
    """The locks the booking takes: every bucket of every footprint, and the day (week) of each
    visit on a Schedule with a daily (weekly) booking limit."""
    starts = [v.start for v in visits]
    periods = {leg.schedule.id: period_keys(leg.params, starts) for leg in legs if leg.params.has_limits}
    return lock_plan(footprints(request, visits), periods)


def deciding_spans(legs: Sequence[Leg], visits: Sequence[Interval]) -> list[Interval]:
    """What the Slot search must cover: each visit with every Schedule's buffers, and the local
    days (weeks) a booking limit counts."""
    spans = [slot_search_span(v, legs) for v in visits]
    starts = [v.start for v in visits]
    for leg in legs:
        if leg.params.has_limits:
            spans.extend(counting_spans(leg.params, starts))
    return merge(spans)


def decide(
    service: Service,
    legs: Sequence[Leg],
    slot_resources: Sequence[Resource],
    visits: Sequence[Interval],
    now: datetime,
    root: str,
    *,
    ignore: Collection[str] = (),
) -> None:
    """Are the visits (each with each Schedule's buffers) bookable right now? Raises when not:
    422 when one starts in the past, breaks a booking rule or lies outside availability, 409
    when one is taken. For a series the error names the first occurrence at fault. Slots with
    ids in ``ignore`` count as not there (the Appointment being rescheduled)."""
    slots = [s for s in decode_slots(slot_resources) if s.id not in ignore]
    free_only = [s for s in slots if s.status == SlotStatus.FREE]
    starts = [v.start for v in visits]

    def which(index: int) -> str:
        if len(visits) == 1:
            return ""
        zone = legs[0].params.timezone
        return f"Occurrence {index + 1} of {len(visits)} ({format_instant(visits[index].start, zone)}): "

    for index, visit in enumerate(visits):
        if visit.start < now:
            raise Unprocessable(f"{which(index)}The visit starts in the past", expression=f"{root}.start")
    for leg in legs:
        if not leg.schedule.active:
            raise Unprocessable(f"Schedule/{leg.schedule.id} is not active", expression=leg.expression)
        counts = (
            count_visits(slots, leg.schedule.id, leg.params.timezone, now) if leg.params.has_limits else None
        )
        rule = broken_rule(leg.params, starts, now, counts)
        if rule is not None:
            raise Unprocessable(f"{rule} on Schedule/{leg.schedule.id}", expression=f"{root}.start")
    for index, visit in enumerate(visits):
        try:
            _decide_one(service, legs, slots, free_only, visit, now, root)
        except SchedulingError as exc:
            exc.diagnostics = which(index) + exc.diagnostics
            exc.args = (exc.diagnostics,)
            raise


def _decide_one(
    service: Service,
    legs: Sequence[Leg],
    slots: Sequence[SlotOverlay],
    free_only: Sequence[SlotOverlay],
    visit: Interval,
    now: datetime,
    root: str,
) -> None:
    for leg in legs:
        span = widened(visit, leg.params)
        available = schedule_windows(leg.schedule, service, leg.params, free_only, span, now)
        if not _fits(available, visit):
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


def search_spans(
    store: FhirStore, schedule_ids: Sequence[str], spans: Sequence[Interval], together: Together
) -> list[Resource]:
    """Every Slot of the Schedules over the deciding spans (one search each, together), each once."""
    found: dict[str, Resource] = {}
    anonymous: list[Resource] = []
    searches = [slot_search(store, schedule_ids, span) for span in spans]
    for slots in together(*searches) if len(searches) > 1 else [s() for s in searches]:
        for slot in slots:
            if isinstance(slot.get("id"), str):
                found.setdefault(slot["id"], slot)
            else:
                anonymous.append(slot)
    return [*found.values(), *anonymous]
