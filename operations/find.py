"""Use case: ``$find`` -- propose appointment times (SPEC §3, §4).

Reads the Schedules with their actors, the HealthcareService and the Slots through the
store (three searches, whatever the number of schedules), computes free time and renders
a searchset Bundle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from operations.alignment import Grid, aligned_starts
from operations.availability import joint_windows, schedule_windows
from operations.errors import InvalidRequest, NotFound, SchedulingError, Unprocessable
from operations.fhir_values import parse_instant, reference_id
from operations.model import Interval, Leg, ResolvedParameters, Schedule, Service, SlotOverlay
from operations.parameters import parse_schedule, parse_service, parse_slot, resolve_parameters
from operations.rendering import Renderer, outcome_entry, searchset
from operations.store import (
    ConfigurationReader,
    Resource,
    SchedulingStore,
    SlotReader,
    Stores,
    Together,
    one_after_another,
)

DEFAULT_COUNT = 20
MAX_COUNT = 1000
DEFAULT_MAX_SCHEDULES = 20
"""Schedules one request may name (``MAX_SCHEDULES``): each adds locks, reads and work."""


@dataclass(frozen=True)
class FindRequest:
    """A validated ``$find`` request."""

    start: datetime
    end: datetime
    service_id: str | None
    schedule_ids: tuple[str, ...]
    count: int
    now: datetime
    schedule_in_url: bool = False
    """True for ``Schedule/<id>/$find``: an unknown schedule is then 404, not 422."""

    @classmethod
    def from_parameters(
        cls,
        params: Sequence[tuple[str, str]],
        *,
        now: datetime,
        max_range_days: int,
        schedule_id: str | None = None,
        max_schedules: int = DEFAULT_MAX_SCHEDULES,
    ) -> FindRequest:
        """Validate ``(name, value)`` pairs (query string or Parameters, values as strings).

        Raises ``InvalidRequest`` (400) with ``expression`` like ``Parameters.schedule[1]``.
        Unknown parameter names are ignored, as FHIR servers ignore unknown search parameters
        they are not asked to be strict about.
        """
        by_name: dict[str, list[str]] = {}
        for name, value in params:
            by_name.setdefault(name, []).append(value)

        start = _single_instant(by_name, "start")
        end = _single_instant(by_name, "end")
        if start >= end:
            raise InvalidRequest(
                "start must be before end",
                code="invalid",
                expression=["Parameters.start", "Parameters.end"],
            )
        if end - start > timedelta(days=max_range_days):
            raise InvalidRequest(
                f"The range from start to end is longer than {max_range_days} days",
                code="value",
                expression="Parameters.end",
            )

        service_id = None
        service_values = by_name.get("service-type-reference", [])
        if len(service_values) > 1:
            raise InvalidRequest(
                "service-type-reference may be given only once",
                code="value",
                expression="Parameters.service-type-reference[1]",
            )
        if service_values:
            service_id = _reference(
                service_values[0], "HealthcareService", "Parameters.service-type-reference"
            )
        elif schedule_id is None:
            raise InvalidRequest(
                "service-type-reference is required (HealthcareService/<id>)",
                code="required",
                expression="Parameters.service-type-reference",
            )

        if schedule_id is not None:
            schedule_ids: tuple[str, ...] = (schedule_id,)
        else:
            found: list[str] = []
            for index, value in enumerate(by_name.get("schedule", [])):
                for part in value.split(","):
                    found.append(_reference(part, "Schedule", f"Parameters.schedule[{index}]"))
            if not found:
                raise InvalidRequest(
                    "At least one schedule (Schedule/<id>) is required",
                    code="required",
                    expression="Parameters.schedule",
                )
            schedule_ids = tuple(dict.fromkeys(found))
            if len(schedule_ids) > max_schedules:
                raise InvalidRequest(
                    f"At most {max_schedules} schedules may be named in one request, "
                    f"this one names {len(schedule_ids)}",
                    code="value",
                    expression="Parameters.schedule",
                )

        count = DEFAULT_COUNT
        count_values = by_name.get("_count", [])
        if len(count_values) > 1:
            raise InvalidRequest(
                "_count may be given only once", code="value", expression="Parameters._count[1]"
            )
        if count_values:
            try:
                count = int(count_values[0].strip())
            except ValueError:
                raise InvalidRequest(
                    f"_count {count_values[0]!r} is not an integer",
                    code="value",
                    expression="Parameters._count",
                ) from None
            if not 1 <= count <= MAX_COUNT:
                raise InvalidRequest(
                    f"_count must be between 1 and {MAX_COUNT}",
                    code="value",
                    expression="Parameters._count",
                )

        return cls(
            start=start,
            end=end,
            service_id=service_id,
            schedule_ids=schedule_ids,
            count=count,
            now=now,
            schedule_in_url=schedule_id is not None,
        )


def _single_instant(by_name: dict[str, list[str]], name: str) -> datetime:
    values = by_name.get(name, [])
    if not values:
        raise InvalidRequest(f"{name} is required", code="required", expression=f"Parameters.{name}")
    if len(values) > 1:
        raise InvalidRequest(
            f"{name} may be given only once", code="value", expression=f"Parameters.{name}[1]"
        )
    try:
        return parse_instant(values[0])
    except ValueError as exc:
        raise InvalidRequest(f"{name}: {exc}", code="value", expression=f"Parameters.{name}") from None


def _reference(value: str, resource_type: str, expression: str) -> str:
    try:
        return reference_id(value, resource_type)
    except ValueError as exc:
        raise InvalidRequest(str(exc), code="value", expression=expression) from None


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


def load_legs(
    store: ConfigurationReader,
    schedule_ids: Sequence[str],
    service_id: str | None,
    *,
    schedule_in_url: bool = False,
    expressions: Sequence[str] | None = None,
    service_expression: str = "Parameters.service-type-reference",
    together: Together = one_after_another,
) -> tuple[Service, list[Leg]]:
    """Read and check the Schedules and the service; resolve each Schedule's parameters.

    Shared by ``$find`` and the booking operations: the same rules, the same errors.
    ``expressions`` says where each schedule was named (default ``Parameters.schedule[i]``),
    ``service_expression`` where the service was, so errors point at the caller's input. With
    the service known, its read and the Schedules' run ``together``.
    """
    if service_id is not None:
        found, service_resource = together(
            lambda: store.read_schedules(schedule_ids), lambda: store.read_service(service_id)
        )
        schedules, actors = found
        return check_legs(
            schedules,
            actors,
            service_id,
            service_resource,
            schedule_ids,
            schedule_in_url=schedule_in_url,
            expressions=expressions,
            service_expression=service_expression,
        )
    schedules, actors = store.read_schedules(schedule_ids)
    first = _parsed(schedules, actors, schedule_ids, schedule_in_url, expressions)[0][0]
    offered = first.offered_service_ids
    if len(offered) != 1:
        raise InvalidRequest(
            f"Schedule/{first.id} offers {len(offered)} services: service-type-reference is required",
            code="required",
            expression=service_expression,
        )
    return check_legs(
        schedules,
        actors,
        offered[0],
        store.read_service(offered[0]),
        schedule_ids,
        schedule_in_url=schedule_in_url,
        expressions=expressions,
        service_expression=service_expression,
    )


def _parsed(
    schedules: Sequence[Resource],
    actors: dict[str, Resource],
    schedule_ids: Sequence[str],
    schedule_in_url: bool,
    expressions: Sequence[str] | None,
) -> list[tuple[Schedule, str]]:
    by_id = {str(s.get("id")): s for s in schedules}
    parsed: list[tuple[Schedule, str]] = []
    for index, schedule_id in enumerate(schedule_ids):
        expression = expressions[index] if expressions else f"Parameters.schedule[{index}]"
        resource = by_id.get(schedule_id)
        if resource is None:
            if schedule_in_url:
                raise NotFound(f"Schedule/{schedule_id} does not exist", expression="Schedule")
            raise Unprocessable(
                f"Schedule/{schedule_id} does not exist", code="not-found", expression=expression
            )
        parsed.append((parse_schedule(resource, actors), expression))
    return parsed


def check_legs(
    schedules: Sequence[Resource],
    actors: dict[str, Resource],
    service_id: str,
    service_resource: Resource | None,
    schedule_ids: Sequence[str],
    *,
    schedule_in_url: bool = False,
    expressions: Sequence[str] | None = None,
    service_expression: str = "Parameters.service-type-reference",
) -> tuple[Service, list[Leg]]:
    """Check what was read (every Schedule exists and offers the active service) and resolve
    each Schedule's parameters."""
    parsed = _parsed(schedules, actors, schedule_ids, schedule_in_url, expressions)
    if service_resource is None:
        raise Unprocessable(
            f"HealthcareService/{service_id} does not exist",
            code="not-found",
            expression=service_expression,
        )
    service = parse_service(service_resource)
    if not service.active:
        raise Unprocessable(
            f"HealthcareService/{service_id} is not active",
            expression=service_expression,
        )
    legs = []
    for schedule, expression in parsed:
        if service.id not in schedule.offered_service_ids:
            raise Unprocessable(
                f"Schedule/{schedule.id} does not offer HealthcareService/{service.id}",
                expression=expression,
            )
        try:
            params = resolve_parameters(schedule, service)
        except SchedulingError as exc:
            exc.diagnostics = f"{exc.diagnostics} (for {expression})"
            raise
        legs.append(Leg(schedule, params, expression))
    return service, legs


def agreed_grid(legs: Sequence[Leg]) -> tuple[timedelta, Grid]:
    """The duration and alignment grid every Schedule of the request agrees on (SPEC §3)."""
    first = legs[0]
    zones = [(leg, leg.params.alignment_timezone) for leg in legs if leg.params.alignment_timezone]
    for leg in legs[1:]:
        for label, mine, theirs in (
            ("duration", leg.params.duration, first.params.duration),
            ("alignmentInterval", leg.params.alignment_interval, first.params.alignment_interval),
            ("alignmentOffset", leg.params.alignment_offset, first.params.alignment_offset),
        ):
            if mine != theirs:
                raise Unprocessable(
                    f"The schedules disagree on {label}: Schedule/{first.schedule.id} has "
                    f"{_minutes(theirs)}, Schedule/{leg.schedule.id} has {_minutes(mine)}",
                    expression=leg.expression,
                )
    for leg, zone in zones[1:]:
        if zone != zones[0][1]:
            raise Unprocessable(
                f"The schedules disagree on alignmentTimezone: {zones[0][1]} and {zone}",
                expression=leg.expression,
            )
    zone = zones[0][1] if zones else first.params.timezone
    assert zone is not None
    return first.params.duration, Grid(first.params.alignment_interval, first.params.alignment_offset, zone)


def _minutes(value: timedelta) -> str:
    return f"{value.total_seconds() / 60:g} min"


def decode_slots(slot_resources: Sequence[dict[str, Any]]) -> list[SlotOverlay]:
    """Stored Slots as overlays, dropping those that cannot matter."""
    return [s for s in (parse_slot(r) for r in slot_resources) if s is not None]


def compute(
    service: Service,
    legs: Sequence[Leg],
    slots: Sequence[SlotOverlay],
    request: Interval,
    now: datetime,
    count: int,
) -> Availability:
    """The pure heart of ``$find``: free time of every leg, intersected, on the grid."""
    duration, grid = agreed_grid(legs)
    notices: list[tuple[str, str]] = []
    per_schedule = []
    for leg in legs:
        schedule = leg.schedule
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
        span = widened(request, leg.params)
        per_schedule.append(schedule_windows(schedule, service, leg.params, slots, span, now))
    windows = joint_windows(per_schedule, duration)
    starts = aligned_starts(windows, duration, grid, request, now, count)
    # Times are written in the first Schedule's zone: what its staff read on the wall clock.
    return Availability(service, list(legs), duration, legs[0].params.timezone, starts, notices)


def widened(request: Interval, params: ResolvedParameters) -> Interval:
    """The span whose availability matters: the request plus room for the buffers."""
    return Interval(request.start - params.buffer_before, request.end + params.buffer_after)


def slot_search_span(request: Interval, legs: Sequence[Leg]) -> Interval:
    """One Slot search covers every leg's widened span."""
    spans = [widened(request, leg.params) for leg in legs]
    return Interval(min(s.start for s in spans), max(s.end for s in spans))


SLOT_MARGIN = timedelta(hours=4)
"""How far beyond the requested range the Slot search reaches when it runs at the same time as
the configuration reads (before the buffers are known): buffers up to this long need no
second search."""


def find_availability(stores: Stores | SchedulingStore, request: FindRequest) -> Availability:
    """Read what ``$find`` needs and compute the proposals.

    The configuration is read with the caller's credentials (what the caller may not read, it
    cannot ask about); the Slots with the sidecar's own, so that time the caller cannot see
    is still known to be taken (SPEC §5.1). With the service named, the three reads run
    ``together`` -- one upstream round trip of latency, whatever the number of schedules -- and
    the Slot search covers the range plus :data:`SLOT_MARGIN`; a schedule whose buffers reach
    further gets a second Slot search. Without it, the service is read after the Schedules
    that name it (two round trips; the Slot search goes with the first).
    """
    configuration, slot_reader = _readers(stores)
    together = stores.together if isinstance(stores, Stores) else one_after_another
    ids = list(request.schedule_ids)
    window = Interval(request.start, request.end)
    searched: Interval | None = None
    slot_resources: list[Resource] = []
    if request.service_id is not None:
        service_id = request.service_id
        searched = Interval(window.start - SLOT_MARGIN, window.end + SLOT_MARGIN)
        span_guess = searched
        found, service_resource, slot_resources = together(
            lambda: configuration.read_schedules(ids),
            lambda: configuration.read_service(service_id),
            lambda: slot_reader.search_slots(ids, span_guess.start, span_guess.end),
        )
        service, legs = check_legs(
            found[0], found[1], service_id, service_resource, ids, schedule_in_url=request.schedule_in_url
        )
    else:
        # The service follows from the Schedules: their read and the Slot search go together,
        # the service's read follows (two round trips of latency).
        searched = Interval(window.start - SLOT_MARGIN, window.end + SLOT_MARGIN)
        span_guess = searched
        legs_found, slot_resources = together(
            lambda: load_legs(configuration, ids, None, schedule_in_url=request.schedule_in_url),
            lambda: slot_reader.search_slots(ids, span_guess.start, span_guess.end),
        )
        service, legs = legs_found
    span = slot_search_span(window, legs)
    if searched is None or span.start < searched.start or span.end > searched.end:
        slot_resources = slot_reader.search_slots([leg.schedule.id for leg in legs], span.start, span.end)
    return compute(service, legs, decode_slots(slot_resources), window, request.now, request.count)


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
    "Availability",
    "FindRequest",
    "Leg",
    "compute",
    "find_appointments",
    "find_availability",
    "find_slots",
    "load_legs",
]
