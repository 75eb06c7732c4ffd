"""Start a real HAPI FHIR JPA server (R4, in-memory H2) for integration tests.

The server is the Spring Boot application in ``hapi-server/``, built and launched through
``scripts/hapi.sh`` (``build`` once, cached; ``run PORT`` in the foreground, which execs the JVM).
Each start is a clean, empty database. On PostgreSQL instead: ``tests/support/postgres.py``
(``start_hapi_on_postgres()``, or ``start_hapi(extra_args=postgres.hapi_args())``).

Environment:
    FANONI_TEST_FHIR_BASE_URL   use this FHIR base URL instead of starting a server
    FANONI_HAPI_START_TIMEOUT   seconds to wait for ``/fhir/metadata`` (default 240)
    HAPI_JAVA_OPTS              JVM options, see ``scripts/hapi.sh``
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
HAPI_SCRIPT = REPO_ROOT / "scripts" / "hapi.sh"
LOG_DIR = REPO_ROOT / "build" / "hapi"
BASE_URL_ENV = "FANONI_TEST_FHIR_BASE_URL"
START_TIMEOUT_ENV = "FANONI_HAPI_START_TIMEOUT"
DEFAULT_START_TIMEOUT = 240.0
STOP_TIMEOUT = 30.0
LOG_TAIL_LINES = 40


class HapiStartError(RuntimeError):
    """The HAPI server could not be built or did not come up."""


class HapiServer:
    """A running HAPI FHIR server (or an external one named by ``FANONI_TEST_FHIR_BASE_URL``)."""

    base_url: str
    log_path: Path | None

    def __init__(
        self,
        base_url: str,
        process: subprocess.Popen[bytes] | None = None,
        log_path: Path | None = None,
        log_file: IO[bytes] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.log_path = log_path
        self._process = process
        self._log_file = log_file

    @property
    def pid(self) -> int | None:
        """The JVM's pid, or None for an external server."""
        return self._process.pid if self._process is not None else None

    def is_running(self) -> bool:
        return self._process is None or self._process.poll() is None

    def stop(self) -> None:
        """Stop the JVM (its whole process group) and wait for it; a no-op for external servers."""
        process, self._process = self._process, None
        if process is not None:
            _terminate(process)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return _tail(self.log_path, lines) if self.log_path is not None else ""

    def __enter__(self) -> HapiServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"HapiServer(base_url={self.base_url!r}, pid={self.pid})"


def start_hapi(port: int | None = None, extra_args: Sequence[str] = ()) -> HapiServer:
    """Build (cached) via scripts/hapi.sh build, start the jar on a free port (or the given one),
    wait for /fhir/metadata, return. ``extra_args`` are passed to the server
    (``--hapi.fanoni_sidecar_url=...``, see ``hapi-server/README.md``).

    If ``FANONI_TEST_FHIR_BASE_URL`` is set, nothing is started: the returned server points at that
    URL and its ``stop()`` does nothing.
    """
    external = os.environ.get(BASE_URL_ENV, "").strip()
    if external:
        return HapiServer(external)

    build_hapi()
    if port is None:
        port = _free_port()
    timeout = float(os.environ.get(START_TIMEOUT_ENV, DEFAULT_START_TIMEOUT))

    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"hapi-{port}.log"
    log_file = log_path.open("wb")
    try:
        process = subprocess.Popen(
            ["bash", str(HAPI_SCRIPT), "run", str(port), *extra_args],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except BaseException:
        log_file.close()
        raise
    server = HapiServer(f"http://127.0.0.1:{port}/fhir", process, log_path, log_file)
    try:
        _wait_until_ready(server, process, timeout)
    except BaseException as exc:
        server.stop()
        if isinstance(exc, HapiStartError):
            raise HapiStartError(
                f"{exc}\n--- last {LOG_TAIL_LINES} lines of {log_path} ---\n{server.log_tail()}"
            ) from None
        raise
    return server


def build_hapi() -> None:
    """Run ``scripts/hapi.sh build`` (a no-op when the jar is up to date)."""
    result = subprocess.run(
        ["bash", str(HAPI_SCRIPT), "build"],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    )
    if result.returncode != 0:
        output = result.stdout.decode("utf-8", "replace")
        tail = "\n".join(output.splitlines()[-LOG_TAIL_LINES:])
        raise HapiStartError(f"scripts/hapi.sh build failed (exit {result.returncode}):\n{tail}")


def _wait_until_ready(server: HapiServer, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    url = f"{server.base_url}/metadata"
    with requests.Session() as session:
        while True:
            code = process.poll()
            if code is not None:
                raise HapiStartError(f"HAPI FHIR exited with code {code} during startup")
            try:
                if session.get(url, timeout=10).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() >= deadline:
                raise HapiStartError(f"HAPI FHIR did not answer {url} within {timeout:.0f}s")
            time.sleep(0.5)


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # start_new_session=True made the child the leader of its own process group (pgid == pid).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, lines: int) -> str:
    try:
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines))
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
