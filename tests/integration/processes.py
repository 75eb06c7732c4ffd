"""Real sidecar processes for the integration tests and the benchmarks: ``fanoni-scheduling
serve`` under gunicorn on a free port, and ``fanoni-scheduling register``, as in production."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

import requests

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def register(fhir_base_url: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m plugin register`` against ``fhir_base_url``; the caller checks the result."""
    return subprocess.run(
        [sys.executable, "-m", "plugin", "register"],
        check=False,
        cwd=REPO,
        env={**os.environ, "FHIR_BASE_URL": fhir_base_url, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


class SidecarProcess:
    """``python -m plugin serve`` on a free port, logging to ``log_path``.

    Started in its own session, so ``stop()`` can end the gunicorn master and its workers
    (and nothing else) even when the master does not stop on SIGTERM.
    """

    def __init__(
        self,
        fhir_base_url: str,
        *,
        workers: int,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        ready_timeout: float = 60.0,
        port: int | None = None,
        threads: int | None = None,
    ) -> None:
        self.port = port if port is not None else free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/fhir"
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
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
            *(["--threads", str(threads)] if threads is not None else []),
        ]
        self._log: TextIO = log_path.open("w")
        self.process: subprocess.Popen[bytes] | None = subprocess.Popen(
            command,
            cwd=REPO,
            env={**os.environ, "FHIR_BASE_URL": fhir_base_url, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"sidecar exited: {self.log_tail()}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"http://127.0.0.1:{self.port}/livez", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"sidecar did not start within {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()  # gunicorn's master stops its workers
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if not self._log.closed:
            self._log.close()
