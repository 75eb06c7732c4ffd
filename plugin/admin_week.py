"""What the calendar page (``GET /admin``) draws for some Schedules and some days.

Every read goes through the **administrator's** store (their own ``Authorization``, SPEC §5.1):
the page shows what their token may read, and an upstream refusal is the answer. The times are
computed by the same functions ``$find`` uses -- ``operations.find.compute`` for the free time
of each service (the starts ``$find`` would offer on that Schedule alone, as visits), and
``operations.availability.schedule_windows`` with nothing booked and no buffers for the opening
hours -- so the page cannot disagree with the operations about a rule.

Each Schedule gets its own days: local midnight to local midnight in the Schedule's time zone,
and every instant is written with its offset in that zone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from operations.availability import local_midnight, merge, schedule_windows, subtract
from operations.errors import InvalidRequest, SchedulingError, Unprocessable
from operations.fhir_values import (
    as_list,
    dig,
    format_instant,
    is_fhir_id,
    parse_stored_instant,
    reference_id,
)
from operations.find import SLOT_MARGIN, compute, decode_slots, needed_spans
from operations.model import Interval, Leg, Schedule, Service, SlotOverlay, SlotStatus
from operations.parameters import parse_schedule, parse_service, parse_slot, resolve_parameters
from operations.store import Resource
from operations.writes import hold_expiry
from plugin.upstream import FhirUpstream

MAX_DAYS = 14
MAX_SCHEDULES = 10
"""One page draws one calendar per Schedule; more than this is not a page anyone reads."""
MAX_STARTS = 10_000
"""Free starts computed per service and Schedule: a week on a 5-minute grid is 2016."""
VISIT_STATUSES = "booked,pending,arrived,checked-in,fulfilled"
"""Appointments drawn: those that take time (the operations' cancelled ones free it)."""
_BUSY_STATUSES = frozenset({SlotStatus.BUSY, SlotStatus.BUSY_TENTATIVE})


@dataclass(frozen=True)
class WeekRequest:
    """Which Schedules, from which local date, for how many days."""

    schedule_ids: tuple[str, ...]
    first_day: date
    days: int

    @classmethod
    def from_query(cls, args: Sequence[tuple[str, str]]) -> WeekRequest:
        """``schedule`` (repeated or comma-separated ids or ``Schedule/<id>``), ``start``
        (YYYY-MM-DD, a local date), ``days`` (1 to 14, default 7). 400 with an expression."""
        ids: list[str] = []
        starts: list[str] = []
        days_values: list[str] = []
        for name, value in args:
            if name == "schedule":
                for index, part in enumerate(value.split(",")):
                    ids.append(_schedule_id(part.strip(), f"schedule[{index}]"))
            elif name == "start":
                starts.append(value)
            elif name == "days":
                days_values.append(value)
        if not ids:
            raise InvalidRequest("name at least one schedule", code="required", expression="schedule")
        unique = tuple(dict.fromkeys(ids))
        if len(unique) > MAX_SCHEDULES:
            raise InvalidRequest(
                f"at most {MAX_SCHEDULES} schedules per page", code="value", expression="schedule"
            )
        if len(starts) != 1:
            raise InvalidRequest("start (YYYY-MM-DD) is required once", code="required", expression="start")
        try:
            first_day = date.fromisoformat(starts[0].strip())
        except ValueError:
            raise InvalidRequest(
                f"start {starts[0]!r} is not a date (YYYY-MM-DD)", code="value", expression="start"
            ) from None
        days = 7
        if days_values:
            try:
                days = int(days_values[-1])
            except ValueError:
                days = 0
            if not 1 <= days <= MAX_DAYS:
                raise InvalidRequest(
                    f"days must be a whole number from 1 to {MAX_DAYS}", code="value", expression="days"
                )
        return cls(unique, first_day, days)


def _schedule_id(value: str, expression: str) -> str:
    if is_fhir_id(value):
        return value
    try:
        return reference_id(value, "Schedule")
    except ValueError as exc:
        raise InvalidRequest(str(exc), code="value", expression=expression) from None


def read_week(
    store: FhirUpstream,
    request: WeekRequest,
    now: datetime,
    together: Callable[..., list[Any]],
) -> dict[str, Any]:
    """Read and compute the page's data: one entry per Schedule asked for, in order.

    Two round trips of latency: the Schedules with their actors, then the services, the Slots
    and the Appointments together (the Slot search reaches ``SLOT_MARGIN`` beyond the days, and a
    search for more follows only where ``$find`` would need more: buffers longer than that, or
    the whole local days or weeks a booking limit counts).
    """
    resources, actors = store.read_schedules(request.schedule_ids)
    by_id = {str(r.get("id")): r for r in resources}
    missing = [i for i in request.schedule_ids if i not in by_id]
    if missing:
        raise Unprocessable(
            f"Schedule/{missing[0]} does not exist (or your token may not read it)",
            code="not-found",
            expression="schedule",
        )
    parsed: dict[str, Schedule | SchedulingError] = {}
    for schedule_id in request.schedule_ids:
        try:
            parsed[schedule_id] = parse_schedule(by_id[schedule_id], actors)
        except SchedulingError as exc:
            parsed[schedule_id] = exc
    schedules = [s for s in parsed.values() if isinstance(s, Schedule)]
    service_ids = list(dict.fromkeys(i for s in schedules for i in s.offered_service_ids))
    actor_refs = sorted({s.actor.reference for s in schedules})
    # The widest span any Schedule's days can cover, whatever its zone (UTC-12 to UTC+14).
    earliest = datetime.combine(request.first_day, datetime.min.time(), ZoneInfo("Etc/GMT-14"))
    latest = datetime.combine(
        request.first_day + timedelta(days=request.days), datetime.min.time(), ZoneInfo("Etc/GMT+12")
    )
    searched = Interval(earliest - SLOT_MARGIN, latest + SLOT_MARGIN)
    service_resources, slot_resources, appointments = together(
        lambda: _search_ids(store, "HealthcareService", service_ids),
        lambda: store.search_slots(list(by_id), searched.start, searched.end),
        lambda: _appointments(store, actor_refs, earliest - timedelta(days=1), latest),
    )
    services = {str(r.get("id")): r for r in service_resources}
    legs = {s.id: _legs(s, services) for s in schedules}
    # What $find would read beyond the margin: longer buffers, the whole local days or weeks
    # a booking limit counts.
    needed = merge(
        span
        for schedule in schedules
        for leg, _service in legs[schedule.id]
        if isinstance(leg, Leg)
        for span in needed_spans(_days(request, leg.params.timezone), [leg], None)
    )
    for span in subtract(needed, [searched]):
        slot_resources = [*slot_resources, *store.search_slots(list(by_id), span.start, span.end)]
    slot_resources = list({str(s.get("id")): s for s in slot_resources}.values())
    overlays = decode_slots(slot_resources)
    out = []
    for schedule_id in request.schedule_ids:
        schedule = parsed[schedule_id]
        if isinstance(schedule, SchedulingError):
            out.append({"id": schedule_id, "error": schedule.diagnostics})
            continue
        days = _days(request, _zone(schedule, legs[schedule_id]))
        out.append(
            _schedule_view(
                schedule, actors, legs[schedule_id], overlays, slot_resources, appointments, days, now
            )
        )
    return {"now": format_instant(now), "start": request.first_day.isoformat(), "schedules": out}


def _search_ids(store: FhirUpstream, resource_type: str, ids: Sequence[str]) -> list[Resource]:
    return store.search(resource_type, [("_id", ",".join(ids))]) if ids else []


def _appointments(
    store: FhirUpstream, actors: Sequence[str], start: datetime, end: datetime
) -> list[Resource]:
    if not actors:
        return []
    return store.search(
        "Appointment",
        [
            ("actor", ",".join(actors)),
            ("date", "ge" + format_instant(start)),
            ("date", "lt" + format_instant(end)),
            ("status", VISIT_STATUSES),
        ],
    )


def _legs(schedule: Schedule, services: dict[str, Resource]) -> list[tuple[Leg | str, Service | str]]:
    """Per offered service: the leg ``$find`` would use, or why there is none (a message)."""
    found: list[tuple[Leg | str, Service | str]] = []
    for service_id in schedule.offered_service_ids:
        resource = services.get(service_id)
        if resource is None:
            found.append((f"HealthcareService/{service_id} does not exist", service_id))
            continue
        try:
            service = parse_service(resource)
            found.append((Leg(schedule, resolve_parameters(schedule, service), "schedule"), service))
        except SchedulingError as exc:
            found.append((exc.diagnostics, service_id))
    return found


def _zone(schedule: Schedule, legs: Sequence[tuple[Leg | str, Service | str]]) -> ZoneInfo:
    """The Schedule's zone: its actor's, else the first service's parameters', else UTC."""
    if schedule.actor.timezone is not None:
        return schedule.actor.timezone
    for leg, _service in legs:
        if isinstance(leg, Leg):
            return leg.params.timezone
    return ZoneInfo("UTC")


def _days(request: WeekRequest, zone: ZoneInfo) -> Interval:
    last = request.first_day + timedelta(days=request.days)
    return Interval(local_midnight(request.first_day, zone), local_midnight(last, zone))


def _schedule_view(
    schedule: Schedule,
    actors: dict[str, Resource],
    legs: Sequence[tuple[Leg | str, Service | str]],
    overlays: Sequence[SlotOverlay],
    slot_resources: Sequence[Resource],
    appointments: Sequence[Resource],
    days: Interval,
    now: datetime,
) -> dict[str, Any]:
    zone = _zone(schedule, legs)

    def span(interval: Interval) -> dict[str, str]:
        return {"start": format_instant(interval.start, zone), "end": format_instant(interval.end, zone)}

    services: list[dict[str, Any]] = []
    notices: list[str] = []
    for leg, service in legs:
        if not isinstance(leg, Leg) or not isinstance(service, Service):
            services.append({"id": str(service), "name": str(service), "error": str(leg)})
            continue
        nothing_booked = dataclasses.replace(
            leg.params, buffer_before=timedelta(0), buffer_after=timedelta(0), duration=timedelta(0)
        )
        opening = schedule_windows(schedule, service, nothing_booked, (), days, now)
        found = compute(service, [leg], overlays, days, now, MAX_STARTS)
        notices += [text for text, _expression in found.notices if text not in notices]
        free = merge(Interval(s, s + found.duration) for s in found.starts)
        services.append(
            {
                "id": service.id,
                "name": service.name or service.id,
                "duration": found.duration.total_seconds() / 60,
                "bufferBefore": leg.params.buffer_before.total_seconds() / 60,
                "bufferAfter": leg.params.buffer_after.total_seconds() / 60,
                "alignment": leg.params.alignment_interval.total_seconds() / 60,
                "opening": [span(i) for i in _clip(opening, days)],
                "free": [span(i) for i in free],
                "freeStarts": len(found.starts),
            }
        )
    mine = [a for a in appointments if _takes_part(a, schedule, slot_resources)]
    events = _appointment_events(mine, zone, now) + _slot_events(schedule, slot_resources, mine, zone, now)
    events = [e for e in events if _overlaps(e, days)]
    events.sort(key=lambda e: (datetime.fromisoformat(e["start"]), e["kind"]))
    offsets = sorted({format_instant(t, zone)[-6:] for t in (days.start, days.end - timedelta(seconds=1))})
    return {
        "id": schedule.id,
        "active": schedule.active,
        "actor": schedule.actor.reference,
        "display": actor_display(actors.get(schedule.actor.reference)) or schedule.actor.display,
        "timeZone": zone.key,
        "offsets": offsets,
        "start": format_instant(days.start, zone),
        "end": format_instant(days.end, zone),
        "services": services,
        "events": events,
        "notices": notices,
    }


def _clip(intervals: Sequence[Interval], days: Interval) -> list[Interval]:
    clipped = (Interval(max(i.start, days.start), min(i.end, days.end)) for i in intervals)
    return [i for i in clipped if i.start < i.end]


def _overlaps(event: dict[str, Any], days: Interval) -> bool:
    start, end = datetime.fromisoformat(event["start"]), datetime.fromisoformat(event["end"])
    return start < end and start < days.end and end > days.start


def _takes_part(appointment: Resource, schedule: Schedule, slots: Sequence[Resource]) -> bool:
    """An Appointment belongs on a Schedule when the Schedule's actor takes part, or when it
    references one of the Schedule's Slots."""
    actors = {dig(p, "actor", "reference") for p in as_list(appointment.get("participant"))}
    if schedule.actor.reference in actors:
        return True
    own = {
        f"Slot/{s.get('id')}" for s in slots if dig(s, "schedule", "reference") == f"Schedule/{schedule.id}"
    }
    return any(dig(ref, "reference") in own for ref in as_list(appointment.get("slot")))


def _appointment_events(
    appointments: Sequence[Resource], zone: ZoneInfo, now: datetime
) -> list[dict[str, Any]]:
    events = []
    for appointment in appointments:
        times = _times(appointment)
        if times is None:
            continue
        expires = hold_expiry(appointment) if appointment.get("status") == "pending" else None
        if expires is not None and expires <= now:
            continue  # a lapsed hold blocks nothing; the sweep removes it
        patients = [
            dig(p, "actor", "display") or dig(p, "actor", "reference")
            for p in as_list(appointment.get("participant"))
            if str(dig(p, "actor", "reference") or "").startswith(("Patient/", "RelatedPerson/"))
        ]
        service = next(
            (concept_text(c) for c in as_list(appointment.get("serviceType")) if isinstance(c, dict)),
            None,
        )
        event = {
            "kind": "hold" if expires is not None else "visit",
            "appointment": f"Appointment/{appointment.get('id')}",
            "status": appointment.get("status"),
            "service": service if isinstance(service, str) else None,
            "patients": [p for p in patients if isinstance(p, str)],
            "start": format_instant(times.start, zone),
            "end": format_instant(times.end, zone),
        }
        if expires is not None:
            event["expires"] = format_instant(expires, zone)
        events.append(event)
    return events


def _times(resource: Resource) -> Interval | None:
    try:
        return Interval(
            parse_stored_instant(resource.get("start")), parse_stored_instant(resource.get("end"))
        )
    except ValueError:
        return None


def _slot_events(
    schedule: Schedule,
    slots: Sequence[Resource],
    appointments: Sequence[Resource],
    zone: ZoneInfo,
    now: datetime,
) -> list[dict[str, Any]]:
    """Blocks, buffers and one-time availability; visit Slots only when no Appointment drawn
    here references them (time taken around the operations)."""
    referenced = {dig(ref, "reference") for a in appointments for ref in as_list(a.get("slot"))}
    events = []
    for resource in slots:
        overlay = parse_slot(resource)
        if overlay is None or overlay.schedule_id != schedule.id:
            continue
        if overlay.hold_expires is not None and overlay.hold_expires <= now:
            continue
        if overlay.status == SlotStatus.FREE:
            kind = "availability"
        elif overlay.status == SlotStatus.BUSY_UNAVAILABLE:
            kind = "buffer" if overlay.is_buffer else "block"
        elif overlay.status in _BUSY_STATUSES and f"Slot/{overlay.id}" not in referenced:
            kind = "busy"
        else:
            continue
        services = [
            concept_text(c, codes=True) for c in as_list(resource.get("serviceType")) if isinstance(c, dict)
        ]
        events.append(
            {
                "kind": kind,
                "slot": f"Slot/{overlay.id}",
                "version": dig(resource, "meta", "versionId"),
                "comment": resource.get("comment") if isinstance(resource.get("comment"), str) else None,
                "services": [s for s in services if isinstance(s, str)],
                "start": format_instant(overlay.interval.start, zone),
                "end": format_instant(overlay.interval.end, zone),
            }
        )
    return events


def concept_text(concept: Resource, *, codes: bool = False) -> str | None:
    """What staff call a CodeableConcept: its text, else a coding's display (else its code)."""
    if isinstance(concept.get("text"), str):
        return str(concept["text"])
    codings = [c for c in as_list(concept.get("coding")) if isinstance(c, dict)]
    for key in ("display", "code") if codes else ("display",):
        for coding in codings:
            if isinstance(coding.get(key), str):
                return str(coding[key])
    return None


def actor_display(resource: Resource | None) -> str | None:
    """A person's or a place's name as staff write it ("Dr. Alice Smith", "Exam room 1")."""
    if not resource:
        return None
    name = resource.get("name")
    if isinstance(name, str):
        return name
    for human in as_list(name):
        if not isinstance(human, dict):
            continue
        if isinstance(human.get("text"), str):
            return str(human["text"])
        parts = [*as_list(human.get("prefix")), *as_list(human.get("given")), human.get("family")]
        words = [p for p in parts if isinstance(p, str) and p]
        if words:
            return " ".join(words)
    return None
