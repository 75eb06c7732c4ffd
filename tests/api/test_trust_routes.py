"""The trust model at the HTTP boundary (SPEC §5.1), against a mocked upstream: which identity
makes which call, the Provenance every transaction carries, refusals of the sidecar's own
credentials, the notification webhook and the fan-out limit."""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import responses
from flask.testing import FlaskClient

from operations.writes import BOOKING_REQUEST_SYSTEM
from plugin.app import create_app
from plugin.config import Settings
from plugin.transport import SERVICE_KEY_HEADER
from tests.api.conftest import BASE, NOW, bundle
from tests.api.test_fuzz_routes import CLINIC, proposal
from tests.support.token_server import JwksServer, generate_key_pair, sign_token
from tests.unit import builders

SIDECAR = "Bearer sidecar-own-token"
GUARD_KEY = "api-test-guard-key-0123456789"
SECRET = "api-test-notification-secret"
PATIENT = builders.patient("pat")
PROPOSAL: dict[str, Any] = proposal() | {
    "participant": [
        {"actor": {"reference": "Practitioner/alice"}, "required": "required", "status": "needs-action"},
        {"actor": {"reference": "Patient/pat"}, "required": "required", "status": "accepted"},
    ]
}


class Upstream:
    """The clinic of ``test_fuzz_routes`` plus a Patient, a lock, and a transaction endpoint that
    records what it was sent."""

    def __init__(self, mock: responses.RequestsMock, *, transaction_status: int = 200) -> None:
        self.transactions: list[dict[str, Any]] = []
        schedule_bundle = bundle(CLINIC[2:])
        schedule_bundle["entry"].append({"resource": CLINIC[0], "search": {"mode": "include"}})
        mock.get(re.compile(rf"{re.escape(BASE)}/Schedule\b.*"), json=schedule_bundle)
        mock.get(f"{BASE}/HealthcareService/checkup", json=CLINIC[1])
        mock.get(re.compile(rf"{re.escape(BASE)}/Patient\b.*"), json=bundle([PATIENT]))
        lock = {"resourceType": "Basic", "id": "fanoni-lock-alice", "meta": {"versionId": "3"}}
        mock.get(re.compile(rf"{re.escape(BASE)}/Basic\b.*"), json=bundle([lock]))
        for kind in ("Slot", "Appointment"):
            mock.get(re.compile(rf"{re.escape(BASE)}/{kind}(\?.*)?$"), json=bundle([]))
        self.status = transaction_status
        mock.add_callback(responses.POST, BASE, callback=self.transaction)

    def transaction(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        sent = json.loads(request.body or b"{}")
        self.transactions.append(sent)
        if self.status != 200:
            return self.status, {}, json.dumps({"resourceType": "OperationOutcome", "issue": []})
        entries = []
        for n, entry in enumerate(sent["entry"]):
            resource = copy.deepcopy(entry.get("resource") or {})
            resource.setdefault("id", f"new-{n}")
            entries.append({"resource": resource, "response": {"status": "201 Created"}})
        return (
            200,
            {},
            json.dumps({"resourceType": "Bundle", "type": "transaction-response", "entry": entries}),
        )


@pytest.fixture
def jwks() -> Iterator[tuple[JwksServer, Any]]:
    pair = generate_key_pair("RS256")
    with JwksServer([pair.public_jwk]) as server:
        yield server, pair


def sidecar(**settings: Any) -> FlaskClient:
    base: dict[str, Any] = {
        "fhir_base_url": BASE,
        "upstream_authorization": SIDECAR,
        "guard_key": GUARD_KEY,
        "hold_sweep_seconds": 0,
        "slot_end_search": "on",
        "notification_url": "http://sidecar.test/fanoni/notifications",
        "notification_secret": SECRET,
    }
    return create_app(Settings(**(base | settings)), clock=lambda: NOW).test_client()


def book_body() -> dict[str, Any]:
    return {
        "resourceType": "Parameters",
        "parameter": [{"name": "appointment", "resource": copy.deepcopy(PROPOSAL)}],
    }


def test_permission_reads_as_the_caller_decisions_and_writes_as_the_sidecar(
    jwks: tuple[JwksServer, Any],
) -> None:
    server, pair = jwks
    token = sign_token(
        pair,
        {"sub": "patient-app-user", "iss": "https://idp.test", "client_id": "app", "exp": time.time() + 600},
    )
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_passthru(server.base_url)
        upstream = Upstream(mock)
        answer = sidecar(caller_jwks_url=server.jwks_url).post(
            "/fhir/Appointment/$book", json=book_body(), headers={"Authorization": f"Bearer {token}"}
        )
        assert answer.status_code == 201, answer.get_data(as_text=True)
        calls = [(c.request.method, str(c.request.url).split("?")[0].removeprefix(BASE)) for c in mock.calls]
        identities = {
            call: (c.request.headers.get("Authorization"), c.request.headers.get(SERVICE_KEY_HEADER))
            for call, c in zip(calls, mock.calls, strict=True)
        }
    caller = (f"Bearer {token}", None)
    service = (SIDECAR, GUARD_KEY)
    assert identities[("GET", "/Schedule")] == caller
    assert identities[("GET", "/HealthcareService/checkup")] == caller
    assert identities[("GET", "/Patient")] == caller  # the participant: a caller books for what it may read
    assert ("GET", "/Practitioner") not in identities  # the actor came with the Schedule
    assert identities[("GET", "/Basic")] == service
    assert identities[("GET", "/Slot")] == service
    assert identities[("POST", "")] == service
    # The Provenance: the operation, the request, the sidecar as author, the verified caller.
    (transaction,) = upstream.transactions
    provenance = next(e for e in transaction["entry"] if e["resource"]["resourceType"] == "Provenance")[
        "resource"
    ]
    appointment_entry = next(
        e for e in transaction["entry"] if e["resource"]["resourceType"] == "Appointment"
    )
    assert provenance["target"] == [{"reference": appointment_entry["fullUrl"]}]
    assert provenance["activity"]["coding"][0]["code"] == "book"
    author, enterer = provenance["agent"]
    assert author["who"]["identifier"] == {
        "system": "https://fanoni.dev/fhir/service",
        "value": "fanoni-scheduling",
    }
    assert enterer["who"]["identifier"] == {"system": "https://idp.test", "value": "patient-app-user"}
    assert enterer["extension"][0]["valueCode"] == "verified"
    assert provenance["extension"][0]["valueString"] == answer.headers["X-Request-ID"]
    marker = [
        t for t in appointment_entry["resource"]["meta"]["tag"] if t["system"] == BOOKING_REQUEST_SYSTEM
    ]
    assert len(marker) == 1


def test_a_caller_without_a_verifiable_token_is_recorded_as_unverified() -> None:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        upstream = Upstream(mock)
        answer = sidecar().post(
            "/fhir/Appointment/$book", json=book_body(), headers={"Authorization": "Bearer opaque"}
        )
    assert answer.status_code == 201
    provenance = next(
        e["resource"]
        for e in upstream.transactions[0]["entry"]
        if e["resource"]["resourceType"] == "Provenance"
    )
    assert provenance["agent"][1]["who"] == {"display": "unverified caller (no JWKS configured)"}


@pytest.mark.parametrize("status", [401, 403])
def test_a_refusal_of_the_sidecars_own_credentials_is_502_not_the_callers_401(status: int) -> None:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        Upstream(mock, transaction_status=status)
        answer = sidecar().post("/fhir/Appointment/$book", json=book_body())
    assert answer.status_code == 502
    assert "refused the scheduling service's own credentials" in answer.get_json()["issue"][0]["diagnostics"]
    assert "WWW-Authenticate" not in answer.headers


def test_more_schedules_than_max_schedules_is_400_before_any_upstream_call() -> None:
    query = "&".join(f"schedule=Schedule/s{n}" for n in range(4))
    with responses.RequestsMock() as mock:
        answer = sidecar(max_schedules=3).get(
            f"/fhir/Appointment/$find?start=2026-12-07T09:00:00Z&end=2026-12-08T09:00:00Z"
            f"&service-type-reference=HealthcareService/checkup&{query}"
        )
        assert len(mock.calls) == 0
    assert answer.status_code == 400
    assert answer.get_json()["issue"][0]["expression"] == ["Parameters.schedule"]


# ---- the notification webhook ---------------------------------------------------------------


def ended_appointment() -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "id": "appt-1",
        "status": "cancelled",
        "meta": {"versionId": "2", "tag": [{"system": BOOKING_REQUEST_SYSTEM, "code": "req-9"}]},
        "slot": [{"reference": "Slot/visit"}, {"reference": "Slot/block"}],
        "participant": [{"status": "declined"}],
    }


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": SECRET}, {"Authorization": f"Basic {SECRET}"}],
)
def test_a_notification_without_the_secret_is_401_and_reads_nothing(headers: dict[str, str]) -> None:
    with responses.RequestsMock() as mock:
        answer = sidecar().put(
            "/fanoni/notifications/Appointment/appt-1", json=ended_appointment(), headers=headers
        )
        assert len(mock.calls) == 0
    assert answer.status_code == 401
    assert answer.get_json()["issue"][0]["code"] == "security"


def test_with_no_secret_configured_every_notification_is_401() -> None:
    app = create_app(Settings(fhir_base_url=BASE, hold_sweep_seconds=0), clock=lambda: NOW)
    answer = app.test_client().put(
        "/fanoni/notifications/Appointment/appt-1", headers={"Authorization": "Bearer "}
    )
    assert answer.status_code == 401


def test_a_notification_rereads_the_appointment_and_deletes_only_the_sidecars_slots() -> None:
    stored = ended_appointment()
    slots: list[dict[str, Any]] = [
        {
            "resourceType": "Slot",
            "id": "visit",
            "meta": {"tag": [{"system": BOOKING_REQUEST_SYSTEM, "code": "req-9"}]},
        },
        {"resourceType": "Slot", "id": "block"},  # an administrator's: not the sidecar's to delete
    ]
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(f"{BASE}/Appointment/appt-1", json=stored)
        mock.get(re.compile(rf"{re.escape(BASE)}/Slot\b.*"), json=bundle(slots))
        upstream = Upstream(mock)
        # The body claims another status and other Slots: only its id is believed.
        claim = {"resourceType": "Appointment", "id": "appt-1", "status": "booked", "slot": []}
        answer = sidecar().put(
            "/fanoni/notifications/Appointment/appt-1",
            json=claim,
            headers={"Authorization": f"Bearer {SECRET}"},
        )
        reads = [c.request for c in mock.calls if c.request.method == "GET"]
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert "1 Slot(s) deleted" in answer.get_json()["issue"][0]["diagnostics"]
    assert all(r.headers["Authorization"] == SIDECAR for r in reads)
    (transaction,) = upstream.transactions
    requests_sent = [e["request"] for e in transaction["entry"]]
    assert {"method": "DELETE", "url": "Slot/visit"} in requests_sent
    assert not any(r.get("url") == "Slot/block" for r in requests_sent)
    update = next(e for e in transaction["entry"] if e["request"]["method"] == "PUT")
    assert update["request"]["ifMatch"] == 'W/"2"'
    assert update["resource"]["slot"] == [{"reference": "Slot/block"}]
