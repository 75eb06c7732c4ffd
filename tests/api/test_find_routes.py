"""``$find`` over HTTP: how parameters reach the use case, and how failures come back.

The use case is replaced by small fakes here (its rules are tested in ``tests/unit``); one test
at the end runs the real engine against a mocked upstream to count round trips.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pytest
import requests
import responses
from flask.testing import FlaskClient

from operations import find
from operations.errors import ConcurrentChange, Unprocessable
from operations.model import SCHEDULING_PARAMETERS_URL, SERVICE_TYPE_REFERENCE_URL, TIMEZONE_URL
from operations.store import Stores
from tests.api.conftest import BASE, NOW, PLAIN_REQUEST, bundle, outcome

FIND = "/fhir/Appointment/$find"
QUERY = (
    "start=2026-12-01T09:00:00Z&end=2026-12-01T17:00:00Z"
    "&service-type-reference=HealthcareService/svc&schedule=Schedule/a&schedule=Schedule/b"
)
EMPTY_BUNDLE: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": 0}


class Captured:
    params: list[tuple[str, str]]
    kwargs: dict[str, Any]


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Captured:
    """Replace the use case: record what the route passed, answer an empty Bundle."""
    seen = Captured()

    def from_parameters(params: Sequence[tuple[str, str]], **kwargs: Any) -> Any:
        seen.params = list(params)
        seen.kwargs = kwargs
        return PLAIN_REQUEST

    monkeypatch.setattr(find.FindRequest, "from_parameters", from_parameters)
    monkeypatch.setattr(find, "find_appointments", lambda store, request: EMPTY_BUNDLE)
    monkeypatch.setattr(find, "find_slots", lambda store, request: EMPTY_BUNDLE)
    return seen


@pytest.fixture
def reading_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """A use case that reads through the store like the real one (so upstream failures show)."""

    def find_appointments(stores: Stores, request: find.FindRequest) -> dict[str, Any]:
        stores.caller.read_schedules(list(request.schedule_ids))
        return EMPTY_BUNDLE

    monkeypatch.setattr(find, "find_appointments", find_appointments)


# ---- parameters in ---------------------------------------------------------------------------


def test_get_passes_the_query_in_order(client: FlaskClient, captured: Captured) -> None:
    response = client.get(f"{FIND}?{QUERY}&_count=5&_format=json&_pretty=true")
    assert response.status_code == 200
    assert response.content_type == "application/fhir+json; charset=utf-8"
    assert response.get_json() == EMPTY_BUNDLE
    assert captured.params == [
        ("start", "2026-12-01T09:00:00Z"),
        ("end", "2026-12-01T17:00:00Z"),
        ("service-type-reference", "HealthcareService/svc"),
        ("schedule", "Schedule/a"),
        ("schedule", "Schedule/b"),
        ("_count", "5"),
    ]
    assert captured.kwargs == {
        "now": NOW,
        "max_range_days": 31,
        "schedule_id": None,
        "max_schedules": 20,
        "max_series": 12,
    }


def test_post_parameters_become_string_pairs(client: FlaskClient, captured: Captured) -> None:
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "start", "valueDateTime": "2026-12-01T09:00:00-05:00"},
            {"name": "end", "valueInstant": "2026-12-01T17:00:00-05:00"},
            {"name": "service-type-reference", "valueReference": {"reference": "HealthcareService/svc"}},
            {"name": "schedule", "valueString": "Schedule/a"},
            {"name": "schedule", "valueReference": {"reference": "Schedule/b", "display": "Room"}},
            {"name": "_count", "valuePositiveInt": 3},
            {"name": "flag", "valueBoolean": True},
        ],
    }
    response = client.post(FIND, json=body, headers={"Content-Type": "application/fhir+json"})
    assert response.status_code == 200
    assert captured.params == [
        ("start", "2026-12-01T09:00:00-05:00"),
        ("end", "2026-12-01T17:00:00-05:00"),
        ("service-type-reference", "HealthcareService/svc"),
        ("schedule", "Schedule/a"),
        ("schedule", "Schedule/b"),
        ("_count", "3"),
        ("flag", "true"),
    ]


def test_schedule_find_passes_the_id_from_the_url(client: FlaskClient, captured: Captured) -> None:
    response = client.get("/fhir/Schedule/dr-alice/$find?start=x")
    assert response.status_code == 200
    assert captured.kwargs["schedule_id"] == "dr-alice"
    assert (
        client.post("/fhir/Schedule/dr-alice/$find", json={"resourceType": "Parameters"}).status_code == 200
    )


def test_an_encoded_dollar_reaches_the_same_operation(client: FlaskClient, captured: Captured) -> None:
    assert client.get(f"/fhir/Appointment/%24find?{QUERY}").status_code == 200


# ---- the 4xx the route layer owns (SPEC §4) ---------------------------------------------------


def issue(response: Any) -> dict[str, Any]:
    body = response.get_json()
    assert response.content_type.startswith("application/fhir+json")
    assert body["resourceType"] == "OperationOutcome"
    assert len(body["issue"]) == 1
    return dict(body["issue"][0])


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "empty"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        (b"[" * 100_000, "not valid JSON"),  # nesting deep enough to break a naive parser
        (b'{"resourceType": "Appointment", "status": "proposed"}', "a Appointment"),
        (b'["Parameters"]', "not a FHIR resource"),
        (b'{"parameter": []}', "not a FHIR resource"),
    ],
)
def test_a_body_that_is_not_a_parameters_resource_is_400_structure(
    client: FlaskClient, captured: Captured, body: bytes, needle: str
) -> None:
    response = client.post(FIND, data=body, content_type="application/fhir+json")
    assert response.status_code == 400
    found = issue(response)
    assert found["code"] == "structure"
    assert needle in found["diagnostics"]
    assert not hasattr(captured, "params")  # the use case was never reached


@pytest.mark.parametrize(
    ("parameters", "code", "expression"),
    [
        ({"parameter": {"name": "start"}}, "structure", "Parameters.parameter"),
        ({"parameter": [{"valueString": "x"}]}, "structure", "Parameters.parameter[0]"),
        ({"parameter": ["start"]}, "structure", "Parameters.parameter[0]"),
        (
            {"parameter": [{"name": "schedule", "valueString": "Schedule/a"}, {"name": "schedule"}]},
            "required",
            "Parameters.schedule[1]",
        ),
        ({"parameter": [{"name": "start", "valueString": None}]}, "required", "Parameters.start[0]"),
        (
            {"parameter": [{"name": "start", "valueString": "a", "valueDateTime": "b"}]},
            "structure",
            "Parameters.start[0]",
        ),
        (
            {"parameter": [{"name": "schedule", "valueReference": {"identifier": {"value": "x"}}}]},
            "required",
            "Parameters.schedule[0]",
        ),
        (
            {"parameter": [{"name": "schedule", "valueCoding": {"code": "x"}}]},
            "invalid",
            "Parameters.schedule[0]",
        ),
        (
            {"parameter": [{"name": "schedule", "resource": {"resourceType": "Schedule"}}]},
            "invalid",
            "Parameters.schedule[0]",
        ),
    ],
)
def test_unreadable_parameters_point_at_the_parameter(
    client: FlaskClient,
    captured: Captured,
    parameters: dict[str, Any],
    code: str,
    expression: str,
) -> None:
    response = client.post(FIND, json={"resourceType": "Parameters", **parameters})
    assert response.status_code == 400
    found = issue(response)
    assert (found["code"], found["expression"]) == (code, [expression])


def test_unknown_route_under_the_prefix_is_404(client: FlaskClient) -> None:
    for path in ("/fhir/Appointment/$nope", "/fhir/Slot/$hold", "/fhir/", "/elsewhere"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert issue(response)["code"] == "not-found"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", FIND),
        ("DELETE", "/fhir/Schedule/a/$find"),
        ("POST", "/fhir/metadata"),
        ("PATCH", "/fhir/OperationDefinition/find"),
    ],
)
def test_wrong_method_is_405_with_allow(client: FlaskClient, method: str, path: str) -> None:
    response = client.open(path, method=method)
    assert response.status_code == 405
    assert issue(response)["code"] == "not-supported"
    assert "GET" in response.headers["Allow"]


def test_xml_is_refused_with_406(client: FlaskClient, captured: Captured) -> None:
    response = client.get(f"{FIND}?{QUERY}&_format=xml")
    assert response.status_code == 406
    assert issue(response)["code"] == "not-supported"
    assert client.get(f"{FIND}?{QUERY}&_format=application/fhir+json").status_code == 200


def test_oversized_body_is_413(client: FlaskClient, captured: Captured) -> None:
    response = client.post(FIND, data=b" " * (2 * 1024 * 1024), content_type="application/json")
    assert response.status_code == 413
    assert issue(response)["code"] == "too-costly"


def test_real_validation_errors_come_back_as_400(client: FlaskClient) -> None:
    """Through the real ``FindRequest``: malformed input never reaches the upstream or a 500."""
    response = client.get(FIND + "?start=tomorrow&end=2026-12-01T17:00:00Z")
    assert response.status_code == 400
    assert issue(response)["expression"] == ["Parameters.start"]
    assert response.headers["X-Upstream-Round-Trips"] == "0"


@pytest.mark.parametrize(
    ("pool_order", "expression"),
    [
        ("pool-order=random", "Parameters.pool-order"),
        ("pool-order=listed&pool-order=balanced", "Parameters.pool-order[1]"),
    ],
)
def test_a_bad_pool_order_is_400_before_any_read(
    client: FlaskClient, pool_order: str, expression: str
) -> None:
    response = client.get(f"{FIND}?{QUERY.replace('Schedule/a', 'Schedule/a,Schedule/c')}&{pool_order}")
    assert response.status_code == 400
    assert (issue(response)["code"], issue(response)["expression"]) == ("value", [expression])
    assert response.headers["X-Upstream-Round-Trips"] == "0"


# ---- errors from the use case and the upstream -----------------------------------------------


def test_scheduling_errors_are_rendered_with_status_code_and_expression(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(stores: Stores, request: find.FindRequest) -> dict[str, Any]:
        raise Unprocessable(
            "Schedule/b does not offer HealthcareService/svc", expression="Parameters.schedule[1]"
        )

    monkeypatch.setattr(find, "find_appointments", refuse)
    response = client.get(f"{FIND}?{QUERY}")
    assert response.status_code == 422
    assert issue(response) == {
        "severity": "error",
        "code": "business-rule",
        "diagnostics": "Schedule/b does not offer HealthcareService/svc",
        "expression": ["Parameters.schedule[1]"],
    }


def test_an_unsettled_concurrent_change_is_409(client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def race(stores: Stores, request: find.FindRequest) -> dict[str, Any]:
        raise ConcurrentChange("version conflict")

    monkeypatch.setattr(find, "find_appointments", race)
    response = client.get(f"{FIND}?{QUERY}")
    assert response.status_code == 409
    assert issue(response)["code"] == "conflict"


def test_unexpected_exceptions_are_500_without_internals(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def crash(stores: Stores, request: find.FindRequest) -> dict[str, Any]:
        raise KeyError("secret-internal-detail")

    monkeypatch.setattr(find, "find_appointments", crash)
    with caplog.at_level(logging.ERROR, logger="plugin"):
        response = client.get(f"{FIND}?{QUERY}", headers={"X-Request-ID": "trace-me-1"})
    assert response.status_code == 500
    text = response.get_data(as_text=True)
    assert "secret-internal-detail" not in text and "Traceback" not in text
    assert "trace-me-1" in issue(response)["diagnostics"]
    logged = [r for r in caplog.records if r.exc_info]
    assert logged and "secret-internal-detail" in repr(logged[0].exc_info)


@pytest.mark.parametrize(
    ("answer", "status", "code"),
    [
        ({"body": requests.ConnectionError("Connection refused")}, 503, "transient"),
        ({"body": requests.ConnectionError("Name or service not known")}, 503, "transient"),
        ({"body": requests.ReadTimeout("read timed out")}, 504, "timeout"),
        ({"status": 500, "json": outcome("NullPointerException")}, 502, "exception"),
        ({"status": 200, "body": "<html>proxy error</html>"}, 502, "exception"),
        ({"status": 401, "json": outcome("HAPI-0332: unauthorized")}, 401, "security"),
        ({"status": 403, "json": outcome("HAPI-0333: Access denied")}, 403, "forbidden"),
    ],
)
def test_upstream_failures_map_to_gateway_statuses(
    client: FlaskClient,
    upstream: responses.RequestsMock,
    reading_engine: None,
    answer: dict[str, Any],
    status: int,
    code: str,
) -> None:
    upstream.get(f"{BASE}/Schedule", **answer)
    response = client.get(f"{FIND}?{QUERY}")
    assert response.status_code == status
    assert issue(response)["code"] == code
    assert response.headers["X-Upstream-Round-Trips"] == "1"


def test_401_passes_the_challenge_through(
    client: FlaskClient, upstream: responses.RequestsMock, reading_engine: None
) -> None:
    upstream.get(
        f"{BASE}/Schedule",
        status=401,
        json=outcome("token expired"),
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )
    response = client.get(f"{FIND}?{QUERY}", headers={"Authorization": "Bearer stale"})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert "token expired" in issue(response)["diagnostics"]


def test_callers_authorization_reaches_the_upstream_uncached(
    client: FlaskClient, upstream: responses.RequestsMock, reading_engine: None
) -> None:
    upstream.get(f"{BASE}/Schedule", json=bundle([]))
    response = client.get(
        f"{FIND}?{QUERY}",
        headers={"Authorization": "Bearer caller-token", "X-Request-ID": "abc-123"},
    )
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == "abc-123"
    sent = upstream.calls[0].request.headers
    assert sent["Authorization"] == "Bearer caller-token"  # not the admin's credentials
    assert sent["Cache-Control"] == "no-cache, no-store, max-results=1000"  # one page, not kept
    assert sent["X-Request-ID"] == "abc-123"

    anonymous = client.get(f"{FIND}?{QUERY}")
    assert anonymous.status_code == 200
    assert "Authorization" not in upstream.calls[1].request.headers


def test_each_request_is_logged_with_its_cost(
    client: FlaskClient,
    upstream: responses.RequestsMock,
    reading_engine: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream.get(f"{BASE}/Schedule", json=bundle([]))
    with caplog.at_level(logging.INFO, logger="plugin"):
        client.get(f"{FIND}?{QUERY}", headers={"X-Request-ID": "log-me"})
    record = next(r for r in caplog.records if getattr(r, "request_id", None) == "log-me")
    assert record.__dict__["operation"] == "Appointment/$find"
    assert record.__dict__["status"] == 200
    assert record.__dict__["upstream_round_trips"] == 1
    assert record.__dict__["duration_ms"] >= 0


# ---- the real engine against a mocked upstream ------------------------------------------------


def test_find_costs_three_round_trips_with_the_real_engine(
    client: FlaskClient, upstream: responses.RequestsMock
) -> None:
    def schedule(schedule_id: str, actor: str) -> dict[str, Any]:
        return {
            "resourceType": "Schedule",
            "id": schedule_id,
            "active": True,
            "actor": [{"reference": actor}],
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

    utc = [{"url": TIMEZONE_URL, "valueCode": "UTC"}]
    upstream.get(
        f"{BASE}/Schedule",
        json=bundle(
            [
                schedule("a", "Practitioner/p"),
                schedule("b", "Location/room"),
                {"resourceType": "Practitioner", "id": "p", "extension": utc},
                {"resourceType": "Location", "id": "room", "extension": utc},
            ]
        ),
    )
    upstream.get(
        f"{BASE}/HealthcareService/svc",
        json={
            "resourceType": "HealthcareService",
            "id": "svc",
            "active": True,
            "extension": [
                {
                    "url": SCHEDULING_PARAMETERS_URL,
                    "extension": [{"url": "duration", "valueDuration": {"value": 60, "unit": "min"}}],
                }
            ],
        },
    )
    busy = {
        "resourceType": "Slot",
        "id": "lunch",
        "schedule": {"reference": "Schedule/b"},
        "status": "busy",
        "start": "2026-12-01T12:00:00Z",
        "end": "2026-12-01T13:00:00Z",
    }
    upstream.get(f"{BASE}/Slot", json=bundle([busy]))

    response = client.get(
        f"{FIND}?{QUERY}&_count=3".replace("17:00:00Z", "15:00:00Z").replace("09:00:00Z", "11:00:00Z"),
        headers={"Authorization": "Bearer patient-app"},
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    result = response.get_json()
    assert result["resourceType"] == "Bundle" and result["type"] == "searchset"
    starts = [e["resource"]["start"] for e in result.get("entry", [])]
    assert len(starts) == 3 and not any(s.startswith("2026-12-01T12:00") for s in starts)
    assert response.headers["X-Upstream-Round-Trips"] == "3"
    # The three reads go out together (plugin/parallel.py), so their order is not fixed.
    calls = {str(c.request.url).split("?")[0]: c.request for c in upstream.calls}
    assert sorted(calls) == sorted([f"{BASE}/Schedule", f"{BASE}/HealthcareService/svc", f"{BASE}/Slot"])
    slot_query = str(calls[f"{BASE}/Slot"].url)
    assert "schedule=Schedule%2Fa%2CSchedule%2Fb" in slot_query and "end=gt" in slot_query
    # SPEC §5.1: what the caller may read is read as the caller; the Slots that decide what is
    # free are read as the sidecar, so time hidden from the caller is still known to be taken.
    assert calls[f"{BASE}/Schedule"].headers["Authorization"] == "Bearer patient-app"
    assert calls[f"{BASE}/HealthcareService/svc"].headers["Authorization"] == "Bearer patient-app"
    assert calls[f"{BASE}/Slot"].headers["Authorization"] == "Bearer admin-token"


def test_query_plus_sign_survives(client: FlaskClient, captured: Captured) -> None:
    client.get(FIND + "?start=2026-12-01T09:00:00%2B01:00")
    assert captured.params == [("start", "2026-12-01T09:00:00+01:00")]
