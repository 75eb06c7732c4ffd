"""The store protocols: what the use cases need to read from (and write to) the FHIR server.

``plugin/upstream.py`` implements them over FHIR REST; unit tests use an in-memory fake
(``tests/unit/fake_store.py``). Resources travel as FHIR JSON dicts.

Two identities read and write (SPEC §5.1), so a use case is handed :class:`Stores`, a pair:

* ``caller`` acts with the caller's own credentials. It makes the reads that stand for
  permission -- the Schedules with their actors, the HealthcareService, the participants an
  Appointment names, the Appointment addressed by ``$confirm``/``$cancel`` -- and whatever the
  upstream answers it (401, 403, nothing found) is the answer: a caller may book for, and
  change, what it may read.
* ``service`` acts with the sidecar's own identity. It makes the reads that decide (Slots,
  locks, identifier look-ups) and every write, so a decision always sees every Slot whatever
  the caller may see, and callers need no write rights of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from operations.read_hints import ReadHints

Resource = dict[str, Any]


class ConfigurationReader(Protocol):
    """The configuration reads of ``$find`` and the bookings; one search each (plus pages)."""

    def read_schedules(self, ids: Sequence[str]) -> tuple[list[Resource], dict[str, Resource]]:
        """The Schedules with these ids (missing ones are simply absent) and the actors they
        reference, keyed by relative reference (``"Practitioner/abc"``).

        One search whatever the number of ids (``_id`` list with ``_include=Schedule:actor``).
        """
        ...

    def read_service(self, service_id: str) -> Resource | None:
        """The HealthcareService with this id, or ``None`` if it does not exist."""
        ...


class SlotReader(Protocol):
    """The deciding read of ``$find``."""

    def search_slots(self, schedule_ids: Sequence[str], start: datetime, end: datetime) -> list[Resource]:
        """Every Slot of these Schedules that overlaps ``[start, end)``, including long Slots
        that began before ``start``; may return more (the engine filters), never fewer.
        One search for all schedules, following ``next`` links to the end."""
        ...


class SchedulingStore(ConfigurationReader, SlotReader, Protocol):
    """Everything ``$find`` reads, from one identity (tools, benchmarks, the engine's tests)."""


class DirectoryReader(Protocol):
    """The searches that turn IHE ITI-115 criteria into Schedules and a service (SPEC §7.2):
    one search each, whatever the number of actors or codes named, so ``$find`` stays bounded."""

    def search_schedules_by_actor(
        self, references: Sequence[str], *, via_role: bool = False
    ) -> tuple[list[Resource], dict[str, Resource]]:
        """Every Schedule whose actor is one of ``references`` (``"Practitioner/a"``,
        ``"Location/b"``) -- or, with ``via_role``, a PractitionerRole whose ``practitioner``
        is one of them -- and the actors they reference, keyed by relative reference.
        One search (``_include=Schedule:actor``), every page."""
        ...

    def search_services(self, service_types: Sequence[str]) -> list[Resource]:
        """Every HealthcareService whose ``type`` carries one of these tokens
        (``system|code``, ``|code`` or ``code``). One search, every page."""
        ...


class FhirReader(ConfigurationReader, DirectoryReader, Protocol):
    """The reads a caller's credentials make: configuration, the directory searches of
    ``$find``'s IHE parameters, plus generic reads and searches."""

    def read(self, resource_type: str, resource_id: str) -> Resource | None:
        """The current version of one resource, or ``None`` when it does not exist (or is gone)."""
        ...

    def search(
        self, resource_type: str, params: Sequence[tuple[str, str]], *, limit: int | None = None
    ) -> list[Resource]:
        """The matches of a search without included resources: every page, or the first
        ``limit`` matches (fewer pages) when a limit is given."""
        ...

    def search_including(
        self, resource_type: str, params: Sequence[tuple[str, str]]
    ) -> tuple[list[Resource], list[Resource]]:
        """The matches of a search and, apart, the resources its ``_include`` brought (every
        page): one round trip for a resource and what it references."""
        ...


class FhirStore(FhirReader, SlotReader, Protocol):
    """The reads and the one write the booking operations need.

    Every read bypasses server-side search caches (``Cache-Control: no-cache``): these reads
    decide writes. ``transaction`` raises ``operations.errors.ConcurrentChange`` when the
    upstream answers 409 or 412 for a version check, ``ReferencedElsewhere`` when it refuses a
    delete because something still references the resource, and ``OutcomeUnknown`` when the
    request may have landed but its answer was lost; otherwise it returns the
    ``transaction-response`` Bundle with each entry's resource (``Prefer: return=representation``).
    """

    def transaction(self, bundle: Resource) -> Resource:
        """POST a transaction Bundle; all of it lands or none of it does. The store attributes
        a bundle that carries no attribution yet (:meth:`attributed`)."""
        ...

    def attributed(self, bundle: Resource) -> Resource:
        """``bundle`` with what makes its writes attributable to this store's request (the
        plugin adds a Provenance naming the operation and the caller): how a group of bookings
        written in one transaction keeps each booking attributed to its own caller."""
        ...


Together = Callable[..., list[Any]]
"""Runs independent reads and returns their results in order: ``together(f, g)`` is
``[f(), g()]``, possibly run at the same time. When several fail, the first failure in order is
raised (so a refusal of the caller's credentials wins over anything else)."""


def one_after_another(*calls: Callable[[], Any]) -> list[Any]:
    """The plain ``Together``: each read in turn (tests, tools)."""
    return [call() for call in calls]


@dataclass(frozen=True)
class Stores:
    """The two identities a use case acts with (module docstring)."""

    caller: FhirReader
    """The caller's credentials: permission reads only."""
    service: FhirStore
    """The sidecar's own credentials: deciding reads and every write."""
    together: Together = field(default=one_after_another)
    """How independent reads run: the plugin runs them at the same time, so their upstream
    latencies overlap instead of adding up."""
    hints: ReadHints | None = None
    """What earlier requests of this process learned about the Schedules: sizes reads, never
    decides (``operations/read_hints.py``)."""

    @classmethod
    def single(cls, store: FhirStore) -> Stores:
        """One store in both roles: tools, tests and upstreams without access control."""
        return cls(caller=store, service=store)


def as_stores(stores: Stores | FhirStore) -> Stores:
    """``Stores`` as given, or one store in both roles."""
    return stores if isinstance(stores, Stores) else Stores.single(stores)
