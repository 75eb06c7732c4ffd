"""An in-memory ``SchedulingStore`` for the domain's tests: resources in, the same reads out."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from operations.fhir_values import parse_instant

Resource = dict[str, Any]


class FakeStore:
    """Holds FHIR JSON resources by ``Type/id`` and answers like the upstream would."""

    def __init__(self, *resources: Resource) -> None:
        self.resources: dict[str, Resource] = {}
        self.calls: list[str] = []
        for resource in resources:
            self.add(resource)

    def add(self, resource: Resource) -> Resource:
        if "id" not in resource:
            resource = {**resource, "id": f"{resource['resourceType'].lower()}-{len(self.resources)}"}
        self.resources[f"{resource['resourceType']}/{resource['id']}"] = resource
        return resource

    def read_schedules(self, ids: Sequence[str]) -> tuple[list[Resource], dict[str, Resource]]:
        self.calls.append("read_schedules")
        schedules = [self.resources[f"Schedule/{i}"] for i in ids if f"Schedule/{i}" in self.resources]
        actors = {}
        for schedule in schedules:
            for actor in schedule.get("actor", []):
                ref = actor.get("reference")
                if ref in self.resources:
                    actors[ref] = self.resources[ref]
        return schedules, actors

    def read_service(self, service_id: str) -> Resource | None:
        self.calls.append("read_service")
        return self.resources.get(f"HealthcareService/{service_id}")

    def search_slots(self, schedule_ids: Sequence[str], start: datetime, end: datetime) -> list[Resource]:
        self.calls.append("search_slots")
        wanted = {f"Schedule/{i}" for i in schedule_ids}
        return [
            r
            for r in self.resources.values()
            if r["resourceType"] == "Slot"
            and r.get("schedule", {}).get("reference") in wanted
            and parse_instant(r["start"]) < end
            and parse_instant(r["end"]) > start
        ]
