"""The IHE ITI-115/116/117 parameters at the HTTP edge (SPEC §7.2): the upstream searches they
cost, and each 4xx they can answer (docs/ihe.md), with a ``responses`` upstream."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import responses
from flask.testing import FlaskClient

from tests.api.conftest import BASE, bundle
from tests.api.test_fuzz_routes import proposal
from tests.unit import builders

FHIR_JSON = {"Content-Type": "application/fhir+json"}
VISIT = "http://example.org/visit-type"
RANGE = [("start", "2026-12-07T00:00:00-05:00"), ("end", "2026-12-08T00:00:00-05:00")]
ALICE = builders.practitioner("alice", "America/New_York")
NORTH = builders.location("north", "America/New_York")
CHECKUP = builders.service(hours=[builders.hours("mon", "09:00", "12:00")], duration=30)
ALICE_SCHEDULE = builders.schedule("alice", "Practitioner/alice", ["checkup"])
NORTH_SCHEDULE = builders.schedule("north", "Location/north", ["checkup"])


def issue(response: Any) -> dict[str, Any]:
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome", body
    first: dict[str, Any] = body["issue"][0]
    return first


def included(matches: list[dict[str, Any]], includes: list[dict[str, Any]]) -> dict[str, Any]:
    found = bundle(matches)
    found["entry"] += [{"resource": r, "search": {"mode": "include"}} for r in includes]
    return found


def serve(
    upstream: responses.RequestsMock,
    *,
    services: list[dict[str, Any]] | None = None,
    practitioners: list[dict[str, Any]] | None = None,
    patients: list[dict[str, Any]] | None = None,
) -> None:
    """A clinic: Alice's and the north room's Schedules, the check-up, no Slots."""
    upstream.get(
        re.compile(rf"{re.escape(BASE)}/Schedule\?.*PractitionerRole.*"), json=included([], [])
    )  # no roles
    upstream.get(
        re.compile(rf"{re.escape(BASE)}/Schedule\?.*"),
        json=included([ALICE_SCHEDULE, NORTH_SCHEDULE], [ALICE, NORTH]),
    )
    upstream.get(
        re.compile(rf"{re.escape(BASE)}/HealthcareService\?.*"),
        json=bundle([CHECKUP] if services is None else services),
    )
    upstream.get(f"{BASE}/HealthcareService/checkup", json=CHECKUP)
    upstream.get(re.compile(rf"{re.escape(BASE)}/Practitioner\?.*"), json=bundle(practitioners or [ALICE]))
    upstream.get(re.compile(rf"{re.escape(BASE)}/Location\?.*"), json=bundle([NORTH]))
    upstream.get(re.compile(rf"{re.escape(BASE)}/Patient\?.*"), json=bundle(patients or []))
    upstream.get(re.compile(rf"{re.escape(BASE)}/Slot\?.*"), json=bundle([]))


def queries(upstream: responses.RequestsMock) -> dict[str, list[tuple[str, str]]]:
    """Each upstream call's path (after the base) with its query, in a dict by path and params."""
    found: dict[str, list[tuple[str, str]]] = {}
    for call in upstream.calls:
        url = urlsplit(str(call.request.url))
        params = [(k, v) for k, v in parse_qsl(url.query) if k != "_count"]
        key = url.path.rsplit("/fhir/", 1)[1] + "?" + "&".join(f"{k}={v}" for k, v in params)
        found[key] = params
    return found


# ---- $find -----------------------------------------------------------------------------------


def test_find_by_practitioner_location_and_visit_type_costs_two_round_trips_of_searches(
    client: FlaskClient, upstream: responses.RequestsMock
) -> None:
    serve(upstream, patients=[builders.patient("pat")])
    response = client.get(
        "/fhir/Appointment/$find",
        query_string=[
            *RANGE,
            ("practitioner", "Practitioner/alice"),
            ("location-reference", "Location/north"),
            ("visit-type", f"{VISIT}|checkup"),
            ("patient-reference", "Patient/pat"),
        ],
        headers={"Authorization": "Bearer front-desk"},
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    found = response.get_json()
    assert [e["resource"]["start"][11:16] for e in found["entry"]] == ["09:00", "10:00", "11:00"]
    assert [p["actor"]["reference"] for p in found["entry"][0]["resource"]["participant"]] == [
        "Practitioner/alice",
        "Location/north",
        "Patient/pat",
    ]
    assert sorted(queries(upstream)) == sorted(
        [
            "Schedule?actor=Practitioner/alice,Location/north&_include=Schedule:actor",
            "Schedule?actor:PractitionerRole.practitioner=Practitioner/alice&_include=Schedule:actor",
            f"HealthcareService?service-type={VISIT}|checkup",
            "Practitioner?_id=alice",
            "Location?_id=north",
            "Patient?_id=pat",
            next(k for k in queries(upstream) if k.startswith("Slot?")),
        ]
    )
    assert response.headers["X-Upstream-Round-Trips"] == "7"
    reads_as_caller = [c.request for c in upstream.calls if not str(c.request.url).startswith(f"{BASE}/Slot")]
    assert {r.headers.get("Authorization") for r in reads_as_caller} == {"Bearer front-desk"}
    schedule_search = next(c.request for c in upstream.calls if "actor=" in str(c.request.url))
    assert schedule_search.headers["Prefer"] == "handling=strict"


def test_find_by_post_takes_references_and_tokens(
    client: FlaskClient, upstream: responses.RequestsMock
) -> None:
    serve(upstream)
    body = {
        "resourceType": "Parameters",
        "parameter": [
            *({"name": n, "valueDateTime": v} for n, v in RANGE),
            {"name": "location-reference", "valueReference": {"reference": "Location/north"}},
            {"name": "visit-type", "valueString": f"{VISIT}|checkup"},
            {"name": "_count", "valueInteger": 2},
        ],
    }
    response = client.post("/fhir/Appointment/$find", data=json.dumps(body), headers=FHIR_JSON)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["total"] == 2


@pytest.mark.parametrize(
    ("params", "code", "expression"),
    [
        ([("location-string", "Boston")], "not-supported", "Parameters.location-string"),
        ([("practitioner", "Location/north")], "value", "Parameters.practitioner[0]"),
        ([("visit-type", "checkup|")], "value", "Parameters.visit-type[0]"),
        ([("patient-reference", "Patient/")], "value", "Parameters.patient-reference[0]"),
        ([], "required", "Parameters.schedule"),
    ],
)
def test_malformed_ihe_parameters_are_400_before_any_upstream_call(
    client: FlaskClient,
    upstream: responses.RequestsMock,
    params: list[tuple[str, str]],
    code: str,
    expression: str,
) -> None:
    query = [*RANGE, ("service-type-reference", "HealthcareService/checkup"), *params]
    if params:
        query.append(("schedule", "Schedule/alice"))
    response = client.get("/fhir/Appointment/$find", query_string=query)
    assert response.status_code == 400
    assert (issue(response)["code"], issue(response)["expression"]) == (code, [expression])
    assert len(upstream.calls) == 0


def test_a_patient_resource_in_a_find_body_is_400_not_supported(
    client: FlaskClient, upstream: responses.RequestsMock
) -> None:
    body = {
        "resourceType": "Parameters",
        "parameter": [
            *({"name": n, "valueString": v} for n, v in RANGE),
            {"name": "schedule", "valueString": "Schedule/alice"},
            {"name": "service-type-reference", "valueString": "HealthcareService/checkup"},
            {"name": "patient-resource", "resource": builders.patient("new")},
        ],
    }
    response = client.post("/fhir/Appointment/$find", data=json.dumps(body), headers=FHIR_JSON)
    assert response.status_code == 400
    assert issue(response)["code"] == "not-supported"
    assert "patient-reference" in issue(response)["diagnostics"]


def test_schedule_find_refuses_practitioner(client: FlaskClient, upstream: responses.RequestsMock) -> None:
    response = client.get(
        "/fhir/Schedule/alice/$find", query_string=[*RANGE, ("practitioner", "Practitioner/alice")]
    )
    assert response.status_code == 400
    assert issue(response)["expression"] == ["Parameters.practitioner"]


def find(client: FlaskClient, *params: tuple[str, str]) -> Any:
    return client.get("/fhir/Appointment/$find", query_string=[*RANGE, *params])


def test_a_visit_type_of_two_services_is_400_naming_both(
    client: FlaskClient, upstream: responses.RequestsMock
) -> None:
    twin = builders.service("checkup-2") | {"type": CHECKUP["type"]}
    both = builders.schedule("alice", "Practitioner/alice", ["checkup", "checkup-2"])
    upstream.get(re.compile(rf"{re.escape(BASE)}/Schedule\?.*PractitionerRole.*"), json=included([], []))
    upstream.get(re.compile(rf"{re.escape(BASE)}/Schedule\?.*"), json=included([both], [ALICE]))
    upstream.get(re.compile(rf"{re.escape(BASE)}/HealthcareService\?.*"), json=bundle([CHECKUP, twin]))
    upstream.get(re.compile(rf"{re.escape(BASE)}/Practitioner\?.*"), json=bundle([ALICE]))
    response = find(client, ("practitioner", "Practitioner/alice"), ("visit-type", f"{VISIT}|checkup"))
    assert response.status_code == 400
    assert issue(response)["expression"] == ["Parameters.visit-type"]
    assert "HealthcareService/checkup, HealthcareService/checkup-2" in issue(response)["diagnostics"]


@pytest.mark.parametrize(
    ("params", "expression"),
    [
        ([("practitioner", "Practitioner/alice,Practitioner/zed")], "Parameters.practitioner[0]"),
        (
            [("schedule", "Schedule/alice"), ("patient-reference", "Patient/zed")],
            "Parameters.patient-reference[0]",
        ),
        (
            [("practitioner", "Practitioner/alice"), ("visit-type", f"{VISIT}|surgery")],
            "Parameters.visit-type",
        ),
    ],
)
def test_references_to_nothing_are_422_not_found(
    client: FlaskClient, upstream: responses.RequestsMock, params: list[tuple[str, str]], expression: str
) -> None:
    serve(upstream, services=[] if "visit-type" in expression else None)
    if not any(name == "visit-type" for name, _ in params):
        params.append(("service-type-reference", "HealthcareService/checkup"))
    response = find(client, *params)
    assert response.status_code == 422, response.get_data(as_text=True)
    assert (issue(response)["code"], issue(response)["expression"]) == ("not-found", [expression])


def test_a_specialty_the_service_lacks_is_an_empty_searchset_with_an_outcome(
    client: FlaskClient, upstream: responses.RequestsMock
) -> None:
    serve(upstream)
    response = find(
        client,
        ("practitioner", "Practitioner/alice"),
        ("service-type-reference", "HealthcareService/checkup"),
        ("specialty", "http://snomed.info/sct|394579002"),
        ("reason", "http://snomed.info/sct|29857009"),
    )
    assert response.status_code == 200
    found = response.get_json()
    assert found["total"] == 0
    outcomes = [(i["code"], i["expression"]) for e in found["entry"] for i in e["resource"]["issue"]]
    assert outcomes == [("not-supported", ["Parameters.reason"]), ("business-rule", ["Parameters.specialty"])]


def test_a_caller_refused_the_schedules_gets_the_upstreams_403(
    client: FlaskClient, upstream: responses.RequestsMock
) -> None:
    refusal = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "forbidden"}]}
    upstream.get(re.compile(rf"{re.escape(BASE)}/Schedule\?.*"), status=403, json=refusal)
    upstream.get(re.compile(rf"{re.escape(BASE)}/Practitioner\?.*"), json=bundle([ALICE]))
    upstream.get(f"{BASE}/HealthcareService/checkup", json=CHECKUP)
    response = find(
        client,
        ("practitioner", "Practitioner/alice"),
        ("service-type-reference", "HealthcareService/checkup"),
    )
    assert response.status_code == 403
    assert not any(str(c.request.url).startswith(f"{BASE}/Slot") for c in upstream.calls)


# ---- $book and $hold -----------------------------------------------------------------------------


def post(client: FlaskClient, operation: str, *items: dict[str, Any]) -> Any:
    body = {"resourceType": "Parameters", "parameter": list(items)}
    return client.post(f"/fhir/Appointment/{operation}", data=json.dumps(body), headers=FHIR_JSON)


def reference(appointment_id: str) -> dict[str, Any]:
    return {"name": "appointment-reference", "valueReference": {"reference": f"Appointment/{appointment_id}"}}


@pytest.mark.parametrize("operation", ["$book", "$hold"])
@pytest.mark.parametrize(
    ("items", "code", "expression"),
    [
        (
            [{"name": "appointment-resource", "resource": proposal() | {"participant": {"actor": {}}}}],
            "structure",
            ["Parameters.appointment-resource.participant"],
        ),
        (
            [{"name": "appointment", "resource": proposal() | {"colour": "red"}}],
            "structure",
            ["Parameters.appointment.colour"],
        ),
        (
            [{"name": "appointment", "resource": proposal()}, reference("a1")],
            "invalid",
            ["Parameters.appointment-reference", "Parameters.appointment"],
        ),
        (
            [{"name": "appointment", "resource": proposal()}, {"name": "comment", "valueInteger": 3}],
            "value",
            ["Parameters.comment"],
        ),
        (
            [{"name": "appointment", "resource": proposal()}, {"name": "patient-resource", "resource": {}}],
            "not-supported",
            ["Parameters.patient-resource"],
        ),
        (
            [{"name": "appointment-reference", "valueString": "Patient/a1"}],
            "value",
            ["Parameters.appointment-reference"],
        ),
    ],
)
def test_malformed_inputs_are_400_before_any_upstream_call(
    client: FlaskClient,
    upstream: responses.RequestsMock,
    operation: str,
    items: list[dict[str, Any]],
    code: str,
    expression: list[str],
) -> None:
    response = post(client, operation, *items)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert (issue(response)["code"], issue(response)["expression"]) == (code, expression)
    assert len(upstream.calls) == 0


@pytest.mark.parametrize("operation", ["$book", "$hold"])
def test_an_unknown_appointment_reference_is_422_not_found(
    client: FlaskClient, upstream: responses.RequestsMock, operation: str
) -> None:
    upstream.get(
        f"{BASE}/Appointment/gone", status=404, json={"resourceType": "OperationOutcome", "issue": []}
    )
    response = post(client, operation, reference("gone"))
    assert response.status_code == 422
    assert (issue(response)["code"], issue(response)["expression"]) == (
        "not-found",
        ["Parameters.appointment-reference"],
    )


@pytest.mark.parametrize("operation", ["$book", "$hold"])
def test_a_booked_appointment_reference_is_422(
    client: FlaskClient, upstream: responses.RequestsMock, operation: str
) -> None:
    booked = {"resourceType": "Appointment", "id": "a1", "status": "booked", "meta": {"versionId": "1"}}
    upstream.get(f"{BASE}/Appointment/a1", json=booked)
    response = post(client, operation, reference("a1"))
    assert response.status_code == 422
    assert (issue(response)["code"], issue(response)["expression"]) == (
        "business-rule",
        ["Parameters.appointment-reference"],
    )
    assert not any(c.request.method == "POST" for c in upstream.calls)


HELD = {
    "resourceType": "Appointment",
    "id": "h1",
    "status": "pending",
    "meta": {"versionId": "1"},
    "extension": [
        {
            "url": "https://fanoni.dev/fhir/StructureDefinition/hold-expires",
            "valueInstant": "2026-11-02T08:05:00Z",
        }
    ],
    "participant": [{"actor": {"reference": "Practitioner/alice"}, "status": "needs-action"}],
}


def test_book_of_a_hold_by_reference_confirms_it_with_the_comment_and_patient(
    client: FlaskClient, upstream: responses.RequestsMock
) -> None:
    upstream.get(f"{BASE}/Appointment/h1", json=HELD)
    upstream.get(re.compile(rf"{re.escape(BASE)}/Patient\?.*"), json=bundle([builders.patient("pat")]))
    booked = HELD | {"status": "booked", "meta": {"versionId": "2"}}
    upstream.post(
        BASE,
        json={
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": [{"resource": booked, "response": {"status": "200 OK"}}],
        },
    )
    response = post(
        client,
        "$book",
        reference("h1"),
        {"name": "patient-reference", "valueReference": {"reference": "Patient/pat"}},
        {"name": "comment", "valueString": "Fasting"},
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Location"].endswith("/fhir/Appointment/h1")
    sent = json.loads(next(c.request.body or b"" for c in upstream.calls if c.request.method == "POST"))
    [written] = [e["resource"] for e in sent["entry"] if e["resource"]["resourceType"] == "Appointment"]
    assert (written["status"], written["comment"]) == ("booked", "Fasting")
    assert written["participant"][-1]["actor"] == {"reference": "Patient/pat"}
    assert "extension" not in written  # the hold's expiry is gone


def test_hold_of_a_live_hold_by_reference_is_200_with_its_expiry(
    client: FlaskClient, upstream: responses.RequestsMock
) -> None:
    upstream.get(f"{BASE}/Appointment/h1", json=HELD)
    response = post(client, "$hold", reference("h1"))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Expires"] == "Mon, 02 Nov 2026 08:05:00 GMT"
    assert response.get_json()["entry"][0]["resource"]["id"] == "h1"
    assert not any(c.request.method == "POST" for c in upstream.calls)


def test_a_patient_reference_the_caller_cannot_read_is_422(
    client: FlaskClient, upstream: responses.RequestsMock
) -> None:
    upstream.get(f"{BASE}/Appointment/h1", json=HELD)
    upstream.get(re.compile(rf"{re.escape(BASE)}/Patient\?.*"), json=bundle([]))
    response = post(
        client, "$book", reference("h1"), {"name": "patient-reference", "valueString": "Patient/someone"}
    )
    assert response.status_code == 422
    assert issue(response)["expression"] == ["Parameters.patient-reference[0]"]
    assert not any(c.request.method == "POST" for c in upstream.calls)
