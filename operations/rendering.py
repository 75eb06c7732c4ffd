"""Model -> FHIR JSON for what the operations return (proposals, synthetic Slots, Bundles)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import datetime
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
    from operations.model import Leg

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


VISIT = "visit"
BUFFER_BEFORE = "buffer-before"
BUFFER_AFTER = "buffer-after"
BUFFER_COMMENTS = {BUFFER_BEFORE: BUFFER_BEFORE_COMMENT, BUFFER_AFTER: BUFFER_AFTER_COMMENT}


def footprint(leg: Leg, visit: Interval) -> list[tuple[str, Interval]]:
    """A booking's footprint on one Schedule, in time order: ``(role, interval)`` for the buffer
    before (if any), the visit, and the buffer after (if any). Proposals and the written
    Slots are both built from it, so they cannot disagree."""
    parts = []
    if leg.params.buffer_before:
        parts.append((BUFFER_BEFORE, Interval(visit.start - leg.params.buffer_before, visit.start)))
    parts.append((VISIT, visit))
    if leg.params.buffer_after:
        parts.append((BUFFER_AFTER, Interval(visit.end, visit.end + leg.params.buffer_after)))
    return parts


class Renderer:
    """Renders the proposals of one request. Built once per request: the serviceType concept
    is made once and shared, and each instant is formatted once (neighbouring proposals share
    their buffer edges), which keeps large ``_count`` answers cheap."""

    def __init__(self, service: Service, zone: ZoneInfo) -> None:
        self.service = service
        self.zone = zone
        self.concept = service_type_concept(service)
        self._formatted: dict[datetime, str] = {}

    def instant(self, value: datetime) -> str:
        text = self._formatted.get(value)
        if text is None:
            text = self._formatted[value] = format_instant(value, self.zone)
        return text

    def leg_slots(self, leg: Leg, visit: Interval, index: int) -> list[Resource]:
        """The contained Slots of one Schedule: the ``busy`` visit and its buffers."""
        slots: list[Resource] = []
        for role, part in footprint(leg, visit):
            slot: Resource = {
                "resourceType": "Slot",
                "id": f"{role}-{index}",
                "schedule": {"reference": f"Schedule/{leg.schedule.id}"},
                "status": "busy" if role == VISIT else "busy-unavailable",
                "start": self.instant(part.start),
                "end": self.instant(part.end),
            }
            if role != VISIT:
                slot["comment"] = BUFFER_COMMENTS[role]
            slots.append(slot)
        return slots

    def appointment(self, legs: Sequence[Leg], visit: Interval) -> Resource:
        """A proposed Appointment as ``$find`` returns it (SPEC §4): no id, nothing stored."""
        contained: list[Resource] = []
        participants: list[Resource] = []
        for index, leg in enumerate(legs):
            contained.extend(self.leg_slots(leg, visit, index))
            actor: Resource = {"reference": leg.schedule.actor.reference}
            if leg.schedule.actor.display:
                actor["display"] = leg.schedule.actor.display
            participants.append({"actor": actor, "required": "required", "status": "needs-action"})
        appointment: Resource = {
            "resourceType": "Appointment",
            "contained": contained,
            "status": "proposed",
            "serviceType": [self.concept],
            "start": self.instant(visit.start),
            "end": self.instant(visit.end),
            "participant": participants,
        }
        minutes = visit.duration.total_seconds() / 60
        if minutes == int(minutes):
            appointment["minutesDuration"] = int(minutes)
        return appointment

    def free_slot(self, schedule: Schedule, visit: Interval) -> Resource:
        """An unsaved ``free`` Slot for ``Schedule/<id>/$find``."""
        return {
            "resourceType": "Slot",
            "schedule": {"reference": f"Schedule/{schedule.id}"},
            "serviceType": [self.concept],
            "status": "free",
            "start": self.instant(visit.start),
            "end": self.instant(visit.end),
        }


def outcome_entry(
    diagnostics: str, expression: str, severity: str = "warning", code: str = "business-rule"
) -> Resource:
    """A searchset entry with ``search.mode = outcome`` explaining why nothing is offered (or
    what of the request was left out)."""
    return {
        "resource": {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": severity,
                    "code": code,
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
