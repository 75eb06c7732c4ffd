"""What ``fanoni-scheduling doctor`` reports: one :class:`Finding` per problem, and the catalogue
of finding codes with their severity and the one-line fix an administrator is given.

The codes, severities and the JSON shape are a stable interface (scripts parse ``--json``); each
code is documented in ``docs/doctor.md``. Add codes, never rename one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Severity = Literal["error", "warning"]
SEVERITIES: tuple[Severity, ...] = ("error", "warning")
"""In the order they are reported. ``error``: scheduling is wrong now (time offered that is
taken, time lost, requests refused). ``warning``: nothing is booked wrong, but something that
should have happened did not."""


@dataclass(frozen=True)
class Code:
    severity: Severity
    hint: str
    """The fix, in one line, as the administrator reads it."""


CODES: dict[str, Code] = {
    "configuration-invalid": Code(
        "error",
        "correct the element the expression names (docs/data-model.md says what each field accepts); "
        "until then $find and $book answer 422 for this resource",
    ),
    "schedule-actor-count": Code(
        "error", "give the Schedule exactly one actor: one Schedule per provider, room or device"
    ),
    "actor-missing": Code(
        "error",
        "point Schedule.actor at an existing Practitioner, PractitionerRole, Location or Device",
    ),
    "timezone-missing": Code(
        "error",
        "add the timezone extension (http://hl7.org/fhir/StructureDefinition/timezone, an IANA id) "
        "to the actor, or set 'timezone' in the SchedulingParameters",
    ),
    "duration-missing": Code(
        "error",
        "add a 'duration' to the service's SchedulingParameters (or to each Schedule's block for it)",
    ),
    "parameters-service-not-offered": Code(
        "error",
        "offer the service in Schedule.serviceType (service-type-reference extension), or remove the block",
    ),
    "service-reference-unresolved": Code(
        "error",
        "point the service-type-reference at an existing HealthcareService/<id>, or remove that serviceType",
    ),
    "visit-longer-than-windows": Code(
        "error", "lengthen the availability windows, or shorten duration and buffers"
    ),
    "grid-mismatch": Code(
        "error",
        "give schedules that are booked together the same duration, alignmentInterval and "
        "alignmentOffset (and alignmentTimezone, where set)",
    ),
    "slots-over-capacity": Code(
        "error",
        "move or cancel one of the bookings (time booked around the sidecar: book through $book, "
        "which refuses this), or raise slotCapacity",
    ),
    "appointment-without-slots": Code(
        "error",
        "the time is not taken on the schedule: cancel the Appointment and book it again through $book",
    ),
    "slot-without-appointment": Code(
        "error",
        "delete the Slot if the time is free (or make it busy-unavailable if it is meant as a block)",
    ),
    "slot-of-ended-appointment": Code(
        "error",
        "delete the Slot: its Appointment has ended, the time should be free "
        "(check NOTIFICATION_URL and the hold sweep)",
    ),
    "slot-service-type-unmatched": Code(
        "error",
        "give the Slot the type code of a service its Schedule offers (HealthcareService.type), "
        "or remove its serviceType to make it apply to every service",
    ),
    "service-type-without-reference": Code(
        "warning",
        "to offer the service, add the service-type-reference extension (HealthcareService/<id>) "
        "to the concept; a code that only describes the Schedule may stay",
    ),
    "hold-stuck": Code(
        "warning",
        "check that a sidecar with HOLD_SWEEP_SECONDS > 0 is running; cancel the hold with $cancel",
    ),
}


@dataclass(frozen=True)
class Finding:
    """One problem: the resource at fault (``Type/id``), a FHIRPath expression within it, and
    what is wrong. Severity and hint come from :data:`CODES`."""

    code: str
    resource: str
    expression: str
    message: str

    def __post_init__(self) -> None:
        if self.code not in CODES:
            raise ValueError(f"unknown finding code {self.code!r}")

    @property
    def severity(self) -> Severity:
        return CODES[self.code].severity

    @property
    def hint(self) -> str:
        return CODES[self.code].hint

    def as_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity,
            "resource": self.resource,
            "expression": self.expression,
            "message": self.message,
            "hint": self.hint,
        }


def ordered(findings: list[Finding]) -> list[Finding]:
    """Errors first, then by resource, code and expression: the same order every run."""
    rank = {severity: index for index, severity in enumerate(SEVERITIES)}
    return sorted(
        dict.fromkeys(findings),
        key=lambda f: (rank[f.severity], f.resource, f.code, f.expression, f.message),
    )
