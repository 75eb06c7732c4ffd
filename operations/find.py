"""Use case: ``$find`` -- propose appointment times (SPEC §3, §4, §7.1-§7.4).

Reads the Schedules with their actors, the HealthcareService and the Slots through the store
(three searches, whatever the number of schedules), computes free time and renders a searchset
Bundle. Booking rules (``operations/rules.py``) and a series' later occurrences
(``operations/series.py``) only remove starts; ``ignore-appointment`` makes one Appointment's
own time count as free (the search for a new time of that Appointment). Each ``schedule``
parameter is a pool, "any one of" its comma-separated members (``operations/pools.py``
chooses them); each proposal names the members chosen.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

from operations.alignment import aligned_starts
from operations.availability import merge, schedule_windows, subtract
from operations.errors import Unprocessable
from operations.find_request import (
    BALANCED,
    DEFAULT_COUNT,
    DEFAULT_MAX_SCHEDULES,
    LISTED,
    MAX_COUNT,
    FindRequest,
)
from operations.legs import (
    agreed_grid,
    check_legs,
    decode_slots,
    load_legs,
    slot_search,
    slot_search_span,
    unique_slots,
    widened,
)
from operations.model import Interval, Leg, Service, SlotOverlay
from operations.pools import Chooser, offered_windows, own_rules, pools_of
from operations.read_hints import ReadHints
from operations.rendering import Renderer, outcome_entry, searchset
from operations.rules import DAY, WEEK, day_of, period_span, week_of
from operations.series import Recurrence
from operations.store import (
    ConfigurationReader,
    FhirReader,
    Resource,
    SchedulingStore,
    SlotReader,
    Stores,
    one_after_another,
)
from operations.writes import slot_ids

SLOT_MARGIN = timedelta(hours=4)
"""How far beyond the requested range the Slot search reaches when it runs at the same time as
the configuration reads (before the buffers are known): buffers up to this long need no
second search."""

WHOLE_DAYS_MARGIN = timedelta(hours=26)
"""The margin under ``pool-order=balanced``: the local day of an instant, in any time zone,
begins less than 25 hours before it and ends less than 25 hours after (a day is at most 25
hours long), so every member's whole days are read in the first round trip, before the
Schedules and their zones are known."""

DST_SLACK = timedelta(hours=3)
"""How far a later occurrence of a series may lie from "first start + k periods" in real time:
it keeps the local wall-clock time, which DST changes move by an hour (at most two, anywhere)."""


@dataclass
class Availability:
    """What ``$find`` computed: the legs, the grid, and the proposed visit starts."""

    service: Service
    legs: list[Leg]
    duration: timedelta
    zone: ZoneInfo
    starts: list[datetime]
    chosen: list[tuple[Leg, ...]] = field(default_factory=list)
    """Per start, the Schedules its proposal names: one chosen member of every pool."""
    notices: list[tuple[str, str]] = field(default_factory=list)
    """(diagnostics, expression) for schedules that can offer nothing, for a known reason."""


def occurrence_ranges(window: Interval, recurrence: Recurrence | None) -> list[Interval]:
    """Where the occurrences of first starts in ``window`` can lie (merged): the window itself,
    and for a series the window moved by each period, with room for DST changes."""
    if recurrence is None:
        return [window]
    period = timedelta(days=1 if recurrence.unit == DAY else 7)
    shifted = [window] + [
        Interval(window.start + k * period - DST_SLACK, window.end + k * period + DST_SLACK)
        for k in range(1, recurrence.count)
    ]
    return merge(shifted)


def needed_spans(
    window: Interval, legs: Sequence[Leg], recurrence: Recurrence | None, *, balanced: bool = False
) -> list[Interval]:
    """Every span whose Slots the decision reads: the occurrence ranges widened by the buffers,
    and, on a Schedule with a booking limit, the whole local days or weeks in which a visit of
    the range can start (the last start is the range's end less the visit); whole days on every
    Schedule when pools choose ``balanced``: it counts each member's day."""
    ranges = occurrence_ranges(window, recurrence)
    spans = [slot_search_span(r, legs) for r in ranges]
    for leg in legs:
        params, zone = leg.params, leg.params.timezone
        for r in ranges:
            last = max(r.start, r.end - params.duration)
            daily = params.daily_limit is not None or balanced
            for unit, counted, period_of in (
                (DAY, daily, day_of),
                (WEEK, params.weekly_limit is not None, week_of),
            ):
                if counted:
                    spans.append(
                        Interval(
                            period_span(period_of(r.start, zone), unit, zone).start,
                            period_span(period_of(last, zone), unit, zone).end,
                        )
                    )
    return merge(spans)


def _notices(leg: Leg, request: Interval, now: datetime, duration: timedelta) -> list[tuple[str, str]]:
    """Why this Schedule can offer nothing in ``request``, when the caller should know."""
    schedule, params = leg.schedule, leg.params
    notices = []
    if not schedule.active:
        notices.append(f"Schedule/{schedule.id} is not active: it offers no time")
    elif schedule.planning_horizon is not None and (
        schedule.planning_horizon.end <= request.start or schedule.planning_horizon.start >= request.end
    ):
        notices.append(f"The requested range lies outside the planning horizon of Schedule/{schedule.id}")
    earliest = now + params.minimum_notice
    if params.minimum_notice and earliest > request.end - duration:
        notices.append(f"minimumNotice: Schedule/{schedule.id} offers nothing before {earliest.isoformat()}")
    if params.booking_window is not None and now + params.booking_window < request.start:
        notices.append(
            f"bookingWindow: Schedule/{schedule.id} offers nothing after "
            f"{(now + params.booking_window).isoformat()}"
        )
    return [(text, leg.expression) for text in notices]


def compute(
    service: Service,
    legs: Sequence[Leg],
    slots: Sequence[SlotOverlay],
    request: Interval,
    now: datetime,
    count: int,
    *,
    recurrence: Recurrence | None = None,
    ignore: Collection[str] = (),
    groups: Sequence[Sequence[str]] | None = None,
    pool_order: str = LISTED,
) -> Availability:
    """The pure heart of ``$find``: the free time of every leg under its own rules; for each
    grid start, a free member of every pool (``groups`` of Schedule ids, each "any one of";
    default: each leg alone, all of them at once), chosen as ``pool_order`` says (and for a
    series, only first starts whose every occurrence is free on the chosen members).
    Slots with ids in ``ignore`` count as not there."""
    duration, grid = agreed_grid(legs)
    if ignore:
        slots = [s for s in slots if s.id not in ignore]
    notices: list[tuple[str, str]] = []
    windows_of: dict[str, list[Interval]] = {}
    for leg in legs:
        notices.extend(_notices(leg, request, now, duration))
        windows: list[Interval] = []
        for span in occurrence_ranges(request, recurrence):
            windows.extend(
                schedule_windows(leg.schedule, service, leg.params, slots, widened(span, leg.params), now)
            )
        windows_of[leg.schedule.id] = own_rules(merge(windows), leg.params, now)
    groups = groups if groups is not None else [(leg.schedule.id,) for leg in legs]
    pools = pools_of(legs, groups, windows_of, slots, now, duration, pool_order)
    chooser = Chooser(pools, duration, now, recurrence)
    joint = offered_windows(pools, duration)
    starts = aligned_starts(joint, duration, grid, request, now, count, chooser.accept())
    chosen = [chooser.fixed()] * len(starts) if chooser.trivial else chooser.chosen
    # Times are written in the first Schedule's zone: what its staff read on the wall clock.
    return Availability(service, list(legs), duration, legs[0].params.timezone, starts, chosen, notices)


def find_availability(stores: Stores | SchedulingStore, request: FindRequest) -> Availability:
    """Read what ``$find`` needs and compute the proposals.

    The configuration is read with the caller's credentials (what the caller may not read, it
    cannot ask about); the Slots with the sidecar's own, so that time the caller cannot see
    is still known to be taken (SPEC §5.1). With the service named, the reads run ``together``
    -- one upstream round trip of latency, whatever the number of schedules -- and the Slot
    search covers the range (each occurrence's, for a series) plus :data:`SLOT_MARGIN`
    (:data:`WHOLE_DAYS_MARGIN` under ``pool-order=balanced``), and what the read hints say the
    Schedules needed last time (``operations/read_hints.py``). Only
    what that did not cover is searched afterwards: buffers longer than the margin, and the
    rest of the local days or weeks a booking limit counts (a second round trip then).
    Without the service, it is read after the Schedules that name it (two round trips; the
    Slot search goes with the first). ``ignore-appointment`` is read with the caller's
    credentials, in the first round trip.
    """
    configuration, slot_reader = _readers(stores)
    together = stores.together if isinstance(stores, Stores) else one_after_another
    hints = stores.hints if isinstance(stores, Stores) else None
    ids = list(request.schedule_ids)
    expressions = request.schedule_expressions
    window = Interval(request.start, request.end)
    balanced = request.pool_order == BALANCED
    hinted, every_one_hinted = _hinted_spans(hints, ids, request)
    # balanced counts every member's whole local days: the hints know where they lie, else any zone's.
    margin = WHOLE_DAYS_MARGIN if balanced and not every_one_hinted else SLOT_MARGIN
    searched = merge(
        [Interval(r.start - margin, r.end + margin) for r in occurrence_ranges(window, request.recurrence)]
        + hinted
    )
    slot_reads = [slot_search(slot_reader, ids, span) for span in searched]
    extra: list[Callable[[], Any]] = []
    if request.ignore_appointment is not None:
        reader = cast(FhirReader, stores.caller if isinstance(stores, Stores) else stores)
        ignored_id = request.ignore_appointment
        extra.append(lambda: reader.read("Appointment", ignored_id))
    if request.service_id is not None:
        service_id = request.service_id
        found, service_resource, *rest = together(
            lambda: configuration.read_schedules(ids),
            lambda: configuration.read_service(service_id),
            *extra,
            *slot_reads,
        )
        service, legs = check_legs(
            found[0],
            found[1],
            service_id,
            service_resource,
            ids,
            schedule_in_url=request.schedule_in_url,
            expressions=expressions,
        )
    else:
        legs_found, *rest = together(
            lambda: load_legs(
                configuration, ids, None, schedule_in_url=request.schedule_in_url, expressions=expressions
            ),
            *extra,
            *slot_reads,
        )
        service, legs = legs_found
    ignored: Resource | None = rest.pop(0) if extra else None
    slot_resources: list[Resource] = [slot for found_slots in rest for slot in found_slots]
    if request.ignore_appointment is not None and ignored is None:
        raise Unprocessable(
            f"Appointment/{request.ignore_appointment} does not exist",
            code="not-found",
            expression="Parameters.ignore-appointment",
        )
    if hints is not None:
        hints.remember(service.id, legs)
    missing = subtract(needed_spans(window, legs, request.recurrence, balanced=balanced), searched)
    if missing:
        schedule_ids = [leg.schedule.id for leg in legs]
        for more in together(*(slot_search(slot_reader, schedule_ids, span) for span in missing)):
            slot_resources.extend(more)
    return compute(
        service,
        legs,
        unique_slots(decode_slots(slot_resources)),
        window,
        request.now,
        request.count,
        recurrence=request.recurrence,
        ignore=frozenset(slot_ids(ignored)) if ignored is not None else frozenset(),
        groups=request.groups,
        pool_order=request.pool_order,
    )


def _hinted_spans(
    hints: ReadHints | None, ids: Sequence[str], request: FindRequest
) -> tuple[list[Interval], bool]:
    """The spans the Schedules needed last time (``operations/read_hints.py``), searched in the
    first round so a booking limit's (or ``balanced``'s) whole days and weeks need no second
    round trip; and whether every Schedule of the request was hinted."""
    if hints is None or request.service_id is None:
        return [], False
    legs = hints.recall(ids, request.service_id)
    if not legs:
        return [], False
    window = Interval(request.start, request.end)
    spans = needed_spans(window, legs, request.recurrence, balanced=request.pool_order == BALANCED)
    return spans, len(legs) == len(set(ids))


def _readers(stores: Stores | SchedulingStore) -> tuple[ConfigurationReader, SlotReader]:
    if isinstance(stores, Stores):
        return stores.caller, stores.service
    return stores, stores


def find_appointments(stores: Stores | SchedulingStore, request: FindRequest) -> dict[str, Any]:
    """``Appointment/$find``: a searchset Bundle of proposed Appointments."""
    found = find_availability(stores, request)
    render = Renderer(found.service, found.zone)
    resources = [
        render.appointment(legs, Interval(s, s + found.duration))
        for s, legs in zip(found.starts, found.chosen, strict=True)
    ]
    return searchset(resources, [outcome_entry(text, expr) for text, expr in found.notices])


def find_slots(stores: Stores | SchedulingStore, request: FindRequest) -> dict[str, Any]:
    """``Schedule/<id>/$find``: a searchset Bundle of synthetic free Slots."""
    found = find_availability(stores, request)
    schedule = found.legs[0].schedule
    render = Renderer(found.service, found.zone)
    resources = [render.free_slot(schedule, Interval(s, s + found.duration)) for s in found.starts]
    return searchset(resources, [outcome_entry(text, expr) for text, expr in found.notices])


__all__ = [
    "DEFAULT_COUNT",
    "DEFAULT_MAX_SCHEDULES",
    "MAX_COUNT",
    "SLOT_MARGIN",
    "Availability",
    "FindRequest",
    "Leg",
    "agreed_grid",
    "check_legs",
    "compute",
    "decode_slots",
    "find_appointments",
    "find_availability",
    "find_slots",
    "load_legs",
    "needed_spans",
    "slot_search_span",
    "widened",
]
