"""Load test clinics into the real HAPI server and count what it holds.

Every test builds its own clinic under a fresh id prefix, so tests never see each other's data
and need no clean-up.
"""

from __future__ import annotations

import uuid
from typing import Any

import requests

from tests.integration.trust import SERVICE_HEADERS
from tests.unit import builders

Resource = dict[str, Any]
NO_CACHE = {"Cache-Control": "no-cache", "Accept": "application/fhir+json"}


def new_prefix() -> str:
    return "t" + uuid.uuid4().hex[:10]


def load(fhir_base: str, *resources: Resource) -> None:
    """PUT the resources (with their ids) in one transaction, as the sidecar would: test data
    may include booked Slots, which the HAPI guard accepts only from the sidecar."""
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": r,
                "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}
                if "id" in r
                else {"method": "POST", "url": r["resourceType"]},
            }
            for r in resources
        ],
    }
    response = requests.post(
        fhir_base,
        json=bundle,
        headers={"Content-Type": "application/fhir+json", **SERVICE_HEADERS},
        timeout=60,
    )
    assert response.status_code == 200, response.text


def search(fhir_base: str, resource_type: str, **params: str) -> list[Resource]:
    """Every match (all pages), bypassing HAPI's search cache."""
    url: str | None = f"{fhir_base}/{resource_type}"
    query: dict[str, str] | None = {**params, "_count": "1000"}
    found: list[Resource] = []
    while url:
        response = requests.get(url, params=query, headers=NO_CACHE, timeout=60)
        assert response.status_code == 200, response.text
        bundle = response.json()
        found += [
            e["resource"]
            for e in bundle.get("entry", [])
            if e.get("search", {}).get("mode", "match") == "match"
        ]
        url = next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)
        query = None
    return found


class Clinic:
    """Dr. Alice (New York) and a room (London), one 30-minute check-up service, weekday hours."""

    def __init__(self, fhir_base: str, **service_block: Any) -> None:
        self.fhir_base = fhir_base
        p = self.prefix = new_prefix()
        self.alice, self.room, self.service = f"{p}-alice", f"{p}-room", f"{p}-checkup"
        service_block.setdefault("duration", 30)
        self.resources = [
            builders.practitioner(self.alice, "America/New_York"),
            builders.location(self.room, "Europe/London"),
            builders.service(
                self.service,
                hours=[builders.hours("mon tue wed thu fri", "09:00", "17:00")],
                code=("http://example.org/visit-type", p),
                **service_block,
            ),
            builders.schedule(self.alice, f"Practitioner/{self.alice}", [self.service]),
            builders.schedule(self.room, f"Location/{self.room}", [self.service]),
        ]

    def load(self, *extra: Resource) -> Clinic:
        load(self.fhir_base, *self.resources, *extra)
        return self

    def find_params(
        self, start: str, end: str, *schedules: str, count: int | None = None
    ) -> list[tuple[str, str]]:
        params = [
            ("start", start),
            ("end", end),
            ("service-type-reference", f"HealthcareService/{self.service}"),
        ]
        params += [("schedule", f"Schedule/{s}") for s in (schedules or (self.alice,))]
        if count is not None:
            params.append(("_count", str(count)))
        return params

    def slots(self) -> list[Resource]:
        return search(self.fhir_base, "Slot", schedule=f"Schedule/{self.alice},Schedule/{self.room}")

    def appointments(self) -> list[Resource]:
        return search(self.fhir_base, "Appointment", actor=f"Practitioner/{self.alice}")
