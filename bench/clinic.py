"""The benchmark's own clinic in HAPI: services, Schedules (one Practitioner each, New York
time), busy Slots in large transaction batches, lock resources created ahead, and ``$find``.

Every run loads fresh resources under a new id prefix, so runs and parts never see each
other's data."""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import requests

from operations.locks import buckets, lock_resource
from operations.model import Interval
from tests.integration.trust import SERVICE_HEADERS
from tests.unit import builders

Resource = dict[str, Any]
FHIR_JSON = "application/fhir+json"
ZONE_NAME = "America/New_York"
ZONE = ZoneInfo(ZONE_NAME)
BATCH = 1000
"""Resources per transaction when loading."""


def first_day(ahead: int = 2) -> datetime:
    """Midnight, New York time, ``ahead`` days from today: nothing proposed lies in the past."""
    day = datetime.now(ZONE).date() + timedelta(days=ahead)
    return datetime(day.year, day.month, day.day, tzinfo=ZONE)


def transaction(fhir_base: str, entries: Sequence[Resource], timeout: float = 600) -> None:
    """One transaction Bundle, sent as the sidecar would send it (the guard accepts busy Slots
    and locks only from the sidecar)."""
    response = requests.post(
        fhir_base,
        json={"resourceType": "Bundle", "type": "transaction", "entry": list(entries)},
        headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON, **SERVICE_HEADERS},
        timeout=timeout,
    )
    if response.status_code != 200:
        raise RuntimeError(f"loading transaction answered {response.status_code}: {response.text[:500]}")


def _entry(resource: Resource) -> Resource:
    if "id" in resource:
        return {
            "resource": resource,
            "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"},
        }
    return {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"]}}


def load(fhir_base: str, resources: Sequence[Resource], batch: int = BATCH) -> None:
    """PUT (with an id) or POST the resources, ``batch`` to a transaction."""
    for index in range(0, len(resources), batch):
        transaction(fhir_base, [_entry(r) for r in resources[index : index + batch]])


class BenchClinic:
    """Services and Schedules under one fresh id prefix."""

    def __init__(self, fhir_base: str, label: str) -> None:
        self.fhir_base = fhir_base
        self.prefix = f"b{label}-{uuid.uuid4().hex[:8]}"

    def service(
        self,
        name: str,
        *,
        duration: int,
        grid: int,
        opens: str = "08:00",
        closes: str = "18:00",
        capacity: int | None = None,
        rules: dict[str, Any] | None = None,
    ) -> str:
        """A HealthcareService open every day ``opens``-``closes`` (New York), ``duration``-minute
        visits on a ``grid``-minute grid, no buffers, ``slotCapacity`` when given, and the booking
        ``rules`` given (``builders.params_block`` fields: ``minimumNotice``, ``bookingWindow`` in
        minutes, ``bookingLimit=[(visits, "d" | "wk"), ...]``)."""
        sid = f"{self.prefix}-{name}"
        block: dict[str, Any] = {"duration": duration, "alignmentInterval": grid, **(rules or {})}
        if capacity is not None:
            block["slotCapacity"] = capacity
        load(
            self.fhir_base,
            [
                builders.service(
                    sid,
                    hours=[builders.hours("mon tue wed thu fri sat sun", opens, closes)],
                    code=("http://example.org/visit-type", sid),
                    **block,
                )
            ],
        )
        return sid

    def schedules(self, name: str, count: int, services: Sequence[str]) -> list[str]:
        """``count`` Schedules offering ``services``, one Practitioner (New York) each."""
        ids = [f"{self.prefix}-{name}-{n}" for n in range(count)]
        resources: list[Resource] = []
        for sid in ids:
            resources += [
                builders.practitioner(sid, ZONE_NAME),
                builders.schedule(sid, f"Practitioner/{sid}", list(services)),
            ]
        load(self.fhir_base, resources)
        return ids

    def create_locks(self, schedule_ids: Sequence[str], start: datetime, end: datetime) -> int:
        """The lock of every 15-minute bucket a booking in ``[start, end)`` takes, created
        ahead: the steady state of a Schedule booked before (a booking that finds its bucket's
        lock missing creates it in its transaction). Returns how many."""
        resources = [
            lock_resource(sid, key=f"b{b}", counter=0)
            for sid in schedule_ids
            for b in buckets(Interval(start, end))
        ]
        load(self.fhir_base, resources)
        return len(resources)


def busy_slots(
    schedule_ids: Sequence[str],
    start: datetime,
    days: int,
    total: int,
    rng: random.Random,
    *,
    opens_hour: int = 8,
    hours: int = 10,
) -> list[Resource]:
    """``total`` busy Slots, dealt round-robin over the Schedules, each on a random day of the
    ``days`` from ``start`` at a random quarter hour within the opening hours, 15 to 60 minutes
    long (some overlap each other, as an administrator's blocks may)."""
    slots = []
    for n in range(total):
        day = (start + timedelta(days=rng.randrange(days))).date()
        begins = datetime(day.year, day.month, day.day, opens_hour, tzinfo=ZONE) + timedelta(
            minutes=15 * rng.randrange(hours * 4)
        )
        ends = begins + timedelta(minutes=15 * rng.randint(1, 4))
        slots.append(
            builders.slot(schedule_ids[n % len(schedule_ids)], "busy", begins.isoformat(), ends.isoformat())
        )
    return slots


def find_params(
    service: str, schedule_ids: Sequence[str], start: datetime, days: int, count: int
) -> list[tuple[str, str]]:
    return [
        ("start", start.isoformat()),
        ("end", (start + timedelta(days=days)).isoformat()),
        ("service-type-reference", f"HealthcareService/{service}"),
        *(("schedule", f"Schedule/{s}") for s in schedule_ids),
        ("_count", str(count)),
    ]


def find(
    session: requests.Session, sidecar: str, params: list[tuple[str, str]], request_id: str | None = None
) -> requests.Response:
    headers = {"Accept": FHIR_JSON}
    if request_id:
        headers["X-Request-ID"] = request_id
    return session.get(f"{sidecar}/Appointment/$find", params=params, headers=headers, timeout=120)


def matches(response: requests.Response) -> list[Resource]:
    """The proposals of a ``$find`` answer (200 required)."""
    if response.status_code != 200:
        raise RuntimeError(f"$find answered {response.status_code}: {response.text[:500]}")
    return [
        e["resource"]
        for e in response.json().get("entry") or []
        if (e.get("search") or {}).get("mode") == "match"
    ]
