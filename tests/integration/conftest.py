"""The integration harness: a real HAPI FHIR JPA server and real sidecar processes.

HAPI is built once (Maven, cached in ``~/.m2`` and ``build/hapi``) and started on a free port
for the session. The sidecar runs as it does in production: ``fanoni-scheduling serve`` under
gunicorn with 4 workers, plus a second sidecar process on another port, both against that HAPI.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.integration.hapi_server import HapiServer, start_hapi

REPO = Path(__file__).resolve().parents[2]
HOLD_TTL_SECONDS = 4
HOLD_SWEEP_SECONDS = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Sidecar:
    """A running ``fanoni-scheduling serve`` process."""

    def __init__(self, fhir_base_url: str, workers: int, log_name: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/fhir"
        log_dir = REPO / "build" / "test-logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{log_name}.log"
        env = {
            **os.environ,
            "FHIR_BASE_URL": fhir_base_url,
            "HOLD_TTL_SECONDS": str(HOLD_TTL_SECONDS),
            "HOLD_SWEEP_SECONDS": str(HOLD_SWEEP_SECONDS),
            "SLOT_END_SEARCH": "on",
            "LOG_LEVEL": "INFO",
        }
        command = [
            sys.executable,
            "-m",
            "plugin",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(workers),
            "--no-register",
        ]
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sidecar exited: {self.log_path.read_text()[-3000:]}")
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/livez", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"sidecar did not start: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


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
    env = {**os.environ, "FHIR_BASE_URL": hapi.base_url}
    result = subprocess.run(
        [sys.executable, "-m", "plugin", "register"],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
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
