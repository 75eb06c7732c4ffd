"""FHIR JSON -> scheduling model, with field-by-field inheritance and precise errors (SPEC §2).

Stored configuration that cannot be read raises ``InvalidConfiguration`` (422) whose
``expression`` points at the culprit, e.g. ``Schedule.extension[0].extension[2]``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

from operations.config_values import codings as _codings
from operations.config_values import config_error as _config_error
from operations.config_values import config_list as _list
from operations.config_values import indexed as _indexed
from operations.config_values import (
    parse_available_times,
    parse_booking_limit,
    service_references,
)
from operations.config_values import parse_config as _parse
from operations.config_values import parse_not_available as _parse_not_available
from operations.config_values import parse_period as _parse_period
from operations.config_values import service_ids as _service_ids
from operations.errors import InvalidConfiguration
from operations.fhir_values import (
    dig,
    parse_duration,
    parse_instant,
    parse_positive_int,
    parse_stored_instant,
    parse_timezone,
    reference_id,
)
from operations.model import (
    BUFFER_AFTER_COMMENT,
    BUFFER_BEFORE_COMMENT,
    DEFAULT_ALIGNMENT_INTERVAL,
    HOLD_EXPIRES_URL,
    SCHEDULING_PARAMETERS_URL,
    SLOT_CAPACITY_URL,
    TIMEZONE_URL,
    Actor,
    Interval,
    ParameterBlock,
    ResolvedParameters,
    Schedule,
    Service,
    SlotOverlay,
    WeeklyWindow,
)
from operations.store import Resource

# Sub-extension url -> (ParameterBlock field, parser of the extension element).
_DURATION_FIELDS = {
    "duration": "duration",
    "bufferBefore": "buffer_before",
    "bufferAfter": "buffer_after",
    "alignmentInterval": "alignment_interval",
    "alignmentOffset": "alignment_offset",
}


def parse_parameter_block(
    extension: Resource, what: str, expression: str, *, on_schedule: bool
) -> ParameterBlock:
    """One SchedulingParameters extension (on a Schedule or a HealthcareService)."""
    values: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for index, sub in enumerate(extension.get("extension", []) or []):
        path = f"{expression}.extension[{index}]"
        if not isinstance(sub, dict):
            raise _config_error(what, path, "not an extension")
        url = sub.get("url")
        if url == "bookingLimit":
            # May repeat, once per unit (SPEC §7.1): a day limit and a week limit.
            unit, limit = parse_booking_limit(sub, what, path)
            key = f"bookingLimit ({unit})"
            if key in seen:
                raise _config_error(
                    what,
                    path,
                    f"a bookingLimit per {'day' if unit == 'd' else 'week'} is given twice (first at {seen[key]})",
                )
            seen[key] = path
            values["daily_limit" if unit == "d" else "weekly_limit"] = limit
            continue
        if url in seen:
            raise _config_error(
                what, path, f"the sub-extension {url!r} is given twice (first at {seen[url]})"
            )
        seen[str(url)] = path
        if url == "service":
            if not on_schedule:
                raise _config_error(what, path, "'service' is not allowed on a HealthcareService")
            ref = dig(sub, "valueReference", "reference")
            values["service_id"] = _parse(what, path, reference_id, ref, "HealthcareService")
        elif url in _DURATION_FIELDS:
            name = _DURATION_FIELDS[url]
            negative_ok = url == "alignmentOffset"
            values[name] = _parse(
                what,
                path,
                parse_duration,
                sub.get("valueDuration"),
                allow_negative=negative_ok,
            )
            if name == "duration" and values[name] <= timedelta(0):
                raise _config_error(what, path, "duration must be longer than zero")
        elif url in ("alignmentTimezone", "timezone"):
            name = "alignment_timezone" if url == "alignmentTimezone" else "timezone"
            values[name] = _parse(what, path, parse_timezone, sub.get("valueCode"))
        elif url in ("minimumNotice", "bookingWindow"):
            amount = _parse(what, path, parse_duration, sub.get("valueDuration"))
            if url == "bookingWindow" and amount <= timedelta(0):
                raise _config_error(what, path, "bookingWindow must be longer than zero")
            values["minimum_notice" if url == "minimumNotice" else "booking_window"] = amount
        elif url == "slotCapacity":
            values["slot_capacity"] = _parse(what, path, parse_positive_int, sub.get("valuePositiveInt"))
        elif url == "availability":
            if not on_schedule:
                raise _config_error(
                    what,
                    path,
                    "'availability' is not allowed on a HealthcareService (use availableTime)",
                )
            nested = [
                (entry, f"{path}.extension[{i}]")
                for i, entry in enumerate(sub.get("extension", []) or [])
                if isinstance(entry, dict)
            ]
            values["availability"] = parse_available_times(
                [(e, p) for e, p in nested if e.get("url") == "availableTime"], what
            )
            values["not_available"] = _parse_not_available(
                [(e, p) for e, p in nested if e.get("url") == "notAvailableTime"], what
            )
        else:
            continue  # unknown sub-extensions are ignored, as FHIR allows for extensions
    if on_schedule and "service_id" not in values:
        raise _config_error(what, expression, "a SchedulingParameters block on a Schedule needs 'service'")
    return ParameterBlock(expression=expression, **values)


def _scheduling_blocks(
    resource: Resource, what: str, root: str, *, on_schedule: bool
) -> list[ParameterBlock]:
    blocks = []
    for index, ext in enumerate(_list(resource, "extension", what, root)):
        if isinstance(ext, dict) and ext.get("url") == SCHEDULING_PARAMETERS_URL:
            blocks.append(
                parse_parameter_block(ext, what, f"{root}.extension[{index}]", on_schedule=on_schedule)
            )
    return blocks


def parse_service(resource: Resource) -> Service:
    """A HealthcareService: its type, its one optional parameters block and its hours."""
    service_id = str(resource.get("id"))
    what = f"HealthcareService/{service_id}"
    blocks = _scheduling_blocks(resource, what, "HealthcareService", on_schedule=False)
    if len(blocks) > 1:
        raise _config_error(what, blocks[1].expression, "has two SchedulingParameters extensions")
    available = None
    if resource.get("availableTime"):
        available = parse_available_times(_indexed(resource, "availableTime", what), what)
    not_available = _parse_not_available(_indexed(resource, "notAvailable", what), what)
    concepts = tuple(c for c in _list(resource, "type", what, "HealthcareService") if isinstance(c, dict))
    return Service(
        id=service_id,
        active=resource.get("active", True) is not False,
        name=resource.get("name") if isinstance(resource.get("name"), str) else None,
        type_concepts=concepts,
        type_codings=_codings(concepts),
        parameters=blocks[0] if blocks else None,
        available_times=available,
        not_available=not_available,
    )


def parse_actor_timezone(resource: Resource | None, what: str) -> ZoneInfo | None:
    """The actor's timezone extension, if any."""
    if not resource:
        return None
    for index, ext in enumerate(resource.get("extension", []) or []):
        if isinstance(ext, dict) and ext.get("url") == TIMEZONE_URL:
            return _parse(
                what,
                f"{resource.get('resourceType')}.extension[{index}]",
                parse_timezone,
                ext.get("valueCode"),
            )
    return None


def parse_schedule(resource: Resource, actors: dict[str, Resource]) -> Schedule:
    """A Schedule with its single actor (looked up in ``actors`` by relative reference)."""
    schedule_id = str(resource.get("id"))
    what = f"Schedule/{schedule_id}"
    actor_refs = _list(resource, "actor", what, "Schedule")
    if len(actor_refs) != 1:
        raise InvalidConfiguration(
            f"{what} must have exactly one actor, it has {len(actor_refs)}",
            expression="Schedule.actor",
        )
    actor_ref = actor_refs[0] if isinstance(actor_refs[0], dict) else {}
    reference = actor_ref.get("reference")
    if not isinstance(reference, str) or "/" not in reference:
        raise InvalidConfiguration(f"{what}: the actor has no reference", expression="Schedule.actor[0]")
    parts = reference.split("/")
    relative = "/".join(parts[-2:]) if "_history" not in parts else "/".join(parts[-4:-2])
    actor_resource = actors.get(relative)
    actor = Actor(
        reference=relative,
        display=actor_ref.get("display") if isinstance(actor_ref.get("display"), str) else None,
        timezone=parse_actor_timezone(actor_resource, relative),
    )
    blocks: dict[str, ParameterBlock] = {}
    for block in _scheduling_blocks(resource, what, "Schedule", on_schedule=True):
        assert block.service_id is not None
        if block.service_id in blocks:
            raise _config_error(
                what,
                block.expression,
                f"has two SchedulingParameters blocks for HealthcareService/{block.service_id}",
            )
        blocks[block.service_id] = block
    horizon = None
    if resource.get("planningHorizon"):
        horizon = _parse_period(resource["planningHorizon"], what, "Schedule.planningHorizon")
    concepts = _list(resource, "serviceType", what, "Schedule")
    offered = []
    for ref in service_references(concepts):
        try:
            offered.append(reference_id(ref, "HealthcareService"))
        except ValueError:
            continue
    return Schedule(
        id=schedule_id,
        active=resource.get("active", True) is not False,
        actor=actor,
        offered_service_ids=tuple(dict.fromkeys(offered)),
        parameter_blocks=blocks,
        planning_horizon=horizon,
    )


def _pick(field: str, *blocks: ParameterBlock | None) -> Any:
    for block in blocks:
        if block is not None and getattr(block, field) is not None:
            return getattr(block, field)
    return None


def resolve_parameters(schedule: Schedule, service: Service) -> ResolvedParameters:
    """Field-by-field inheritance: the Schedule's block for the service, then the service's
    block, then the defaults (SPEC §2.2)."""
    own = schedule.parameter_blocks.get(service.id)
    inherited = service.parameters
    duration = _pick("duration", own, inherited)
    if duration is None:
        raise InvalidConfiguration(
            f"No duration is set for HealthcareService/{service.id}, "
            f"neither on Schedule/{schedule.id} nor on the service",
            expression="HealthcareService.extension",
        )
    zone = _pick("timezone", own, inherited) or schedule.actor.timezone
    if zone is None:
        raise InvalidConfiguration(
            f"Schedule/{schedule.id}: its actor {schedule.actor.reference} has no timezone "
            "extension and no timezone is set in the scheduling parameters",
            expression="Schedule.actor[0]",
        )
    interval = _pick("alignment_interval", own, inherited)
    if interval is None or interval <= timedelta(0):
        interval = DEFAULT_ALIGNMENT_INTERVAL
    offset = _pick("alignment_offset", own, inherited) or timedelta(0)
    # A Schedule's availability replaces the service hours (and the service's closures) whole.
    if own is not None and own.availability is not None:
        availability: tuple[WeeklyWindow, ...] | None = own.availability
        not_available = own.not_available or ()
    else:
        availability, not_available = service.available_times, service.not_available
    return ResolvedParameters(
        duration=duration,
        buffer_before=_pick("buffer_before", own, inherited) or timedelta(0),
        buffer_after=_pick("buffer_after", own, inherited) or timedelta(0),
        alignment_interval=interval,
        alignment_offset=offset % interval,
        alignment_timezone=_pick("alignment_timezone", own, inherited),
        timezone=zone,
        slot_capacity=_pick("slot_capacity", own, inherited) or 1,
        availability=availability,
        not_available=tuple(not_available),
        minimum_notice=_pick("minimum_notice", own, inherited) or timedelta(0),
        booking_window=_pick("booking_window", own, inherited),
        daily_limit=_pick("daily_limit", own, inherited),
        weekly_limit=_pick("weekly_limit", own, inherited),
    )


_OVERLAY_STATUSES = frozenset({"busy", "busy-tentative", "busy-unavailable", "free"})
_BUFFER_COMMENTS = frozenset({BUFFER_BEFORE_COMMENT, BUFFER_AFTER_COMMENT})
_NO_SERVICES: frozenset[str] = frozenset()


def parse_slot(resource: Resource) -> SlotOverlay | None:
    """A stored Slot as an overlay; ``None`` for Slots that cannot matter (no times, bad status).

    On the hot path of every ``$find`` (thousands of Slots), hence the fast paths.
    """
    status = resource.get("status")
    if status not in _OVERLAY_STATUSES:
        return None
    try:
        start = parse_stored_instant(resource["start"])
        end = parse_stored_instant(resource["end"])
        ref = (resource.get("schedule") or {}).get("reference")
        if isinstance(ref, str) and ref.startswith("Schedule/") and ref.count("/") == 1 and len(ref) > 9:
            schedule_id = ref[9:]
        else:
            schedule_id = reference_id(ref, "Schedule")
    except (KeyError, ValueError, TypeError, AttributeError):
        return None
    if end <= start:
        return None
    service_codings = None
    service_ids = _NO_SERVICES
    concepts = resource.get("serviceType")
    if concepts and isinstance(concepts, list):
        concepts = [c for c in concepts if isinstance(c, dict)]
        service_codings = _codings(concepts)
        service_ids = _service_ids(concepts)
        if not service_codings and not service_ids:
            service_codings = None  # a serviceType with neither coding nor reference names nothing
    capacity = None
    expires = None
    for ext in resource.get("extension") or ():
        if not isinstance(ext, dict):
            continue
        url = ext.get("url")
        if url == SLOT_CAPACITY_URL and isinstance(ext.get("valuePositiveInt"), int):
            capacity = ext["valuePositiveInt"]
        elif url == HOLD_EXPIRES_URL:
            try:
                expires = parse_instant(ext.get("valueInstant") or ext.get("valueDateTime"))
            except ValueError:
                expires = None  # unreadable: blocks like a hold that never lapses, never less
    return SlotOverlay(
        id=resource.get("id"),
        schedule_id=schedule_id,
        status=status,
        interval=Interval(start, end),
        service_codings=service_codings,
        service_ids=service_ids,
        capacity=capacity,
        hold_expires=expires,
        is_buffer=status == "busy-unavailable" and resource.get("comment") in _BUFFER_COMMENTS,
    )


__all__ = [
    "parse_actor_timezone",
    "parse_available_times",
    "parse_parameter_block",
    "parse_schedule",
    "parse_service",
    "parse_slot",
    "resolve_parameters",
    "service_references",
]
