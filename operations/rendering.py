"""Model -> FHIR JSON for what the operations return (proposals, synthetic Slots, Bundles)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from operations.fhir_values import format_instant
from operations.model import (
    BUFFER_AFTER_COMMENT,
    BUFFER_BEFORE_COMMENT,
    SERVICE_TYPE_REFERENCE_URL,
    Interval,
    Schedule,
    Service,
)

if TYPE_CHECKING:
    from operations.find import Leg

Resource = dict[str, Any]


def service_type_concept(service: Service) -> Resource:
    """One CodeableConcept: every coding of the service's ``type`` plus the reference extension
    (the R4 stand-in for R5 ``CodeableReference(HealthcareService)``)."""
    codings: list[Any] = []
    for type_concept in service.type_concepts:
        for coding in type_concept.get("coding", []) or []:
            if coding not in codings:
                codings.append(copy.deepcopy(coding))
    concept: Resource = {
        "extension": [
            {
                "url": SERVICE_TYPE_REFERENCE_URL,
                "valueReference": {"reference": f"HealthcareService/{service.id}"}
                | ({"display": service.name} if service.name else {}),
            }
        ]
    }
    if codings:
        concept["coding"] = codings
    text = next((c.get("text") for c in service.type_concepts if isinstance(c.get("text"), str)), None)
    if text or service.name:
        concept["text"] = text or service.name
    return concept


def leg_slots(leg: Leg, visit: Interval, zone: ZoneInfo, index: int) -> list[Resource]:
    """The contained Slots of one Schedule: the ``busy`` visit and its buffers."""
    reference = {"reference": f"Schedule/{leg.schedule.id}"}
    slots: list[Resource] = []
    before, after = leg.params.buffer_before, leg.params.buffer_after
    if before:
        slots.append(
            {
                "resourceType": "Slot",
                "id": f"buffer-before-{index}",
                "schedule": dict(reference),
                "status": "busy-unavailable",
                "start": format_instant(visit.start - before, zone),
                "end": format_instant(visit.start, zone),
                "comment": BUFFER_BEFORE_COMMENT,
            }
        )
    slots.append(
        {
            "resourceType": "Slot",
            "id": f"visit-{index}",
            "schedule": dict(reference),
            "status": "busy",
            "start": format_instant(visit.start, zone),
            "end": format_instant(visit.end, zone),
        }
    )
    if after:
        slots.append(
            {
                "resourceType": "Slot",
                "id": f"buffer-after-{index}",
                "schedule": dict(reference),
                "status": "busy-unavailable",
                "start": format_instant(visit.end, zone),
                "end": format_instant(visit.end + after, zone),
                "comment": BUFFER_AFTER_COMMENT,
            }
        )
    return slots


def proposed_appointment(service: Service, legs: Sequence[Leg], visit: Interval, zone: ZoneInfo) -> Resource:
    """A proposed Appointment as ``$find`` returns it (SPEC §4): no id, nothing stored."""
    contained: list[Resource] = []
    participants: list[Resource] = []
    for index, leg in enumerate(legs):
        contained.extend(leg_slots(leg, visit, zone, index))
        actor: Resource = {"reference": leg.schedule.actor.reference}
        if leg.schedule.actor.display:
            actor["display"] = leg.schedule.actor.display
        participants.append({"actor": actor, "required": "required", "status": "needs-action"})
    appointment: Resource = {
        "resourceType": "Appointment",
        "contained": contained,
        "status": "proposed",
        "serviceType": [service_type_concept(service)],
        "start": format_instant(visit.start, zone),
        "end": format_instant(visit.end, zone),
        "participant": participants,
    }
    minutes = visit.duration.total_seconds() / 60
    if minutes == int(minutes):
        appointment["minutesDuration"] = int(minutes)
    return appointment


def synthetic_free_slot(service: Service, schedule: Schedule, visit: Interval, zone: ZoneInfo) -> Resource:
    """An unsaved ``free`` Slot for ``Schedule/<id>/$find``."""
    return {
        "resourceType": "Slot",
        "schedule": {"reference": f"Schedule/{schedule.id}"},
        "serviceType": [service_type_concept(service)],
        "status": "free",
        "start": format_instant(visit.start, zone),
        "end": format_instant(visit.end, zone),
    }


def outcome_entry(diagnostics: str, expression: str, severity: str = "warning") -> Resource:
    """A searchset entry with ``search.mode = outcome`` explaining why nothing is offered."""
    return {
        "resource": {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": severity,
                    "code": "business-rule",
                    "diagnostics": diagnostics,
                    "expression": [expression],
                }
            ],
        },
        "search": {"mode": "outcome"},
    }


def searchset(resources: Sequence[Resource], outcomes: Sequence[Resource] = ()) -> Resource:
    """A searchset Bundle; ``total`` counts the matches (there is no next page)."""
    bundle: Resource = {"resourceType": "Bundle", "type": "searchset", "total": len(resources)}
    entries = [{"resource": r, "search": {"mode": "match"}} for r in resources]
    entries.extend(outcomes)
    if entries:
        bundle["entry"] = entries
    return bundle
