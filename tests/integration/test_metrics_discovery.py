"""``/metrics`` under the real ``fanoni-scheduling serve`` (the session's sidecar A: gunicorn, 4
workers), and the operations discovered and called at HAPI's own base (the session HAPI forwards
them to sidecar A, ``conftest.py``)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from plugin.definitions import operation_definitions
from tests.integration.clinic import Clinic
from tests.integration.conftest import Sidecar
from tests.integration.hapi_server import BASE_URL_ENV
from tests.integration.test_find import local, monday_ahead, starts

FIND = "Appointment/$find"
FRESH = {"Connection": "close"}
"""Every call on a new connection: gunicorn hands each connection to whichever worker accepts it."""


def scrape(sidecar: Sidecar) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = requests.get(f"http://127.0.0.1:{sidecar.port}/metrics", headers=FRESH, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def metric_files_by_worker(sidecar: Sidecar) -> dict[int, set[Path]]:
    """The metric files each gunicorn worker of ``sidecar`` has open (Linux ``/proc``): a worker
    has its own once it has recorded anything."""
    assert sidecar.process is not None
    master = sidecar.process.pid
    workers = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    found: dict[int, set[Path]] = {}
    for worker in map(int, workers):
        files: set[Path] = set()
        for fd in Path(f"/proc/{worker}/fd").iterdir():
            try:
                target = Path(os.readlink(fd))
            except OSError:
                continue
            if target.parent.name.startswith("fanoni-metrics-") and target.suffix == ".db":
                files.add(target)
        found[worker] = files
    return found


def test_metrics_add_up_every_worker(sidecar: Sidecar, hapi: Any) -> None:
    clinic = Clinic(hapi.base_url).load()
    day = monday_ahead()
    params = clinic.find_params(local(day, "09:00"), local(day, "12:00"))
    find_count = ("fanoni_requests_total", {"operation": FIND, "status": "200"})
    trips = "fanoni_request_upstream_round_trips"
    before = scrape(sidecar)

    sent, round_trips = 0, 0
    # At least 8 calls, and on until at least two workers have recorded (in a full run all four
    # have, from earlier tests): the sum below is then one across processes.
    while sent < 8 or sum(1 for files in metric_files_by_worker(sidecar).values() if files) < 2:
        assert sent < 60, f"every call went to one worker: {metric_files_by_worker(sidecar)}"
        response = requests.get(f"{sidecar.base_url}/{FIND}", params=params, headers=FRESH, timeout=60)
        assert starts(response) == ["09:00", "10:00", "11:00"]
        sent += 1
        round_trips += int(response.headers["X-Upstream-Round-Trips"])

    files = metric_files_by_worker(sidecar)
    directories = {path.parent for paths in files.values() for path in paths}
    assert len(directories) == 1, directories  # one directory for the run, shared by every worker
    for worker, paths in files.items():
        assert all(path.name.endswith(f"_{worker}.db") for path in paths), (worker, paths)

    # Whichever worker answers the scrape, it reports every worker's requests.
    for _ in range(6):
        after = scrape(sidecar)
        name, labels = find_count
        assert value(after, name, **labels) - value(before, name, **labels) == sent
        assert (
            value(after, f"{trips}_count", operation=FIND) - value(before, f"{trips}_count", operation=FIND)
            == sent
        )
        assert (
            value(after, f"{trips}_sum", operation=FIND) - value(before, f"{trips}_sum", operation=FIND)
            == round_trips
        )
        duration = "fanoni_request_duration_seconds_count"
        assert value(after, duration, operation=FIND) - value(before, duration, operation=FIND) == sent
        # Each $find reads the Schedules as the caller; the decisive reads are the sidecar's own.
        caller = value(after, "fanoni_upstream_requests_total", identity="caller", method="GET", status="200")
        assert (
            caller
            - value(before, "fanoni_upstream_requests_total", identity="caller", method="GET", status="200")
            >= sent
        )
    assert value(after, "fanoni_requests_in_flight") >= 1  # the scrape itself

    # The hold sweep runs in every worker (every 2 s here) and is counted there too.
    deadline = time.monotonic() + 15
    while value(after, "fanoni_sweeps_total", outcome="ok") < 1 and time.monotonic() < deadline:
        time.sleep(0.5)
        after = scrape(sidecar)
    assert value(after, "fanoni_sweeps_total", outcome="ok") >= 1


@pytest.fixture
def forwarding_hapi(hapi: Any, sidecar: Sidecar) -> Any:
    if os.environ.get(BASE_URL_ENV, "").strip():
        pytest.skip(f"{BASE_URL_ENV} is set: that server's forwarding is not the suite's to set")
    return hapi


def test_hapi_lists_the_operations_in_its_own_capability_statement(forwarding_hapi: Any) -> None:
    response = requests.get(
        f"{forwarding_hapi.base_url}/metadata", headers={"Cache-Control": "no-cache"}, timeout=60
    )
    assert response.status_code == 200, response.text
    statement = response.json()
    assert statement["resourceType"] == "CapabilityStatement"
    (server,) = [rest for rest in statement["rest"] if rest["mode"] == "server"]
    listed = {
        (resource["type"], operation["name"], operation.get("definition"))
        for resource in server["resource"]
        for operation in resource.get("operation", [])
    }
    # Every operation the sidecar defines, with its definition's canonical URL.
    for definition in operation_definitions().values():
        for resource_type in definition.get("resource", []):  # $bulk-publish is not forwarded
            assert (resource_type, definition["code"], definition["url"]) in listed, definition["url"]
    on_appointment = {name for resource_type, name, _ in listed if resource_type == "Appointment"}
    assert {"find", "hold", "book", "confirm", "cancel", "reschedule"} <= on_appointment
    assert ("Schedule", "find", "https://fanoni.dev/fhir/OperationDefinition/schedule-find") in listed
    # HAPI's own operations are still there.
    assert any(name == "validate" for _, name, _ in listed)


def test_find_at_hapis_base_returns_proposals(forwarding_hapi: Any, sidecar: Sidecar) -> None:
    clinic = Clinic(forwarding_hapi.base_url).load()
    day = monday_ahead()
    params = clinic.find_params(local(day, "00:00"), local(day, "12:00"))
    before = scrape(sidecar)
    response = requests.get(f"{forwarding_hapi.base_url}/{FIND}", params=params, timeout=60)
    assert starts(response) == ["09:00", "10:00", "11:00"]
    assert response.json()["entry"][0]["resource"]["resourceType"] == "Appointment"
    direct = requests.get(f"{sidecar.base_url}/{FIND}", params=params, timeout=60)
    assert response.json()["entry"] == direct.json()["entry"]
    after = scrape(sidecar)
    counted = value(after, "fanoni_requests_total", operation=FIND, status="200")
    assert counted - value(before, "fanoni_requests_total", operation=FIND, status="200") == 2
