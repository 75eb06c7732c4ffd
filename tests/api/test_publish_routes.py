"""``$bulk-publish`` over HTTP, the real engine on a mocked upstream: the manifest and its files
under the SMART Scheduling Links rules, caching and validators, the snapshot a manifest names,
and errors (an unknown file, publishing off, the upstream failing)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import responses
from flask.testing import FlaskClient

from operations.model import SERVICE_TYPE_REFERENCE_URL, TIMEZONE_URL
from operations.publish import PUBLISH_TAG
from plugin.app import create_app
from plugin.config import Settings
from tests.api.conftest import BASE, bundle, outcome
from tests.support.smart_links import check_publication

MANIFEST = "/fhir/$bulk-publish"
MONDAY = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)  # 03:00 in New York
TEMPLATE = "https://portal.example.org/book?schedule={schedule}&start={start}"


class Clock:
    def __init__(self) -> None:
        self.now = MONDAY

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client(clock: Clock) -> FlaskClient:
    settings = Settings(
        fhir_base_url=BASE,
        upstream_authorization="Bearer admin-token",
        hold_sweep_seconds=0,
        slot_end_search="on",
        publish_booking_url_template=TEMPLATE,
        publish_days=1,
    )
    return create_app(settings, clock=clock).test_client()


def schedule(sid: str) -> dict[str, Any]:
    return {
        "resourceType": "Schedule",
        "id": sid,
        "meta": {"tag": [PUBLISH_TAG]},
        "actor": [{"reference": "Location/main"}],
        "serviceType": [
            {
                "extension": [
                    {
                        "url": SERVICE_TYPE_REFERENCE_URL,
                        "valueReference": {"reference": "HealthcareService/svc"},
                    }
                ]
            }
        ],
    }


MAIN = {
    "resourceType": "Location",
    "id": "main",
    "name": "Main Street Clinic",
    "extension": [{"url": TIMEZONE_URL, "valueCode": "America/New_York"}],
    "telecom": [{"system": "url", "value": "https://clinic.example.org"}],
    "address": {"line": ["1 Main St"], "city": "Pittsfield", "state": "MA", "postalCode": "01201"},
}
SERVICE = {
    "resourceType": "HealthcareService",
    "id": "svc",
    "active": True,
    "name": "Check-up",
    "availableTime": [
        {"daysOfWeek": ["mon"], "availableStartTime": "09:00:00", "availableEndTime": "11:00:00"}
    ],
    "extension": [
        {
            "url": "https://medplum.com/fhir/StructureDefinition/SchedulingParameters",
            "extension": [{"url": "duration", "valueDuration": {"value": 30, "unit": "min"}}],
        }
    ],
}


def including(
    matches: list[dict[str, Any]], included: list[dict[str, Any]], next_url: str | None = None
) -> dict[str, Any]:
    page = bundle(matches, next_url)
    page["entry"] += [{"resource": r, "search": {"mode": "include"}} for r in included]
    return page


@pytest.fixture
def clinic(upstream: responses.RequestsMock) -> Iterator[responses.RequestsMock]:
    """Two tagged Schedules at Main Street over two pages of the Schedule search."""
    second_page = f"{BASE}?_getpages=abc&_getpagesoffset=1"
    upstream.get(f"{BASE}/Schedule", json=including([schedule("a")], [MAIN], second_page))
    upstream.get(second_page, json=including([schedule("b")], [MAIN]))
    upstream.get(f"{BASE}/HealthcareService", json=bundle([SERVICE]))
    booked = {
        "resourceType": "Slot",
        "id": "booked",
        "schedule": {"reference": "Schedule/b"},
        "status": "busy",
        "start": "2026-11-02T09:00:00-05:00",
        "end": "2026-11-02T09:30:00-05:00",
    }
    upstream.get(f"{BASE}/Slot", json=bundle([booked]))
    yield upstream


def fetcher(client: FlaskClient) -> Any:
    def fetch(url: str) -> tuple[int, str, bytes]:
        parts = urlsplit(url)
        assert parts.netloc == "localhost", url
        response = client.get(f"{parts.path}?{parts.query}")
        return response.status_code, response.content_type, response.get_data()

    return fetch


def test_the_manifest_and_its_files_follow_smart_scheduling_links(
    client: FlaskClient, clinic: responses.RequestsMock
) -> None:
    response = client.get(MANIFEST, headers={"Authorization": "Bearer someone"})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.content_type == "application/json"
    assert response.headers["Cache-Control"] == "max-age=300, public"
    assert response.headers["Last-Modified"] == "Mon, 02 Nov 2026 08:00:00 GMT"
    assert response.headers["ETag"] and response.headers["Age"] == "0"
    # Round 1 the Schedules (two pages), round 2 the service and the Slots together.
    assert response.headers["X-Upstream-Round-Trips"] == "4"
    document = response.get_json()
    assert document["transactionTime"] == "2026-11-02T08:00:00.000Z"
    assert document["request"] == "http://localhost/fhir/$bulk-publish"
    assert document["output"][2] == {
        "type": "Slot",
        "url": "http://localhost/fhir/$bulk-publish/Slot.ndjson?snapshot=2026-11-02T08%3A00%3A00.000Z",
    }
    found = check_publication(document, fetcher(client))
    assert [(s["schedule"]["reference"], s["start"]) for s in found["Slot"]] == [
        ("Schedule/a", "2026-11-02T09:00:00-05:00"),
        ("Schedule/a", "2026-11-02T10:00:00-05:00"),
        ("Schedule/b", "2026-11-02T10:00:00-05:00"),
    ]
    # The sidecar's own credentials, never the caller's: what is published is the administrator's choice.
    assert {c.request.headers["Authorization"] for c in clinic.calls} == {"Bearer admin-token"}
    schedule_search = str(clinic.calls[0].request.url)
    assert "_tag=https%3A%2F%2Ffanoni.dev%2Ffhir%2FCodeSystem%2Ffanoni%7Cpublish" in schedule_search
    assert "active%3Anot=false" in schedule_search and "_include=Schedule%3Aactor" in schedule_search


def test_files_are_served_from_the_manifests_snapshot_without_reading_again(
    client: FlaskClient, clinic: responses.RequestsMock, clock: Clock
) -> None:
    document = client.get(MANIFEST).get_json()
    calls = len(clinic.calls)
    clock.now += timedelta(seconds=310)  # the manifest has gone stale, its snapshot is still kept
    slot_url = urlsplit(document["output"][2]["url"])
    response = client.get(f"{slot_url.path}?{slot_url.query}", headers={"Accept": "application/fhir+ndjson"})
    assert response.status_code == 200
    assert response.content_type == "application/fhir+ndjson"
    assert response.headers["Age"] == "310"
    assert response.headers["Last-Modified"] == "Mon, 02 Nov 2026 08:00:00 GMT"
    assert len(response.get_data().splitlines()) == 3 and len(clinic.calls) == calls
    # Without a snapshot (or with one this process no longer has) the current publication is served.
    fresh = client.get(f"{MANIFEST}/Slot.ndjson?snapshot=2026-11-01T00%3A00%3A00.000Z")
    assert fresh.status_code == 200 and fresh.headers["Age"] == "0" and len(clinic.calls) > calls


def test_the_publication_is_reused_for_max_age_and_revalidated_by_etag(
    client: FlaskClient, clinic: responses.RequestsMock, clock: Clock
) -> None:
    first = client.get(MANIFEST)
    clock.now += timedelta(seconds=120)
    again = client.get(MANIFEST, headers={"Accept": "application/json"})
    assert again.get_json() == first.get_json()
    assert (again.headers["X-Upstream-Round-Trips"], again.headers["Age"]) == ("0", "120")
    unchanged = client.get(MANIFEST, headers={"If-None-Match": first.headers["ETag"]})
    assert unchanged.status_code == 304 and unchanged.get_data() == b""
    clock.now += timedelta(seconds=200)
    later = client.get(MANIFEST)
    assert later.headers["X-Upstream-Round-Trips"] == "4"
    assert later.get_json()["transactionTime"] == "2026-11-02T08:05:20.000Z"


def test_an_unknown_file_is_a_404_outcome(client: FlaskClient) -> None:
    response = client.get(f"{MANIFEST}/Patient.ndjson")
    assert response.status_code == 404
    issue = response.get_json()["issue"][0]
    assert issue["code"] == "not-found"
    assert "Location.ndjson, Schedule.ndjson, Slot.ndjson, OperationOutcome.ndjson" in issue["diagnostics"]


def test_a_malformed_snapshot_is_a_400(client: FlaskClient) -> None:
    response = client.get(f"{MANIFEST}/Slot.ndjson?snapshot=yesterday")
    assert response.status_code == 400
    assert response.get_json()["issue"][0]["code"] == "value"


def test_without_a_booking_link_template_nothing_is_published(upstream: responses.RequestsMock) -> None:
    client = create_app(Settings(fhir_base_url=BASE, hold_sweep_seconds=0)).test_client()
    for path in (MANIFEST, f"{MANIFEST}/Slot.ndjson"):
        response = client.get(path)
        assert response.status_code == 404
        assert "PUBLISH_BOOKING_URL_TEMPLATE" in response.get_json()["issue"][0]["diagnostics"]
    assert not upstream.calls


@pytest.mark.parametrize("path", [MANIFEST, f"{MANIFEST}/Schedule.ndjson"])
@pytest.mark.parametrize(
    ("answer", "status", "code"),
    [
        ({"body": requests.ConnectionError("Connection refused")}, 503, "transient"),
        ({"body": requests.ReadTimeout("read timed out")}, 504, "timeout"),
        ({"status": 500, "json": outcome("NullPointerException")}, 502, "exception"),
        ({"status": 403, "json": outcome("HAPI-0333: Access denied")}, 502, "exception"),
    ],
)
def test_upstream_failures_are_gateway_errors(
    client: FlaskClient,
    upstream: responses.RequestsMock,
    path: str,
    answer: dict[str, Any],
    status: int,
    code: str,
) -> None:
    upstream.get(f"{BASE}/Schedule", **answer)
    response = client.get(path)
    assert response.status_code == status
    assert response.get_json()["issue"][0]["code"] == code
    assert "Cache-Control" not in response.headers or "max-age" not in response.headers["Cache-Control"]
