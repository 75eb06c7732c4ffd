"""Small builders that make test resources read like a clinic's calendar."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from operations.model import (
    SCHEDULING_PARAMETERS_URL,
    SERVICE_TYPE_REFERENCE_URL,
    TIMEZONE_URL,
)

Resource = dict[str, Any]

# A "now" safely before every calendar used in the tests.
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


def minutes(n: float) -> Resource:
    return {"value": n, "unit": "min"}


def practitioner(pid: str, tz: str | None) -> Resource:
    resource: Resource = {"resourceType": "Practitioner", "id": pid}
    if tz:
        resource["extension"] = [{"url": TIMEZONE_URL, "valueCode": tz}]
    return resource


def location(lid: str, tz: str | None) -> Resource:
    resource = practitioner(lid, tz)
    resource["resourceType"] = "Location"
    return resource


def params_block(**fields: Any) -> Resource:
    """A SchedulingParameters extension; keyword names are the sub-extension urls.

    Durations are given in minutes (``duration=30``), time zones as strings, ``service`` as an
    id, ``availability`` as a list of ``window(...)`` dicts.
    """
    subs: list[Resource] = []
    for url, value in fields.items():
        if url == "service":
            subs.append({"url": "service", "valueReference": {"reference": f"HealthcareService/{value}"}})
        elif url in ("timezone", "alignmentTimezone"):
            subs.append({"url": url, "valueCode": value})
        elif url == "slotCapacity":
            subs.append({"url": url, "valuePositiveInt": value})
        elif url == "availability":
            subs.append({"url": "availability", "extension": value})
        elif url == "bookingLimit":  # [(visits, "d" | "wk"), ...]
            for frequency, unit in value:
                subs.append({"url": "bookingLimit", "valueTiming": limit_timing(frequency, unit)})
        else:
            subs.append({"url": url, "valueDuration": value if isinstance(value, dict) else minutes(value)})
    return {"url": SCHEDULING_PARAMETERS_URL, "extension": subs}


def limit_timing(frequency: int, unit: str) -> Resource:
    """The Timing of a ``bookingLimit``: ``frequency`` visits per one ``unit`` (``d``, ``wk``)."""
    return {"repeat": {"frequency": frequency, "period": 1, "periodUnit": unit}}


def window(days: str, start: str | None = None, end: str | None = None, all_day: bool = False) -> Resource:
    """An ``availableTime`` in nested-extension form: ``window("mon wed", "09:00", "17:00")``."""
    subs: list[Resource] = [{"url": "daysOfWeek", "valueCode": d} for d in days.split()]
    if all_day:
        subs.append({"url": "allDay", "valueBoolean": True})
    if start is not None:
        subs.append({"url": "availableStartTime", "valueTime": f"{start}:00"})
    if end is not None:
        subs.append({"url": "availableEndTime", "valueTime": f"{end}:00"})
    return {"url": "availableTime", "extension": subs}


def service(
    sid: str = "checkup",
    *,
    hours: list[Resource] | None = None,
    code: tuple[str, str] = ("http://example.org/visit-type", "checkup"),
    active: bool = True,
    **block: Any,
) -> Resource:
    """A HealthcareService; ``hours`` are native ``availableTime`` elements, ``block`` the params."""
    resource: Resource = {
        "resourceType": "HealthcareService",
        "id": sid,
        "active": active,
        "name": sid.title(),
        "type": [{"coding": [{"system": code[0], "code": code[1]}]}],
    }
    if hours is not None:
        resource["availableTime"] = hours
    if block:
        resource["extension"] = [params_block(**block)]
    return resource


def hours(days: str, start: str, end: str) -> Resource:
    """A native R4 ``HealthcareService.availableTime``."""
    return {"daysOfWeek": days.split(), "availableStartTime": f"{start}:00", "availableEndTime": f"{end}:00"}


def schedule(
    sid: str,
    actor: str,
    services: list[str],
    *,
    blocks: list[Resource] | None = None,
    active: bool = True,
    horizon: tuple[str | None, str | None] | None = None,
) -> Resource:
    resource: Resource = {
        "resourceType": "Schedule",
        "id": sid,
        "active": active,
        "actor": [{"reference": actor}],
        "serviceType": [
            {
                "coding": [{"code": s}],
                "extension": [
                    {
                        "url": SERVICE_TYPE_REFERENCE_URL,
                        "valueReference": {"reference": f"HealthcareService/{s}"},
                    }
                ],
            }
            for s in services
        ],
    }
    if blocks:
        resource["extension"] = blocks
    if horizon:
        period = {}
        if horizon[0]:
            period["start"] = horizon[0]
        if horizon[1]:
            period["end"] = horizon[1]
        resource["planningHorizon"] = period
    return resource


def slot(schedule_id: str, status: str, start: str, end: str, **extra: Any) -> Resource:
    return {
        "resourceType": "Slot",
        "schedule": {"reference": f"Schedule/{schedule_id}"},
        "status": status,
        "start": start,
        "end": end,
        **extra,
    }


def patient(pid: str) -> Resource:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": pid}]}
