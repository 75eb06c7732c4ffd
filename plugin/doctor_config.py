"""The doctor's checks of a clinic's configuration: Schedules, their actors and the
HealthcareServices they offer (SPEC §2).

The rules are the engine's own: each Schedule and service is read with
``operations.parameters`` (``parse_schedule``, ``parse_service``, ``resolve_parameters``), and
whatever those refuse is a finding with their expression. The checks here add only what the
engine does not refuse but gets silently wrong -- a parameters block nobody reads, a reference
to nothing, a visit that fits in no window -- and keep going past the first problem, so one run
lists them all.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta

from operations.availability import expand_weekly, shrink
from operations.errors import InvalidConfiguration
from operations.fhir_values import as_list, dig, reference_id
from operations.model import SERVICE_TYPE_REFERENCE_URL, Interval, ResolvedParameters, Schedule, Service
from operations.parameters import parse_schedule, parse_service, resolve_parameters
from operations.store import Resource
from plugin.doctor_findings import Finding
from plugin.doctor_read import ClinicData

WEEKS_SAMPLED = timedelta(days=15)
"""Weekly hours are expanded over this span to find the longest window: every weekday twice,
so a window that only a DST change makes long enough is not the only one seen."""

# What resolve_parameters points at when it refuses (operations/parameters.py): the doctor
# names the problem after the element the engine names.
_NO_DURATION = ["HealthcareService.extension"]
_NO_TIMEZONE = ["Schedule.actor[0]"]


@dataclass
class Configuration:
    """The configuration as the engine reads it, for the checks of bookings: the Schedules and
    services that could be read, and the parameters in force per (Schedule id, service id)."""

    schedules: dict[str, Schedule] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)
    resolved: dict[tuple[str, str], ResolvedParameters] = field(default_factory=dict)


def check_configuration(clinic: ClinicData) -> tuple[list[Finding], Configuration]:
    """Every configuration finding, and what could be read of the configuration."""
    findings: list[Finding] = []
    config = Configuration()
    for service_id, resource in clinic.services.items():
        try:
            config.services[service_id] = parse_service(resource)
        except InvalidConfiguration as exc:
            findings.append(_invalid(f"HealthcareService/{service_id}", exc))
    no_duration: dict[str, list[str]] = {}
    for resource in clinic.schedules:
        findings += unresolved_services(resource, clinic.services)
        schedule = _parse(resource, clinic.actors, findings)
        if schedule is None:
            continue
        config.schedules[schedule.id] = schedule
        findings += unoffered_blocks(schedule)
        actor_found = schedule.actor.reference in clinic.actors
        if not actor_found:
            findings.append(
                Finding(
                    "actor-missing",
                    f"Schedule/{schedule.id}",
                    "Schedule.actor[0]",
                    f"Schedule/{schedule.id}: its actor {schedule.actor.reference} does not exist "
                    "(or cannot be read with these credentials)",
                )
            )
        zoneless: list[str] = []
        for service_id in schedule.offered_service_ids:
            service = config.services.get(service_id)
            if service is None:
                continue  # missing or unreadable: reported above
            try:
                params = resolve_parameters(schedule, service)
            except InvalidConfiguration as exc:
                if exc.expression == _NO_DURATION:
                    no_duration.setdefault(service_id, []).append(schedule.id)
                elif exc.expression == _NO_TIMEZONE:
                    zoneless.append(service_id)
                else:
                    findings.append(_invalid(f"Schedule/{schedule.id}", exc))
                continue
            config.resolved[(schedule.id, service_id)] = params
        if zoneless and actor_found:
            findings.append(
                Finding(
                    "timezone-missing",
                    f"Schedule/{schedule.id}",
                    "Schedule.actor[0]",
                    f"Schedule/{schedule.id}: its actor {schedule.actor.reference} has no timezone "
                    "extension and no timezone is set in the scheduling parameters for "
                    + ", ".join(f"HealthcareService/{s}" for s in zoneless),
                )
            )
    for service_id, schedule_ids in no_duration.items():
        service = config.services[service_id]
        findings.append(
            Finding(
                "duration-missing",
                f"HealthcareService/{service_id}",
                service.parameters.expression if service.parameters else "HealthcareService.extension",
                f"No duration is set for HealthcareService/{service_id}, neither on the service nor "
                f"on {_names('Schedule', schedule_ids)} for it: it cannot be offered there",
            )
        )
    findings += windows_too_short(config, Interval(clinic.window.start, clinic.window.start + WEEKS_SAMPLED))
    return findings, config


def _parse(resource: Resource, actors: dict[str, Resource], findings: list[Finding]) -> Schedule | None:
    """The Schedule as the engine reads it; ``None`` (and a finding) when it cannot be read.

    A Schedule with several actors is refused by the engine; it is read here with its first one
    so that its other problems are found in the same run.
    """
    schedule_id = str(resource.get("id"))
    reference = f"Schedule/{schedule_id}"
    actor_list = as_list(resource.get("actor"))
    if len(actor_list) != 1:
        findings.append(
            Finding(
                "schedule-actor-count",
                reference,
                "Schedule.actor" if not actor_list else "Schedule.actor[1]",
                f"{reference} has {len(actor_list)} actors; a Schedule must have exactly one",
            )
        )
        if not actor_list:
            return None
        resource = {**resource, "actor": actor_list[:1]}
    try:
        return parse_schedule(resource, actors)
    except InvalidConfiguration as exc:
        culprit = exc.expression[0].split(".")[0] if exc.expression else "Schedule"
        if culprit != "Schedule":  # the actor's own extension (a bad timezone code)
            actor = dig(actor_list[0], "reference")
            findings.append(_invalid(actor if isinstance(actor, str) else reference, exc))
        else:
            findings.append(_invalid(reference, exc))
        return None


def _invalid(resource: str, exc: InvalidConfiguration) -> Finding:
    return Finding("configuration-invalid", resource, ", ".join(exc.expression) or "", exc.diagnostics)


def unresolved_services(resource: Resource, services: dict[str, Resource]) -> list[Finding]:
    """serviceType references that name no (existing) HealthcareService: the Schedule seems to
    offer a service nobody can find or book."""
    findings = []
    reference = f"Schedule/{resource.get('id')}"
    for i, concept in enumerate(as_list(resource.get("serviceType"))):
        for j, extension in enumerate(as_list(dig(concept, "extension"))):
            if dig(extension, "url") != SERVICE_TYPE_REFERENCE_URL:
                continue
            expression = f"Schedule.serviceType[{i}].extension[{j}]"
            target = dig(extension, "valueReference", "reference")
            try:
                service_id = reference_id(target, "HealthcareService")
            except ValueError as exc:
                findings.append(
                    Finding("service-reference-unresolved", reference, expression, f"{reference}: {exc}")
                )
                continue
            if service_id not in services:
                findings.append(
                    Finding(
                        "service-reference-unresolved",
                        reference,
                        expression,
                        f"{reference} offers HealthcareService/{service_id}, which does not exist "
                        "(or cannot be read with these credentials)",
                    )
                )
    return findings


def unoffered_blocks(schedule: Schedule) -> list[Finding]:
    """SchedulingParameters blocks for services the Schedule does not offer: read by nobody."""
    return [
        Finding(
            "parameters-service-not-offered",
            f"Schedule/{schedule.id}",
            block.expression,
            f"Schedule/{schedule.id} has SchedulingParameters for HealthcareService/{service_id} "
            "but does not offer it (no serviceType names it): the block is ignored",
        )
        for service_id, block in schedule.parameter_blocks.items()
        if service_id not in schedule.offered_service_ids
    ]


def windows_too_short(config: Configuration, span: Interval) -> list[Finding]:
    """(Schedule, service) pairs whose visit with its buffers fits in none of the weekly
    windows: nothing can ever be offered there, except in one-time free Slots."""
    culprits: dict[tuple[str, str], list[str]] = {}
    details: dict[tuple[str, str], str] = {}
    for (schedule_id, service_id), params in config.resolved.items():
        if params.availability is None:
            continue  # always available: any visit fits
        windows = expand_weekly(params.availability, params.timezone, span)
        if not windows or shrink(windows, params.buffer_before, params.buffer_after, params.duration):
            continue  # no weekly hours at all (free Slots only) is a choice, not a mistake
        longest = max(w.duration for w in windows)
        need = params.buffer_before + params.duration + params.buffer_after
        key = _where_set(config.schedules[schedule_id], config.services[service_id])
        culprits.setdefault(key, []).append(f"Schedule/{schedule_id}")
        details[key] = (
            f"HealthcareService/{service_id} needs {_minutes(need)} (buffers and duration) but the "
            f"longest availability window is {_minutes(longest)}"
        )
    return [
        Finding(
            "visit-longer-than-windows",
            resource,
            expression,
            f"{details[(resource, expression)]}: nothing can be offered on {', '.join(sorted(schedules))}",
        )
        for (resource, expression), schedules in culprits.items()
    ]


def _where_set(schedule: Schedule, service: Service) -> tuple[str, str]:
    """Where to send the administrator: the Schedule's own block for the service if it has
    one (it overrides), else the service's parameters."""
    own = schedule.parameter_blocks.get(service.id)
    if own is not None:
        return f"Schedule/{schedule.id}", own.expression
    if service.parameters is not None:
        return f"HealthcareService/{service.id}", service.parameters.expression
    return f"HealthcareService/{service.id}", "HealthcareService.availableTime"


def _names(resource_type: str, ids: Iterable[str]) -> str:
    return ", ".join(f"{resource_type}/{i}" for i in sorted(set(ids)))


def _minutes(value: timedelta) -> str:
    return f"{value.total_seconds() / 60:g} min"
