"""The operations called at HAPI's own base, forwarded to the sidecar by the HAPI interceptor
(``plugin/hapi/``, ``FanoniForwardingInterceptor``).

Two extra HAPI servers are started for this module, at the same time: one forwards to a sidecar
that reads and writes that same HAPI, the other forwards to a port where nothing answers.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from tests.integration.clinic import Clinic
from tests.integration.conftest import REPO, Sidecar, free_port
from tests.integration.hapi_server import BASE_URL_ENV, HapiServer, build_hapi, start_hapi
from tests.integration.test_find import local, monday_ahead, starts
from tests.integration.trust import hapi_args

FHIR_JSON = {"Content-Type": "application/fhir+json"}
ORPHAN_REQUEST_TIMEOUT_SECONDS = 2


@dataclass
class ThroughHapi:
    hapi: HapiServer
    """Forwards the operations to ``sidecar``, which reads and writes this HAPI."""
    sidecar: Sidecar
    orphan: HapiServer
    """Forwards the operations to ``orphan_port``, where nothing listens unless a test opens it."""
    orphan_port: int


@pytest.fixture(scope="module")
def through() -> Iterator[ThroughHapi]:
    if os.environ.get(BASE_URL_ENV, "").strip():
        pytest.skip(f"{BASE_URL_ENV} is set: these tests start their own HAPI servers")
    build_hapi()
    hapi_port, orphan_port = free_port(), free_port()
    with ExitStack() as stack:
        # The sidecar first: HAPI needs its URL at start; the sidecar needs HAPI only when called (its hold
        # sweeper logs "unreachable" until HAPI is up).
        sidecar = Sidecar(f"http://127.0.0.1:{hapi_port}/fhir", workers=2, log_name="sidecar-through-hapi")
        stack.callback(sidecar.stop)
        # Both HAPI servers start at once (about 20 s on a small machine, instead of 40 s).
        with ThreadPoolExecutor(max_workers=2) as pool:
            starting = [
                pool.submit(
                    start_hapi, hapi_port, [f"--hapi.fanoni_sidecar_url={sidecar.base_url}", *hapi_args()]
                ),
                pool.submit(
                    start_hapi,
                    None,
                    [
                        f"--hapi.fanoni_sidecar_url=http://127.0.0.1:{orphan_port}/fhir",
                        f"--hapi.fanoni_sidecar_request_timeout_seconds={ORPHAN_REQUEST_TIMEOUT_SECONDS}",
                    ],
                ),
            ]
        for future in starting:  # every server that came up is stopped, whatever else failed
            if future.exception() is None:
                stack.callback(future.result().stop)
        hapi, orphan = (future.result() for future in starting)
        register = subprocess.run(
            [sys.executable, "-m", "plugin", "register"],
            check=False,
            cwd=REPO,
            env={**os.environ, "FHIR_BASE_URL": hapi.base_url},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert register.returncode == 0, register.stdout + register.stderr
        yield ThroughHapi(hapi, sidecar, orphan, orphan_port)


def proposals(base: str, clinic: Clinic, start: str, end: str) -> list[dict[str, Any]]:
    response = requests.get(f"{base}/Appointment/$find", params=clinic.find_params(start, end), timeout=60)
    assert response.status_code == 200, response.text
    return [e["resource"] for e in response.json().get("entry", []) if e["search"]["mode"] == "match"]


def parameters(proposal: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": [{"name": "appointment", "resource": proposal}]}


def test_find_at_hapi_is_the_sidecars_find(through: ThroughHapi) -> None:
    clinic = Clinic(through.hapi.base_url).load()
    day = monday_ahead()
    params = clinic.find_params(local(day, "00:00"), local(day, "12:00"))
    response = requests.get(
        f"{through.hapi.base_url}/Appointment/$find",
        params=params,
        headers={"X-Request-ID": f"{clinic.prefix}-find"},
        timeout=60,
    )
    assert starts(response) == ["09:00", "10:00", "11:00"]
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    assert response.headers["X-Upstream-Round-Trips"] == "3"
    assert response.headers["X-Request-ID"] == f"{clinic.prefix}-find"
    direct = requests.get(f"{through.sidecar.base_url}/Appointment/$find", params=params, timeout=60)
    assert response.json()["entry"] == direct.json()["entry"]

    # POST with a Parameters body, the instance-level form, and an encoded `$`.
    body = {
        "resourceType": "Parameters",
        "parameter": [{"name": name, "valueString": value} for name, value in params],
    }
    posted = requests.post(
        f"{through.hapi.base_url}/Appointment/$find", json=body, headers=FHIR_JSON, timeout=60
    )
    assert starts(posted) == ["09:00", "10:00", "11:00"]
    on_schedule = requests.get(
        f"{through.hapi.base_url}/Schedule/{clinic.alice}/$find",
        params=[p for p in params if p[0] != "schedule"],
        timeout=60,
    )
    assert starts(on_schedule) == ["09:00", "10:00", "11:00"]
    encoded = requests.get(f"{through.hapi.base_url}/Appointment/%24find", params=params, timeout=60)
    assert starts(encoded) == ["09:00", "10:00", "11:00"]


def test_book_hold_confirm_cancel_at_hapi(through: ThroughHapi) -> None:
    base = through.hapi.base_url
    clinic = Clinic(base).load()
    day = monday_ahead()
    first, second = proposals(base, clinic, local(day, "09:00"), local(day, "11:00"))[:2]

    booked = requests.post(
        f"{base}/Appointment/$book", json=parameters(first), headers=FHIR_JSON, timeout=120
    )
    assert booked.status_code == 201, booked.text
    appointment = booked.json()["entry"][0]["resource"]
    assert appointment["status"] == "booked"
    # The sidecar names the Appointment by its own base; the interceptor moves it onto HAPI's.
    assert booked.headers["Location"] == f"{base}/Appointment/{appointment['id']}"
    assert requests.get(booked.headers["Location"], timeout=30).json()["status"] == "booked"
    assert [s["status"] for s in clinic.slots()] == ["busy"]

    held = requests.post(f"{base}/Appointment/$hold", json=parameters(second), headers=FHIR_JSON, timeout=120)
    assert held.status_code == 201, held.text
    assert "Expires" in held.headers
    held_id = held.json()["entry"][0]["resource"]["id"]
    confirmed = requests.post(f"{base}/Appointment/{held_id}/$confirm", timeout=60)
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["entry"][0]["resource"]["status"] == "booked"

    reason = {
        "resourceType": "Parameters",
        "parameter": [{"name": "cancelationReason", "valueCodeableConcept": {"text": "patient request"}}],
    }
    for appointment_id in (appointment["id"], held_id):
        cancelled = requests.post(
            f"{base}/Appointment/{appointment_id}/$cancel", json=reason, headers=FHIR_JSON, timeout=60
        )
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
    assert clinic.slots() == []
    assert starts(
        requests.get(
            f"{base}/Appointment/$find",
            params=clinic.find_params(local(day, "09:00"), local(day, "11:00")),
            timeout=60,
        )
    ) == ["09:00", "10:00"]


def test_sidecar_errors_are_relayed_unchanged(through: ThroughHapi) -> None:
    clinic = Clinic(through.hapi.base_url).load()
    day = monday_ahead()
    find_params = clinic.find_params(local(day, "09:00"), local(day, "12:00"))
    schedule_free_params = [p for p in find_params if p[0] != "schedule"]
    cases: list[tuple[str, str, dict[str, Any], int]] = [
        ("GET", "Appointment/$find", {"params": [("start", "tomorrow")]}, 400),
        ("POST", "Appointment/$book", {"data": b"{", "headers": FHIR_JSON}, 400),
        ("POST", f"Appointment/{clinic.prefix}-none/$cancel", {}, 404),
        ("GET", f"Schedule/{clinic.prefix}-none/$find", {"params": schedule_free_params}, 404),
    ]
    for method, path, kwargs, status in cases:
        at_hapi = requests.request(method, f"{through.hapi.base_url}/{path}", timeout=60, **kwargs)
        direct = requests.request(method, f"{through.sidecar.base_url}/{path}", timeout=60, **kwargs)
        assert direct.status_code == status, (path, direct.text)
        assert at_hapi.status_code == status, (path, at_hapi.text)
        assert at_hapi.headers["Content-Type"].startswith("application/fhir+json")
        assert at_hapi.json()["resourceType"] == "OperationOutcome"
        assert at_hapi.json() == direct.json(), path
        assert "X-Upstream-Round-Trips" in at_hapi.headers


def test_other_requests_stay_with_hapi(through: ThroughHapi) -> None:
    base = through.hapi.base_url
    clinic = Clinic(base).load()
    schedule = requests.get(f"{base}/Schedule/{clinic.alice}", timeout=30)
    assert schedule.status_code == 200, schedule.text
    assert schedule.json()["resourceType"] == "Schedule"
    assert "X-Upstream-Round-Trips" not in schedule.headers
    search = requests.get(f"{base}/Appointment", params={"_id": "nothing"}, timeout=30)
    assert search.status_code == 200
    assert "X-Upstream-Round-Trips" not in search.headers
    # $book takes POST only: a GET is HAPI's own "unknown operation" error, not the sidecar's 405.
    get_book = requests.get(f"{base}/Appointment/$book", timeout=30)
    assert get_book.status_code == 400, get_book.text
    assert "X-Upstream-Round-Trips" not in get_book.headers
    assert get_book.json()["resourceType"] == "OperationOutcome"


def test_sidecar_unreachable_is_503_and_silent_is_504(through: ThroughHapi) -> None:
    find = f"{through.orphan.base_url}/Appointment/$find"
    closed = requests.get(find, params=[("start", "2030-01-01T00:00:00Z")], timeout=60)
    assert closed.status_code == 503, closed.text
    assert closed.headers["Content-Type"].startswith("application/fhir+json")
    assert closed.json()["resourceType"] == "OperationOutcome"
    assert closed.json()["issue"][0]["code"] == "transient"
    booked = requests.post(f"{through.orphan.base_url}/Appointment/$book", json={}, timeout=60)
    assert (booked.status_code, booked.json()["issue"][0]["code"]) == (503, "transient")

    # A sidecar that accepts the connection but never answers: 504 after the request timeout.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", through.orphan_port))
        silent.listen(8)
        timed_out = requests.get(find, timeout=60)
    assert timed_out.status_code == 504, timed_out.text
    assert timed_out.json()["issue"][0]["code"] == "timeout"
    # HAPI keeps serving everything else.
    assert requests.get(f"{through.orphan.base_url}/metadata", timeout=30).status_code == 200


def test_without_a_subscription_the_sweep_still_frees_a_directly_cancelled_visit(
    through: ThroughHapi,
) -> None:
    """This HAPI has no Subscription (registered without NOTIFICATION_URL), as when every
    notification was lost: the sidecar's sweep (every 2 s here) frees the time anyway."""
    base = through.hapi.base_url
    clinic = Clinic(base).load()
    day = monday_ahead()
    proposal = proposals(base, clinic, local(day, "09:00"), local(day, "10:00"))[0]
    booked = requests.post(
        f"{base}/Appointment/$book", json=parameters(proposal), headers=FHIR_JSON, timeout=120
    )
    assert booked.status_code == 201, booked.text
    appointment = booked.json()["entry"][0]["resource"]
    stored = requests.get(
        f"{base}/Appointment/{appointment['id']}", headers={"Cache-Control": "no-cache"}, timeout=30
    )
    put = requests.put(
        f"{base}/Appointment/{appointment['id']}",
        json=stored.json() | {"status": "noshow"},
        headers=FHIR_JSON,
        timeout=30,
    )
    assert put.status_code == 200, put.text
    deadline = time.monotonic() + 15
    while clinic.slots() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert clinic.slots() == []
