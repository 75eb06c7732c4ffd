"""Use case: ``$find`` -- propose appointment times (SPEC §3, §4, §7.1, §7.3, §7.4).

Reads the Schedules with their actors, the HealthcareService and the Slots through the store
(three searches, whatever the number of schedules), computes free time and renders a searchset
Bundle. Booking rules (``operations/rules.py``) and a series' later occurrences
(``operations/series.py``) only remove starts; ``ignore-appointment`` makes one Appointment's
own time count as free (the search for a new time of that Appointment).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

from operations.alignment import aligned_starts
from operations.availability import joint_windows, merge, schedule_windows, subtract
from operations.errors import Unprocessable
from operations.find_request import DEFAULT_COUNT, DEFAULT_MAX_SCHEDULES, MAX_COUNT, FindRequest
from operations.legs import (
    agreed_grid,
    check_legs,
    decode_slots,
    load_legs,
    slot_search_span,
    widened,
)
from operations.model import Interval, Leg, Service, SlotOverlay
from operations.read_hints import ReadHints
from operations.rendering import Renderer, outcome_entry, searchset
from operations.rules import (
    DAY,
    WEEK,
    broken_rule,
    day_of,
    full_periods,
    has_rules,
    period_span,
    visits_by_schedule,
    week_of,
)
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


def needed_spans(window: Interval, legs: Sequence[Leg], recurrence: Recurrence | None) -> list[Interval]:
    """Every span whose Slots the decision reads: the occurrence ranges widened by the buffers,
    and, on a Schedule with a booking limit, the whole local days or weeks in which a visit of
    the range can start (the last start is the range's end less the visit)."""
    ranges = occurrence_ranges(window, recurrence)
    spans = [slot_search_span(r, legs) for r in ranges]
    for leg in legs:
        params, zone = leg.params, leg.params.timezone
        for r in ranges:
            last = max(r.start, r.end - params.duration)
            for unit, limit, period_of in (
                (DAY, params.daily_limit, day_of),
                (WEEK, params.weekly_limit, week_of),
            ):
                if limit is not None:
                    spans.append(
                        Interval(
                            period_span(period_of(r.start, zone), unit, zone).start,
                            period_span(period_of(last, zone), unit, zone).end,
                        )
                    )
    return merge(spans)


def _fits(windows: Sequence[Interval], starts: Sequence[datetime], visit: Interval) -> bool:
    """Whether ``visit`` lies inside one of the sorted, disjoint ``windows`` (``starts``: theirs)."""
    index = bisect.bisect_right(starts, visit.start) - 1
    return index >= 0 and windows[index].end >= visit.end


def _acceptance(
    legs: Sequence[Leg],
    windows: Sequence[Interval],
    duration: timedelta,
    slots: Sequence[SlotOverlay],
    now: datetime,
    recurrence: Recurrence | None,
) -> Callable[[datetime], bool] | None:
    """What a first start must pass beyond fitting in the windows: the booking limits of every
    Schedule, and for a series every later occurrence free and within every rule. ``None``
    when there is nothing to check (notice and window are applied by clipping the range).

    Without a series a start breaks a limit exactly when it falls in a local day or week that is
    already full, so those periods are found once and a start costs one bisection."""
    limited = [leg for leg in legs if leg.params.has_limits]
    if not limited and recurrence is None:
        return None
    counts = visits_by_schedule(slots, [(leg.schedule.id, leg.params.timezone) for leg in limited], now)
    if recurrence is None:
        return outside(full_periods([(leg.params, counts[leg.schedule.id]) for leg in limited]))
    ruled = [leg for leg in legs if has_rules(leg.params)]
    window_starts = [w.start for w in windows]
    zone = legs[0].params.timezone

    def accept(start: datetime) -> bool:
        starts = recurrence.starts(start, zone)
        for later in starts[1:]:
            if not _fits(windows, window_starts, Interval(later, later + duration)):
                return False
        return all(broken_rule(leg.params, starts, now, counts.get(leg.schedule.id)) is None for leg in ruled)

    return accept


def outside(blocked: Sequence[Interval]) -> Callable[[datetime], bool] | None:
    """A test that a start lies in none of the sorted, disjoint ``blocked`` spans (``None`` when
    there are none)."""
    if not blocked:
        return None
    starts = [b.start for b in blocked]

    def accept(start: datetime) -> bool:
        index = bisect.bisect_right(starts, start) - 1
        return index < 0 or blocked[index].end <= start

    return accept


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
) -> Availability:
    """The pure heart of ``$find``: free time of every leg, intersected, on the grid, within the
    booking rules (and for a series, only first starts whose every occurrence is free).
    Slots with ids in ``ignore`` count as not there."""
    duration, grid = agreed_grid(legs)
    if ignore:
        slots = [s for s in slots if s.id not in ignore]
    notices: list[tuple[str, str]] = []
    per_schedule = []
    not_before = now
    latest: datetime | None = None
    for leg in legs:
        schedule, params = leg.schedule, leg.params
        if not schedule.active:
            notices.append((f"Schedule/{schedule.id} is not active: it offers no time", leg.expression))
        elif schedule.planning_horizon is not None and (
            schedule.planning_horizon.end <= request.start or schedule.planning_horizon.start >= request.end
        ):
            notices.append(
                (
                    f"The requested range lies outside the planning horizon of Schedule/{schedule.id}",
                    leg.expression,
                )
            )
        earliest = now + params.minimum_notice
        if params.minimum_notice and earliest > request.end - duration:
            notices.append(
                (
                    f"minimumNotice: Schedule/{schedule.id} offers nothing before {earliest.isoformat()}",
                    leg.expression,
                )
            )
        if params.booking_window is not None and now + params.booking_window < request.start:
            notices.append(
                (
                    f"bookingWindow: Schedule/{schedule.id} offers nothing after "
                    f"{(now + params.booking_window).isoformat()}",
                    leg.expression,
                )
            )
        not_before = max(not_before, earliest)
        if params.booking_window is not None:
            limit = now + params.booking_window
            latest = limit if latest is None else min(latest, limit)
        spans = [widened(r, params) for r in occurrence_ranges(request, recurrence)]
        windows: list[Interval] = []
        for span in spans:
            windows.extend(schedule_windows(schedule, service, params, slots, span, now))
        per_schedule.append(merge(windows))
    windows = joint_windows(per_schedule, duration)
    first = request if latest is None else Interval(request.start, min(request.end, latest + duration))
    accept = _acceptance(legs, windows, duration, slots, now, recurrence)
    starts = aligned_starts(windows, duration, grid, first, not_before, count, accept)
    # Times are written in the first Schedule's zone: what its staff read on the wall clock.
    return Availability(service, list(legs), duration, legs[0].params.timezone, starts, notices)


def find_availability(stores: Stores | SchedulingStore, request: FindRequest) -> Availability:
    """Read what ``$find`` needs and compute the proposals.

    The configuration is read with the caller's credentials (what the caller may not read, it
    cannot ask about); the Slots with the sidecar's own, so that time the caller cannot see
    is still known to be taken (SPEC §5.1). With the service named, the reads run ``together``
    -- one upstream round trip of latency, whatever the number of schedules -- and the Slot
    search covers the range (each occurrence's, for a series) plus :data:`SLOT_MARGIN`. Only
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
    window = Interval(request.start, request.end)
    searched = merge(
        [
            Interval(r.start - SLOT_MARGIN, r.end + SLOT_MARGIN)
            for r in occurrence_ranges(window, request.recurrence)
        ]
        + _hinted_spans(hints, ids, request)
    )
    slot_reads = [_slot_search(slot_reader, ids, span) for span in searched]
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
            found[0], found[1], service_id, service_resource, ids, schedule_in_url=request.schedule_in_url
        )
    else:
        legs_found, *rest = together(
            lambda: load_legs(configuration, ids, None, schedule_in_url=request.schedule_in_url),
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
    missing = subtract(needed_spans(window, legs, request.recurrence), searched)
    if missing:
        schedule_ids = [leg.schedule.id for leg in legs]
        for more in together(*(_slot_search(slot_reader, schedule_ids, span) for span in missing)):
            slot_resources.extend(more)
    return compute(
        service,
        legs,
        _unique(decode_slots(slot_resources)),
        window,
        request.now,
        request.count,
        recurrence=request.recurrence,
        ignore=frozenset(slot_ids(ignored)) if ignored is not None else frozenset(),
    )


def _hinted_spans(hints: ReadHints | None, ids: Sequence[str], request: FindRequest) -> list[Interval]:
    """The spans the Schedules needed last time (``operations/read_hints.py``): searched in the
    first round, so a booking limit's whole days and weeks need no second round trip."""
    if hints is None or request.service_id is None:
        return []
    legs = hints.recall(ids, request.service_id)
    if not legs:
        return []
    return needed_spans(Interval(request.start, request.end), legs, request.recurrence)


def _slot_search(reader: SlotReader, ids: Sequence[str], span: Interval) -> Callable[[], list[Resource]]:
    return lambda: reader.search_slots(ids, span.start, span.end)


def _unique(slots: list[SlotOverlay]) -> list[SlotOverlay]:
    """Slots found by two searches whose spans touch count once."""
    seen: set[str] = set()
    unique = []
    for slot in slots:
        if slot.id is not None:
            if slot.id in seen:
                continue
            seen.add(slot.id)
        unique.append(slot)
    return unique


def _readers(stores: Stores | SchedulingStore) -> tuple[ConfigurationReader, SlotReader]:
    if isinstance(stores, Stores):
        return stores.caller, stores.service
    return stores, stores


def find_appointments(stores: Stores | SchedulingStore, request: FindRequest) -> dict[str, Any]:
    """``Appointment/$find``: a searchset Bundle of proposed Appointments."""
    found = find_availability(stores, request)
    render = Renderer(found.service, found.zone)
    resources = [render.appointment(found.legs, Interval(s, s + found.duration)) for s in found.starts]
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
