"""Pools against real HAPI with many processes (SPEC §7.2): one of three practitioners with one
of two rooms, booked by many clients at once through two sidecar processes.

Each client asks ``$find`` for the pooled hour (``schedule=p1,p2,p3&schedule=r1,r2``) and books
its first proposal; on 409 it asks again, until the hour offers nothing. Four 15-minute times
and two rooms make exactly eight bookings possible. Afterwards an independent scan of HAPI
(``tests/reliability/scan.py``) and the stored busy Slots show that no member was ever
double-booked and that every 201 a client got is stored.
"""

from __future__ import annotations

import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from tests.integration.clinic import load, new_prefix, search
from tests.integration.conftest import Sidecar
from tests.integration.test_booking import FHIR_JSON
from tests.integration.test_find import get_find, local, monday_ahead
from tests.reliability.scan import scan
from tests.unit import builders

CLIENTS = 12
IDENTIFIER_SYSTEM = "urn:test:pools"


class PoolClinic:
    """Three practitioners and two rooms in New York, one 15-minute service on a 15-minute grid."""

    def __init__(self, fhir_base: str) -> None:
        p = self.prefix = new_prefix()
        self.practitioners = [f"{p}-dr{n}" for n in (1, 2, 3)]
        self.rooms = [f"{p}-room{n}" for n in (1, 2)]
        self.service = f"{p}-checkup"
        resources = [
            builders.service(
                self.service,
                hours=[builders.hours("mon tue wed thu fri", "09:00", "17:00")],
                code=("http://example.org/visit-type", p),
                duration=15,
                alignmentInterval=15,
            )
        ]
        for actor in self.practitioners:
            resources.append(builders.practitioner(actor, "America/New_York"))
            resources.append(builders.schedule(actor, f"Practitioner/{actor}", [self.service]))
        for room in self.rooms:
            resources.append(builders.location(room, "America/New_York"))
            resources.append(builders.schedule(room, f"Location/{room}", [self.service]))
        load(fhir_base, *resources)

    def find_params(self, start: str, end: str, order: str) -> list[tuple[str, str]]:
        return [
            ("start", start),
            ("end", end),
            ("service-type-reference", f"HealthcareService/{self.service}"),
            ("schedule", ",".join(f"Schedule/{s}" for s in self.practitioners)),
            ("schedule", ",".join(f"Schedule/{s}" for s in self.rooms)),
            ("pool-order", order),
            ("_count", "100"),
        ]


def book_until_full(
    sidecar: Sidecar, clinic: PoolClinic, start: str, end: str, order: str
) -> list[tuple[int, str]]:
    """Find and book the first proposal until nothing is offered: (status, identifier) per try."""
    tries: list[tuple[int, str]] = []
    for _ in range(40):
        found = get_find(sidecar, clinic.find_params(start, end, order))
        assert found.status_code == 200, found.text
        proposals = [e["resource"] for e in found.json().get("entry", []) if e["search"]["mode"] == "match"]
        if not proposals:
            return tries
        identifier = uuid.uuid4().hex
        proposal = proposals[0] | {"identifier": [{"system": IDENTIFIER_SYSTEM, "value": identifier}]}
        body = {"resourceType": "Parameters", "parameter": [{"name": "appointment", "resource": proposal}]}
        response = requests.post(
            f"{sidecar.base_url}/Appointment/$book", json=body, headers=FHIR_JSON, timeout=120
        )
        assert response.status_code in (201, 409), response.text
        tries.append((response.status_code, identifier))
    raise AssertionError("the pooled hour never filled up")


def test_concurrent_clients_fill_a_pooled_hour_and_no_member_is_double_booked(
    sidecar: Sidecar, second_sidecar: Sidecar, hapi: Any
) -> None:
    clinic = PoolClinic(hapi.base_url)
    day = monday_ahead()
    start, end = local(day, "09:00"), local(day, "10:00")
    clients = [
        (sidecar if n % 2 else second_sidecar, "balanced" if n % 3 else "listed") for n in range(CLIENTS)
    ]
    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        results = list(
            pool.map(lambda client: book_until_full(client[0], clinic, start, end, client[1]), clients)
        )
    tries = [t for client in results for t in client]
    booked = [identifier for status, identifier in tries if status == 201]
    assert len(booked) == 8, Counter(status for status, _ in tries)  # 4 times x 2 rooms

    schedules = clinic.practitioners + clinic.rooms
    report = scan(hapi.base_url, schedules)
    assert report.clean, "\n".join(report.problems)
    live = report.live()
    assert len(live) == 8
    for identifier in booked:  # every 201 is stored, once
        assert len(report.with_identifier(IDENTIFIER_SYSTEM, identifier)) == 1, identifier

    # Independently of the scan: per member, the stored visits never share a start; per time, a
    # visit on one practitioner and one room.
    visits = [
        s
        for s in search(hapi.base_url, "Slot", schedule=",".join(f"Schedule/{i}" for i in schedules))
        if s["status"] == "busy"
    ]
    per_member = Counter((s["schedule"]["reference"], s["start"]) for s in visits)
    assert set(per_member.values()) == {1}, per_member
    rooms = {f"Schedule/{r}" for r in clinic.rooms}
    per_time = Counter((s["start"], s["schedule"]["reference"] in rooms) for s in visits)
    assert sorted(per_time.values()) == [2] * 8, per_time  # each time: 2 room visits, 2 doctor visits
    assert len({s["start"] for s in visits}) == 4
    assert get_find(sidecar, clinic.find_params(start, end, "listed")).json()["total"] == 0


def test_a_pooled_find_costs_the_reads_of_a_joint_one(sidecar: Sidecar, hapi: Any) -> None:
    """Three upstream requests, sent together, whatever the pools' sizes and order."""
    clinic = PoolClinic(hapi.base_url)
    day = monday_ahead()
    for order in ("listed", "balanced"):
        response = get_find(sidecar, clinic.find_params(local(day, "09:30"), local(day, "12:00"), order))
        assert response.status_code == 200, response.text
        assert response.json()["total"] == 10  # 09:30 to 11:45, one doctor and one room each
        assert response.headers["X-Upstream-Round-Trips"] == "3", order
