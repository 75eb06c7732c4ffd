"""IHE ITI Scheduling style calls (SPEC §7.2, docs/ihe.md) end to end: the real sidecar process
against the real HAPI, its chained searches, its authorization and its transactions.

Dr. Alice (New York) and the room (London) of ``tests/integration/clinic.py``: weekday hours
09:00-17:00 in each one's own zone, so together 09:00-12:00 New York time; the check-up's
visit type is ``http://example.org/visit-type|<prefix>``, unique to each test's clinic.

The test marked "pools" in its docstring needs the engine to read a group as "any one of" (the
pools branch); it fails until that merges.
"""

from __future__ import annotations

from typing import Any

import requests

from tests.integration.clinic import Clinic
from tests.integration.conftest import Sidecar
from tests.integration.test_find import local, monday_ahead, starts
from tests.integration.trust import DIRECTORY_TOKEN, patient_token
from tests.unit import builders

FHIR_JSON = {"Content-Type": "application/fhir+json"}
DAY = monday_ahead()


def find(base_url: str, params: list[tuple[str, str]], token: str | None = None) -> requests.Response:
    headers = {"Authorization": token} if token else {}
    return requests.get(f"{base_url}/Appointment/$find", params=params, headers=headers, timeout=60)


def morning(*params: tuple[str, str]) -> list[tuple[str, str]]:
    return [("start", local(DAY, "00:00")), ("end", local(DAY, "12:00")), *params]


def visit_type(clinic: Clinic) -> tuple[str, str]:
    return ("visit-type", f"http://example.org/visit-type|{clinic.prefix}")


def matches(response: requests.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    return [e["resource"] for e in response.json().get("entry", []) if e["search"]["mode"] == "match"]


def post(sidecar: Sidecar, operation: str, *parameters: dict[str, Any]) -> requests.Response:
    body = {"resourceType": "Parameters", "parameter": list(parameters)}
    return requests.post(
        f"{sidecar.base_url}/Appointment/{operation}", json=body, headers=FHIR_JSON, timeout=120
    )


def test_find_by_practitioner_and_visit_type_for_a_patient_then_book_with_a_comment(
    sidecar: Sidecar, hapi: Any
) -> None:
    clinic = Clinic(hapi.base_url)
    patient = builders.patient(f"{clinic.prefix}-pat")
    clinic.load(patient)
    params = morning(
        ("practitioner", f"Practitioner/{clinic.alice}"),
        visit_type(clinic),
        ("patient-reference", f"Patient/{patient['id']}"),
    )
    found = find(sidecar.base_url, params)
    assert starts(found) == ["09:00", "10:00", "11:00"]
    assert found.json()["total"] == 3
    # Schedules by actor, by role, the services of the visit type, the Practitioner, the Patient
    # (one round trip), then the Slots: whatever the number of practitioners named.
    assert found.headers["X-Upstream-Round-Trips"] == "6"
    proposal = matches(found)[1]
    assert [p["actor"]["reference"] for p in proposal["participant"]] == [
        f"Practitioner/{clinic.alice}",
        f"Patient/{patient['id']}",
    ]
    assert starts(find(hapi.base_url, params)) == starts(found)  # called at HAPI's base, forwarded

    booked = post(
        sidecar,
        "$book",
        {"name": "appointment-resource", "resource": proposal},
        {"name": "comment", "valueString": "Bring the referral letter"},
    )
    assert booked.status_code == 201, booked.text
    [stored] = clinic.appointments()
    assert (stored["status"], stored["comment"]) == ("booked", "Bring the referral letter")
    assert stored["start"] == local(DAY, "10:00")
    assert {"reference": f"Patient/{patient['id']}"} in [p["actor"] for p in stored["participant"]]
    assert starts(find(sidecar.base_url, params)) == ["09:00", "11:00"]


def test_a_practitioner_and_a_location_find_what_their_two_schedules_find(
    sidecar: Sidecar, hapi: Any
) -> None:
    clinic = Clinic(hapi.base_url).load()
    day = [("start", local(DAY, "00:00")), ("end", local(DAY, "23:00"))]
    by_reference = find(
        sidecar.base_url,
        [
            *day,
            ("practitioner", f"Practitioner/{clinic.alice}"),
            ("location-reference", f"Location/{clinic.room}"),
            ("service-type-reference", f"HealthcareService/{clinic.service}"),
        ],
    )
    by_schedule = find(sidecar.base_url, clinic.find_params(day[0][1], day[1][1], clinic.alice, clinic.room))
    assert starts(by_reference) == starts(by_schedule) == ["09:00", "10:00", "11:00"]


def test_a_practitioner_is_found_through_their_practitioner_role(sidecar: Sidecar, hapi: Any) -> None:
    clinic = Clinic(hapi.base_url)
    bob, role = f"{clinic.prefix}-bob", f"{clinic.prefix}-bob-north"
    clinic.load(
        builders.practitioner(bob, None),
        {
            "resourceType": "PractitionerRole",
            "id": role,
            "practitioner": {"reference": f"Practitioner/{bob}"},
            "extension": builders.practitioner(role, "America/New_York")["extension"],
        },
        builders.schedule(role, f"PractitionerRole/{role}", [clinic.service]),
    )
    found = find(sidecar.base_url, morning(("practitioner", f"Practitioner/{bob}"), visit_type(clinic)))
    assert starts(found) == ["09:00", "10:00", "11:00"]
    assert matches(found)[0]["participant"][0]["actor"]["reference"] == f"PractitionerRole/{role}"


def test_pools_either_practitioner_for_a_visit(sidecar: Sidecar, hapi: Any) -> None:
    """pools: Alice is booked at 10:00; Dr. Carol (same hours) takes it."""
    clinic = Clinic(hapi.base_url)
    carol = f"{clinic.prefix}-carol"
    busy = builders.slot(clinic.alice, "busy", local(DAY, "10:00"), local(DAY, "10:30"))
    clinic.load(
        builders.practitioner(carol, "America/New_York"),
        builders.schedule(carol, f"Practitioner/{carol}", [clinic.service]),
        busy | {"id": f"{clinic.prefix}-busy"},
    )
    found = find(
        sidecar.base_url,
        morning(("practitioner", f"Practitioner/{clinic.alice},Practitioner/{carol}"), visit_type(clinic)),
    )
    assert starts(found) == ["09:00", "10:00", "11:00"]
    who = [a["participant"][0]["actor"]["reference"] for a in matches(found)]
    assert who == [f"Practitioner/{clinic.alice}", f"Practitioner/{carol}", f"Practitioner/{clinic.alice}"]


def test_hold_then_book_by_reference_confirms_the_hold(sidecar: Sidecar, hapi: Any) -> None:
    clinic = Clinic(hapi.base_url)
    patient = builders.patient(f"{clinic.prefix}-pat")
    clinic.load(patient)
    [proposal, *_] = matches(
        find(sidecar.base_url, morning(("practitioner", f"Practitioner/{clinic.alice}"), visit_type(clinic)))
    )
    held = post(sidecar, "$hold", {"name": "appointment-resource", "resource": proposal})
    assert held.status_code == 201, held.text
    hold_id = held.json()["entry"][0]["resource"]["id"]
    reference = {"name": "appointment-reference", "valueReference": {"reference": f"Appointment/{hold_id}"}}

    again = post(sidecar, "$hold", reference)  # holding what is held answers it as it stands
    assert again.status_code == 200 and again.headers["Expires"] == held.headers["Expires"]

    booked = post(
        sidecar,
        "$book",
        reference,
        {"name": "patient-reference", "valueReference": {"reference": f"Patient/{patient['id']}"}},
        {"name": "comment", "valueString": "Confirmed by phone"},
    )
    assert booked.status_code == 200, booked.text
    [stored] = clinic.appointments()
    assert (stored["id"], stored["status"], stored["comment"]) == (hold_id, "booked", "Confirmed by phone")
    assert {"reference": f"Patient/{patient['id']}"} in [p["actor"] for p in stored["participant"]]
    assert "extension" not in stored  # no expiry any more
    assert [s["status"] for s in clinic.slots()] == ["busy"]

    twice = post(sidecar, "$book", reference)
    assert twice.status_code == 422
    assert twice.json()["issue"][0]["expression"] == ["Parameters.appointment-reference"]
    unknown = post(sidecar, "$book", {"name": "appointment-reference", "valueString": "Appointment/nowhere"})
    assert (unknown.status_code, unknown.json()["issue"][0]["code"]) == (422, "not-found")


def test_a_caller_who_may_not_read_schedules_cannot_find_through_a_practitioner(
    sidecar: Sidecar, hapi: Any
) -> None:
    clinic = Clinic(hapi.base_url).load()
    params = morning(("practitioner", f"Practitioner/{clinic.alice}"), visit_type(clinic))
    # A patient app may read Schedules: it finds. A directory app may read the Practitioner, the
    # service and the rest, but no Schedule: HAPI refuses its Schedule search, and so does $find.
    assert starts(find(sidecar.base_url, params, patient_token(f"{clinic.prefix}-pat"))) == [
        "09:00",
        "10:00",
        "11:00",
    ]
    refused = find(sidecar.base_url, params, DIRECTORY_TOKEN)
    assert refused.status_code == 403, refused.text
    assert refused.json()["resourceType"] == "OperationOutcome"
    # Nothing about the practitioner's time leaked: no proposal, and the Slots were never read.
    assert refused.headers["X-Upstream-Round-Trips"] == "4"
    assert requests.get(
        f"{hapi.base_url}/Practitioner/{clinic.alice}", headers={"Authorization": DIRECTORY_TOKEN}, timeout=30
    ).ok  # it may read who the practitioner is, just not when they are free


def test_a_specialty_no_service_has_answers_an_empty_searchset_that_says_why(
    sidecar: Sidecar, hapi: Any
) -> None:
    clinic = Clinic(hapi.base_url).load()
    found = find(
        sidecar.base_url,
        morning(
            ("practitioner", f"Practitioner/{clinic.alice}"),
            visit_type(clinic),
            ("specialty", "http://snomed.info/sct|394579002"),
        ),
    )
    assert found.status_code == 200
    bundle = found.json()
    assert bundle["total"] == 0
    [entry] = bundle["entry"]
    assert entry["search"]["mode"] == "outcome"
    assert entry["resource"]["issue"][0]["expression"] == ["Parameters.specialty"]
