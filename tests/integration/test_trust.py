"""The trust model (SPEC §5.1) against the real HAPI: its guard, its AuthorizationInterceptor
with fixed tokens (``tests/integration/trust.py``), its rest-hook subscriptions, and a real
SMART token endpoint (``tests/support/token_server.py``)."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.clinic import Clinic, search
from tests.integration.conftest import REPO, Sidecar
from tests.integration.test_booking import proposals
from tests.integration.test_find import local, monday_ahead
from tests.integration.trust import FRONT_DESK_TOKEN, SERVICE_HEADERS, patient_token
from tests.support.token_server import TokenServer, generate_key_pair
from tests.unit import builders

FHIR_JSON = {"Content-Type": "application/fhir+json"}
NO_CACHE = {"Cache-Control": "no-cache"}


def outcome_text(response: requests.Response) -> str:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    return " ".join(issue.get("diagnostics", "") for issue in body["issue"])


DAY = monday_ahead()


def proposal_at(sidecar: Sidecar, clinic: Clinic, hhmm: str) -> dict[str, Any]:
    """Dr. Alice's proposal at ``hhmm`` (New York) on a Monday ahead, as $find offers it."""
    wanted = local(DAY, hhmm)
    offered = proposals(sidecar, clinic, local(DAY, "00:00"), local(DAY, "23:59"))
    return next(p for p in offered if p["start"] == wanted)


def book(sidecar: Sidecar, proposal: dict[str, Any], token: str | None = None) -> requests.Response:
    headers = {**FHIR_JSON, **({"Authorization": token} if token else {})}
    body = {"resourceType": "Parameters", "parameter": [{"name": "appointment", "resource": proposal}]}
    return requests.post(f"{sidecar.base_url}/Appointment/$book", json=body, headers=headers, timeout=120)


# ---- the guard ---------------------------------------------------------------------------------


def test_the_guard_refuses_booked_time_written_around_the_sidecar(sidecar: Sidecar, hapi: Any) -> None:
    clinic = Clinic(hapi.base_url).load()
    busy = builders.slot(clinic.alice, "busy", "2026-12-08T15:00:00Z", "2026-12-08T15:30:00Z")
    refused = requests.post(f"{hapi.base_url}/Slot", json=busy, headers=FHIR_JSON, timeout=30)
    assert refused.status_code == 403
    assert "$book" in outcome_text(refused)

    in_a_transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": busy | {"status": "busy-tentative"}, "request": {"method": "POST", "url": "Slot"}}
        ],
    }
    assert (
        requests.post(hapi.base_url, json=in_a_transaction, headers=FHIR_JSON, timeout=30).status_code == 403
    )

    lock = {"resourceType": "Basic", "id": f"fanoni-lock-{clinic.alice}", "code": {"text": "mine"}}
    bumped = requests.put(f"{hapi.base_url}/Basic/{lock['id']}", json=lock, headers=FHIR_JSON, timeout=30)
    assert bumped.status_code == 403

    block = busy | {"status": "busy-unavailable", "comment": "staff meeting"}
    assert (
        requests.post(f"{hapi.base_url}/Slot", json=block, headers=FHIR_JSON, timeout=30).status_code == 201
    )
    assert [s["status"] for s in clinic.slots()] == ["busy-unavailable"]


# ---- changes made directly on the upstream are followed ---------------------------------------


def test_an_appointment_cancelled_with_a_plain_put_frees_its_time_within_2_seconds(
    sidecar: Sidecar, hapi: Any
) -> None:
    clinic = Clinic(hapi.base_url).load()
    proposal = proposal_at(sidecar, clinic, "10:00")
    booked = book(sidecar, copy.deepcopy(proposal))
    assert booked.status_code == 201, booked.text
    appointment_id = booked.json()["entry"][0]["resource"]["id"]
    assert len(clinic.slots()) == 1

    stored = requests.get(
        f"{hapi.base_url}/Appointment/{appointment_id}", headers=NO_CACHE, timeout=30
    ).json()
    stored["status"] = "cancelled"  # an EHR cancelling directly, not through $cancel
    put = requests.put(
        f"{hapi.base_url}/Appointment/{appointment_id}", json=stored, headers=FHIR_JSON, timeout=30
    )
    assert put.status_code == 200, put.text
    started = time.monotonic()
    while clinic.slots() and time.monotonic() - started < 10:
        time.sleep(0.05)
    freed_after = time.monotonic() - started
    print(f"time freed {freed_after:.2f} s after the direct PUT")
    assert clinic.slots() == []
    assert freed_after <= 2.0
    again = book(sidecar, copy.deepcopy(proposal))
    assert again.status_code == 201, again.text


def test_a_notification_without_the_secret_is_401_and_changes_nothing(sidecar: Sidecar, hapi: Any) -> None:
    clinic = Clinic(hapi.base_url).load()
    booked = book(sidecar, proposal_at(sidecar, clinic, "11:00"))
    appointment = booked.json()["entry"][0]["resource"]
    url = sidecar.base_url.removesuffix("/fhir") + f"/fanoni/notifications/Appointment/{appointment['id']}"
    for headers in ({}, {"Authorization": "Bearer guess"}, {"Authorization": FRONT_DESK_TOKEN}):
        answer = requests.put(url, json=appointment | {"status": "cancelled"}, headers=headers, timeout=30)
        assert answer.status_code == 401
        assert answer.json()["resourceType"] == "OperationOutcome"
    assert len(clinic.slots()) == 1


# ---- access through HAPI's own AuthorizationInterceptor ---------------------------------------


@pytest.fixture
def patients(hapi: Any) -> Iterator[tuple[Clinic, str, str]]:
    clinic = Clinic(hapi.base_url)
    mine, theirs = f"{clinic.prefix}-pat", f"{clinic.prefix}-other"
    clinic.load(builders.patient(mine), builders.patient(theirs))
    yield clinic, mine, theirs


def with_patient(proposal: dict[str, Any], patient_id: str) -> dict[str, Any]:
    return proposal | {
        "participant": [
            *proposal["participant"],
            {"actor": {"reference": f"Patient/{patient_id}"}, "required": "required", "status": "accepted"},
        ]
    }


def test_a_patient_app_finds_and_books_for_itself_only(
    sidecar: Sidecar, hapi: Any, patients: tuple[Clinic, str, str]
) -> None:
    clinic, mine, theirs = patients
    token = patient_token(mine)
    # The patient may not read Slots at all; the sidecar reads them as itself, so booked time
    # is still known to be taken.
    assert (
        requests.get(f"{hapi.base_url}/Slot", headers={"Authorization": token}, timeout=30).status_code == 403
    )
    first = proposal_at(sidecar, clinic, "09:00")
    assert book(sidecar, with_patient(copy.deepcopy(first), theirs), FRONT_DESK_TOKEN).status_code == 201
    found = requests.get(
        f"{sidecar.base_url}/Appointment/$find",
        params=clinic.find_params(local(DAY, "09:00"), local(DAY, "12:00")),
        headers={"Authorization": token},
        timeout=60,
    )
    assert found.status_code == 200, found.text
    offered = [e["resource"]["start"] for e in found.json().get("entry", [])]
    assert offered and first["start"] not in offered

    for_me = book(sidecar, with_patient(proposal_at(sidecar, clinic, "10:00"), mine), token)
    assert for_me.status_code == 201, for_me.text
    provenance = search(
        hapi.base_url, "Provenance", target=f"Appointment/{for_me.json()['entry'][0]['resource']['id']}"
    )
    assert len(provenance) == 1
    agents = {a["type"]["coding"][0]["code"]: a for a in provenance[0]["agent"]}
    assert agents["author"]["who"]["identifier"]["value"] == "fanoni-scheduling"
    assert agents["enterer"]["who"]["display"].startswith("unverified caller")
    assert provenance[0]["activity"]["coding"][0]["code"] == "book"

    for_them = book(sidecar, with_patient(proposal_at(sidecar, clinic, "11:00"), theirs), token)
    assert for_them.status_code == 403, for_them.text
    assert len(clinic.appointments()) == 2


def test_a_patient_cannot_write_slots_or_cancel_someone_elses_visit(
    sidecar: Sidecar, hapi: Any, patients: tuple[Clinic, str, str]
) -> None:
    clinic, mine, theirs = patients
    token = {"Authorization": patient_token(mine), **FHIR_JSON}
    block = builders.slot(clinic.alice, "busy-unavailable", "2026-12-08T15:00:00Z", "2026-12-08T16:00:00Z")
    assert requests.post(f"{hapi.base_url}/Slot", json=block, headers=token, timeout=30).status_code == 403
    theirs_booked = book(
        sidecar, with_patient(proposal_at(sidecar, clinic, "09:00"), theirs), FRONT_DESK_TOKEN
    )
    theirs_id = theirs_booked.json()["entry"][0]["resource"]["id"]
    cancel = requests.post(f"{sidecar.base_url}/Appointment/{theirs_id}/$cancel", headers=token, timeout=60)
    assert cancel.status_code == 403, cancel.text
    mine_booked = book(
        sidecar, with_patient(proposal_at(sidecar, clinic, "10:00"), mine), token["Authorization"]
    )
    mine_id = mine_booked.json()["entry"][0]["resource"]["id"]
    own = requests.post(f"{sidecar.base_url}/Appointment/{mine_id}/$cancel", headers=token, timeout=60)
    assert own.status_code == 200, own.text
    statuses = {a["id"]: a["status"] for a in clinic.appointments()}
    assert statuses == {theirs_id: "booked", mine_id: "cancelled"}


def test_a_token_hapi_rejects_gets_401_and_nothing_is_written(sidecar: Sidecar, hapi: Any) -> None:
    clinic = Clinic(hapi.base_url).load()
    proposal = proposal_at(sidecar, clinic, "09:00")
    refused = book(sidecar, proposal, "Bearer stolen-or-expired")
    assert refused.status_code == 401, refused.text
    found = requests.get(
        f"{sidecar.base_url}/Appointment/$find",
        params=clinic.find_params(local(DAY, "09:00"), local(DAY, "12:00")),
        headers={"Authorization": "Bearer stolen-or-expired"},
        timeout=60,
    )
    assert found.status_code == 401
    assert clinic.slots() == [] and clinic.appointments() == []


# ---- the sidecar's own identity from SMART Backend Services -----------------------------------


def test_the_sidecar_books_with_a_smart_backend_services_token(
    registered: str, hapi: Any, tmp_path: Path
) -> None:
    pair = generate_key_pair("RS384")
    key_file = tmp_path / "sidecar-key.pem"
    key_file.write_text(pair.private_pem)
    with TokenServer("fanoni-sidecar", [pair.public_jwk]) as tokens:
        process = Sidecar(
            registered,
            workers=1,
            log_name="sidecar-smart",
            env={
                "UPSTREAM_AUTHORIZATION": "",
                "SMART_TOKEN_URL": tokens.token_url,
                "SMART_CLIENT_ID": "fanoni-sidecar",
                "SMART_PRIVATE_KEY_FILE": str(key_file),
                "SMART_KEY_ID": pair.kid,
            },
        )
        try:
            clinic = Clinic(hapi.base_url).load()
            for hhmm in ("09:00", "10:00", "11:00"):
                booked = book(process, proposal_at(process, clinic, hhmm), FRONT_DESK_TOKEN)
                assert booked.status_code == 201, booked.text
        finally:
            process.stop()
        assert tokens.successes == 1  # one token, cached for every call of the worker
        assert tokens.failures == 0
    assert len(clinic.appointments()) == 3
    assert (REPO / "build" / "test-logs" / "sidecar-smart.log").exists()


def test_fixtures_plant_booked_slots_as_the_sidecar(hapi: Any) -> None:
    """The suite's own data loading sends the guard key: the same write without it is refused."""
    clinic = Clinic(hapi.base_url)
    busy = builders.slot(clinic.alice, "busy", "2026-12-08T15:00:00Z", "2026-12-08T15:30:00Z")
    clinic.load(busy)
    headers = {**FHIR_JSON, **SERVICE_HEADERS}
    assert requests.post(f"{hapi.base_url}/Slot", json=busy, headers=headers, timeout=30).status_code == 201
