"""Whatever a caller sends, the answer is a FHIR response below 500: bad input never reaches the
generic error handler. The upstream is a real-looking clinic served by ``responses``."""

from __future__ import annotations

import json
import re
from typing import Any

import responses
from flask.testing import FlaskClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from plugin.app import create_app
from plugin.config import Settings
from tests.api.conftest import BASE, NOW, bundle
from tests.unit import builders

CLINIC = [
    builders.practitioner("alice", "America/New_York"),
    builders.service(
        hours=[builders.hours("mon tue wed thu fri", "09:00", "17:00")], duration=30, bufferAfter=5
    ),
    builders.schedule("alice", "Practitioner/alice", ["checkup"]),
]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**12), 10**12), st.floats(allow_nan=False), st.text(max_size=30)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
names = st.sampled_from(
    [
        "start",
        "end",
        "schedule",
        "service-type-reference",
        "_count",
        "x",
        "appointment",
        # IHE ITI-115 (SPEC §7.2)
        "practitioner",
        "location-reference",
        "visit-type",
        "specialty",
        "organization",
        "patient-reference",
        "location-string",
        "reason",
    ]
)
texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "2026-12-07T09:00:00-05:00",
            "2026-12-07T09:00:00 05:00",
            "2026-12-07",
            "2026-02-30T09:00:00Z",
            "Schedule/alice",
            "Schedule/alice,Schedule/x",
            "HealthcareService/checkup",
            "HealthcareService/",
            "Practitioner/alice",
            "Practitioner/alice,Practitioner/bob",
            "Location/room",
            "Patient/pat",
            "Organization/north",
            "http://example.org/visit-type|checkup",
            "|checkup",
            "a|b|c",
            "0",
            "1001",
            "-1",
            "9" * 40,
        ]
    ),
)


def serve_clinic(mock: responses.RequestsMock) -> None:
    schedule_bundle = bundle(CLINIC[2:])
    schedule_bundle["entry"].append({"resource": CLINIC[0], "search": {"mode": "include"}})
    mock.get(re.compile(rf"{re.escape(BASE)}/Schedule\b.*"), json=schedule_bundle)
    mock.get(f"{BASE}/HealthcareService/checkup", json=CLINIC[1])
    mock.get(re.compile(rf"{re.escape(BASE)}/HealthcareService\?.*"), json=bundle([CLINIC[1]]))
    mock.get(re.compile(rf"{re.escape(BASE)}/Practitioner\?.*"), json=bundle([CLINIC[0]]))
    mock.get(re.compile(rf"{re.escape(BASE)}/Patient\?.*"), json=bundle([builders.patient("pat")]))
    mock.get(re.compile(rf"{re.escape(BASE)}/Location\?.*"), json=bundle([]))
    mock.get(
        re.compile(rf"{re.escape(BASE)}/HealthcareService/.*"),
        status=404,
        json={"resourceType": "OperationOutcome"},
    )
    for kind in ("Slot", "Basic", "Appointment"):
        mock.get(re.compile(rf"{re.escape(BASE)}/{kind}(\?.*)?$"), json=bundle([]))  # searches, not reads
    mock.post(BASE, status=409, json={"resourceType": "OperationOutcome", "issue": []})


def client() -> FlaskClient:
    app = create_app(
        Settings(
            fhir_base_url=BASE, hold_sweep_seconds=0, booking_deadline_seconds=0.05, slot_end_search="on"
        ),
        clock=lambda: NOW,
    )
    return app.test_client()


def assert_fhir_below_500(response: Any) -> None:
    assert response.status_code < 500, response.get_data(as_text=True)
    body = json.loads(response.get_data())
    assert isinstance(body, dict) and "resourceType" in body


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(params=st.lists(st.tuples(names, texts), max_size=8), post=st.booleans())
def test_find_never_500(params: list[tuple[str, str]], post: bool) -> None:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        serve_clinic(mock)
        http = client()
        if post:
            body = {
                "resourceType": "Parameters",
                "parameter": [{"name": n, "valueString": v} for n, v in params],
            }
            response = http.post("/fhir/Appointment/$find", json=body)
        else:
            response = http.get("/fhir/Appointment/$find", query_string=params)
        assert_fhir_below_500(response)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=json_values, operation=st.sampled_from(["$book", "$hold"]))
def test_book_and_hold_never_500_on_arbitrary_json(body: object, operation: str) -> None:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        serve_clinic(mock)
        response = client().post(f"/fhir/Appointment/{operation}", json=body)
        assert_fhir_below_500(response)
        assert response.status_code >= 400


def proposal() -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "status": "proposed",
        "serviceType": [
            {
                "extension": [
                    {
                        "url": "https://medplum.com/fhir/service-type-reference",
                        "valueReference": {"reference": "HealthcareService/checkup"},
                    }
                ]
            }
        ],
        "start": "2026-12-07T09:00:00-05:00",
        "end": "2026-12-07T09:30:00-05:00",
        "contained": [
            {
                "resourceType": "Slot",
                "id": "visit-0",
                "schedule": {"reference": "Schedule/alice"},
                "status": "busy",
                "start": "2026-12-07T09:00:00-05:00",
                "end": "2026-12-07T09:30:00-05:00",
            },
            {
                "resourceType": "Slot",
                "id": "buffer-after-0",
                "schedule": {"reference": "Schedule/alice"},
                "status": "busy-unavailable",
                "start": "2026-12-07T09:30:00-05:00",
                "end": "2026-12-07T09:35:00-05:00",
                "comment": "buffer after appointment",
            },
        ],
    }


paths = st.sampled_from(
    [
        ("status",),
        ("start",),
        ("end",),
        ("serviceType",),
        ("serviceType", 0),
        ("contained",),
        ("contained", 0),
        ("contained", 0, "start"),
        ("contained", 0, "schedule"),
        ("contained", 1, "end"),
        ("contained", 1, "status"),
        ("slot",),
        ("identifier",),
        ("participant",),
    ]
)


def reach(target: Any, key: str | int) -> Any:
    """One step into a JSON value, or ``None`` when there is no such member."""
    if isinstance(target, dict) and isinstance(key, str):
        return target.get(key)
    if isinstance(target, list) and isinstance(key, int) and key < len(target):
        return target[key]
    return None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(paths, json_values), min_size=1, max_size=3))
def test_book_never_500_on_damaged_proposals(edits: list[tuple[tuple[Any, ...], object]]) -> None:
    appointment = proposal()
    for path, value in edits:
        *parents, last = path
        target: Any = appointment
        for key in parents:
            target = reach(target, key)
        if reach(target, last) is not None or (isinstance(target, dict) and isinstance(last, str)):
            target[last] = value  # an existing member, or a new one on an object
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        serve_clinic(mock)
        response = client().post(
            "/fhir/Appointment/$book",
            json={
                "resourceType": "Parameters",
                "parameter": [{"name": "appointment", "resource": appointment}],
            },
        )
        assert_fhir_below_500(response)


ihe_inputs = st.lists(
    st.tuples(
        st.sampled_from(
            ["appointment-reference", "patient-reference", "comment", "patient-resource", "recurrence"]
        ),
        st.sampled_from(["valueReference", "valueString", "resource", "valueInteger"]),
        st.one_of(texts, json_values),
    ),
    max_size=4,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inputs=ihe_inputs, with_proposal=st.booleans(), operation=st.sampled_from(["$book", "$hold"]))
def test_book_and_hold_never_500_on_ihe_inputs(
    inputs: list[tuple[str, str, object]], with_proposal: bool, operation: str
) -> None:
    items: list[dict[str, Any]] = (
        [{"name": "appointment-resource", "resource": proposal()}] if with_proposal else []
    )
    for name, key, value in inputs:
        wrapped = {"reference": value} if key == "valueReference" and isinstance(value, str) else value
        items.append({"name": name, key: wrapped})
    held = {"resourceType": "Appointment", "id": "alice", "status": "pending", "meta": {"versionId": "1"}}
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(f"{BASE}/Appointment/alice", json=held)  # before the clinic's catch-all searches
        serve_clinic(mock)
        body = {"resourceType": "Parameters", "parameter": items}
        assert_fhir_below_500(client().post(f"/fhir/Appointment/{operation}", json=body))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=json_values, operation=st.sampled_from(["$cancel", "$confirm"]), reason=st.text(max_size=20))
@example(body={"resourceType": "Parameters", "parameter": 5}, operation="$cancel", reason="")
@example(
    body={"resourceType": "Parameters", "parameter": [{"name": "cancelationReason"}]},
    operation="$cancel",
    reason="",
)
def test_cancel_and_confirm_never_500(body: object, operation: str, reason: str) -> None:
    booked = {"resourceType": "Appointment", "id": "a1", "status": "booked", "meta": {"versionId": "1"}}
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(f"{BASE}/Appointment/a1", json=booked)  # before the clinic's catch-all searches
        serve_clinic(mock)
        http = client()
        response = http.post(
            f"/fhir/Appointment/a1/{operation}", json=body, query_string={"cancelationReason": reason}
        )
        assert_fhir_below_500(response)
        wrapped = {
            "resourceType": "Parameters",
            "parameter": [{"name": "cancelationReason", "valueString": body}],
        }
        assert_fhir_below_500(http.post(f"/fhir/Appointment/a1/{operation}", json=wrapped))
