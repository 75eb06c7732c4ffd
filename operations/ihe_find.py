"""Use case: ``Appointment/$find`` with the IHE ITI-115 parameters (SPEC §7.2, docs/ihe.md).

``practitioner`` and ``location-reference`` stand for the active Schedules whose actor they are
-- a practitioner also through a PractitionerRole whose ``practitioner`` it is, the usual actor
of a Schedule kept per role -- that offer the service. All practitioners named form one pool
("any one of"), all locations another; the pools, and any ``schedule`` groups beside them, are
"all of" (``FindRequest.groups``). ``visit-type`` stands for the HealthcareService whose
``type`` carries it; ``specialty`` and ``organization`` keep only services whose ``specialty``
carries one of theirs, or that one of them provides. ``patient-reference`` joins every proposal
as a participant. A criterion that leaves nothing to search answers an empty searchset whose
OperationOutcome entry says why; a reference to nothing that exists is 422 ``not-found``.

The resolution reads with the caller's credentials (they stand for permission, SPEC §5.1), all
in one round trip whatever the number of practitioners, locations and codes: the Schedules by
actor, the Schedules by role, the Practitioners and the Locations named (one ``_id`` search
each), the service or the services of the visit types, the Patients, and the Schedules named
with ``schedule``. The search itself (``operations/find.py``) then reads only the Slots: what
it would read again is handed over in a :class:`PrimedReader`. Two round trips of latency.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from operations import find
from operations.config_values import service_ids
from operations.errors import InvalidRequest, Unprocessable
from operations.fhir_values import as_list, dig
from operations.find_request import FindRequest
from operations.ihe_parameters import IheCriteria, Named, any_carried
from operations.primed_reader import PrimedReader
from operations.rendering import outcome_entry, searchset
from operations.store import FhirReader, Resource, Stores


@dataclass
class Resolution:
    """What the ITI-115 parameters stand for: the request to search, or nothing to search."""

    request: FindRequest
    stores: Stores
    """The stores the search reads through (the caller's primed with what was read)."""
    notices: list[Resource] = field(default_factory=list)
    """OperationOutcome entries for the Bundle: what was left out, or why nothing is offered."""
    nothing: bool = False
    """A criterion left nothing to search: the answer is an empty searchset."""


def find_appointments(stores: Stores, request: FindRequest) -> dict[str, Any]:
    """``Appointment/$find``: a searchset Bundle of proposed Appointments; with ITI-115
    parameters, resolved first, each proposal naming the patients as participants."""
    if not request.ihe.given:
        return find.find_appointments(stores, request)
    resolution = resolve(stores, request)
    if resolution.nothing:
        return searchset([], resolution.notices)
    bundle = find.find_appointments(resolution.stores, resolution.request)
    entries = bundle.get("entry") or []
    for entry in entries:
        resource = entry.get("resource") or {}
        if resource.get("resourceType") == "Appointment":
            resource["participant"] = [*resource.get("participant", []), *_patients(request.ihe)]
    entries.extend(resolution.notices)
    if entries:
        bundle["entry"] = entries
    return bundle


def resolve(stores: Stores, request: FindRequest) -> Resolution:
    """Read what the ITI-115 parameters name (one round trip) and resolve them: 422
    ``not-found`` for a Practitioner, Location, Patient or service that does not exist (or the
    caller may not read), 400 when a visit type leaves several services to choose from."""
    criteria = request.ihe
    reader = stores.caller
    reads = _reads(reader, request)
    found = dict(zip(reads, stores.together(*reads.values()), strict=True)) if reads else {}
    for kind, named in (
        ("Practitioner", criteria.practitioners),
        ("Location", criteria.locations),
        ("Patient", criteria.patients),
    ):
        _check_exist(kind, named, found.get(kind, set()))
    notices = [
        outcome_entry(f"{name} is not supported and was ignored", f"Parameters.{name}", code="not-supported")
        for name in criteria.ignored
    ]
    if not criteria.resolves:
        return Resolution(request, stores, notices)

    named_schedules, actors = found.get("named", ([], {}))
    by_actor, direct_actors = found.get("by-actor", ([], {}))
    by_role, role_actors = found.get("by-role", ([], {}))
    actors = {**actors, **direct_actors, **role_actors}
    owners = _owners(by_actor, by_role, actors)
    candidates = found["services"]

    named_by_id = {str(s.get("id")): s for s in named_schedules}
    kinds = [("practitioner", criteria.practitioners), ("location-reference", criteria.locations)]
    pools_offered = [[named_by_id[i] for i in group if i in named_by_id] for group in request.groups]
    pools_offered += [
        [s for n in named for s in owners.get(f"{_kind(name)}/{n.id}", [])] for name, named in kinds if named
    ]
    service, why_not = _choose_service(request, candidates, pools_offered)
    if service is None:
        return Resolution(request, stores, [*notices, *why_not], nothing=True)
    service_id = str(service.get("id"))

    pools, expressions = _pools(kinds, owners, service_id, set(request.schedule_ids), notices)
    if pools is None:
        return Resolution(request, stores, notices, nothing=True)
    groups = [*request.groups, *pools]
    taken = {*request.schedule_ids, *expressions}
    if len(taken) > criteria.max_schedules:
        raise Unprocessable(
            f"The practitioners and locations named have {len(taken)} Schedules offering "
            f"HealthcareService/{service_id}; at most {criteria.max_schedules} may take part in one "
            "request: name fewer",
            expression=next(iter(expressions.values())),
        )
    ids = tuple(dict.fromkeys(i for group in groups for i in group))
    resolved = replace(
        request,
        schedule_ids=ids,
        schedule_groups=tuple(groups),
        service_id=service_id,
        named_at=tuple(expressions.items()),
    )
    schedules = [*named_schedules, *by_actor, *by_role]
    primed = PrimedReader(reader, schedules, actors, {service_id: service}, list(request.schedule_ids))
    return Resolution(
        resolved,
        replace(stores, caller=primed),
        notices,
    )


def _pools(
    kinds: Sequence[tuple[str, Sequence[Named]]],
    owners: dict[str, list[Resource]],
    service_id: str,
    taken: set[str],
    notices: list[Resource],
) -> tuple[list[tuple[str, ...]] | None, dict[str, str]]:
    """One group per kind named (practitioners, locations): the active Schedules offering the
    service of each one named, in order, leaving out Schedules already in a group (``taken``).
    ``None`` when a kind has none at all; a warning in ``notices`` for each one named without."""
    pools: list[tuple[str, ...]] = []
    expressions: dict[str, str] = {}
    for name, named in kinds:
        if not named:
            continue
        pool: list[str] = []
        offered = False
        for who in named:
            reference = f"{_kind(name)}/{who.id}"
            own = [str(s.get("id")) for s in owners.get(reference, []) if _offers(s, service_id)]
            if not own:
                notices.append(
                    outcome_entry(
                        f"{reference} has no active Schedule offering HealthcareService/{service_id}",
                        who.expression,
                        code="not-found",
                    )
                )
            offered = offered or bool(own)
            for schedule_id in own:
                if schedule_id not in taken:  # one Schedule, one group: named first wins
                    taken.add(schedule_id)
                    pool.append(schedule_id)
                    expressions[schedule_id] = who.expression
        if not offered:
            return None, expressions
        if pool:
            pools.append(tuple(pool))
    return pools, expressions


def _reads(reader: FhirReader, request: FindRequest) -> dict[str, Callable[[], Any]]:
    """The first round trip's reads, by name, in the order whose first failure is the answer."""
    criteria = request.ihe
    reads: dict[str, Callable[[], Any]] = {}
    if criteria.resolves:
        if request.schedule_ids:
            ids = list(request.schedule_ids)
            reads["named"] = lambda: reader.read_schedules(ids)
        references = [f"Practitioner/{n.id}" for n in criteria.practitioners]
        locations = [f"Location/{n.id}" for n in criteria.locations]
        if references or locations:
            reads["by-actor"] = lambda: reader.search_schedules_by_actor([*references, *locations])
        if references:
            reads["by-role"] = lambda: reader.search_schedules_by_actor(references, via_role=True)
        if request.service_id is not None:
            service_id = request.service_id
            reads["services"] = lambda: [reader.read_service(service_id)]
        else:
            tokens = [str(t) for t in criteria.visit_types]
            reads["services"] = lambda: reader.search_services(tokens)
    for kind, named in (
        ("Practitioner", criteria.practitioners),
        ("Location", criteria.locations),
        ("Patient", criteria.patients),
    ):
        if named:
            reads[kind] = _existing(reader, kind, [n.id for n in named])
    return reads


def _existing(reader: FhirReader, kind: str, ids: list[str]) -> Callable[[], set[str]]:
    return lambda: {str(r.get("id")) for r in reader.search(kind, [("_id", ",".join(ids))])}


def _check_exist(kind: str, named: Sequence[Named], found: set[str]) -> None:
    for who in named:
        if who.id not in found:
            raise Unprocessable(
                f"{kind}/{who.id} does not exist, or the caller's credentials may not read it",
                code="not-found",
                expression=who.expression,
            )


def _owners(
    by_actor: Sequence[Resource], by_role: Sequence[Resource], actors: dict[str, Resource]
) -> dict[str, list[Resource]]:
    """Per practitioner or location (``"Practitioner/a"``), its Schedules: its own first (in id
    order), then its roles' (the PractitionerRole's ``practitioner`` says whose)."""
    owners: dict[str, list[Resource]] = {}
    for schedules, via_role in ((by_actor, False), (by_role, True)):
        for schedule in schedules:
            for actor in as_list(schedule.get("actor")):
                reference = dig(actor, "reference")
                if via_role:
                    reference = dig(actors.get(str(reference)), "practitioner", "reference")
                if isinstance(reference, str) and "/" in reference:
                    owners.setdefault("/".join(reference.split("/")[-2:]), []).append(schedule)
    return owners


def _offers(schedule: Resource, service_id: str) -> bool:
    """Active and offering the service (SPEC §2.3: by the service-type-reference, not codes)."""
    return schedule.get("active") is not False and service_id in service_ids(
        as_list(schedule.get("serviceType"))
    )


def _choose_service(
    request: FindRequest, candidates: Sequence[Resource | None], pools: Sequence[Sequence[Resource]]
) -> tuple[Resource | None, list[Resource]]:
    """The one service the request means, or ``None`` with the outcome entries saying why no
    service is left. 422 when the service named does not exist or none has the visit type; 400
    when several are left to choose from."""
    criteria = request.ihe
    if request.service_id is not None:
        expression = "Parameters.service-type-reference"
        service = candidates[0] if candidates else None
        if service is None:
            raise Unprocessable(
                f"HealthcareService/{request.service_id} does not exist",
                code="not-found",
                expression=expression,
            )
        if service.get("active") is False:
            raise Unprocessable(
                f"HealthcareService/{request.service_id} is not active", expression=expression
            )
        services = [service]
        what = f"HealthcareService/{request.service_id} has no"
    else:
        services = [s for s in candidates if s is not None and s.get("active") is not False]
        codes = ", ".join(str(t) for t in criteria.visit_types)
        if not services:
            raise Unprocessable(
                f"No active HealthcareService has the visit-type {codes} (or the caller's "
                "credentials may not read it)",
                code="not-found",
                expression="Parameters.visit-type",
            )
        what = f"None of the {len(services)} services of visit-type {codes} has"
    filters: list[tuple[str, Callable[[Resource], bool], str]] = []
    if request.service_id is not None and criteria.visit_types:
        wanted = " or ".join(str(t) for t in criteria.visit_types)
        filters.append(
            ("visit-type", lambda s: any_carried(criteria.visit_types, s.get("type")), f"{wanted} in type")
        )
    if criteria.specialties:
        wanted = " or ".join(str(t) for t in criteria.specialties)
        filters.append(
            (
                "specialty",
                lambda s: any_carried(criteria.specialties, s.get("specialty")),
                f"{wanted} in specialty",
            )
        )
    if criteria.organizations:
        wanted = " or ".join(f"Organization/{o}" for o in criteria.organizations)
        filters.append(("organization", _provided_by(criteria.organizations), f"{wanted} as providedBy"))
    for name, keeps, text in filters:
        services = [s for s in services if keeps(s)]
        if not services:
            return None, [_nothing(f"{what} {text}", f"Parameters.{name}")]
    if len(services) > 1:
        services = [s for s in services if all(_pool_offers(pool, str(s.get("id"))) for pool in pools)]
        if not services:
            return None, [_nothing(f"{what} a Schedule in every group asked for", "Parameters.visit-type")]
    if len(services) > 1:
        raise SeveralServices(services)
    return services[0], []


class SeveralServices(InvalidRequest):
    """400: a visit type (with the other criteria) leaves several services: which one is meant?"""

    def __init__(self, services: Sequence[Resource]) -> None:
        names = ", ".join(f"HealthcareService/{s.get('id')}" for s in services)
        super().__init__(
            f"visit-type matches {len(services)} services ({names}): name one with "
            "service-type-reference, or narrow with specialty or organization",
            expression="Parameters.visit-type",
        )


def _pool_offers(pool: Sequence[Resource], service_id: str) -> bool:
    return any(_offers(schedule, service_id) for schedule in pool)


def _provided_by(organizations: Sequence[str]) -> Callable[[Resource], bool]:
    wanted = {f"Organization/{o}" for o in organizations}

    def keeps(service: Resource) -> bool:
        reference = dig(service, "providedBy", "reference")
        return isinstance(reference, str) and "/".join(reference.split("/")[-2:]) in wanted

    return keeps


def _nothing(diagnostics: str, expression: str) -> Resource:
    return outcome_entry(f"{diagnostics}: nothing can be offered", expression)


def _kind(parameter: str) -> str:
    return "Practitioner" if parameter == "practitioner" else "Location"


def _patients(criteria: IheCriteria) -> list[Resource]:
    return [
        {"actor": {"reference": f"Patient/{who.id}"}, "required": "required", "status": "needs-action"}
        for who in criteria.patients
    ]
