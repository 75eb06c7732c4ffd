"""``/metadata``, ``OperationDefinition/<id>``, ``/livez`` and ``/readyz``."""

from __future__ import annotations

import requests
import responses
from flask.testing import FlaskClient

from tests.api.conftest import BASE, outcome


def test_metadata_lists_the_operations(client: FlaskClient) -> None:
    response = client.get("/fhir/metadata")
    assert response.status_code == 200
    assert response.content_type == "application/fhir+json; charset=utf-8"
    statement = response.get_json()
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    assert statement["kind"] == "instance"
    assert statement["implementation"]["url"] == "http://localhost/fhir"
    resources = {r["type"]: r["operation"] for r in statement["rest"][0]["resource"]}
    assert resources == {
        "Appointment": [
            {"name": code, "definition": f"https://fanoni.dev/fhir/OperationDefinition/{code}"}
            for code in ("book", "cancel", "confirm", "find", "hold", "reschedule")
        ],
        "Schedule": [
            {
                "name": "find",
                "definition": "https://fanoni.dev/fhir/OperationDefinition/schedule-find",
            }
        ],
    }
    assert statement["rest"][0]["operation"] == [
        {"name": "bulk-publish", "definition": "https://fanoni.dev/fhir/OperationDefinition/bulk-publish"}
    ]


def test_operation_definitions_are_served(client: FlaskClient) -> None:
    appointment = client.get("/fhir/OperationDefinition/find").get_json()
    assert appointment["resourceType"] == "OperationDefinition"
    assert (appointment["code"], appointment["resource"]) == ("find", ["Appointment"])
    assert (appointment["type"], appointment["instance"], appointment["affectsState"]) == (
        True,
        False,
        False,
    )
    inputs = {p["name"]: (p["min"], p["max"]) for p in appointment["parameter"] if p["use"] == "in"}
    assert inputs == {
        "start": (1, "1"),
        "end": (1, "1"),
        "service-type-reference": (0, "1"),
        "schedule": (0, "*"),
        "pool-order": (0, "1"),
        "_count": (0, "1"),
        "recurrence": (0, "1"),
        "ignore-appointment": (0, "1"),
        # IHE ITI-115 (docs/ihe.md)
        "practitioner": (0, "*"),
        "location-reference": (0, "*"),
        "visit-type": (0, "*"),
        "specialty": (0, "*"),
        "organization": (0, "*"),
        "patient-reference": (0, "*"),
        "reason": (0, "*"),
        "referral-identifier": (0, "1"),
        "timing": (0, "1"),
        "insurance-reference": (0, "*"),
    }
    for name in ("book", "hold"):
        booking = client.get(f"/fhir/OperationDefinition/{name}").get_json()
        assert [p["name"] for p in booking["parameter"] if p["use"] == "in"] == [
            "appointment",
            "appointment-resource",
            "appointment-reference",
            "patient-reference",
            "comment",
            "recurrence",
        ]

    schedule = client.get("/fhir/OperationDefinition/schedule-find").get_json()
    assert (schedule["code"], schedule["resource"], schedule["instance"]) == (
        "find",
        ["Schedule"],
        True,
    )
    minimums = {p["name"]: p["min"] for p in schedule["parameter"] if p["use"] == "in"}
    assert minimums == {"start": 1, "end": 1, "service-type-reference": 0, "_count": 0}


def test_every_definition_in_metadata_resolves(client: FlaskClient) -> None:
    statement = client.get("/fhir/metadata").get_json()
    rest = statement["rest"][0]
    for operation in [*rest["operation"], *(o for r in rest["resource"] for o in r["operation"])]:
        definition_id = operation["definition"].rsplit("/", 1)[1]
        served = client.get(f"/fhir/OperationDefinition/{definition_id}").get_json()
        assert served["url"] == operation["definition"]


def test_unknown_operation_definition_is_404(client: FlaskClient) -> None:
    response = client.get("/fhir/OperationDefinition/no-such-operation")
    assert response.status_code == 404
    assert response.get_json()["issue"][0]["code"] == "not-found"


def test_livez_ignores_the_upstream(client: FlaskClient, upstream: responses.RequestsMock) -> None:
    upstream.get(f"{BASE}/metadata", body=requests.ConnectionError("down"))
    assert client.get("/livez").status_code == 200
    assert len(upstream.calls) == 0


def test_readyz_when_the_upstream_answers(client: FlaskClient, upstream: responses.RequestsMock) -> None:
    upstream.get(f"{BASE}/metadata", json={"resourceType": "CapabilityStatement"})
    response = client.get("/readyz", headers={"Authorization": "Bearer someone"})
    assert response.status_code == 200
    assert response.get_json()["issue"][0]["severity"] == "information"
    # readiness is the sidecar's own business: the configured credentials, not a caller's
    assert upstream.calls[0].request.headers["Authorization"] == "Bearer admin-token"


def test_readyz_when_the_upstream_is_down(client: FlaskClient, upstream: responses.RequestsMock) -> None:
    upstream.get(f"{BASE}/metadata", body=requests.ConnectionError("refused"))
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["issue"][0]["code"] == "transient"


def test_readyz_when_the_upstream_fails_or_refuses(
    client: FlaskClient, upstream: responses.RequestsMock
) -> None:
    upstream.get(f"{BASE}/metadata", status=500, json=outcome("starting up"))
    assert client.get("/readyz").status_code == 503
    upstream.replace(responses.GET, f"{BASE}/metadata", status=401, json=outcome("who are you"))
    assert client.get("/readyz").status_code == 503
