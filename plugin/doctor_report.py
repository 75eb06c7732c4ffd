"""How the doctor tells what it found: a report for people (grouped by severity, then by
resource, each finding with its expression and a one-line fix) or JSON for machines (the
schema in ``docs/doctor.md``; ``schemaVersion`` changes only when a field changes meaning)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from operations.fhir_values import format_instant
from plugin.doctor_findings import SEVERITIES, Finding, ordered
from plugin.doctor_read import ClinicData

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Run:
    """One doctor run: where, as whom, what was read, what was found."""

    fhir_base_url: str
    identity: str
    """``sidecar`` (its own configured credentials) or ``authorization`` (given on the command line)."""
    clinic: ClinicData
    findings: list[Finding]
    round_trips: int
    seconds: float
    strict: bool = False

    @property
    def errors(self) -> int:
        return sum(f.severity == "error" for f in self.findings)

    @property
    def warnings(self) -> int:
        return sum(f.severity == "warning" for f in self.findings)

    @property
    def exit_status(self) -> int:
        """1 when something is wrong: an error, or with ``--strict`` a warning too; else 0."""
        return 1 if self.errors or (self.strict and self.warnings) else 0


def as_json(run: Run) -> str:
    clinic = run.clinic
    document: dict[str, Any] = {
        "schemaVersion": SCHEMA_VERSION,
        "fhirBaseUrl": run.fhir_base_url,
        "identity": run.identity,
        "now": format_instant(clinic.now),
        "window": {"start": format_instant(clinic.window.start), "end": format_instant(clinic.window.end)},
        "read": {
            "schedules": len(clinic.schedules),
            "healthcareServices": clinic.services_read,
            "actors": len(clinic.actors),
            "slots": len(clinic.slots),
            "appointments": len(clinic.appointments),
            "roundTrips": run.round_trips,
            "seconds": round(run.seconds, 3),
        },
        "summary": {"errors": run.errors, "warnings": run.warnings},
        "exitStatus": run.exit_status,
        "findings": [f.as_json() for f in ordered(run.findings)],
    }
    return json.dumps(document, indent=2, ensure_ascii=False)


def as_text(run: Run) -> str:
    clinic = run.clinic
    who = "the sidecar's own credentials" if run.identity == "sidecar" else "the given authorization"
    lines = [
        f"fanoni-scheduling doctor: {run.fhir_base_url} (with {who})",
        f"Read {_count(len(clinic.schedules), 'Schedule')}, "
        f"{_count(clinic.services_read, 'HealthcareService')}, {_count(len(clinic.actors), 'actor')}, "
        f"{_count(len(clinic.slots), 'Slot')} and {_count(len(clinic.appointments), 'Appointment')} "
        f"from {_minute(clinic.window.start)} to {_minute(clinic.window.end)} "
        f"({run.round_trips} round trips, {run.seconds:.1f} s).",
        "",
    ]
    findings = ordered(run.findings)
    for severity in SEVERITIES:
        group = [f for f in findings if f.severity == severity]
        if not group:
            continue
        lines.append(f"{_count(len(group), severity).upper()}")
        resource = None
        for finding in group:
            if finding.resource != resource:
                resource = finding.resource
                lines.append(f"  {resource}")
            lines += [
                f"    {finding.code} at {finding.expression}",
                f"      {finding.message}",
                f"      fix: {finding.hint}",
            ]
        lines.append("")
    if not findings:
        lines.append("No problems found.")
    else:
        verdict = "scheduling is wrong" if run.errors else "nothing is booked wrong, but look at the warnings"
        lines.append(
            f"{_count(run.errors, 'error')}, {_count(run.warnings, 'warning')}: {verdict} "
            "(codes explained in docs/doctor.md)."
        )
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _minute(value: datetime) -> str:
    return format_instant(value)[:16] + "Z"
