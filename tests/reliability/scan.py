"""An independent scan of what HAPI holds for some Schedules: did any fault leave a trace?

``scan(hapi_base, schedule_ids)`` reads HAPI directly (never through the sidecar or the
proxy, always with ``Cache-Control: no-cache``) and checks what the sidecar promises whatever
fails (SPEC §4-§5, docs/consistency.md):

* **no partial write**: every Appointment the sidecar wrote (it carries a booking request id:
  a tag or identifier of the system ``https://fanoni.dev/fhir/booking-request``) references
  only Slots that exist and carry the same booking request id, and a live one (not cancelled,
  no-show or entered-in-error) references at least one;
* **no orphan Slot**: every Slot carrying a booking request id is referenced by an Appointment
  with the same id;
* **no stranded Slot**: no Slot still taking time belongs to an Appointment that has ended;
* **no overlap**: on each Schedule, no two pieces of time-taking Slots (``busy``,
  ``busy-tentative`` and ``busy-unavailable``, a lapsed hold's excepted) of different bookings
  overlap -- except, on a Schedule with ``slotCapacity`` above 1, bookings' footprints (visit
  plus buffers, SPEC §3) up to the capacity: at no instant do more footprints overlap than the
  smallest capacity stamped on them.

What callers were told is the test's business: the report lists every Appointment with its
identifiers, so a test can check that each answer it got matches what is stored, and that
nothing is stored that no caller was told about.

Reusable by any suite: ``from tests.reliability.scan import scan``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests

from operations.model import HOLD_EXPIRES_URL, SLOT_CAPACITY_URL
from operations.writes import BOOKING_REQUEST_SYSTEM
from plugin.provenance import OPERATION_SYSTEM, REQUEST_ID_URL

Resource = dict[str, Any]
NO_CACHE = {"Cache-Control": "no-cache", "Accept": "application/fhir+json"}
ENDED = frozenset({"cancelled", "noshow", "entered-in-error"})
TIME_TAKING = frozenset({"busy", "busy-tentative", "busy-unavailable"})
_ID_CHUNK = 50


@dataclass(frozen=True)
class ScannedAppointment:
    id: str
    status: str
    marker: str | None
    """The sidecar's booking request id; ``None``: not written by the sidecar."""
    identifiers: tuple[tuple[str | None, str], ...]
    """Every identifier, the booking request id included, as ``(system, value)``."""
    slot_ids: tuple[str, ...]
    start: str | None

    @property
    def live(self) -> bool:
        return self.status not in ENDED

    def has_identifier(self, system: str | None, value: str) -> bool:
        return (system, value) in self.identifiers


@dataclass
class ScanReport:
    schedule_ids: tuple[str, ...]
    slots: int = 0
    """Slots on the Schedules, of any status."""
    sidecar_slots: int = 0
    """Of which carry a booking request id."""
    appointments: list[ScannedAppointment] = field(default_factory=list)
    """Every Appointment that references a Slot of the Schedules or names one of their actors."""
    partial_writes: list[str] = field(default_factory=list)
    orphan_slots: list[str] = field(default_factory=list)
    stranded_slots: list[str] = field(default_factory=list)
    overlaps: list[str] = field(default_factory=list)
    duration_seconds: float = 0.0

    @property
    def problems(self) -> list[str]:
        return [
            *(f"partial write: {p}" for p in self.partial_writes),
            *(f"orphan Slot: {p}" for p in self.orphan_slots),
            *(f"stranded Slot: {p}" for p in self.stranded_slots),
            *(f"overlap: {p}" for p in self.overlaps),
        ]

    @property
    def clean(self) -> bool:
        return not self.problems

    def sidecar_appointments(self) -> list[ScannedAppointment]:
        return [a for a in self.appointments if a.marker is not None]

    def live(self) -> list[ScannedAppointment]:
        """The sidecar's Appointments that still stand (booked, pending, ...)."""
        return [a for a in self.sidecar_appointments() if a.live]

    def with_identifier(self, system: str | None, value: str) -> list[ScannedAppointment]:
        return [a for a in self.appointments if a.has_identifier(system, value)]

    def summary(self) -> dict[str, int]:
        statuses: dict[str, int] = defaultdict(int)
        for appointment in self.sidecar_appointments():
            statuses[appointment.status] += 1
        return {
            "slots": self.slots,
            "sidecar_slots": self.sidecar_slots,
            "appointments": len(self.sidecar_appointments()),
            **{f"appointments_{k}": v for k, v in sorted(statuses.items())},
            "partial_writes": len(self.partial_writes),
            "orphan_slots": len(self.orphan_slots),
            "stranded_slots": len(self.stranded_slots),
            "overlaps": len(self.overlaps),
        }


def scan(hapi_base: str, schedule_ids: Sequence[str], *, now: datetime | None = None) -> ScanReport:
    """Read the Schedules' Slots, the Appointments that reference them or name the Schedules'
    actors, and every Slot those Appointments reference; check them (module docstring)."""
    started = datetime.now(UTC)
    now = now or started
    base = hapi_base.rstrip("/")
    report = ScanReport(tuple(schedule_ids))
    schedules = [r for r, _ in _search(base, "Schedule", [("_id", ",".join(schedule_ids))])]
    actors = sorted(
        {
            str(actor["reference"])
            for schedule in schedules
            for actor in schedule.get("actor") or []
            if isinstance(actor, dict) and isinstance(actor.get("reference"), str)
        }
    )
    slots: dict[str, Resource] = {}
    appointments: dict[str, Resource] = {}
    schedule_refs = ",".join(f"Schedule/{s}" for s in schedule_ids)
    for resource, _mode in _search(
        base, "Slot", [("schedule", schedule_refs), ("_revinclude", "Appointment:slot")]
    ):
        if resource.get("resourceType") == "Slot":
            slots[str(resource["id"])] = resource
        elif resource.get("resourceType") == "Appointment":
            appointments[str(resource["id"])] = resource
    for chunk in _chunks(actors):
        for resource, _mode in _search(base, "Appointment", [("actor", ",".join(chunk))]):
            appointments[str(resource["id"])] = resource
    on_schedules = set(slots)
    # Slots the Appointments reference elsewhere (another Schedule) still count for them.
    referenced = {sid for a in appointments.values() for sid in _slot_ids(a)}
    for chunk in _chunks(sorted(referenced - set(slots))):
        for resource, _mode in _search(base, "Slot", [("_id", ",".join(chunk))]):
            slots[str(resource["id"])] = resource

    report.slots = len(on_schedules)
    report.sidecar_slots = sum(1 for sid in on_schedules if _marker(slots[sid]) is not None)
    report.appointments = sorted(
        (_scanned(a) for a in appointments.values()), key=lambda a: (a.start or "", a.id)
    )
    _check_references(report, appointments, slots, on_schedules, now)
    _check_overlaps(report, [slots[sid] for sid in sorted(on_schedules)], now)
    report.duration_seconds = (datetime.now(UTC) - started).total_seconds()
    return report


# --------------------------------------------------------------------------------------------
# The checks.


def _check_references(
    report: ScanReport,
    appointments: dict[str, Resource],
    slots: dict[str, Resource],
    on_schedules: set[str],
    now: datetime,
) -> None:
    referencing: dict[str, list[Resource]] = defaultdict(list)
    for appointment in appointments.values():
        for sid in _slot_ids(appointment):
            referencing[sid].append(appointment)
    for appointment in appointments.values():
        marker = _marker(appointment)
        if marker is None:
            continue
        name = f"Appointment/{appointment['id']} ({appointment.get('status')}, booking request {marker})"
        ids = _slot_ids(appointment)
        if appointment.get("status") not in ENDED and not ids:
            report.partial_writes.append(f"{name} references no Slot")
        for sid in ids:
            slot = slots.get(sid)
            if slot is None:
                report.partial_writes.append(f"{name} references Slot/{sid}, which does not exist")
            elif _marker(slot) != marker:
                report.partial_writes.append(
                    f"{name} references Slot/{sid}, written by booking request {_marker(slot)}"
                )
    for sid in sorted(on_schedules):
        slot = slots[sid]
        marker = _marker(slot)
        if marker is None:
            continue
        owners = [a for a in referencing.get(sid, []) if _marker(a) == marker]
        if not owners:
            report.orphan_slots.append(
                f"Slot/{sid} ({slot.get('status')} {slot.get('start')}, booking request {marker}) "
                "is referenced by no Appointment of its booking request"
            )
        elif all(a.get("status") in ENDED for a in owners) and _takes_time(slot, now):
            report.stranded_slots.append(
                f"Slot/{sid} ({slot.get('status')} {slot.get('start')}) still takes time, but "
                f"Appointment/{owners[0]['id']} is {owners[0].get('status')}"
            )


@dataclass(frozen=True)
class _Piece:
    slot_id: str
    marker: str | None
    status: str
    start: datetime
    end: datetime
    capacity: int

    def __str__(self) -> str:
        owner = f"booking request {self.marker}" if self.marker else "not the sidecar's"
        return f"Slot/{self.slot_id} ({self.status} {self.start.isoformat()}-{self.end.isoformat()}, {owner})"


def _check_overlaps(report: ScanReport, slots: Iterable[Resource], now: datetime) -> None:
    by_schedule: dict[str, list[_Piece]] = defaultdict(list)
    for slot in slots:
        if not _takes_time(slot, now):
            continue
        try:
            start, end = _instant(slot["start"]), _instant(slot["end"])
        except (KeyError, ValueError):
            report.partial_writes.append(f"Slot/{slot.get('id')} has no readable start/end")
            continue
        schedule = str((slot.get("schedule") or {}).get("reference"))
        by_schedule[schedule].append(
            _Piece(str(slot["id"]), _marker(slot), str(slot.get("status")), start, end, _capacity(slot))
        )
    for schedule, pieces in sorted(by_schedule.items()):
        pieces.sort(key=lambda p: (p.start, p.end))
        for index, first in enumerate(pieces):
            for second in pieces[index + 1 :]:
                if second.start >= first.end:
                    break
                if first.marker == second.marker or (first.marker is None and second.marker is None):
                    continue  # one booking's own Slots, or two of the administrator's blocks
                if _shares(first) and _shares(second):
                    continue  # footprints counted below, against the capacity
                report.overlaps.append(f"{schedule}: {first} overlaps {second}")
        _check_capacity(report, schedule, [p for p in pieces if _shares(p)])


def _shares(piece: _Piece) -> bool:
    """A piece of a booking's footprint (its visit or a buffer) on a Schedule whose capacity is
    above 1: such pieces may overlap others, up to the capacity (SPEC §3)."""
    return piece.marker is not None and piece.capacity > 1


def _check_capacity(report: ScanReport, schedule: str, pieces: list[_Piece]) -> None:
    """Footprints on a Schedule with capacity above 1: at no instant more than the capacity.
    A booking's pieces (buffer before, visit, buffer after) follow each other, so counting
    pieces at an instant counts footprints."""
    shared = pieces
    events = sorted([(v.start, 1, v) for v in shared] + [(v.end, -1, v) for v in shared], key=lambda e: e[:2])
    current: list[_Piece] = []
    for _when, step, piece in events:
        if step < 0:
            current.remove(piece)
            continue
        current.append(piece)
        if len(current) > min(p.capacity for p in current):
            report.overlaps.append(
                f"{schedule}: {len(current)} footprints at once beyond capacity: "
                + ", ".join(map(str, current))
            )


# --------------------------------------------------------------------------------------------
# Who wrote what.


def creating_requests(hapi_base: str, appointment_ids: Iterable[str]) -> dict[str, list[str]]:
    """For each Appointment, the request ids (``X-Request-ID``) of the ``book``/``hold``
    transactions that wrote it, read from the Provenance each sidecar transaction carries.

    One creating request per Appointment is what a transaction guarantees; a test can then
    check that the request whose caller was told "Nothing was stored" is none of them, and
    that the one told 201 is the one that stored it.
    """
    base = hapi_base.rstrip("/")
    found: dict[str, list[str]] = {a: [] for a in appointment_ids}
    for chunk in _chunks(sorted(found)):
        targets = ",".join(f"Appointment/{a}" for a in chunk)
        for provenance, _mode in _search(base, "Provenance", [("target", targets)]):
            operation = next(
                (
                    c.get("code")
                    for c in (provenance.get("activity") or {}).get("coding") or []
                    if c.get("system") == OPERATION_SYSTEM
                ),
                None,
            )
            if operation not in ("book", "hold"):
                continue
            request_id = next(
                (
                    e.get("valueString")
                    for e in provenance.get("extension") or []
                    if e.get("url") == REQUEST_ID_URL
                ),
                None,
            )
            for target in provenance.get("target") or []:
                reference = str((target or {}).get("reference") or "")
                appointment_id = reference.split("/")[1] if reference.startswith("Appointment/") else None
                if appointment_id in found and request_id:
                    found[appointment_id].append(str(request_id))
    return found


# --------------------------------------------------------------------------------------------
# Reading.


def _search(base: str, resource_type: str, params: list[tuple[str, str]]) -> list[tuple[Resource, str]]:
    """Every entry of every page with its search mode, bypassing HAPI's search cache."""
    url: str | None = f"{base}/{resource_type}"
    query: list[tuple[str, str]] | None = [*params, ("_count", "500")]
    found: list[tuple[Resource, str]] = []
    while url:
        response = requests.get(url, params=query, headers=NO_CACHE, timeout=60)
        response.raise_for_status()
        bundle = response.json()
        for entry in bundle.get("entry") or []:
            resource = entry.get("resource") or {}
            mode = (entry.get("search") or {}).get("mode", "match")
            if resource.get("resourceType") != "OperationOutcome":
                found.append((resource, mode))
        url = next((link["url"] for link in bundle.get("link") or [] if link.get("relation") == "next"), None)
        query = None
    return found


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for index in range(0, len(values), _ID_CHUNK):
        yield values[index : index + _ID_CHUNK]


def _marker(resource: Resource) -> str | None:
    """The booking request id: a ``meta.tag`` (code) or an identifier (value) of the
    booking-request system -- the sidecar has carried it both ways."""
    meta = resource.get("meta")
    for tag in (meta.get("tag") if isinstance(meta, dict) else None) or []:
        if isinstance(tag, dict) and tag.get("system") == BOOKING_REQUEST_SYSTEM and tag.get("code"):
            return str(tag["code"])
    for identifier in resource.get("identifier") or []:
        if isinstance(identifier, dict) and identifier.get("system") == BOOKING_REQUEST_SYSTEM:
            value = identifier.get("value")
            return str(value) if value is not None else None
    return None


def _slot_ids(appointment: Resource) -> list[str]:
    ids = []
    for reference in appointment.get("slot") or []:
        text = str((reference or {}).get("reference") or "")
        if text.startswith("Slot/"):
            ids.append(text.split("/")[1])
    return ids


def _scanned(appointment: Resource) -> ScannedAppointment:
    identifiers = tuple(
        (i.get("system"), str(i.get("value")))
        for i in appointment.get("identifier") or []
        if isinstance(i, dict) and i.get("value") is not None
    )
    return ScannedAppointment(
        id=str(appointment["id"]),
        status=str(appointment.get("status")),
        marker=_marker(appointment),
        identifiers=identifiers,
        slot_ids=tuple(_slot_ids(appointment)),
        start=appointment.get("start"),
    )


def _instant(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"{text!r} has no offset")
    return value


def _capacity(slot: Resource) -> int:
    for extension in slot.get("extension") or []:
        if isinstance(extension, dict) and extension.get("url") == SLOT_CAPACITY_URL:
            value = extension.get("valuePositiveInt")
            if isinstance(value, int) and value > 0:
                return value
    return 1


def _takes_time(slot: Resource, now: datetime) -> bool:
    """``busy``, ``busy-tentative`` or ``busy-unavailable``, unless a lapsed hold's."""
    if slot.get("status") not in TIME_TAKING:
        return False
    for extension in slot.get("extension") or []:
        if isinstance(extension, dict) and extension.get("url") == HOLD_EXPIRES_URL:
            try:
                return _instant(str(extension.get("valueInstant"))) > now
            except ValueError:
                return True
    return True
