"""The doctor's checks of what is booked: Slots and Appointments that disagree with each other
or with the rules the sidecar books by (SPEC §3, §4, §5.1).

Slots are read as the engine reads them (``operations.parameters.parse_slot``: capacity stamps,
hold expiry, buffers), Appointments through ``operations.writes`` (their Slot references, hold
expiry, the sidecar's booking marker), and schedules booked together are held to the grid rule
of ``operations.legs.agreed_grid``. What the checks add is the other direction: not "may this
be booked?" but "does what is stored still make sense?".
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from operations.errors import Unprocessable
from operations.fhir_values import as_list, dig, format_instant, reference_id
from operations.legs import agreed_grid
from operations.model import HOLD_EXPIRES_URL, Leg, SlotOverlay, SlotStatus
from operations.parameters import parse_slot, service_references
from operations.store import Resource
from operations.writes import ENDED_STATUSES, booking_marker, hold_expiry, slot_ids, slot_reference_id
from plugin.doctor_config import Configuration
from plugin.doctor_findings import Finding
from plugin.doctor_read import ClinicData, is_booking_slot

_VISIT = frozenset({SlotStatus.BUSY, SlotStatus.BUSY_TENTATIVE})
_NOT_BOOKED = ENDED_STATUSES | {"proposed", "waitlist"}
_SHOWN = 3
"""Resources named in one message before the rest are counted."""


def check_bookings(clinic: ClinicData, config: Configuration) -> list[Finding]:
    """Every finding about Slots and Appointments of the Schedules read."""
    scope = {str(s.get("id")) for s in clinic.schedules}
    overlays = {str(s.get("id")): o for s in clinic.slots if (o := parse_slot(s)) is not None}
    on_schedules = actor_schedules(clinic.schedules)
    stuck, reported_slots = stuck_holds(clinic, scope, on_schedules)
    return [
        *over_capacity([s for s in clinic.slots if _in(overlays, s, scope)], clinic.now, config),
        *appointments_without_slots(clinic.appointments, clinic.slots, on_schedules),
        *unaccounted_slots(clinic, scope, overlays, skip=reported_slots),
        *stuck,
        *grid_mismatches(clinic.appointments, overlays, config),
    ]


def actor_schedules(schedules: Iterable[Resource]) -> dict[str, list[str]]:
    """Actor reference -> the ids of the Schedules it is the actor of."""
    found: dict[str, list[str]] = {}
    for schedule in schedules:
        for actor in as_list(schedule.get("actor")):
            reference = dig(actor, "reference")
            if isinstance(reference, str):
                found.setdefault(reference, []).append(str(schedule.get("id")))
    return found


def over_capacity(slots: Sequence[Resource], now: datetime, config: Configuration) -> list[Finding]:
    """Bookings that overlap on one Schedule beyond the capacity they were booked with: the
    sidecar admits a booking only while fewer footprints than its own capacity, and than the
    capacity stamped on each of them, cover every instant (SPEC §3), so more at once means time
    was booked around it. Lapsed holds and administrators' blocks are not bookings."""
    by_schedule: dict[str, list[tuple[SlotOverlay, Resource]]] = {}
    for resource in slots:
        overlay = parse_slot(resource)
        if overlay is None or not (overlay.status in _VISIT or overlay.is_buffer):
            continue
        if overlay.hold_expires is not None and overlay.hold_expires <= now:
            continue
        by_schedule.setdefault(overlay.schedule_id, []).append((overlay, resource))
    findings = []
    for schedule_id, footprints in sorted(by_schedule.items()):
        schedule = config.schedules.get(schedule_id)
        zone = schedule.actor.timezone if schedule is not None else None
        for overflow in overflows(footprints):
            culprit = _culprit(list(overflow.slots.values()))
            names = ", ".join(f"Slot/{sid}" for sid in sorted(overflow.slots))
            outsider = (
                "" if booking_marker(culprit) else f" (Slot/{culprit.get('id')} was not written by $book)"
            )
            findings.append(
                Finding(
                    "slots-over-capacity",
                    f"Slot/{culprit.get('id')}",
                    "Slot.start",
                    f"Schedule/{schedule_id} has {overflow.peak} bookings at once from "
                    f"{format_instant(overflow.start, zone)} to {format_instant(overflow.end, zone)} "
                    f"where their capacity allows {overflow.limit}: {names}{outsider}",
                )
            )
    return findings


@dataclass
class Overflow:
    """A stretch of time with more bookings at once than their capacity allows."""

    start: datetime
    end: datetime
    peak: int
    """The most footprints active at once."""
    limit: int
    """The smallest capacity among them."""
    slots: dict[str, Resource] = field(default_factory=dict)


def overflows(footprints: Sequence[tuple[SlotOverlay, Resource]]) -> list[Overflow]:
    """Sweep over the footprints' boundaries; touching overfull stretches join into one."""
    ordered = sorted(footprints, key=lambda item: item[0].interval.start)
    bounds = sorted({t for overlay, _ in footprints for t in overlay.interval})
    active: list[tuple[datetime, int]] = []  # heap of (end, index into ordered)
    found: list[Overflow] = []
    index = 0
    for left, right in itertools.pairwise(bounds):
        while index < len(ordered) and ordered[index][0].interval.start <= left:
            heapq.heappush(active, (ordered[index][0].interval.end, index))
            index += 1
        while active and active[0][0] <= left:
            heapq.heappop(active)
        if not active:
            continue
        limit = min(ordered[i][0].capacity or 1 for _, i in active)
        if len(active) <= limit:
            continue
        if not found or found[-1].end != left:
            found.append(Overflow(left, right, len(active), limit))
        current = found[-1]
        current.end, current.peak, current.limit = (
            right,
            max(current.peak, len(active)),
            min(current.limit, limit),
        )
        current.slots.update({str(ordered[i][1].get("id")): ordered[i][1] for _, i in active})
    return found


def _culprit(members: list[Resource]) -> Resource:
    """The Slot to point at: one the sidecar did not write, else the one written last."""
    outsiders = [r for r in members if booking_marker(r) is None]
    pool = outsiders or members
    return max(pool, key=lambda r: (str(dig(r, "meta", "lastUpdated") or ""), str(r.get("id"))))


def appointments_without_slots(
    appointments: Iterable[Resource], slots: Iterable[Resource], on_schedules: dict[str, list[str]]
) -> list[Finding]:
    """Booked Appointments of these Schedules' actors that take no time on them: no Slot, a
    Slot that no longer exists, or Slots none of which is ``busy``. The sidecar sees only Slots,
    so it offers that time to the next patient."""
    by_id = {str(s.get("id")): s for s in slots}
    findings = []
    for appointment in appointments:
        schedules = _schedules_of(appointment, on_schedules)
        if appointment.get("status") != "booked" or not schedules:
            continue
        reference = f"Appointment/{appointment.get('id')}"
        where = (
            f"{reference} ({appointment.get('start')}, on {', '.join(f'Schedule/{s}' for s in schedules)})"
        )
        refs = as_list(appointment.get("slot"))
        if not refs:
            findings.append(
                Finding(
                    "appointment-without-slots",
                    reference,
                    "Appointment.slot",
                    f"{where} is booked but references no Slot: its time is not taken",
                )
            )
            continue
        gone: list[tuple[int, str]] = []
        statuses: list[str] = []
        for i, ref in enumerate(refs):
            sid = slot_reference_id(ref)
            slot = by_id.get(sid) if sid is not None else None
            if slot is None:
                gone.append((i, f"Slot/{sid}" if sid is not None else repr(dig(ref, "reference"))))
            else:
                statuses.append(str(slot.get("status")))
        for i, target in gone:
            findings.append(
                Finding(
                    "appointment-without-slots",
                    reference,
                    f"Appointment.slot[{i}]",
                    f"{where} references {target}, which does not exist: that time is not taken",
                )
            )
        if not gone and SlotStatus.BUSY not in statuses:
            findings.append(
                Finding(
                    "appointment-without-slots",
                    reference,
                    "Appointment.slot",
                    f"{where} is booked but none of its Slots is busy "
                    f"({', '.join(sorted(statuses))}): its time is not taken",
                )
            )
    return findings


def unaccounted_slots(
    clinic: ClinicData, scope: set[str], overlays: dict[str, SlotOverlay], *, skip: set[str]
) -> list[Finding]:
    """Booking Slots (visits, and the sidecar's buffers) of these Schedules that no live
    Appointment references: time taken for nobody."""
    statuses: dict[str, list[str]] = {}
    for appointment in clinic.appointments:
        for sid in slot_ids(appointment):
            statuses.setdefault(sid, []).append(str(appointment.get("status")))
    findings = []
    for slot in clinic.slots:
        sid = str(slot.get("id"))
        overlay = overlays.get(sid)
        if overlay is None or overlay.schedule_id not in scope or sid in skip or not is_booking_slot(slot):
            continue
        if overlay.hold_expires is not None and overlay.hold_expires <= clinic.now:
            continue  # a lapsed hold blocks nothing; stuck_holds says when it stays too long
        when = f"{slot.get('start')} on Schedule/{overlay.schedule_id}"
        referencing = statuses.get(sid)
        if not referencing:
            findings.append(
                Finding(
                    "slot-without-appointment",
                    f"Slot/{sid}",
                    "Slot",
                    f"Slot/{sid} ({slot.get('status')}, {when}) takes time, but no Appointment references it",
                )
            )
        elif all(status in ENDED_STATUSES for status in referencing):
            findings.append(
                Finding(
                    "slot-of-ended-appointment",
                    f"Slot/{sid}",
                    "Slot",
                    f"Slot/{sid} ({slot.get('status')}, {when}) still takes time, but the Appointments "
                    f"referencing it have ended ({', '.join(sorted(set(referencing)))})",
                )
            )
    return findings


def stuck_holds(
    clinic: ClinicData, scope: set[str], on_schedules: dict[str, list[str]]
) -> tuple[list[Finding], set[str]]:
    """Holds whose expiry passed longer ago than the sweep needs to cancel them: the sweep is
    not running, or the hold is not the sidecar's (no booking request id) and it never will.
    Lapsed holds block nothing, so this is a warning. Also returns the ids of the Slots
    accounted for, so they are not reported again as Slots without an Appointment."""
    cutoff = clinic.now - clinic.hold_grace
    findings = []
    reported: set[str] = set()
    for appointment in clinic.appointments:
        expires = hold_expiry(appointment)
        if appointment.get("status") != "pending" or expires is None or expires > cutoff:
            continue
        if not _schedules_of(appointment, on_schedules):
            continue
        reported.update(slot_ids(appointment))
        reference = f"Appointment/{appointment.get('id')}"
        why = (
            "the hold sweep should have cancelled it"
            if booking_marker(appointment)
            else "it carries no booking request id of the sidecar, so the sweep never cancels it"
        )
        findings.append(
            Finding(
                "hold-stuck",
                reference,
                f"Appointment.extension[{_extension_index(appointment)}]",
                f"{reference} is a hold that lapsed at {format_instant(expires)} and is still pending: {why}",
            )
        )
    for slot in clinic.slots:
        sid = str(slot.get("id"))
        overlay = parse_slot(slot)
        if overlay is None or overlay.schedule_id not in scope or sid in reported:
            continue
        if overlay.hold_expires is None or overlay.hold_expires > cutoff:
            continue
        reported.add(sid)
        findings.append(
            Finding(
                "hold-stuck",
                f"Slot/{sid}",
                f"Slot.extension[{_extension_index(slot)}]",
                f"Slot/{sid} ({slot.get('status')} on Schedule/{overlay.schedule_id}) belongs to a hold "
                f"that lapsed at {format_instant(overlay.hold_expires)} and was never cleaned up",
            )
        )
    return findings, reported


def grid_mismatches(
    appointments: Iterable[Resource], overlays: dict[str, SlotOverlay], config: Configuration
) -> list[Finding]:
    """Schedules booked together (the visit Slots of one Appointment lie on each) whose grids
    disagree: ``$find`` for them together answers 422, so the next such booking cannot be made."""
    together: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for appointment in appointments:
        if appointment.get("status") in _NOT_BOOKED:
            continue
        services = _service_ids(appointment)
        schedules = sorted(
            {
                o.schedule_id
                for sid in slot_ids(appointment)
                if (o := overlays.get(sid)) and o.status in _VISIT
            }
        )
        if len(services) == 1 and len(schedules) > 1:
            together.setdefault((services[0], tuple(schedules)), []).append(str(appointment.get("id")))
    findings = []
    for (service_id, schedule_ids), booked in sorted(together.items()):
        if any((s, service_id) not in config.resolved for s in schedule_ids):
            continue  # its configuration cannot be read: reported as such
        legs = [Leg(config.schedules[s], config.resolved[(s, service_id)], s) for s in schedule_ids]
        try:
            agreed_grid(legs)
        except Unprocessable as exc:
            resource, expression = _grid_culprit(config, exc.expression[0], schedule_ids[0], service_id)
            shown = ", ".join(f"Appointment/{a}" for a in booked[:_SHOWN])
            more = f" and {len(booked) - _SHOWN} more" if len(booked) > _SHOWN else ""
            findings.append(
                Finding(
                    "grid-mismatch",
                    resource,
                    expression,
                    f"{exc.diagnostics} (HealthcareService/{service_id}), yet they are booked together "
                    f"({shown}{more}): $find for them together answers 422",
                )
            )
    return findings


def _grid_culprit(config: Configuration, disagreeing: str, first: str, service_id: str) -> tuple[str, str]:
    """Where the grid differs: the Schedule block that overrides the service's grid (the
    disagreeing Schedule's, else the first's)."""
    for schedule_id in (disagreeing, first):
        block = config.schedules[schedule_id].parameter_blocks.get(service_id)
        if block is not None:
            return f"Schedule/{schedule_id}", block.expression
    return f"Schedule/{disagreeing}", "Schedule.extension"


def _schedules_of(appointment: Resource, on_schedules: dict[str, list[str]]) -> list[str]:
    found: list[str] = []
    for participant in as_list(appointment.get("participant")):
        reference = dig(participant, "actor", "reference")
        found += on_schedules.get(reference, []) if isinstance(reference, str) else []
    return sorted(set(found))


def _service_ids(appointment: Resource) -> list[str]:
    ids = []
    for reference in service_references(as_list(appointment.get("serviceType"))):
        try:
            ids.append(reference_id(reference, "HealthcareService"))
        except ValueError:
            continue
    return sorted(set(ids))


def _extension_index(resource: Resource) -> int:
    for index, extension in enumerate(as_list(resource.get("extension"))):
        if dig(extension, "url") == HOLD_EXPIRES_URL:
            return index
    return 0


def _in(overlays: dict[str, SlotOverlay], slot: Resource, scope: set[str]) -> bool:
    overlay = overlays.get(str(slot.get("id")))
    return overlay is not None and overlay.schedule_id in scope
