"""Who a booking names: every participant besides the schedule actors (the patient, a relative,
...) must be readable with the caller's credentials -- a caller may book for what it may read
(SPEC §5.1).

The reads are planned from the proposal (:func:`participant_reads`); once the Schedules, and so
their actors, are known, the others are read in the booking's second round trip, at the same
time as its deciding reads, and checked before anything is decided (:func:`check_participants`). One
search per resource type, whatever the number of participants. An upstream 401/403 reaches the
caller as such (raised by the store); a participant the search does not return is 422
``not-found``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

from operations.errors import InvalidRequest, Unprocessable
from operations.fhir_values import is_relative_reference
from operations.proposal import Additions, BookingRequest
from operations.store import FhirReader


@dataclass(frozen=True)
class ParticipantReads:
    """The participant references of a proposal, by resource type and id, with their FHIRPaths."""

    wanted: dict[str, dict[str, str]] = field(default_factory=dict)
    """``{resource type: {id: FHIRPath}}`` of the well-formed references."""
    malformed: dict[str, str] = field(default_factory=dict)
    """``{reference: FHIRPath}`` of references that are not ``Type/id`` (fine only for an actor)."""

    def excluding(self, actors: Collection[str]) -> ParticipantReads:
        """The reads left once the schedule actors are known: they need none (they came with
        the Schedules, read with the same credentials)."""
        wanted: dict[str, dict[str, str]] = {}
        for resource_type, ids in self.wanted.items():
            kept = {i: path for i, path in ids.items() if f"{resource_type}/{i}" not in actors}
            if kept:
                wanted[resource_type] = kept
        return ParticipantReads(wanted, {r: p for r, p in self.malformed.items() if r not in actors})

    def searches(self, reader: FhirReader) -> list[Callable[[], tuple[str, set[str]]]]:
        """One read per resource type: ``(type, ids found)``, ready to run together."""

        def search(resource_type: str, ids: Collection[str]) -> Callable[[], tuple[str, set[str]]]:
            return lambda: (
                resource_type,
                {str(r.get("id")) for r in reader.search(resource_type, [("_id", ",".join(ids))])},
            )

        return [search(resource_type, ids) for resource_type, ids in self.wanted.items()]


def participant_reads(request: BookingRequest) -> ParticipantReads:
    """Plan the reads; a participant that is not an object, or an actor reference that is not a
    string, is 400 at once."""
    reads = ParticipantReads()
    for index, participant in enumerate(request.appointment.get("participant") or []):
        path = f"{request.root}.participant[{index}].actor"
        if not isinstance(participant, dict):
            raise InvalidRequest("A participant must be an object", code="structure", expression=path)
        actor = participant.get("actor")
        if actor is None:
            continue
        reference = actor.get("reference") if isinstance(actor, dict) else None
        if reference is None and isinstance(actor, dict):
            continue  # an actor named by identifier or display only: nothing to read
        if not isinstance(reference, str):
            raise InvalidRequest("actor.reference must be a string", code="value", expression=path)
        if not is_relative_reference(reference):
            reads.malformed.setdefault(reference, f"{path}.reference")
            continue
        resource_type, _, resource_id = reference.partition("/")
        where = request.named_elsewhere.get(reference, f"{path}.reference")
        reads.wanted.setdefault(resource_type, {}).setdefault(resource_id, where)
    return reads


def check_participants(
    reads: ParticipantReads, found: Mapping[str, Collection[str]], actors: Collection[str]
) -> None:
    """Every participant that is not a schedule actor was found (``found``: per type, the ids
    the caller's searches returned); raises 400/422 pointing at the first that was not."""
    for reference, path in reads.malformed.items():
        if reference not in actors:
            raise InvalidRequest(
                f"A participant must reference a resource on this server as Type/id, not {reference!r}",
                code="value",
                expression=path,
            )
    for resource_type, ids in reads.wanted.items():
        for resource_id, path in ids.items():
            if f"{resource_type}/{resource_id}" in actors or resource_id in found.get(resource_type, ()):
                continue
            raise Unprocessable(
                f"{resource_type}/{resource_id} does not exist, or the caller's credentials may not read it",
                code="not-found",
                expression=path,
            )


def patient_checks(reader: FhirReader, additions: Additions) -> list[Callable[[], None]]:
    """The patients of ``additions`` read with the caller's credentials (one search), as a
    check to run with other reads: 422 ``not-found`` at the parameter that named the first
    patient the search does not return."""
    if not additions.patients:
        return []
    reads = ParticipantReads({"Patient": {who.id: who.expression for who in additions.patients}})
    [search] = reads.searches(reader)

    def check() -> None:
        resource_type, found = search()
        check_participants(reads, {resource_type: found}, ())

    return [check]
