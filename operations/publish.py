"""Use case: ``$bulk-publish`` -- the free time of the Schedules an administrator tagged for
publishing, as SMART Scheduling Links' Locations, Schedules and free Slots (SPEC §7.5).

Every free start of the next ``days`` days, one Slot per start per service the Schedule offers,
computed by ``$find``'s engine (``operations.find.compute``), so every rule of SPEC §3 and §7.1
applies: hours, Slots, buffers, capacity, planning horizon, minimumNotice, bookingWindow and
bookingLimit. Reads, whatever the number of Schedules (each round's reads go out together):

1. the tagged, active Schedules with their actors and the actors' Locations
   (``_include`` / ``_include:iterate``), every page;
2. the HealthcareServices they offer, the PractitionerRoles of Practitioner actors (with their
   Locations), and the Slots of the range plus a margin for buffers;
3. only when a booking limit or a long buffer reaches beyond what round 2 searched: those Slots.

SMART's Schedule has one actor, a Location. Ours may be a Practitioner, a PractitionerRole, a
Device, a HealthcareService or a Location (SPEC §2.3); the published actor is the Location where
the visits take place: the actor itself, the ``location`` of a PractitionerRole, Device or
HealthcareService, or for a Practitioner the Location of its active PractitionerRoles. It must be
exactly one Location, with the elements the specification requires. A Schedule that cannot be
published is left out, and an OperationOutcome in the publication says why (its ``problems``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from operations.availability import merge, slot_applies, spare_capacity, subtract
from operations.booking_link import BookingLinkTemplate
from operations.errors import SchedulingError
from operations.find import SLOT_MARGIN, compute, decode_slots, needed_spans
from operations.legs import slot_search, unique_slots
from operations.model import FANONI_CODE_SYSTEM, Interval, Leg, Schedule, Service, SlotOverlay
from operations.parameters import parse_schedule, parse_service, resolve_parameters
from operations.publish_resources import (
    SlotRenderer,
    location_problems,
    published_location,
    published_schedule,
)
from operations.store import FhirStore, Resource, Together, one_after_another

PUBLISH_TAG = {
    "system": FANONI_CODE_SYSTEM,
    "code": "publish",
    "display": "Published as SMART Scheduling Links",
}
"""The ``meta.tag`` an administrator puts on a Schedule to publish its free time."""

SCHEDULE_SEARCH = [
    ("_tag", f"{FANONI_CODE_SYSTEM}|publish"),
    # Not ``active=true``: a Schedule without ``active`` is active (SPEC §2.3, as ``$find`` reads it).
    ("active:not", "false"),
    ("_include", "Schedule:actor"),
    ("_include:iterate", "PractitionerRole:location"),
    ("_include:iterate", "Device:location"),
    ("_include:iterate", "HealthcareService:location"),
]

IDS_PER_SEARCH = 50
"""Ids named by one search (``_id``, ``schedule``, ``practitioner`` lists): keeps each URL well
under the 8 KB servers accept, whatever the number of Schedules; the searches of one round go
out together."""


@dataclass(frozen=True)
class PublishRequest:
    """What one publication is computed for."""

    now: datetime
    days: int
    """Slots start within ``[now, now + days)``."""
    link: BookingLinkTemplate
    identifier_system: str
    """Identifier system for a published Location without identifiers of its own."""
    phone: str | None = None
    """The booking phone every Slot carries, if any."""


@dataclass
class Publication:
    """The published data set: the three NDJSON files' resources, and why anything was left out."""

    transaction_time: datetime
    locations: list[Resource] = field(default_factory=list)
    schedules: list[Resource] = field(default_factory=list)
    slots: list[Resource] = field(default_factory=list)
    problems: list[Resource] = field(default_factory=list)
    """OperationOutcomes, one per Schedule (or service of one) left out."""


@dataclass
class _Tagged:
    """A tagged Schedule on its way to publication."""

    schedule: Schedule
    location: Resource | None = None
    offers: list[tuple[Service, Leg]] = field(default_factory=list)


def publish(
    store: FhirStore, request: PublishRequest, *, together: Together = one_after_another
) -> Publication:
    """Read the tagged Schedules and what they need, compute their free starts, render them."""
    window = Interval(request.now, request.now + timedelta(days=request.days))
    result = Publication(request.now)
    matches, included = store.search_including("Schedule", SCHEDULE_SEARCH)
    found = {_key(r): r for r in included}
    tagged: list[_Tagged] = []
    for resource in sorted(matches, key=lambda r: str(r.get("id"))):
        try:
            tagged.append(_Tagged(parse_schedule(resource, found)))
        except SchedulingError as exc:
            result.problems.append(_left_out(f"Schedule/{resource.get('id')}", exc.diagnostics, "invalid"))

    searched = Interval(window.start - SLOT_MARGIN, window.end + SLOT_MARGIN)
    services, roles, slot_resources = _second_round(store, together, tagged, searched, found)
    parsed_services = _parse_services(services)
    for item in list(tagged):
        problem = _place(item, found, roles)
        problems = [problem] if problem is not None else _offers(item, parsed_services)
        result.problems.extend(problems)
        if not item.offers:
            tagged.remove(item)

    slot_resources += _more_slots(store, together, tagged, window, searched)
    slots_by_schedule: dict[str, list[SlotOverlay]] = {}
    for slot in unique_slots(decode_slots(slot_resources)):
        slots_by_schedule.setdefault(slot.schedule_id, []).append(slot)

    published_slots: list[tuple[str, datetime, str, Resource]] = []
    locations: dict[str, Resource] = {}
    for item in tagged:
        assert item.location is not None
        schedule, stored = item.schedule, slots_by_schedule.get(item.schedule.id, [])
        for service, leg in item.offers:
            published_slots.extend(_free_slots(schedule, service, leg, stored, window, request))
        locations[item.location["id"]] = published_location(item.location, request.identifier_system)
        result.schedules.append(
            published_schedule(schedule.id, item.location["id"], [s for s, _ in item.offers])
        )
    result.locations = [locations[k] for k in sorted(locations)]
    result.slots = [slot for *_, slot in sorted(published_slots, key=lambda s: s[:3])]
    return result


def _second_round(
    store: FhirStore,
    together: Together,
    tagged: Sequence[_Tagged],
    searched: Interval,
    found: dict[str, Resource],
) -> tuple[dict[str, Resource], list[Resource], list[Resource]]:
    """Round 2, all together: the services offered, the PractitionerRoles of Practitioner actors
    (their Locations go into ``found``), and the Slots of ``searched``."""
    service_chunks = _chunks(sorted({s for t in tagged for s in t.schedule.offered_service_ids}))
    role_chunks = _chunks(
        sorted({t.schedule.actor.reference for t in tagged if _kind(t.schedule) == "Practitioner"})
    )
    answers = together(
        *(_search(store, "HealthcareService", [("_id", ",".join(ids))]) for ids in service_chunks),
        *(_roles(store, refs) for refs in role_chunks),
        *(slot_search(store, ids, searched) for ids in _chunks([t.schedule.id for t in tagged])),
    )
    services = {
        str(r.get("id")): r for found_services in answers[: len(service_chunks)] for r in found_services
    }
    roles: list[Resource] = []
    for role_matches, role_included in answers[len(service_chunks) : len(service_chunks) + len(role_chunks)]:
        roles.extend(role_matches)
        found.update((_key(r), r) for r in role_included)
    slots = [s for found_slots in answers[len(service_chunks) + len(role_chunks) :] for s in found_slots]
    return services, roles, slots


def _free_slots(
    schedule: Schedule,
    service: Service,
    leg: Leg,
    stored: Sequence[SlotOverlay],
    window: Interval,
    request: PublishRequest,
) -> list[tuple[str, datetime, str, Resource]]:
    """The free Slots of one Schedule and service: ``$find``'s starts, unlimited in number."""
    params = leg.params
    found = compute(service, [leg], stored, window, request.now, sys.maxsize)
    render = SlotRenderer(schedule.id, service, params.timezone, request.link, request.phone)
    applicable = [s for s in stored if slot_applies(s, service)] if params.slot_capacity > 1 else []
    slots = []
    for start in found.starts:
        visit = Interval(start, start + found.duration)
        capacity = None
        if params.slot_capacity > 1:
            footprint = Interval(visit.start - params.buffer_before, visit.end + params.buffer_after)
            capacity = spare_capacity(applicable, params.slot_capacity, request.now, footprint)
        slots.append((schedule.id, start, service.id, render.slot(visit, capacity)))
    return slots


def _place(item: _Tagged, found: dict[str, Resource], roles: Sequence[Resource]) -> Resource | None:
    """Find the Location a tagged Schedule is published at; the problem if there is none."""
    actor = item.schedule.actor.reference
    what = f"Schedule/{item.schedule.id}"
    kind = _kind(item.schedule)
    if kind == "Location":
        references = [actor]
    elif kind == "Practitioner":
        references = [
            ref
            for role in roles
            if (role.get("practitioner") or {}).get("reference") == actor
            for ref in _references(role.get("location"))
        ]
    elif actor in found:
        references = _references(found[actor].get("location"))
    else:
        return _left_out(what, f"its actor {actor} does not exist", "not-found")
    distinct = list(dict.fromkeys(references))
    if not distinct:
        via = "its active PractitionerRoles name" if kind == "Practitioner" else "it names"
        return _left_out(what, f"its actor {actor} has no Location ({via} none)", "business-rule")
    if len(distinct) > 1:
        return _left_out(
            what,
            f"its actor {actor} has several Locations ({', '.join(distinct)}): publish a Schedule whose "
            "actor is one Location, or a PractitionerRole with one location",
            "business-rule",
        )
    location = found.get(distinct[0])
    if location is None:
        return _left_out(what, f"{distinct[0]} does not exist", "not-found")
    lacking = location_problems(location)
    if lacking:
        return _left_out(
            what,
            f"{distinct[0]} lacks what SMART Scheduling Links requires: {', '.join(lacking)}",
            "required",
        )
    item.location = location
    return None


def _offers(item: _Tagged, services: dict[str, Service | SchedulingError]) -> list[Resource]:
    """Resolve the parameters of each active service the Schedule offers (inactive services are
    simply not published); the problems of those that cannot be, and when none is left, that."""
    schedule = item.schedule
    what = f"Schedule/{schedule.id}"
    problems = []
    for service_id in schedule.offered_service_ids:
        service = services.get(service_id)
        offer = f"{what} with HealthcareService/{service_id}"
        if service is None:
            problems.append(_left_out(offer, f"HealthcareService/{service_id} does not exist", "not-found"))
        elif isinstance(service, SchedulingError):
            problems.append(_left_out(offer, service.diagnostics, "invalid"))
        elif service.active:
            try:
                item.offers.append((service, Leg(schedule, resolve_parameters(schedule, service), what)))
            except SchedulingError as exc:
                problems.append(_left_out(offer, exc.diagnostics, "invalid"))
    if not item.offers:
        problems.append(
            _left_out(what, "it offers no active HealthcareService that can be published", "business-rule")
        )
    return problems


def _parse_services(resources: dict[str, Resource]) -> dict[str, Service | SchedulingError]:
    parsed: dict[str, Service | SchedulingError] = {}
    for service_id, resource in resources.items():
        try:
            parsed[service_id] = parse_service(resource)
        except SchedulingError as exc:
            parsed[service_id] = exc
    return parsed


def _more_slots(
    store: FhirStore, together: Together, tagged: Sequence[_Tagged], window: Interval, searched: Interval
) -> list[Resource]:
    """Round 3: the Slots a booking limit counts (the rest of the local day or week) or a long
    buffer reaches, beyond what round 2 searched; nothing when no Schedule needs more."""
    spans: list[Interval] = []
    ids: list[str] = []
    for item in tagged:
        missing = subtract(needed_spans(window, [leg for _, leg in item.offers], None), [searched])
        if missing:
            spans.extend(missing)
            ids.append(item.schedule.id)
    if not ids:
        return []
    answers = together(*(slot_search(store, chunk, span) for span in merge(spans) for chunk in _chunks(ids)))
    return [slot for found_slots in answers for slot in found_slots]


def _search(
    store: FhirStore, resource_type: str, params: list[tuple[str, str]]
) -> Callable[[], list[Resource]]:
    return lambda: store.search(resource_type, params)


def _roles(
    store: FhirStore, practitioners: Sequence[str]
) -> Callable[[], tuple[list[Resource], list[Resource]]]:
    params = [
        ("practitioner", ",".join(practitioners)),
        ("active:not", "false"),
        ("_include", "PractitionerRole:location"),
    ]
    return lambda: store.search_including("PractitionerRole", params)


def _chunks(values: Sequence[str]) -> list[list[str]]:
    return [list(values[i : i + IDS_PER_SEARCH]) for i in range(0, len(values), IDS_PER_SEARCH)]


def _kind(schedule: Schedule) -> str:
    return schedule.actor.reference.split("/")[0]


def _key(resource: Resource) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id')}"


def _references(value: object) -> list[str]:
    """The relative references of a Reference or a list of them."""
    items = value if isinstance(value, list) else [value]
    return [
        ref
        for item in items
        if isinstance(item, dict)
        and isinstance(ref := item.get("reference"), str)
        and ref.startswith("Location/")
    ]


def _left_out(what: str, why: str, code: str) -> Resource:
    """An OperationOutcome saying what was not published, and why."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "warning", "code": code, "diagnostics": f"{what} is not published: {why}"}],
    }
