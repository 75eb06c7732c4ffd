"""Model -> FHIR JSON for what the operations return (proposals, synthetic Slots, Bundles)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import datetime, timedelta
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
    """Renders the proposals of one request. Built once per request, it makes each part shared
    by many proposals once: the serviceType concept, each instant's text (neighbouring
    proposals share their buffer edges), each Schedule's reference and participant, and each
    footprint's times (Schedules with the same buffers share them). Large ``_count`` answers stay
    cheap (10 Schedules x 100 proposals: 1,000 contained Slots). The parts are shared between the
    resources returned, so those are read-only: a caller that changes one replaces a part
    (as ``ihe_find`` does with ``participant``), never edits it in place."""

    def __init__(self, service: Service, zone: ZoneInfo) -> None:
        self.service = service
        self.zone = zone
        self.concept = service_type_concept(service)
        self._formatted: dict[datetime, str] = {}
        self._schedules: dict[str, Resource] = {}
        self._participants: dict[tuple[str, str | None], Resource] = {}
        self._ids: dict[tuple[str, int], str] = {}

    def instant(self, value: datetime) -> str:
        text = self._formatted.get(value)
        if text is None:
            text = self._formatted[value] = format_instant(value, self.zone)
        return text

    def _parts(self, leg: Leg, visit: Interval) -> list[tuple[str, str, str]]:
        """``(role, start, end)`` of the footprint, the instants as text."""
        return [
            (role, self.instant(part.start), self.instant(part.end)) for role, part in footprint(leg, visit)
        ]

    def _schedule(self, schedule_id: str) -> Resource:
        reference = self._schedules.get(schedule_id)
        if reference is None:
            reference = self._schedules[schedule_id] = {"reference": f"Schedule/{schedule_id}"}
        return reference

    def _slot_id(self, role: str, index: int) -> str:
        text = self._ids.get((role, index))
        if text is None:
            text = self._ids[role, index] = f"{role}-{index}"
        return text

    def _participant(self, leg: Leg) -> Resource:
        actor = leg.schedule.actor
        key = (actor.reference, actor.display)
        participant = self._participants.get(key)
        if participant is None:
            shown: Resource = {"reference": actor.reference}
            if actor.display:
                shown["display"] = actor.display
            participant = self._participants[key] = {
                "actor": shown,
                "required": "required",
                "status": "needs-action",
            }
        return participant

    def _slots(self, leg: Leg, parts: list[tuple[str, str, str]], index: int) -> list[Resource]:
        slots: list[Resource] = []
        schedule = self._schedule(leg.schedule.id)
        for role, start, end in parts:
            slot: Resource = {
                "resourceType": "Slot",
                "id": self._slot_id(role, index),
                "schedule": schedule,
                "status": "busy" if role == VISIT else "busy-unavailable",
                "start": start,
                "end": end,
            }
            if role != VISIT:
                slot["comment"] = BUFFER_COMMENTS[role]
            slots.append(slot)
        return slots

    def appointment(self, legs: Sequence[Leg], visit: Interval) -> Resource:
        """A proposed Appointment as ``$find`` returns it (SPEC §4): no id, nothing stored."""
        contained: list[Resource] = []
        footprints: dict[tuple[timedelta, timedelta], list[tuple[str, str, str]]] = {}
        for index, leg in enumerate(legs):
            buffers = (leg.params.buffer_before, leg.params.buffer_after)
            parts = footprints.get(buffers)
            if parts is None:
                parts = footprints[buffers] = self._parts(leg, visit)
            contained.extend(self._slots(leg, parts, index))
        appointment: Resource = {
            "resourceType": "Appointment",
            "contained": contained,
            "status": "proposed",
            "serviceType": [self.concept],
            "start": self.instant(visit.start),
            "end": self.instant(visit.end),
            "participant": [self._participant(leg) for leg in legs],
        }
        minutes = visit.duration.total_seconds() / 60
        if minutes == int(minutes):
            appointment["minutesDuration"] = int(minutes)
        return appointment

    def free_slot(self, schedule: Schedule, visit: Interval) -> Resource:
        """An unsaved ``free`` Slot for ``Schedule/<id>/$find``."""
        return {
            "resourceType": "Slot",
            "schedule": self._schedule(schedule.id),
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
