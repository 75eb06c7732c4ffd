"""A proposal as ``$book``/``$hold`` receive it: the Appointment ``$find`` returned, checked for
shape and turned into a :class:`BookingRequest` -- or a 400 naming the culprit's FHIRPath.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from operations.errors import InvalidRequest
from operations.fhir_values import as_list, dig, parse_instant, reference_id
from operations.find_request import DEFAULT_MAX_SCHEDULES
from operations.ihe_parameters import Named
from operations.model import Interval, SlotStatus
from operations.parameters import service_references
from operations.series import DEFAULT_MAX_SERIES, Recurrence, parse_recurrence
from operations.store import Resource

MAX_PARTICIPANTS = 50

StructureCheck = Callable[[Resource, str], None]
"""Checks an incoming Appointment's structure against FHIR R4 (``plugin/`` supplies one built on
a FHIR model library); raises ``InvalidRequest`` naming the element at ``root``."""


@dataclass(frozen=True)
class Additions:
    """What the caller adds to the Appointment beside it (IHE ITI-116/117, SPEC §7.2): patients
    (``patient-reference``) as participants, and a ``comment``."""

    patients: tuple[Named, ...] = ()
    comment: str | None = None

    def __bool__(self) -> bool:
        return bool(self.patients) or self.comment is not None

    def apply(self, appointment: Resource) -> Resource:
        """A copy of ``appointment`` with the comment set and each patient a participant
        (``required``, ``needs-action``, as ``$find`` names the schedule actors) unless it is one."""
        changed = copy.deepcopy(appointment)
        if self.comment is not None:
            changed["comment"] = self.comment
        participants = changed.get("participant")
        if self.patients and isinstance(participants, list | None):
            participants = list(participants or [])
            present = {dig(p, "actor", "reference") for p in participants}
            for who in self.patients:
                if f"Patient/{who.id}" not in present:
                    participants.append(
                        {
                            "actor": {"reference": f"Patient/{who.id}"},
                            "required": "required",
                            "status": "needs-action",
                        }
                    )
            changed["participant"] = participants
        return changed

    @property
    def paths(self) -> dict[str, str]:
        """Per patient reference, the parameter that named it (for errors about it)."""
        return {f"Patient/{who.id}": who.expression for who in self.patients}


@dataclass(frozen=True)
class BookingRequest:
    """A validated proposal: one visit interval, one service, one busy Slot per Schedule."""

    appointment: Resource
    service_id: str
    visit: Interval
    schedule_ids: tuple[str, ...]
    buffers: dict[str, tuple[timedelta, timedelta]]
    """Per schedule id: the buffer lengths the proposal carries (before, after)."""
    visit_paths: dict[str, str]
    """Per schedule id: the FHIRPath of its busy Slot in the proposal, for errors."""
    identifiers: tuple[tuple[str | None, str], ...]
    root: str
    recurrence: Recurrence | None = None
    """``$book``/``$hold`` of a recurring series: every occurrence, or none (SPEC §7.4)."""
    named_elsewhere: dict[str, str] = dataclasses.field(default_factory=dict)
    """Participants the caller named beside the Appointment (``patient-reference``), by
    reference: the parameter errors about them point at."""

    @classmethod
    def from_body(
        cls,
        body: Any,
        *,
        max_schedules: int = DEFAULT_MAX_SCHEDULES,
        max_series: int = DEFAULT_MAX_SERIES,
        check_structure: StructureCheck | None = None,
        additions: Additions | None = None,
    ) -> BookingRequest:
        """The ``appointment`` (alias ``appointment-resource``) of a Parameters body, or a bare
        Appointment, and a ``recurrence`` (valueTiming) beside it; ``additions`` applied after
        ``check_structure`` has passed the Appointment as the caller sent it. Raises
        ``InvalidRequest`` (400) naming the culprit's FHIRPath."""
        appointment, root = _appointment_from_body(body)
        if check_structure is not None:
            check_structure(appointment, root)
        if additions:
            appointment = additions.apply(appointment)
        request = cls.from_appointment(appointment, root, max_schedules=max_schedules)
        if additions is not None and additions.patients:
            request = replace(request, named_elsewhere=additions.paths)
        recurrence = _recurrence_from_body(body, max_series)
        return replace(request, recurrence=recurrence) if recurrence is not None else request

    @classmethod
    def from_appointment(
        cls, appointment: Resource, root: str, *, max_schedules: int = DEFAULT_MAX_SCHEDULES
    ) -> BookingRequest:
        for field in ("serviceType", "contained", "participant", "identifier", "extension", "slot"):
            if field in appointment and not isinstance(appointment[field], list):
                raise InvalidRequest(
                    f"Appointment.{field} must be a list", code="structure", expression=f"{root}.{field}"
                )
        if appointment.get("status") not in (None, "proposed"):
            raise InvalidRequest(
                f"The appointment must be a proposal (status 'proposed'), not {appointment.get('status')!r}",
                code="value",
                expression=f"{root}.status",
            )
        if appointment.get("slot"):
            raise InvalidRequest(
                "The proposal must not reference stored Slots: its Slots are contained and written by the operation",
                code="invalid",
                expression=f"{root}.slot",
            )
        concepts = appointment.get("serviceType") or []
        if not isinstance(concepts, list):
            raise InvalidRequest(
                "serviceType must be a list", code="structure", expression=f"{root}.serviceType"
            )
        refs = list(dict.fromkeys(service_references(concepts)))
        if len(refs) != 1:
            raise InvalidRequest(
                f"The proposal must name exactly one HealthcareService in serviceType, it names {len(refs)}",
                code="required" if not refs else "invalid",
                expression=f"{root}.serviceType",
            )
        try:
            service_id = reference_id(refs[0], "HealthcareService")
        except ValueError as exc:
            raise InvalidRequest(str(exc), code="value", expression=f"{root}.serviceType") from None

        contained = appointment.get("contained") or []
        if not isinstance(contained, list):
            raise InvalidRequest("contained must be a list", code="structure", expression=f"{root}.contained")
        visits: dict[str, tuple[Interval, str]] = {}
        buffer_slots: list[tuple[str, Interval, str]] = []
        for index, resource in enumerate(contained):
            path = f"{root}.contained[{index}]"
            if not isinstance(resource, dict) or resource.get("resourceType") != "Slot":
                continue
            schedule_id, interval = _contained_slot(resource, path)
            status = resource.get("status")
            if status == SlotStatus.BUSY:
                if schedule_id in visits:
                    raise InvalidRequest(
                        f"Two busy Slots for Schedule/{schedule_id}: one visit per schedule",
                        code="invalid",
                        expression=path,
                    )
                visits[schedule_id] = (interval, path)
            elif status == SlotStatus.BUSY_UNAVAILABLE:
                buffer_slots.append((schedule_id, interval, path))
            else:
                raise InvalidRequest(
                    f"A contained Slot of a proposal is 'busy' (the visit) or 'busy-unavailable' (a buffer), not {status!r}",
                    code="value",
                    expression=f"{path}.status",
                )
        if not visits:
            raise InvalidRequest(
                "The proposal has no contained busy Slot: pass the Appointment as $find returned it",
                code="required",
                expression=f"{root}.contained",
            )
        if len(visits) > max_schedules:
            raise InvalidRequest(
                f"At most {max_schedules} schedules may take part in one booking, this proposal names {len(visits)}",
                code="value",
                expression=f"{root}.contained",
            )
        participants = appointment.get("participant") or []
        if len(participants) > MAX_PARTICIPANTS:
            raise InvalidRequest(
                f"At most {MAX_PARTICIPANTS} participants, this proposal names {len(participants)}",
                code="value",
                expression=f"{root}.participant",
            )
        first_interval, _ = next(iter(visits.values()))
        for interval, path in visits.values():
            if interval != first_interval:
                raise InvalidRequest(
                    "The busy Slots of the proposal do not all have the same start and end",
                    code="invalid",
                    expression=path,
                )
        for field, value in (("start", first_interval.start), ("end", first_interval.end)):
            if field in appointment:
                try:
                    given = parse_instant(appointment[field])
                except ValueError as exc:
                    raise InvalidRequest(str(exc), code="value", expression=f"{root}.{field}") from None
                if given != value:
                    raise InvalidRequest(
                        f"Appointment.{field} does not match its contained busy Slots",
                        code="invalid",
                        expression=f"{root}.{field}",
                    )
        buffers: dict[str, list[timedelta]] = {sid: [timedelta(0), timedelta(0)] for sid in visits}
        for schedule_id, interval, path in buffer_slots:
            if schedule_id not in visits:
                raise InvalidRequest(
                    f"A buffer Slot names Schedule/{schedule_id}, which has no visit in this proposal",
                    code="invalid",
                    expression=f"{path}.schedule",
                )
            if interval.end == first_interval.start:
                side = 0
            elif interval.start == first_interval.end:
                side = 1
            else:
                raise InvalidRequest(
                    "A buffer Slot must end where the visit starts or start where it ends",
                    code="invalid",
                    expression=path,
                )
            if buffers[schedule_id][side]:
                raise InvalidRequest(
                    f"Two buffer Slots on the same side of the visit for Schedule/{schedule_id}",
                    code="invalid",
                    expression=path,
                )
            buffers[schedule_id][side] = interval.duration
        identifiers = []
        for index, identifier in enumerate(appointment.get("identifier") or []):
            if not isinstance(identifier, dict) or not isinstance(identifier.get("value"), str):
                raise InvalidRequest(
                    "An identifier needs a value",
                    code="value",
                    expression=f"{root}.identifier[{index}]",
                )
            identifiers.append((identifier.get("system"), identifier["value"]))
        return cls(
            appointment=appointment,
            service_id=service_id,
            visit=first_interval,
            schedule_ids=tuple(visits),
            visit_paths={sid: path for sid, (_, path) in visits.items()},
            buffers={sid: (b[0], b[1]) for sid, b in buffers.items()},
            identifiers=tuple(identifiers),
            root=root,
        )


def _appointment_from_body(body: Any) -> tuple[Resource, str]:
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a FHIR Parameters or Appointment resource", code="structure")
    if body.get("resourceType") == "Appointment":
        return body, "Appointment"
    if body.get("resourceType") != "Parameters":
        raise InvalidRequest(
            f"The body must be a Parameters or Appointment resource, not {body.get('resourceType')!r}",
            code="structure",
        )
    found = [
        p
        for p in as_list(body.get("parameter"))
        if isinstance(p, dict) and p.get("name") in ("appointment", "appointment-resource")
    ]
    if not found:
        raise InvalidRequest(
            "The 'appointment' parameter (an Appointment resource) is required",
            code="required",
            expression="Parameters.appointment",
        )
    if len(found) > 1:
        raise InvalidRequest(
            "'appointment' (or its alias 'appointment-resource') may be given only once",
            code="value",
            expression=f"Parameters.{found[1]['name']}"
            + ("[1]" if found[1]["name"] == found[0]["name"] else ""),
        )
    # Errors point at the parameter as the caller named it.
    root = f"Parameters.{found[0]['name']}"
    resource = found[0].get("resource")
    if not isinstance(resource, dict) or resource.get("resourceType") != "Appointment":
        raise InvalidRequest(
            f"The '{found[0]['name']}' parameter must carry an Appointment resource",
            code="structure",
            expression=root,
        )
    return resource, root


def _recurrence_from_body(body: Resource, max_series: int) -> Recurrence | None:
    if body.get("resourceType") != "Parameters":
        return None
    found = [p for p in body.get("parameter") or [] if isinstance(p, dict) and p.get("name") == "recurrence"]
    if not found:
        return None
    if len(found) > 1:
        raise InvalidRequest(
            "recurrence may be given only once", code="value", expression="Parameters.recurrence[1]"
        )
    if "valueTiming" not in found[0]:
        raise InvalidRequest(
            "recurrence must be given as valueTiming", code="structure", expression="Parameters.recurrence"
        )
    return parse_recurrence(
        found[0]["valueTiming"], expression="Parameters.recurrence.valueTiming", max_series=max_series
    )


def _contained_slot(resource: Resource, path: str) -> tuple[str, Interval]:
    try:
        schedule_id = reference_id(dig(resource, "schedule", "reference"), "Schedule")
    except ValueError as exc:
        raise InvalidRequest(str(exc), code="value", expression=f"{path}.schedule") from None
    times = []
    for field in ("start", "end"):
        if field not in resource:
            raise InvalidRequest(f"The Slot has no {field}", code="required", expression=f"{path}.{field}")
        try:
            times.append(parse_instant(resource[field]))
        except ValueError as exc:
            raise InvalidRequest(str(exc), code="value", expression=f"{path}.{field}") from None
    if times[0] >= times[1]:
        raise InvalidRequest("The Slot ends before it starts", code="invalid", expression=path)
    return schedule_id, Interval(times[0], times[1])
