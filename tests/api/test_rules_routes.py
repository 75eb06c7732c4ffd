"""The new operations' errors at the HTTP edge (SPEC §7.3, §7.4): each a 4xx OperationOutcome
naming the culprit, answered before anything is read from (or written to) the upstream."""

from __future__ import annotations

import json
from typing import Any

import responses
from flask.testing import FlaskClient

FHIR_JSON = {"Content-Type": "application/fhir+json"}
PROPOSAL: dict[str, Any] = {
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
        }
    ],
    "participant": [],
}
FIND = [
    ("start", "2026-12-07T00:00:00-05:00"),
    ("end", "2026-12-08T00:00:00-05:00"),
    ("service-type-reference", "HealthcareService/checkup"),
    ("schedule", "Schedule/alice"),
]


def issue(response: Any) -> dict[str, Any]:
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome", body
    first: dict[str, Any] = body["issue"][0]
    return first


def with_recurrence(timing: Any, key: str = "valueTiming") -> dict[str, Any]:
    return {
        "resourceType": "Parameters",
        "parameter": [{"name": "appointment", "resource": PROPOSAL}, {"name": "recurrence", key: timing}],
    }


def test_a_recurrence_in_a_query_string_that_is_no_timing_is_400(
    client: FlaskClient, upstream: responses.RequestsMock
) -> None:
    response = client.get("/fhir/Appointment/$find", query_string=[*FIND, ("recurrence", "weekly")])
    assert response.status_code == 400
    assert issue(response)["expression"] == ["Parameters.recurrence"]
    assert len(upstream.calls) == 0


def test_a_find_recurrence_with_a_bad_count_is_400_naming_it(
    client: FlaskClient, upstream: responses.RequestsMock
) -> None:
    body = {
        "resourceType": "Parameters",
        "parameter": [
            *({"name": n, "valueString": v} for n, v in FIND),
            {
                "name": "recurrence",
                "valueTiming": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "wk", "count": 40}},
            },
        ],
    }
    response = client.post("/fhir/Appointment/$find", data=json.dumps(body), headers=FHIR_JSON)
    assert response.status_code == 400
    assert issue(response)["expression"] == ["Parameters.recurrence.repeat.count"]
    assert "2 to 12" in issue(response)["diagnostics"]
    assert len(upstream.calls) == 0


def test_a_bad_ignore_appointment_is_400(client: FlaskClient, upstream: responses.RequestsMock) -> None:
    response = client.get(
        "/fhir/Appointment/$find", query_string=[*FIND, ("ignore-appointment", "Patient/x")]
    )
    assert response.status_code == 400
    assert issue(response)["expression"] == ["Parameters.ignore-appointment"]


def test_a_book_recurrence_must_be_a_timing(client: FlaskClient, upstream: responses.RequestsMock) -> None:
    response = client.post(
        "/fhir/Appointment/$book",
        data=json.dumps(with_recurrence("weekly", "valueString")),
        headers=FHIR_JSON,
    )
    assert response.status_code == 400
    assert issue(response)["expression"] == ["Parameters.recurrence"]
    unit = client.post(
        "/fhir/Appointment/$hold",
        data=json.dumps(
            with_recurrence({"repeat": {"frequency": 1, "period": 1, "periodUnit": "mo", "count": 3}})
        ),
        headers=FHIR_JSON,
    )
    assert unit.status_code == 400
    assert issue(unit)["expression"] == ["Parameters.recurrence.valueTiming.repeat.periodUnit"]
    assert len(upstream.calls) == 0


def test_reschedule_errors(client: FlaskClient, upstream: responses.RequestsMock) -> None:
    body = {"resourceType": "Parameters", "parameter": [{"name": "appointment", "resource": PROPOSAL}]}
    impossible = client.post(
        "/fhir/Appointment/not%20an%20id/$reschedule", data=json.dumps(body), headers=FHIR_JSON
    )
    assert impossible.status_code == 404
    empty = client.post("/fhir/Appointment/a1/$reschedule", data="", headers=FHIR_JSON)
    assert empty.status_code == 400 and issue(empty)["code"] == "structure"
    booked = dict(PROPOSAL, status="booked")
    not_a_proposal = client.post(
        "/fhir/Appointment/a1/$reschedule",
        data=json.dumps(
            {"resourceType": "Parameters", "parameter": [{"name": "appointment", "resource": booked}]}
        ),
        headers=FHIR_JSON,
    )
    assert not_a_proposal.status_code == 400 and issue(not_a_proposal)["expression"] == [
        "Parameters.appointment.status"
    ]
    series = client.post(
        "/fhir/Appointment/a1/$reschedule",
        data=json.dumps(
            with_recurrence({"repeat": {"frequency": 1, "period": 1, "periodUnit": "d", "count": 2}})
        ),
        headers=FHIR_JSON,
    )
    assert series.status_code == 400 and issue(series)["expression"] == ["Parameters.recurrence"]
    get = client.get("/fhir/Appointment/a1/$reschedule")
    assert get.status_code == 405
    assert len(upstream.calls) == 0


def test_cancel_series_must_be_a_boolean(client: FlaskClient, upstream: responses.RequestsMock) -> None:
    response = client.post("/fhir/Appointment/a1/$cancel", query_string={"series": "maybe"})
    assert response.status_code == 400
    assert issue(response)["expression"] == ["Parameters.series"]
    assert len(upstream.calls) == 0
