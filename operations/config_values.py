"""Parsers of the pieces of stored configuration (SPEC §2.2, §7.1): opening hours in both
their forms, closures, booking limits, service references -- each failure an
``InvalidConfiguration`` (422) whose ``expression`` points at the culprit. Used by
``operations/parameters.py``, which assembles them into Schedules and services.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, time
from typing import Any, TypeVar

from operations.errors import InvalidConfiguration
from operations.fhir_values import as_list, dig, parse_instant, parse_time, reference_id
from operations.model import SERVICE_TYPE_REFERENCE_URL, Coding, Interval, WeeklyWindow
from operations.store import Resource

T = TypeVar("T")

DAY_CODES = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}
ALL_DAYS = frozenset(range(7))
FAR_PAST = datetime.min.replace(tzinfo=UTC)
FAR_FUTURE = datetime.max.replace(tzinfo=UTC)


def config_error(what: str, expression: str, reason: str) -> InvalidConfiguration:
    return InvalidConfiguration(f"{what}: {reason}", expression=expression)


def parse_config(what: str, expression: str, parser: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``parser(*args, **kwargs)``, its ``ValueError`` turned into a configuration error."""
    try:
        return parser(*args, **kwargs)
    except ValueError as exc:
        raise config_error(what, expression, str(exc)) from None


def config_list(resource: Resource, key: str, what: str, expression: str) -> list[Any]:
    value = resource.get(key, [])
    if not isinstance(value, list):
        raise config_error(what, f"{expression}.{key}", f"{key} must be a list")
    return value


def indexed(resource: Resource, key: str, what: str) -> list[tuple[Any, str]]:
    """The elements of a list-valued field with their FHIRPath (``HealthcareService.key[i]``)."""
    root = str(resource.get("resourceType", "Resource"))
    return [(item, f"{root}.{key}[{i}]") for i, item in enumerate(config_list(resource, key, what, root))]


def codings(concepts: Iterable[Any]) -> frozenset[Coding]:
    found: set[Coding] = set()
    for concept in concepts:
        if not isinstance(concept, dict):
            continue
        for coding in concept.get("coding", []) or []:
            if isinstance(coding, dict) and (coding.get("code") or coding.get("system")):
                found.add(Coding(coding.get("system"), coding.get("code")))
    return frozenset(found)


def service_references(concepts: Iterable[Any]) -> list[str]:
    """The ``reference`` strings of service-type-reference extensions on CodeableConcepts."""
    refs: list[str] = []
    for concept in concepts:
        for ext in as_list(dig(concept, "extension")):
            if dig(ext, "url") == SERVICE_TYPE_REFERENCE_URL:
                ref = dig(ext, "valueReference", "reference")
                if isinstance(ref, str):
                    refs.append(ref)
    return refs


def service_ids(concepts: Iterable[Any]) -> frozenset[str]:
    ids: set[str] = set()
    for ref in service_references(concepts):
        try:
            ids.add(reference_id(ref, "HealthcareService"))
        except ValueError:
            continue
    return frozenset(ids)


def parse_available_times(entries: list[tuple[Any, str]], what: str) -> tuple[WeeklyWindow, ...]:
    """Windows from ``(availableTime element, its path)`` pairs: native R4 (``daysOfWeek``
    list) or nested extensions (SPEC §2.2). Each window is keyed to the day it starts."""
    windows = []
    for entry, path in entries:
        if not isinstance(entry, dict):
            raise config_error(what, path, "availableTime must be an object")
        if "url" in entry:  # nested-extension form
            fields: dict[str, list[tuple[Any, str]]] = {}
            for sub_index, sub in enumerate(entry.get("extension", []) or []):
                if not isinstance(sub, dict):
                    raise config_error(what, f"{path}.extension[{sub_index}]", "not an extension")
                value = next((v for k, v in sub.items() if k.startswith("value")), None)
                fields.setdefault(str(sub.get("url")), []).append((value, f"{path}.extension[{sub_index}]"))
            days = fields.get("daysOfWeek", [])
            start = fields.get("availableStartTime", [])
            end = fields.get("availableEndTime", [])
            all_day = fields.get("allDay", [])
            for name, given in (
                ("availableStartTime", start),
                ("availableEndTime", end),
                ("allDay", all_day),
            ):
                if len(given) > 1:
                    raise config_error(what, given[1][1], f"{name} is given twice")
        else:  # native R4 BackboneElement
            days = [(d, f"{path}.daysOfWeek[{i}]") for i, d in enumerate(entry.get("daysOfWeek", []) or [])]
            start = (
                [(entry["availableStartTime"], f"{path}.availableStartTime")]
                if "availableStartTime" in entry
                else []
            )
            end = (
                [(entry["availableEndTime"], f"{path}.availableEndTime")]
                if "availableEndTime" in entry
                else []
            )
            all_day = [(entry["allDay"], f"{path}.allDay")] if "allDay" in entry else []
        weekdays: set[int] = set()
        for code, day_path in days:
            if code not in DAY_CODES:
                raise config_error(what, day_path, f"{code!r} is not a day code (mon..sun)")
            weekdays.add(DAY_CODES[code])
        is_all_day = bool(all_day) and all_day[0][0] is True
        if is_all_day:
            start_time, end_time = time(0), time(0)
        elif start and end:
            start_time = parse_config(what, start[0][1], parse_time, start[0][0])
            end_time = parse_config(what, end[0][1], parse_time, end[0][0])
        elif start:
            raise config_error(what, start[0][1], "availableStartTime is given without availableEndTime")
        elif end:
            raise config_error(what, end[0][1], "availableEndTime is given without availableStartTime")
        else:
            raise config_error(what, path, "availableTime needs allDay or a start and an end time")
        windows.append(WeeklyWindow(frozenset(weekdays) or ALL_DAYS, start_time, end_time))
    return tuple(windows)


def parse_period(value: Any, what: str, expression: str) -> Interval:
    if not isinstance(value, dict):
        raise config_error(what, expression, "expected a Period")
    start = (
        parse_config(what, f"{expression}.start", parse_instant, value["start"])
        if "start" in value
        else FAR_PAST
    )
    end = (
        parse_config(what, f"{expression}.end", parse_instant, value["end"]) if "end" in value else FAR_FUTURE
    )
    return Interval(start, end)


def parse_not_available(entries: list[tuple[Any, str]], what: str) -> tuple[Interval, ...]:
    periods = []
    for entry, path in entries:
        if not isinstance(entry, dict):
            continue
        if "url" in entry:
            during = [
                (sub.get("valuePeriod"), f"{path}.extension[{i}]")
                for i, sub in enumerate(entry.get("extension", []) or [])
                if isinstance(sub, dict) and sub.get("url") == "during"
            ]
        else:
            during = [(entry["during"], f"{path}.during")] if "during" in entry else []
        for period, period_path in during:
            periods.append(parse_period(period, what, period_path))
    return tuple(periods)


_UNIT_NAMES = {"d": "day", "wk": "week"}
_TIMING_REPEAT_FIELDS = frozenset({"frequency", "period", "periodUnit"})


def parse_booking_limit(sub: Resource, what: str, path: str) -> tuple[str, int]:
    """``bookingLimit``: a ``valueTiming`` whose ``repeat`` says N visits per 1 day or week
    (``frequency`` N, ``period`` 1, ``periodUnit`` ``d``/``wk``). Returns ``(unit, N)``; anything
    else is an error pointing at the field at fault."""
    timing = sub.get("valueTiming")
    if not isinstance(timing, dict):
        raise config_error(
            what, path, "bookingLimit needs a valueTiming (repeat: frequency, period 1, periodUnit d|wk)"
        )
    for key in timing:
        if key not in ("repeat", "id", "extension"):
            raise config_error(
                what, f"{path}.valueTiming.{key}", f"bookingLimit supports only Timing.repeat, not {key!r}"
            )
    repeat = timing.get("repeat")
    if not isinstance(repeat, dict):
        raise config_error(what, f"{path}.valueTiming", "bookingLimit needs valueTiming.repeat")
    at = f"{path}.valueTiming.repeat"
    for key in repeat:
        if key not in _TIMING_REPEAT_FIELDS and key not in ("id", "extension"):
            raise config_error(
                what, f"{at}.{key}", f"bookingLimit supports frequency, period and periodUnit, not {key!r}"
            )
    frequency = repeat.get("frequency")
    if isinstance(frequency, bool) or not isinstance(frequency, int) or frequency < 1:
        raise config_error(
            what, f"{at}.frequency", "frequency (the number of visits) must be a positive integer"
        )
    period = repeat.get("period")
    if isinstance(period, bool) or not isinstance(period, int | float) or period != 1:
        raise config_error(what, f"{at}.period", f"period must be 1 (one day or one week), not {period!r}")
    unit = repeat.get("periodUnit")
    if unit not in _UNIT_NAMES:
        raise config_error(what, f"{at}.periodUnit", f"periodUnit must be 'd' or 'wk', not {unit!r}")
    return str(unit), frequency
