"""``$bulk-publish`` against the real HAPI through a real sidecar process (SPEC §7.5): the
Schedules tagged for publishing are found with their Locations (``_include:iterate`` on HAPI),
every file passes the SMART Scheduling Links rules, and a time booked with ``$book`` is no longer
published."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
import requests

from operations.publish import PUBLISH_TAG
from tests.integration.clinic import load, new_prefix
from tests.integration.conftest import Sidecar
from tests.integration.test_booking import post
from tests.support.smart_links import check_publication
from tests.unit import builders

TEMPLATE = "https://portal.example.org/book?schedule={schedule}&service={service}&start={start}"


@pytest.fixture(scope="module")
def publisher(registered: str) -> Iterator[Sidecar]:
    """A sidecar that publishes, recomputing on every manifest (max-age 0) so a booking shows at once."""
    process = Sidecar(
        registered,
        workers=2,
        log_name="sidecar-publish",
        env={
            "PUBLISH_BOOKING_URL_TEMPLATE": TEMPLATE,
            "PUBLISH_MAX_AGE_SECONDS": "0",
            "PUBLISH_BOOKING_PHONE": "+1 413 555 0100",
        },
    )
    try:
        yield process
    finally:
        process.stop()


def place(lid: str, name: str) -> dict[str, Any]:
    resource = builders.location(lid, "America/New_York")
    resource["name"] = name
    resource["telecom"] = [{"system": "phone", "value": "+1 413 555 0100"}]
    resource["address"] = {"line": ["1 Main St"], "city": "Pittsfield", "state": "MA", "postalCode": "01201"}
    return resource


def tagged(resource: dict[str, Any]) -> dict[str, Any]:
    resource["meta"] = {"tag": [PUBLISH_TAG]}
    return resource


def publication(sidecar: Sidecar) -> tuple[requests.Response, dict[str, list[dict[str, Any]]]]:
    response = requests.get(f"{sidecar.base_url}/$bulk-publish", timeout=120)
    assert response.status_code == 200, response.text

    def fetch(url: str) -> tuple[int, str, bytes]:
        answer = requests.get(url, headers={"Accept": "application/fhir+ndjson"}, timeout=120)
        return answer.status_code, answer.headers.get("Content-Type", ""), answer.content

    return response, check_publication(response.json(), fetch)


def test_tagged_schedules_are_published_and_a_booked_time_disappears(publisher: Sidecar, hapi: Any) -> None:
    p = new_prefix()
    room = builders.schedule(f"{p}-room", f"Location/{p}-room", [f"{p}-checkup"])
    del room["active"]  # no `active` is active: found by active:not=false
    load(
        hapi.base_url,
        place(f"{p}-main", "Main Street Clinic"),
        place(f"{p}-room", "Main Street Clinic, room 2"),
        builders.practitioner(f"{p}-alice", "America/New_York"),
        {
            "resourceType": "PractitionerRole",
            "id": f"{p}-alice-main",
            "active": True,
            "practitioner": {"reference": f"Practitioner/{p}-alice"},
            "location": [{"reference": f"Location/{p}-main"}],
        },
        builders.service(
            f"{p}-checkup",
            hours=[builders.hours("mon tue wed thu fri", "09:00", "17:00")],
            code=("http://example.org/visit-type", p),
            duration=30,
        ),
        tagged(builders.schedule(f"{p}-alice", f"Practitioner/{p}-alice", [f"{p}-checkup"])),
        tagged(room),
        builders.schedule(f"{p}-bob", f"Location/{p}-main", [f"{p}-checkup"]),
    )
    response, found = publication(publisher)
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Cache-Control"] == "max-age=0, public"
    mine = {s["id"]: s["actor"][0]["reference"] for s in found["Schedule"] if s["id"].startswith(p)}
    assert mine == {f"{p}-alice": f"Location/{p}-main", f"{p}-room": f"Location/{p}-room"}
    alice = [s for s in found["Slot"] if s["schedule"]["reference"] == f"Schedule/{p}-alice"]
    # Weekdays 09:00-17:00, hourly: 8 a day over the next 14 days (10 weekdays; today's may have begun).
    assert 72 <= len(alice) <= 80, len(alice)
    first, second = alice[0], alice[1]
    links = {e["url"].rsplit("/", 1)[1]: e for e in first["extension"]}
    assert links["booking-deep-link"]["valueUrl"] == (
        f"https://portal.example.org/book?schedule={p}-alice&service={p}-checkup&start={quote(first['start'], safe='')}"
    )
    assert links["booking-phone"]["valueString"] == "+1 413 555 0100"

    proposals = requests.get(
        f"{publisher.base_url}/Appointment/$find",
        params=[
            ("start", first["start"]),
            ("end", first["end"]),
            ("service-type-reference", f"HealthcareService/{p}-checkup"),
            ("schedule", f"Schedule/{p}-alice"),
        ],
        timeout=60,
    ).json()
    booked = post(publisher, "book", proposals["entry"][0]["resource"])
    assert booked.status_code == 201, booked.text

    _, after = publication(publisher)
    ids = {s["id"] for s in after["Slot"]}
    assert first["id"] not in ids and second["id"] in ids
    # The room's time is untouched (but for a start that may have passed between the two).
    soon = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
    room_before = {s["id"] for s in found["Slot"] if s["schedule"]["reference"] == f"Schedule/{p}-room"}
    room_after = {s["id"] for s in after["Slot"] if s["schedule"]["reference"] == f"Schedule/{p}-room"}
    assert room_after <= room_before
    assert {
        s["id"] for s in found["Slot"] if s["id"] in room_before and _utc(s["start"]) > soon
    } <= room_after


def _utc(instant: str) -> str:
    return datetime.fromisoformat(instant).astimezone(UTC).isoformat()
