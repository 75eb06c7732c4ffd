"""A caller's reader primed with what one request has already read (``operations/ihe_find.py``):
the Schedules, their actors and the service, read a moment ago with the same credentials, are
answered from memory; every other read goes to the upstream."""

from __future__ import annotations

from collections.abc import Sequence

from operations.store import FhirReader, Resource


class PrimedReader:
    """The caller's reader with the Schedules, actors and services already read for this
    request: the search reads them again from memory, not from the upstream. Anything else goes
    to the upstream."""

    def __init__(
        self,
        inner: FhirReader,
        schedules: Sequence[Resource],
        actors: dict[str, Resource],
        services: dict[str, Resource | None],
        absent: Sequence[str] = (),
    ) -> None:
        self._inner = inner
        self._schedules = {str(s.get("id")): s for s in schedules}
        self._known = set(self._schedules) | set(absent)
        """Ids read, whether found or not: a Schedule named but missing is missing here too."""
        self._actors = actors
        self._services = services

    def read_schedules(self, ids: Sequence[str]) -> tuple[list[Resource], dict[str, Resource]]:
        if not set(ids) <= self._known:
            return self._inner.read_schedules(ids)
        return [self._schedules[i] for i in ids if i in self._schedules], dict(self._actors)

    def read_service(self, service_id: str) -> Resource | None:
        if service_id in self._services:
            return self._services[service_id]
        return self._inner.read_service(service_id)

    def search_schedules_by_actor(
        self, references: Sequence[str], *, via_role: bool = False
    ) -> tuple[list[Resource], dict[str, Resource]]:
        return self._inner.search_schedules_by_actor(references, via_role=via_role)

    def search_services(self, service_types: Sequence[str]) -> list[Resource]:
        return self._inner.search_services(service_types)

    def read(self, resource_type: str, resource_id: str) -> Resource | None:
        return self._inner.read(resource_type, resource_id)

    def search(
        self, resource_type: str, params: Sequence[tuple[str, str]], *, limit: int | None = None
    ) -> list[Resource]:
        return self._inner.search(resource_type, params, limit=limit)

    def search_including(
        self, resource_type: str, params: Sequence[tuple[str, str]]
    ) -> tuple[list[Resource], list[Resource]]:
        return self._inner.search_including(resource_type, params)
