"""The reliability harness: a real HAPI FHIR JPA server of its own, a fault-injecting proxy in
front of it, and real sidecar processes (gunicorn) whose ``FHIR_BASE_URL`` is the proxy.

Registration (the Slot ``end`` SearchParameter, the OperationDefinitions, the Subscription to
the main sidecar's webhook) runs once against HAPI directly. Test data is loaded into HAPI
directly and the independent scan (``scan.py``) reads HAPI directly: only the sidecars' own
traffic goes through the proxy.

The sidecars have short timeouts, so a fault costs seconds, not minutes: ``UPSTREAM_READ_TIMEOUT``
2 s, ``BOOKING_DEADLINE_SECONDS`` 5 s (so each operation's time budget is 5 + 2 + 10 = 17 s).
Holds last 60 s here, so no hold lapses in the middle of a test.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.clinic import Clinic
from tests.integration.conftest import Sidecar
from tests.integration.hapi_server import HapiServer, start_hapi
from tests.integration.processes import REPO, free_port, register
from tests.integration.test_find import monday_ahead
from tests.integration.trust import hapi_args, sidecar_env
from tests.reliability.calls import book, find, proposals_in
from tests.reliability.proxy import FaultProxy

READ_TIMEOUT = 2.0
"""``UPSTREAM_READ_TIMEOUT`` of the fault-test sidecars."""
DEADLINE = 5.0
"""``BOOKING_DEADLINE_SECONDS`` of the fault-test sidecars."""
BEYOND_TIMEOUT = READ_TIMEOUT + 2.0
"""How long a delay fault holds a request or answer: well past the sidecar's read timeout."""
SHORT = {
    "UPSTREAM_READ_TIMEOUT": f"{READ_TIMEOUT:g}",
    "BOOKING_DEADLINE_SECONDS": f"{DEADLINE:g}",
    "HOLD_TTL_SECONDS": "60",
}
RESULTS = REPO / "build" / "test-logs" / "reliability-results.jsonl"
"""What each test measured (answers, durations, scan counts): the numbers in docs/reliability.md."""
MAIN_PORT = free_port()
"""Known before registration: HAPI's Subscription delivers to the main sidecar's webhook."""


@pytest.fixture(scope="session")
def hapi() -> Iterator[HapiServer]:
    server = start_hapi(extra_args=hapi_args())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def proxy(hapi: HapiServer) -> Iterator[FaultProxy]:
    running = FaultProxy(hapi.base_url)
    try:
        yield running
    finally:
        running.close()


@pytest.fixture(autouse=True)
def _no_fault_survives_a_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """Whatever a test injected is removed afterwards (paused requests released, a stopped proxy
    listening again), even when it failed."""
    # Asked for before the test runs, so the proxy outlives this fixture's clean-up.
    proxy: FaultProxy | None = request.getfixturevalue("proxy") if "proxy" in request.fixturenames else None
    yield
    if proxy is not None and not proxy.closed:
        proxy.clear()
        proxy.wait_idle(30)


@pytest.fixture(scope="session")
def registered(hapi: HapiServer) -> str:
    result = register(hapi.base_url, sidecar_env(MAIN_PORT))
    assert result.returncode == 0, result.stdout + result.stderr
    return hapi.base_url


def start_sidecar(proxy: FaultProxy, log_name: str, *, workers: int, **env: str) -> Sidecar:
    """A sidecar whose upstream is the proxy, with the short timeouts unless ``env`` says otherwise."""
    return Sidecar(proxy.base_url, workers=workers, log_name=log_name, env={**SHORT, **env})


@pytest.fixture(scope="session")
def sidecar(registered: str, proxy: FaultProxy) -> Iterator[Sidecar]:
    """The sidecar most fault tests use: 2 workers, short timeouts, behind the proxy."""
    process = Sidecar(proxy.base_url, workers=2, log_name="reliability-main", port=MAIN_PORT, env=dict(SHORT))
    try:
        warm_up(process, registered)
        yield process
    finally:
        process.stop()


def warm_up(sidecar: Sidecar, hapi_base: str) -> None:
    """A few bookings before the first measured one: a freshly started HAPI answers its first
    transactions slowly (JIT), and a 2 s read timeout must not turn that into a fault."""
    clinic = Clinic(hapi_base).load()
    day = monday_ahead(weeks=5)
    deadline = time.monotonic() + 120
    booked = 0
    while booked < 3 and time.monotonic() < deadline:
        found = find(sidecar, clinic, day, "09:00", "17:00")
        if (
            found.status_code == 200
            and proposals_in(found)
            and book(sidecar, proposals_in(found)[0]).status_code == 201
        ):
            booked += 1


@pytest.fixture(scope="session")
def results_file() -> Path:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("")
    return RESULTS


@pytest.fixture
def record(results_file: Path, request: pytest.FixtureRequest) -> Any:
    """``record(**numbers)``: append what this test measured to ``RESULTS`` (one JSON line)."""

    def write(**numbers: Any) -> None:
        line = {"test": request.node.name, "pid": os.getpid(), **numbers}
        with results_file.open("a") as out:
            out.write(json.dumps(line, default=str) + "\n")

    return write
