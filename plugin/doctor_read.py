"""What the doctor reads from the upstream: the clinic's configuration, and the Slots and
Appointments of a bounded time window, in paged searches of a bounded length.

A clinic may hold thousands of Slots. Every search pages through ``next`` links (the
transport's paging, which never leaves ``FHIR_BASE_URL``'s host) and reports each page to a
progress callback; lists of ids are sent in chunks of :data:`CHUNK`, so no URL grows with the
clinic. Reads only: nothing here writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from operations.config_values import codings
from operations.fhir_values import as_list, dig, format_instant, reference_id
from operations.model import SERVICE_TYPE_REFERENCE_URL, Coding, Interval
from operations.parameters import service_references
from operations.store import Resource
from operations.writes import HOLD_TAG, booking_marker, slot_ids
from plugin.fhir_rest import STRICT
from plugin.service_credentials import ServiceCredentials
from plugin.transport import Params
from plugin.upstream import FhirUpstream, UpstreamClient

CHUNK = 50
"""Ids per search (``_id=a,b,…``, ``schedule=…``, ``slot=…``): 50 references stay well under the
8 KiB request line servers accept."""

TOKEN_BUDGET = 3000
"""Characters of ``system|code`` tokens per ``service-type`` search (besides at most
:data:`CHUNK` of them): a code system is a URI of any length, so the count alone would not
bound the request line; 3000 characters stay under 8 KiB even once percent-encoded. The
searches are strict (``STRICT``): a server that ignored ``service-type`` would answer with every
HealthcareService."""

PageReport = Callable[[str, int, int | None], None]
"""``(resource type, entries on this page, total of the search if the server counted it)``."""

BOOKING_SLOT_STATUSES = frozenset({"busy", "busy-tentative"})
"""Slots that stand for a booking (a visit) and must therefore belong to an Appointment."""


@dataclass(frozen=True)
class ClinicData:
    """A snapshot of one clinic, as one identity may read it."""

    schedules: list[Resource]
    actors: dict[str, Resource]
    """Keyed by relative reference, ``"Practitioner/abc"``."""
    services: dict[str, Resource]
    """The HealthcareServices the Schedules reference, by id (missing ones are absent)."""
    slots: list[Resource]
    """Slots of the Schedules overlapping the window, and any Slot the Appointments reference."""
    appointments: list[Resource]
    """Appointments in the window, every pending hold, and every Appointment referencing one of
    the booking Slots."""
    window: Interval
    now: datetime
    hold_grace: timedelta
    """How long past its expiry a hold may stay before it counts as stuck (the sweep period)."""
    services_by_type: dict[str, Resource] = field(default_factory=dict)
    """HealthcareServices whose ``type`` has a code of a Schedule ``serviceType`` concept that
    names no service by reference (what that concept may have meant), by id; some may be in
    :attr:`services` too."""

    @property
    def services_read(self) -> int:
        """How many distinct HealthcareServices were read."""
        return len(self.services.keys() | self.services_by_type.keys())


class DoctorStore(FhirUpstream):
    """The upstream store, reporting every page it reads (for the progress bar) and asking the
    server to count each search (``_total=accurate``), so the bar knows how far it has to go."""

    def __init__(
        self,
        client: UpstreamClient,
        *,
        authorization: str | None = None,
        credentials: ServiceCredentials | None = None,
        request_id: str | None = None,
        on_page: PageReport,
        page_size: int | None = None,
    ) -> None:
        super().__init__(client, authorization=authorization, credentials=credentials, request_id=request_id)
        self._on_page = on_page
        self._page_size = page_size

    def _search_pages(
        self,
        resource_type: str,
        params: Params | Mapping[str, str],
        *,
        headers: Mapping[str, str] | None,
    ) -> Iterator[Resource]:
        query = list(params.items()) if isinstance(params, Mapping) else list(params)
        if not any(name == "_summary" for name, _ in query):
            query.append(("_total", "accurate"))
            if self._page_size is not None and not any(name == "_count" for name, _ in query):
                query.append(("_count", str(self._page_size)))
        first = True
        for bundle in super()._search_pages(resource_type, query, headers=headers):
            total = bundle.get("total") if first else None
            entries = [
                e
                for e in as_list(bundle.get("entry"))
                if isinstance(e, dict) and (e.get("resource") or {}).get("resourceType") == resource_type
            ]
            self._on_page(resource_type, len(entries), total if isinstance(total, int) else None)
            first = False
            yield bundle


def read_clinic(
    store: FhirUpstream,
    *,
    schedule_ids: Sequence[str] | None,
    window: Interval,
    now: datetime,
    hold_grace: timedelta,
    phase: Callable[[str], None] = lambda _label: None,
) -> ClinicData:
    """Read everything the checks need. ``schedule_ids`` limits the run to those Schedules (and
    the services, Slots and Appointments that belong to them); ``None`` reads every Schedule.
    ``phase`` is told what is read next. Raises ``LookupError`` for a named Schedule that does
    not exist."""
    phase("Schedules")
    if schedule_ids is None:
        ids = [str(s.get("id")) for s in store.search("Schedule", [("_elements", "id")])]
    else:
        ids = list(dict.fromkeys(schedule_ids))
    schedules: list[Resource] = []
    actors: dict[str, Resource] = {}
    for chunk in _chunks(ids):
        found, chunk_actors = store.read_schedules(chunk)
        schedules += found
        actors.update(chunk_actors)
    if schedule_ids is not None:
        missing = sorted(set(ids) - {str(s.get("id")) for s in schedules})
        if missing:
            raise LookupError(", ".join(f"Schedule/{i}" for i in missing) + " not found")

    phase("HealthcareServices")
    wanted = sorted({sid for s in schedules for sid in _offered_ids(s)})
    services = {str(r.get("id")): r for r in _by_ids(store, "HealthcareService", wanted)}
    by_type = services_of_types(store, schedules)

    phase("Slots")
    slots = _unique(
        slot
        for chunk in _chunks([str(s.get("id")) for s in schedules])
        for slot in store.search_slots(chunk, window.start, window.end)
    )

    phase("Appointments")
    # Only Appointments that concern these Schedules when the run is limited to some.
    actor_filter = None
    if schedule_ids is not None:
        actor_filter = sorted({a for s in schedules for a in _actor_references(s)})
    in_window = [("date", "ge" + _instant(window.start)), ("date", "lt" + _instant(window.end))]
    holds = [("status", "pending"), ("_tag", f"{HOLD_TAG['system']}|{HOLD_TAG['code']}")]
    appointments = _unique(
        [*_search_for_actors(store, in_window, actor_filter), *_search_for_actors(store, holds, actor_filter)]
    )

    phase("Slots of the Appointments")
    known = {str(s.get("id")) for s in slots}
    referenced = sorted({sid for a in appointments for sid in slot_ids(a)} - known)
    slots += _by_ids(store, "Slot", referenced)

    phase("Appointments of the Slots")
    scope = {str(s.get("id")) for s in schedules}
    referencing = {sid for a in appointments for sid in slot_ids(a)}
    unaccounted = sorted(
        str(s.get("id"))
        for s in slots
        if _schedule_id(s) in scope and is_booking_slot(s) and str(s.get("id")) not in referencing
    )
    for chunk in _chunks(unaccounted):
        appointments += store.search("Appointment", [("slot", ",".join(f"Slot/{i}" for i in chunk))])
    return ClinicData(
        schedules=schedules,
        actors=actors,
        services=services,
        slots=_unique(slots),
        appointments=_unique(appointments),
        window=window,
        now=now,
        hold_grace=hold_grace,
        services_by_type=by_type,
    )


def unreferenced_concepts(schedule: Resource) -> list[tuple[int, Resource]]:
    """``(index, concept)`` of the Schedule's ``serviceType`` concepts that carry codings but no
    service-type-reference extension: they name no service (SPEC §2.3 matches by reference)."""
    found = []
    for index, concept in enumerate(as_list(schedule.get("serviceType"))):
        if not isinstance(concept, dict) or not codings([concept]):
            continue
        if any(dig(e, "url") == SERVICE_TYPE_REFERENCE_URL for e in as_list(concept.get("extension"))):
            continue
        found.append((index, concept))
    return found


def services_of_types(store: FhirUpstream, schedules: Iterable[Resource]) -> dict[str, Resource]:
    """The HealthcareServices whose ``type`` may share a coding with a Schedule's unreferenced
    ``serviceType`` concept (:func:`unreferenced_concepts`): one ``service-type`` search with
    every code, comma-separated (more only past :data:`CHUNK` codes or :data:`TOKEN_BUDGET`
    characters); no search at all when no Schedule has such a concept. The server matches a
    code without system in any system: the checks keep the exact matches."""
    wanted = sorted(
        {c for s in schedules for _, concept in unreferenced_concepts(s) for c in codings([concept])},
        key=lambda c: (c.system or "", c.code or ""),
    )
    tokens = [_token(c) for c in wanted if c.code]
    return {
        str(r.get("id")): r
        for chunk in _token_chunks(tokens)
        for r in store.search("HealthcareService", [("service-type", ",".join(chunk))], headers=STRICT)
    }


def _token(coding: Coding) -> str:
    """A token search value: ``system|code``, or ``code`` (any system) without a system; the
    characters search syntax gives a meaning to are escaped (FHIR search, "Escaping")."""

    def escaped(text: str) -> str:
        return "".join("\\" + ch if ch in "\\,|$" else ch for ch in text)

    code = escaped(coding.code or "")
    return f"{escaped(coding.system)}|{code}" if coding.system else code


def _token_chunks(tokens: Sequence[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    size = 0
    for token in tokens:
        if chunk and (len(chunk) == CHUNK or size + len(token) > TOKEN_BUDGET):
            yield chunk
            chunk, size = [], 0
        chunk.append(token)
        size += len(token) + 1
    if chunk:
        yield chunk


def is_booking_slot(slot: Resource) -> bool:
    """A Slot that stands for (part of) a booking: a visit (``busy``, ``busy-tentative``), or a
    buffer the sidecar wrote with one (``busy-unavailable`` carrying its booking request id).
    An administrator's block is ``busy-unavailable`` without that tag, and needs no Appointment."""
    status = slot.get("status")
    return status in BOOKING_SLOT_STATUSES or (
        status == "busy-unavailable" and booking_marker(slot) is not None
    )


def default_window(now: datetime, days: int, past_days: int) -> Interval:
    return Interval(now - timedelta(days=past_days), now + timedelta(days=days))


def _search_for_actors(
    store: FhirUpstream, params: list[tuple[str, str]], actors: list[str] | None
) -> list[Resource]:
    if actors is None:
        return store.search("Appointment", params)
    return [
        appointment
        for chunk in _chunks(actors)
        for appointment in store.search("Appointment", [*params, ("actor", ",".join(chunk))])
    ]


def _by_ids(store: FhirUpstream, resource_type: str, ids: Sequence[str]) -> list[Resource]:
    return [r for chunk in _chunks(ids) for r in store.search(resource_type, [("_id", ",".join(chunk))])]


def _offered_ids(schedule: Resource) -> list[str]:
    ids = []
    for reference in service_references(as_list(schedule.get("serviceType"))):
        try:
            ids.append(reference_id(reference, "HealthcareService"))
        except ValueError:
            continue  # reported by the checks
    return ids


def _actor_references(schedule: Resource) -> list[str]:
    found = []
    for actor in as_list(schedule.get("actor")):
        reference = actor.get("reference") if isinstance(actor, dict) else None
        if isinstance(reference, str) and reference.count("/") == 1:
            found.append(reference)
    return found


def _schedule_id(slot: Resource) -> str | None:
    try:
        return reference_id((slot.get("schedule") or {}).get("reference"), "Schedule")
    except ValueError:
        return None


def _unique(resources: Iterable[Resource]) -> list[Resource]:
    """Each resource once (a search per chunk may meet the same one twice), in reading order."""
    seen: dict[tuple[object, object], Resource] = {}
    for resource in resources:
        seen.setdefault((resource.get("resourceType"), resource.get("id")), resource)
    return list(seen.values())


def _chunks(ids: Sequence[str]) -> Iterator[list[str]]:
    for start in range(0, len(ids), CHUNK):
        yield list(ids[start : start + CHUNK])


def _instant(value: datetime) -> str:
    return format_instant(value.astimezone(UTC).replace(microsecond=0))
