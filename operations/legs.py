"""What ``$find`` and every booking operation share about the Schedules of a request: reading
and checking them with the service (the same rules, the same errors), resolving each
Schedule's parameters into a :class:`Leg`, the grid they must agree on, and the spans whose
Slots matter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any

from operations.alignment import Grid
from operations.errors import InvalidRequest, NotFound, SchedulingError, Unprocessable
from operations.model import Interval, Leg, ResolvedParameters, Schedule, Service, SlotOverlay
from operations.parameters import parse_schedule, parse_service, parse_slot, resolve_parameters
from operations.store import ConfigurationReader, Resource, SlotReader, Together, one_after_another


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


def widened(request: Interval, params: ResolvedParameters) -> Interval:
    """The span whose availability matters: the request plus room for the buffers."""
    return Interval(request.start - params.buffer_before, request.end + params.buffer_after)


def slot_search_span(request: Interval, legs: Sequence[Leg]) -> Interval:
    """One Slot search covers every leg's widened span."""
    spans = [widened(request, leg.params) for leg in legs]
    return Interval(min(s.start for s in spans), max(s.end for s in spans))


def slot_search(
    reader: SlotReader, schedule_ids: Sequence[str], span: Interval
) -> Callable[[], list[Resource]]:
    """The Slot search of ``schedule_ids`` over ``span``, as a read to run with others."""
    return lambda: reader.search_slots(schedule_ids, span.start, span.end)


def unique_slots(slots: Iterable[SlotOverlay]) -> list[SlotOverlay]:
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
