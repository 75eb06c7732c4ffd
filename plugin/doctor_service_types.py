"""The doctor's checks of service-type codes: where a code decides what applies to whom and
matches nothing, the data says one thing and scheduling does another, silently.

* A Slot with ``serviceType`` applies only to the services of its Schedule whose ``type`` shares
  a coding with it (SPEC §2.4). Whether it does is decided by the engine's own rule,
  ``operations.availability.slot_applies``; a Slot it applies to no service of its Schedule is a
  block that blocks nothing, or extra hours nobody gets.
* A Schedule offers a service only through the ``service-type-reference`` extension (SPEC §2.3);
  a ``serviceType`` concept with codes and no reference offers nothing, however much it reads
  like a visit type. Its codes are compared, by the same rule (system and code), with the
  ``type`` of the services read, to say which one it probably meant.
"""

from __future__ import annotations

from collections.abc import Iterable

from operations.availability import slot_applies
from operations.config_values import codings, service_ids
from operations.fhir_values import as_list, format_instant
from operations.model import Coding, Schedule, Service, SlotOverlay, SlotStatus
from operations.parameters import parse_slot
from operations.store import Resource
from plugin.doctor_config import Configuration
from plugin.doctor_findings import Finding
from plugin.doctor_read import ClinicData, is_booking_slot, unreferenced_concepts

_SHOWN = 3
"""Services named in one message before the rest are counted."""


def check_service_types(clinic: ClinicData, config: Configuration) -> list[Finding]:
    """Slots whose serviceType matches no service of their Schedule, and Schedule serviceType
    concepts that name no service."""
    return [*unmatched_slots(clinic, config), *unreferenced_service_types(clinic)]


def unmatched_slots(clinic: ClinicData, config: Configuration) -> list[Finding]:
    """Slots restricted by ``serviceType`` to services their Schedule does not offer: the engine
    applies them to nobody. Only Slots it would otherwise apply count: not ``entered-in-error``
    or unreadable ones (``parse_slot`` drops them), not lapsed holds (they remove nothing). A
    Schedule that could not be read, or offers a service that could not be read (reported
    already; the Slot might be meant for it), or offers none at all, is not judged."""
    findings = []
    for resource in clinic.slots:
        overlay = parse_slot(resource)
        if overlay is None or overlay.service_codings is None:
            continue  # for every service (or nothing the engine reads)
        lapsed = overlay.hold_expires is not None and overlay.hold_expires <= clinic.now
        if lapsed and overlay.status != SlotStatus.FREE:
            continue
        schedule = config.schedules.get(overlay.schedule_id)
        if schedule is None or not schedule.offered_service_ids:
            continue
        services = [config.services.get(i) for i in schedule.offered_service_ids]
        offered = [s for s in services if s is not None]
        if len(offered) < len(services) or any(slot_applies(overlay, s) for s in offered):
            continue
        findings.append(_unmatched(resource, overlay, schedule, offered))
    return findings


def _unmatched(
    resource: Resource, overlay: SlotOverlay, schedule: Schedule, offered: list[Service]
) -> Finding:
    concepts = as_list(resource.get("serviceType"))
    index = next((i for i, c in enumerate(concepts) if codings([c]) or service_ids([c])), 0)
    named = [_coding(c) for c in _sorted(overlay.service_codings or ())]
    named += [f"HealthcareService/{i}" for i in sorted(overlay.service_ids)]
    if overlay.status == SlotStatus.FREE:
        effect = "it adds no time for anyone"
    elif is_booking_slot(resource):
        effect = "its time is taken for no service, and offered to the next patient"
    else:
        effect = "it blocks nothing"
    zone = schedule.actor.timezone
    return Finding(
        "slot-service-type-unmatched",
        f"Slot/{overlay.id}",
        f"Slot.serviceType[{index}]",
        f"Slot/{overlay.id} ({overlay.status}, {format_instant(overlay.interval.start, zone)} to "
        f"{format_instant(overlay.interval.end, zone)}) is for {', '.join(named)}, which no service of "
        f"Schedule/{schedule.id} has in its type ({_offered(offered)}): {effect}",
    )


def unreferenced_service_types(clinic: ClinicData) -> list[Finding]:
    """Schedule ``serviceType`` concepts with codes and no service-type-reference, unless every
    service whose ``type`` shares a coding with them is offered by the Schedule anyway (then the
    concept only describes what it offers). Names the services it probably meant, if any."""
    types = {
        service_id: codings(as_list(resource.get("type")))
        for service_id, resource in {**clinic.services_by_type, **clinic.services}.items()
    }
    findings = []
    for resource in clinic.schedules:
        reference = f"Schedule/{resource.get('id')}"
        offered = service_ids(as_list(resource.get("serviceType")))
        for index, concept in unreferenced_concepts(resource):
            named = codings([concept])
            meant = sorted(i for i, type_codings in types.items() if named & type_codings)
            if meant and set(meant) <= offered:
                continue
            codes = ", ".join(_coding(c) for c in _sorted(named))
            if meant:
                candidates = [i for i in meant if i not in offered]
                what = (
                    f"so the Schedule does not offer it; it probably means "
                    f"{_names(candidates)} (whose type has that code): add the reference"
                )
            else:
                what = (
                    "and no HealthcareService has that type: the Schedule looks as if it offers a "
                    "visit type that $find cannot find"
                )
            findings.append(
                Finding(
                    "service-type-without-reference",
                    reference,
                    f"Schedule.serviceType[{index}]",
                    f"{reference}: serviceType[{index}] ({codes}) has no service-type-reference, {what}",
                )
            )
    return findings


def _offered(services: list[Service]) -> str:
    described = [
        f"HealthcareService/{s.id}: {', '.join(_coding(c) for c in _sorted(s.type_codings)) or 'no type'}"
        for s in sorted(services, key=lambda s: s.id)
    ]
    more = len(described) - _SHOWN
    return "; ".join(described[:_SHOWN]) + (f"; and {more} more" if more > 0 else "")


def _names(ids: list[str]) -> str:
    more = len(ids) - _SHOWN
    return " or ".join(f"HealthcareService/{i}" for i in ids[:_SHOWN]) + (
        f" (or {more} more)" if more > 0 else ""
    )


def _sorted(found: Iterable[Coding]) -> list[Coding]:
    return sorted(found, key=lambda c: (c.system or "", c.code or ""))


def _coding(coding: Coding) -> str:
    return f"{coding.system}|{coding.code or ''}" if coding.system else str(coding.code)
