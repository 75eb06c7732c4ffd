"""What SMART Scheduling Links publishes (SPEC §7.5): the three resource kinds, ``Location``,
``Schedule`` and free ``Slot``, rendered from what the upstream holds; the NDJSON files they
travel in; and the ``$bulk-publish`` manifest that lists those files.

Only what the specification names is copied: a published resource is public, so a Location
keeps its name, contact points, address, description, position and identifiers, and nothing
else the clinic may have stored on it (extensions, notes, ``meta``).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from operations.booking_link import BookingLinkTemplate
from operations.fhir_values import format_instant
from operations.model import Interval, Service
from operations.rendering import service_type_concept

if TYPE_CHECKING:
    from operations.publish import Publication

Resource = dict[str, Any]

REGISTRY = "http://fhir-registry.smarthealthit.org/StructureDefinition/"
BOOKING_DEEP_LINK_URL = REGISTRY + "booking-deep-link"
BOOKING_PHONE_URL = REGISTRY + "booking-phone"
SLOT_CAPACITY_URL = REGISTRY + "slot-capacity"
"""SMART's slot-capacity (``valueInteger``): identical slots aggregated; not the project's own
``slot-capacity`` stamp on stored Slots."""

ADDRESS_REQUIRED = ("line", "city", "state", "postalCode")
_ADDRESS_KEPT = ("line", "city", "district", "state", "postalCode", "country")
_TELECOM_SYSTEMS = ("phone", "url")

OUTPUT_TYPES = ("Location", "Schedule", "Slot")
"""The manifest's ``output``, in the order a consumer best fetches them: what a Slot references
comes before it."""
ERROR_TYPE = "OperationOutcome"
"""The manifest's ``error`` file: why Schedules were left out (only when some were)."""


def files(publication: Publication) -> dict[str, list[Resource]]:
    """The resources of each NDJSON file, by file type."""
    found = {
        "Location": publication.locations,
        "Schedule": publication.schedules,
        "Slot": publication.slots,
    }
    if publication.problems:
        found[ERROR_TYPE] = publication.problems
    return found


def timestamp(value: datetime) -> str:
    """An instant as SMART Scheduling Links writes ``transactionTime``: UTC, milliseconds, ``Z``."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ndjson(resources: Sequence[Resource]) -> bytes:
    """One minified JSON resource per line, each line ending in a newline."""
    return "".join(
        json.dumps(r, separators=(",", ":"), ensure_ascii=False) + "\n" for r in resources
    ).encode()


def manifest(publication: Publication, request_url: str, file_url: Callable[[str], str]) -> Resource:
    """The bulk publication manifest: ``transactionTime`` (when the data was computed), the
    manifest's own URL, one ``output`` per file type at ``file_url(type)`` and an ``error``
    entry when anything was left out."""
    return {
        "transactionTime": timestamp(publication.transaction_time),
        "request": request_url,
        "output": [{"type": kind, "url": file_url(kind)} for kind in OUTPUT_TYPES],
        "error": [{"type": ERROR_TYPE, "url": file_url(ERROR_TYPE)}] if publication.problems else [],
    }


def location_problems(location: Resource) -> list[str]:
    """What a Location lacks of SMART Scheduling Links' required elements (empty: publishable)."""
    problems = []
    if not _text(location.get("name")):
        problems.append("name")
    if not _telecom(location):
        problems.append("telecom (a phone or url)")
    address = location.get("address")
    address = address if isinstance(address, dict) else {}
    for element in ADDRESS_REQUIRED:
        value = address.get(element)
        present = (
            any(_text(v) for v in value) if element == "line" and isinstance(value, list) else _text(value)
        )
        if not present:
            problems.append(f"address.{element}")
    if location.get("status") in ("inactive", "suspended"):
        problems.append(f"status active (it is {location['status']})")
    return problems


def published_location(location: Resource, identifier_system: str) -> Resource:
    """A Location as published; one that ``location_problems`` passed. Without identifiers of
    its own it gets one: its id under ``identifier_system`` (the specification requires one)."""
    address = location["address"]
    published: Resource = {
        "resourceType": "Location",
        "id": location["id"],
        "identifier": [
            {"system": i["system"], "value": i["value"]}
            for i in location.get("identifier") or []
            if isinstance(i, dict) and _text(i.get("system")) and _text(i.get("value"))
        ]
        or [{"system": identifier_system, "value": location["id"]}],
        "name": location["name"],
        "telecom": _telecom(location),
        "address": {k: copy.deepcopy(address[k]) for k in _ADDRESS_KEPT if k in address},
    }
    if _text(location.get("description")):
        published["description"] = location["description"]
    position = location.get("position")
    if isinstance(position, dict) and {"latitude", "longitude"} <= position.keys():
        published["position"] = {"latitude": position["latitude"], "longitude": position["longitude"]}
    return published


def published_schedule(schedule_id: str, location_id: str, services: Sequence[Service]) -> Resource:
    """A Schedule as published: its one actor the Location, its services as ``serviceType``."""
    return {
        "resourceType": "Schedule",
        "id": schedule_id,
        "serviceType": [service_type_concept(s) for s in services],
        "actor": [{"reference": f"Location/{location_id}"}],
    }


def slot_id(schedule_id: str, service_id: str, start: datetime) -> str:
    """A stable id: the same Schedule, service and start give the same id in every publication
    (consumers diff by it), within the 64 characters of ``[A-Za-z0-9-.]`` the specification allows."""
    text = f"{schedule_id}|{service_id}|{format_instant(start)}"
    return hashlib.sha256(text.encode()).hexdigest()[:40]


class SlotRenderer:
    """Renders the free Slots of one Schedule and service; the serviceType concept is built once."""

    def __init__(
        self, schedule_id: str, service: Service, zone: ZoneInfo, link: BookingLinkTemplate, phone: str | None
    ) -> None:
        self.schedule_id = schedule_id
        self.service = service
        self.zone = zone
        self.link = link
        self.phone = phone
        self.concept = service_type_concept(service)

    def slot(self, visit: Interval, capacity: int | None = None) -> Resource:
        """One free Slot; ``capacity``: how many can still book this time (only above 1)."""
        identifier = slot_id(self.schedule_id, self.service.id, visit.start)
        start, end = format_instant(visit.start, self.zone), format_instant(visit.end, self.zone)
        link = self.link.render(
            schedule=self.schedule_id, service=self.service.id, start=start, end=end, slot=identifier
        )
        extensions: list[Resource] = [{"url": BOOKING_DEEP_LINK_URL, "valueUrl": link}]
        if self.phone:
            extensions.append({"url": BOOKING_PHONE_URL, "valueString": self.phone})
        if capacity is not None and capacity > 1:
            extensions.append({"url": SLOT_CAPACITY_URL, "valueInteger": capacity})
        return {
            "resourceType": "Slot",
            "id": identifier,
            "schedule": {"reference": f"Schedule/{self.schedule_id}"},
            "serviceType": [self.concept],
            "status": "free",
            "start": start,
            "end": end,
            "extension": extensions,
        }


def _telecom(location: Resource) -> list[Resource]:
    return [
        {"system": t["system"], "value": t["value"]}
        for t in location.get("telecom") or []
        if isinstance(t, dict) and t.get("system") in _TELECOM_SYSTEMS and _text(t.get("value"))
    ]


def _text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())
