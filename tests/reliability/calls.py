"""How the reliability tests call the sidecar, as a client application would."""

from __future__ import annotations

import copy
import uuid
from datetime import date
from typing import Any

import requests

from tests.integration.clinic import Clinic
from tests.integration.processes import SidecarProcess
from tests.integration.test_find import local

Resource = dict[str, Any]
FHIR_JSON = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
CALLER_SYSTEM = "https://example.org/reliability-client/booking"
"""The identifier system of the test client's own Appointment identifiers (idempotent retries)."""
CLIENT_TIMEOUT = 60.0
NOTHING_STORED = "Nothing was stored"
MAYBE_STORED = "may or may not have been stored"


def find(
    sidecar: SidecarProcess, clinic: Clinic, day: date, start: str, end: str, *schedules: str
) -> requests.Response:
    return requests.get(
        f"{sidecar.base_url}/Appointment/$find",
        params=clinic.find_params(local(day, start), local(day, end), *schedules, count=100),
        timeout=CLIENT_TIMEOUT,
    )


def proposals_in(response: requests.Response) -> list[Resource]:
    assert response.status_code == 200, response.text
    return [e["resource"] for e in response.json().get("entry", []) if e["search"]["mode"] == "match"]


def proposals(
    sidecar: SidecarProcess, clinic: Clinic, day: date, start: str = "09:00", end: str = "17:00"
) -> list[Resource]:
    return proposals_in(find(sidecar, clinic, day, start, end))


def new_identifier() -> str:
    return uuid.uuid4().hex


def identified(proposal: Resource, value: str) -> Resource:
    """The proposal with the client's own Appointment identifier, so a retry is idempotent."""
    copied = copy.deepcopy(proposal)
    copied["identifier"] = [*copied.get("identifier", []), {"system": CALLER_SYSTEM, "value": value}]
    return copied


def new_request_id() -> str:
    """Sent as ``X-Request-ID``: the sidecar passes it on upstream, so the proxy can tell which
    upstream calls one operation made."""
    return "rel-" + uuid.uuid4().hex[:16]


def book(
    sidecar: SidecarProcess,
    proposal: Resource,
    *,
    operation: str = "book",
    timeout: float = CLIENT_TIMEOUT,
    request_id: str | None = None,
) -> requests.Response:
    body = {"resourceType": "Parameters", "parameter": [{"name": "appointment", "resource": proposal}]}
    return requests.post(
        f"{sidecar.base_url}/Appointment/${operation}",
        json=body,
        headers={**FHIR_JSON, "X-Request-ID": request_id or new_request_id()},
        timeout=timeout,
    )


def confirm(
    sidecar: SidecarProcess, appointment_id: str, *, request_id: str | None = None
) -> requests.Response:
    return requests.post(
        f"{sidecar.base_url}/Appointment/{appointment_id}/$confirm",
        headers={**FHIR_JSON, "X-Request-ID": request_id or new_request_id()},
        timeout=CLIENT_TIMEOUT,
    )


def cancel(
    sidecar: SidecarProcess, appointment_id: str, *, request_id: str | None = None
) -> requests.Response:
    body = {"resourceType": "Parameters", "parameter": [{"name": "cancelationReason", "valueString": "test"}]}
    return requests.post(
        f"{sidecar.base_url}/Appointment/{appointment_id}/$cancel",
        json=body,
        headers={**FHIR_JSON, "X-Request-ID": request_id or new_request_id()},
        timeout=CLIENT_TIMEOUT,
    )


def issue(response: requests.Response) -> tuple[str, str]:
    """``(issue.code, diagnostics)`` of an OperationOutcome answer."""
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome", response.text
    first = outcome["issue"][0]
    return str(first["code"]), str(first.get("diagnostics", ""))


def appointment_of(response: requests.Response) -> Resource:
    """The Appointment of a ``$book``/``$hold``/``$confirm`` answer (first entry), or of ``$cancel``."""
    body = response.json()
    if body.get("resourceType") == "Appointment":
        return dict(body)
    resource = body["entry"][0]["resource"]
    assert resource["resourceType"] == "Appointment", response.text
    return dict(resource)
