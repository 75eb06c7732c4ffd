"""The integration harness: a real HAPI FHIR JPA server and real sidecar processes.

HAPI is built once (Maven, cached in ``~/.m2`` and ``build/hapi``) and started on a free port
for the session. The sidecar runs as it does in production: ``fanoni-scheduling serve`` under
gunicorn with 4 workers, plus a second sidecar process on another port, both against that HAPI.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.hapi_server import HapiServer, start_hapi
from tests.integration.processes import REPO, SidecarProcess, free_port, register

__all__ = ["REPO", "Sidecar", "free_port"]
HOLD_TTL_SECONDS = 4
HOLD_SWEEP_SECONDS = 2


class Sidecar(SidecarProcess):
    """The sidecar as the suite runs it: short holds and a quick sweeper, so expiry is testable."""

    def __init__(self, fhir_base_url: str, workers: int, log_name: str) -> None:
        super().__init__(
            fhir_base_url,
            workers=workers,
            log_path=REPO / "build" / "test-logs" / f"{log_name}.log",
            env={
                "HOLD_TTL_SECONDS": str(HOLD_TTL_SECONDS),
                "HOLD_SWEEP_SECONDS": str(HOLD_SWEEP_SECONDS),
                "SLOT_END_SEARCH": "on",
                "LOG_LEVEL": "INFO",
            },
        )


@pytest.fixture(scope="session")
def hapi() -> Iterator[HapiServer]:
    server = start_hapi()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def registered(hapi: HapiServer) -> str:
    """Run ``fanoni-scheduling register`` against HAPI once (the Slot ``end`` SearchParameter)."""
    result = register(hapi.base_url)
    assert result.returncode == 0, result.stdout + result.stderr
    return hapi.base_url


@pytest.fixture(scope="session")
def sidecar(registered: str) -> Iterator[Sidecar]:
    process = Sidecar(registered, workers=4, log_name="sidecar-a")
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="session")
def second_sidecar(registered: str) -> Iterator[Sidecar]:
    process = Sidecar(registered, workers=2, log_name="sidecar-b")
    try:
        yield process
    finally:
        process.stop()
