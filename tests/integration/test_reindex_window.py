"""The first reindex leaves a window: after the Slot ``end`` SearchParameter is installed on a
HAPI that already holds Slots, ``end=`` searches miss them until HAPI's reindex job has run. No
decision may rest on ``end=`` meanwhile (SPEC §5, issue 6).

A HAPI of its own, whose batch jobs are slowed down (no fast tracking, a maintenance pass every
10 minutes), so the window stays open for the whole test instead of a lucky second.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import requests

from tests.integration.clinic import Clinic
from tests.integration.conftest import Sidecar
from tests.integration.hapi_server import BASE_URL_ENV, HapiServer, start_hapi
from tests.integration.processes import register
from tests.integration.test_find import local, monday_ahead, starts
from tests.integration.trust import hapi_args, sidecar_env
from tests.unit import builders

NO_CACHE = {"Cache-Control": "no-cache"}


@pytest.fixture(scope="module")
def slow_reindex() -> Iterator[HapiServer]:
    if os.environ.get(BASE_URL_ENV, "").strip():
        pytest.skip(f"{BASE_URL_ENV} is set: this test starts its own HAPI server")
    server = start_hapi(
        extra_args=[
            *hapi_args(),
            "--hapi.job_fast_tracking=false",
            "--hapi.batch2_maintenance_interval_ms=600000",
        ]
    )
    try:
        yield server
    finally:
        server.stop()


def test_no_decision_uses_end_while_hapi_is_still_indexing(slow_reindex: HapiServer) -> None:
    base = slow_reindex.base_url
    day = monday_ahead()
    clinic = Clinic(base)
    # Three weeks of vacation that began two weeks before the day asked about: stored before the
    # SearchParameter exists, so HAPI has not indexed its end.
    vacation = builders.slot(
        clinic.alice,
        "busy-unavailable",
        local(day - timedelta(days=14), "00:00"),
        local(day + timedelta(days=7), "00:00"),
        comment="vacation",
    )
    clinic.load(vacation)

    sidecar = Sidecar(base, workers=1, log_name="sidecar-reindex-window", env={"SLOT_END_SEARCH": "auto"})
    try:
        result = register(base, sidecar_env(sidecar.port))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Slot reindex requested" in result.stdout

        # The window is open: HAPI knows `end` now, but the vacation is not found by it.
        by_end = requests.get(
            f"{base}/Slot",
            params={"schedule": f"Schedule/{clinic.alice}", "end": "gt" + local(day, "00:00")},
            headers=NO_CACHE,
            timeout=30,
        )
        assert by_end.status_code == 200, by_end.text
        assert by_end.json().get("total", len(by_end.json().get("entry", []))) == 0

        found = requests.get(
            f"{sidecar.base_url}/Appointment/$find",
            params=clinic.find_params(local(day, "00:00"), local(day, "23:59")),
            timeout=60,
        )
        assert starts(found) == []  # the vacation is seen: nothing is offered
        # 3 reads + 2 counts that disagree (the third count is only needed when they agree)
        assert found.headers["X-Upstream-Round-Trips"] == "5"
        assert "still indexing Slot end" in sidecar.log_tail(20000)

        proposal: dict[str, Any] = {
            "resourceType": "Appointment",
            "status": "proposed",
            "serviceType": [
                {
                    "extension": [
                        {
                            "url": "https://medplum.com/fhir/service-type-reference",
                            "valueReference": {"reference": f"HealthcareService/{clinic.service}"},
                        }
                    ]
                }
            ],
            "contained": [
                {
                    "resourceType": "Slot",
                    "schedule": {"reference": f"Schedule/{clinic.alice}"},
                    "status": "busy",
                    "start": local(day, "10:00"),
                    "end": local(day, "10:30"),
                }
            ],
        }
        booked = requests.post(
            f"{sidecar.base_url}/Appointment/$book",
            json={"resourceType": "Parameters", "parameter": [{"name": "appointment", "resource": proposal}]},
            headers={"Content-Type": "application/fhir+json"},
            timeout=60,
        )
        assert booked.status_code == 409, booked.text  # the vacation, not a booking on top of it
        assert clinic.appointments() == []
    finally:
        sidecar.stop()
