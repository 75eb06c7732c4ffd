"""The store protocol: what the use cases need to read from (and write to) the FHIR server.

``plugin/upstream.py`` implements it over FHIR REST; unit tests use an in-memory fake
(``tests/unit/fake_store.py``). Resources travel as FHIR JSON dicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

Resource = dict[str, Any]


class SchedulingStore(Protocol):
    """Reads that ``$find`` needs; each method is at most one upstream search (plus its pages)."""

    def read_schedules(self, ids: Sequence[str]) -> tuple[list[Resource], dict[str, Resource]]:
        """The Schedules with these ids (missing ones are simply absent) and the actors they
        reference, keyed by relative reference (``"Practitioner/abc"``).

        One search whatever the number of ids (``_id`` list with ``_include=Schedule:actor``).
        """
        ...

    def read_service(self, service_id: str) -> Resource | None:
        """The HealthcareService with this id, or ``None`` if it does not exist."""
        ...

    def search_slots(self, schedule_ids: Sequence[str], start: datetime, end: datetime) -> list[Resource]:
        """Every Slot of these Schedules that overlaps ``[start, end)``, including long Slots
        that began before ``start``; may return more (the engine filters), never fewer.
        One search for all schedules, following ``next`` links to the end."""
        ...


class FhirStore(SchedulingStore, Protocol):
    """The generic reads and the one write the booking operations need.

    Every read bypasses server-side search caches (``Cache-Control: no-cache``): these reads
    decide writes. ``transaction`` raises ``operations.errors.ConcurrentChange`` when the
    upstream answers 409 or 412 (a version check failed), and returns the
    ``transaction-response`` Bundle with each entry's resource (``Prefer: return=representation``).
    """

    def read(self, resource_type: str, resource_id: str) -> Resource | None:
        """The current version of one resource, or ``None`` when it does not exist (or is gone)."""
        ...

    def search(self, resource_type: str, params: Sequence[tuple[str, str]]) -> list[Resource]:
        """Every match of a search (all pages), without included resources."""
        ...

    def transaction(self, bundle: Resource) -> Resource:
        """POST a transaction Bundle; all of it lands or none of it does."""
        ...
