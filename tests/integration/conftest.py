"""The integration harness: a real HAPI FHIR JPA server and real sidecar processes.

HAPI is built once (Maven, cached in ``~/.m2`` and ``build/hapi``) and started on a free port
for the session, with the guard, subscriptions and HAPI's AuthorizationInterceptor on
(``tests/integration/trust.py``). The sidecar runs as it does in production: ``fanoni-scheduling
serve`` under gunicorn with 4 workers, with its own credentials, guard key and notification
webhook, plus a second sidecar process on another port, both against that HAPI. HAPI forwards
the operations called at its own base to the first one.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.hapi_server import HapiServer, start_hapi
from tests.integration.processes import REPO, SidecarProcess, free_port, register
from tests.integration.trust import hapi_args, sidecar_env

__all__ = ["REPO", "Sidecar", "free_port"]
HOLD_TTL_SECONDS = 4
HOLD_SWEEP_SECONDS = 2


class Sidecar(SidecarProcess):
    """The sidecar as the suite runs it: short holds and a quick sweeper, so expiry is testable."""

    def __init__(
        self,
        fhir_base_url: str,
        workers: int,
        log_name: str,
        *,
        port: int | None = None,
        env: dict[str, str] | None = None,
        threads: int | None = None,
    ) -> None:
        port = port if port is not None else free_port()
        super().__init__(
            fhir_base_url,
            workers=workers,
            threads=threads,
            log_path=REPO / "build" / "test-logs" / f"{log_name}.log",
            env={
                "HOLD_TTL_SECONDS": str(HOLD_TTL_SECONDS),
                "HOLD_SWEEP_SECONDS": str(HOLD_SWEEP_SECONDS),
                # The index is complete before any test data exists; tests that count round trips
                # need no per-process index check. test_reindex_window.py runs auto.
                "SLOT_END_SEARCH": "on",
                "LOG_LEVEL": "INFO",
                **sidecar_env(port),
                **(env or {}),
            },
            port=port,
        )


@pytest.fixture(scope="session")
def hapi() -> Iterator[HapiServer]:
    # Forwarding on, to sidecar A: the operations are listed and answered at HAPI's base too.
    forwarding = f"--hapi.fanoni_sidecar_url=http://127.0.0.1:{SIDECAR_A_PORT}/fhir"
    server = start_hapi(extra_args=[*hapi_args(), forwarding])
    try:
        yield server
    finally:
        server.stop()


SIDECAR_A_PORT = free_port()
"""Known before registration: the Subscription delivers to sidecar A's webhook."""


@pytest.fixture(scope="session")
def registered(hapi: HapiServer) -> str:
    """Run ``fanoni-scheduling register`` against HAPI once: the Slot ``end`` SearchParameter,
    the OperationDefinitions and the Subscription to sidecar A's webhook."""
    result = register(hapi.base_url, sidecar_env(SIDECAR_A_PORT))
    assert result.returncode == 0, result.stdout + result.stderr
    return hapi.base_url


@pytest.fixture(scope="session")
def sidecar(registered: str) -> Iterator[Sidecar]:
    process = Sidecar(registered, workers=4, log_name="sidecar-a", port=SIDECAR_A_PORT)
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
