"""The store over FHIR REST: the upstream server is the only source of truth (SPEC §1, §5).

Two levels:

* :class:`UpstreamClient` -- one per process: the pooled ``requests.Session``, the timeouts, the
  sidecar's own credentials and what the sidecar has learnt about the upstream (whether Slot
  has an ``end`` search parameter, and whether its index is complete).
* :class:`FhirUpstream` -- one per identity per incoming request (SPEC §5.1):
  :meth:`UpstreamClient.as_caller` carries that caller's ``Authorization`` (permission reads);
  :meth:`UpstreamClient.as_service` carries the sidecar's own credentials and guard key, and adds
  a Provenance to every transaction (deciding reads, every write). Both count their round
  trips and share the request's time budget. They implement ``operations.store.FhirStore``:
  the scheduling searches here, the generic reads, searches and transactions in
  :class:`plugin.fhir_rest.FhirRest`, the HTTP in :class:`plugin.transport.Transport`.

``fhirclient`` is not used here: its ``FHIRServer`` keeps one authorisation per server object and
has no hook for per-call headers, timeouts or paging across ``next`` links, which is exactly
what this module is about. ``requests`` is used directly.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

import requests
import requests.adapters
import requests.auth

from operations.fhir_values import is_fhir_id, is_relative_reference
from operations.store import Resource
from plugin.config import Settings
from plugin.fhir_rest import STRICT, FhirRest
from plugin.one_page import OnePageSearches
from plugin.parallel import Parallel
from plugin.provenance import Attribution
from plugin.service_credentials import ServiceCredentials, credentials_from_settings
from plugin.shared_reads import SharedReads
from plugin.slot_index import SlotEndIndex
from plugin.transport import PAGE_SIZE, Params, new_session

logger = logging.getLogger(__name__)

SLOT_SEARCH_SPLITS = 4
"""How many times a Slot search that fills one page may be halved by start (at most 16 pieces):
beyond that the pieces go paged (``FhirUpstream._slot_pieces``)."""
SLOT_PIECE_THREADS = 4
"""Threads per process that read the pieces of split Slot searches at the same time. A pool of
their own: a piece never waits for anything, so a search waiting for its pieces (itself in the
read pool, ``plugin/parallel.py``) can never wait for a thread held by a waiter. Few, so that
under a burst of big ``$find`` s HAPI is not flooded by their pieces ahead of the bookings
(full mass booking, one run each: with 16 threads ``$find`` p50 7.0-7.5 s but booking p99
13.1-14.7 s; with 4, 10.6 s and 11.5 s); a search of up to 4 pieces stays one round trip."""
_ACTOR_TYPES = frozenset({"Practitioner", "PractitionerRole", "Location", "Device", "HealthcareService"})


# --------------------------------------------------------------------------------------------
# The process-wide part.


class UpstreamClient:
    """Per-process state shared by all requests: the session, the sidecar's credentials and
    what is known of the upstream (the Slot ``end`` search parameter, one-page searches)."""

    def __init__(
        self,
        settings: Settings,
        *,
        session_factory: Callable[[], requests.Session] = new_session,
        clock: Callable[[], float] = time.monotonic,
        credentials: ServiceCredentials | None = None,
    ) -> None:
        self.settings = settings
        self._session_factory = session_factory
        self._clock = clock
        self._lock = threading.Lock()
        self._session: requests.Session | None = None
        self._session_pid: int | None = None
        self.slot_end = SlotEndIndex(settings.slot_end_search, clock)
        self.one_page = OnePageSearches(clock)
        self.slot_pieces = Parallel(SLOT_PIECE_THREADS)
        self.shared_reads = SharedReads()
        self.credentials: ServiceCredentials = (
            credentials if credentials is not None else credentials_from_settings(settings, self.session)
        )

    @property
    def base_url(self) -> str:
        return self.settings.fhir_base_url

    def session(self) -> requests.Session:
        """The pooled session, created lazily and again after a fork: sockets opened by a
        gunicorn master (``--preload``) must not be shared with its workers."""
        pid = os.getpid()
        with self._lock:
            if self._session is None or self._session_pid != pid:
                self._session = self._session_factory()
                self._session_pid = pid
            return self._session

    def as_caller(
        self, authorization: str | None, request_id: str | None = None, *, deadline: float | None = None
    ) -> FhirUpstream:
        """A store acting with the caller's credentials: for the reads that stand for
        permission (SPEC §5.1). It never writes."""
        return FhirUpstream(self, authorization=authorization, request_id=request_id, deadline=deadline)

    def as_service(
        self, attribution: Attribution, *, deadline: float | None = None, shares_reads: bool = False
    ) -> FhirUpstream:
        """A store acting as the sidecar itself: its credentials, its guard key, and a
        Provenance (``attribution``) on every transaction. With ``shares_reads`` (operations
        that write nothing) its Slot searches go through :class:`plugin.shared_reads.SharedReads`."""
        return FhirUpstream(
            self,
            credentials=self.credentials,
            request_id=attribution.request_id,
            attribution=attribution,
            deadline=deadline,
            shares_reads=shares_reads,
        )

    def background(self, request_id: str | None = None, operation: str = "maintenance") -> FhirUpstream:
        """The sidecar's own store for work done on nobody's behalf (registration, readiness,
        hold expiry, notifications)."""
        return self.as_service(Attribution(operation, request_id, self.settings.service_name))

    def slot_end_supported(self) -> bool | None:
        """Whether to search Slots by ``end`` (:meth:`SlotEndIndex.supported`)."""
        return self.slot_end.supported()

    def slot_end_index_ready(self) -> bool | None:
        """Whether every Slot is indexed by ``end`` (:meth:`SlotEndIndex.index_ready`)."""
        return self.slot_end.index_ready()


# --------------------------------------------------------------------------------------------
# The per-request part.


class FhirUpstream(FhirRest):
    """The ``FhirStore`` over FHIR REST, acting for one identity in one request: the scheduling
    searches (Schedules with their actors, services, the Slot query) on top of the generic
    reads, searches and transactions of :class:`plugin.fhir_rest.FhirRest` (with the Provenance
    of ``attribution`` when it acts as the sidecar).

    Not thread-safe by design: one instance serves one incoming request.
    """

    def __init__(
        self,
        client: UpstreamClient,
        *,
        authorization: str | None = None,
        credentials: ServiceCredentials | None = None,
        request_id: str | None = None,
        attribution: Attribution | None = None,
        deadline: float | None = None,
        shares_reads: bool = False,
    ) -> None:
        super().__init__(
            client,
            authorization=authorization,
            credentials=credentials,
            request_id=request_id,
            attribution=attribution,
            deadline=deadline,
        )
        self._client: UpstreamClient = client
        self._shares_reads = shares_reads

    @property
    def shares_reads(self) -> bool:
        """Whether its Slot searches may be shared (:meth:`search_slots`)."""
        return self._shares_reads

    # ---- SchedulingStore -------------------------------------------------------------------

    def read_schedules(self, ids: Sequence[str]) -> tuple[list[Resource], dict[str, Resource]]:
        """One search for all the Schedules with their actors included; Schedules come back in
        the order asked for, actors keyed ``"Practitioner/x"``."""
        wanted = _valid_ids(ids)
        if not wanted:
            return [], {}
        by_id, actors = self._schedules_with_actors([("_id", ",".join(wanted))])
        schedules = [by_id[i] for i in wanted if i in by_id]
        self._read_missing_actors(schedules, actors)
        return schedules, actors

    def search_schedules_by_actor(
        self, references: Sequence[str], *, via_role: bool = False
    ) -> tuple[list[Resource], dict[str, Resource]]:
        """``Schedule?actor=Practitioner/a,Location/b&_include=Schedule:actor``, or with
        ``via_role`` the chained ``actor:PractitionerRole.practitioner=...``: one search for all
        the references, Schedules in id order (the server's order is not specified)."""
        wanted = list(dict.fromkeys(r for r in references if is_relative_reference(r)))
        if not wanted:
            return [], {}
        name = "actor:PractitionerRole.practitioner" if via_role else "actor"
        by_id, actors = self._schedules_with_actors([(name, ",".join(wanted))], headers=STRICT)
        schedules = [by_id[i] for i in sorted(by_id)]
        self._read_missing_actors(schedules, actors)
        return schedules, actors

    def _schedules_with_actors(
        self, params: Params, *, headers: Mapping[str, str] | None = None
    ) -> tuple[dict[str, Resource], dict[str, Resource]]:
        """The Schedules a search matches, by id, and the actors it included, by reference.
        (Strict handling for the actor searches: a server that ignored the chain would answer
        every Schedule it has.)"""
        found = self._search_all("Schedule", [*params, ("_include", "Schedule:actor")], headers=headers)
        by_id: dict[str, Resource] = {}
        actors: dict[str, Resource] = {}
        for resource, mode in found:
            resource_type, resource_id = resource.get("resourceType"), resource.get("id")
            if not isinstance(resource_type, str) or not isinstance(resource_id, str):
                continue
            if resource_type == "Schedule" and mode == "match":
                by_id.setdefault(resource_id, resource)
            elif resource_type != "Schedule":
                actors[f"{resource_type}/{resource_id}"] = resource
        return by_id, actors

    def search_services(self, service_types: Sequence[str]) -> list[Resource]:
        """``HealthcareService?service-type=system|code,...``: R4 names the search parameter
        of ``HealthcareService.type`` ``service-type``."""
        tokens = [t for t in dict.fromkeys(service_types) if t]
        if not tokens:
            return []
        return self.search("HealthcareService", [("service-type", ",".join(tokens))], headers=STRICT)

    def _read_missing_actors(self, schedules: list[Resource], actors: dict[str, Resource]) -> None:
        """Servers that do not support ``_include=Schedule:actor`` (or ignore it) leave actors out;
        fetch those with one ``_id`` search per actor type (at most four), never one per actor.
        On HAPI everything came included and this costs nothing."""
        missing: dict[str, list[str]] = {}
        for schedule in schedules:
            for actor in schedule.get("actor") or []:
                reference = actor.get("reference") if isinstance(actor, dict) else None
                if not isinstance(reference, str) or reference in actors:
                    continue
                parts = reference.split("/")
                if len(parts) == 2 and parts[0] in _ACTOR_TYPES and is_fhir_id(parts[1]):
                    missing.setdefault(parts[0], [])
                    if parts[1] not in missing[parts[0]]:
                        missing[parts[0]].append(parts[1])
        for resource_type, ids in missing.items():
            for resource in self.search(resource_type, [("_id", ",".join(ids))]):
                actors[f"{resource_type}/{resource.get('id')}"] = resource

    def read_service(self, service_id: str) -> Resource | None:
        return self.read("HealthcareService", service_id)

    def search_slots(self, schedule_ids: Sequence[str], start: datetime, end: datetime) -> list[Resource]:
        """One Slot search for all the Schedules; never misses a Slot that overlaps the range.

        With a Slot ``end`` search parameter on the upstream *whose index is complete*:
        ``start=lt{end}&end=gt{start}``, exact whatever the Slot's length. Otherwise: ``start``
        within ``SLOT_LOOKBACK_DAYS`` before the range, which sees any Slot shorter than the
        look-back. Whether the index is complete is found out by counting (see
        :class:`plugin.slot_index.SlotEndIndex`), so no decision rests on ``end=`` while the upstream
        is still indexing Slots stored before the parameter existed.

        A store that ``shares_reads`` sends an identical search asked at the same time in this
        process once (:class:`plugin.shared_reads.SharedReads`: never an answer sent before the
        call began).
        """
        wanted = _valid_ids(schedule_ids)
        if not wanted:
            return []
        if self._shares_reads:
            identity = "service" if self._credentials is not None else self._authorization
            key = ("Slot", identity, tuple(sorted(wanted)), start, end)
            return self._client.shared_reads.read(
                key, functools.partial(self._search_slots, wanted, start, end), self._deadline
            )
        return self._search_slots(wanted, start, end)

    def _search_slots(self, wanted: list[str], start: datetime, end: datetime) -> list[Resource]:
        common = [
            ("schedule", ",".join(f"Schedule/{i}" for i in wanted)),
            ("start", "lt" + _search_instant(end, round_up=True)),
        ]
        settings = self._client.settings
        if self._client.slot_end.usable(self._count):
            # ``gt`` compares against the end of the stated second; one second earlier keeps a
            # Slot ending a fraction of a second after ``start`` (more is fine, fewer is not).
            lower = _search_instant(start - timedelta(seconds=1), round_up=False)
            pieces = self._slot_pieces(common[0], ("end", "gt" + lower), start, end, SLOT_SEARCH_SPLITS)
            if len(pieces) == 1:
                return self.search("Slot", pieces[0], headers=STRICT)
            found = self._client.slot_pieces(
                *[functools.partial(self.search, "Slot", piece, headers=STRICT) for piece in pieces]
            )
            return [slot for piece in found for slot in piece]
        lookback = start - timedelta(days=settings.slot_lookback_days)
        return self.search(
            "Slot",
            [*common, ("start", "ge" + _search_instant(lookback, round_up=False))],
            headers=STRICT,
        )

    def _slot_pieces(
        self,
        schedules: tuple[str, str],
        ends_after: tuple[str, str],
        start: datetime,
        end: datetime,
        splits: int,
        *,
        first: bool = True,
    ) -> list[list[tuple[str, str]]]:
        """The queries that find the Slots of ``schedules`` ending after the range's start
        (``ends_after``) whose start is before ``end`` -- and, unless ``first``, at or after
        ``start``.

        One query, asked as one page HAPI does not keep (``transport._one_page``). A search
        that filled such a page lately (1,000 Slots: the day of a busy Schedule, asked by every
        patient's ``$find``) becomes two halves by start, each again one page, down to
        ``splits`` times; the pieces are read at the same time. HAPI's cost is per Slot it
        loads, and one page not kept costs it less than the pages it keeps (measured: 900
        Slots 109 against 159 ms of CPU). The halves split the Slots by their start, so none is
        found twice and none is missed; the first keeps every Slot that began before the range
        (a long block). Deciding the pieces reads nothing: only what this process remembers."""
        query = [schedules, ("start", "lt" + _search_instant(end, round_up=True)), ends_after]
        if not first:
            query.insert(2, ("start", "ge" + _search_instant(start, round_up=True)))
        whole = [*query, ("_count", str(PAGE_SIZE))]
        middle = start + (end - start) / 2
        if splits > 0 and middle - start >= timedelta(minutes=1) and self.fills_one_page("Slot", whole):
            middle = middle.replace(microsecond=0)
            return [
                *self._slot_pieces(schedules, ends_after, start, middle, splits - 1, first=first),
                *self._slot_pieces(schedules, ends_after, middle, end, splits - 1, first=False),
            ]
        return [query]


# --------------------------------------------------------------------------------------------
# Helpers.


def _valid_ids(ids: Sequence[str]) -> list[str]:
    """Unique ids in order, dropping any that cannot be FHIR ids: no resource has such an id,
    and a comma would split an ``_id`` list into ids nobody asked for."""
    seen: dict[str, None] = {}
    for resource_id in ids:
        if is_fhir_id(resource_id):
            seen.setdefault(resource_id, None)
    return list(seen)


def _search_instant(value: datetime, *, round_up: bool) -> str:
    """A UTC instant to whole seconds, rounded outward so a search bound never excludes more
    than asked (``lt`` bounds round up, ``gt``/``ge`` bounds round down)."""
    if value.tzinfo is None:
        raise ValueError("search bounds must be aware datetimes")
    value = value.astimezone(UTC)
    if round_up and value.microsecond:
        value += timedelta(seconds=1)
    return value.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
