"""The processes a benchmark run needs, started and always stopped: PostgreSQL (when asked),
HAPI FHIR on it or on its in-memory H2, registration, and sidecar processes under gunicorn.
Also what the machine is, for the report."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.integration.hapi_server import start_hapi
from tests.integration.processes import SidecarProcess, free_port, register
from tests.integration.trust import GUARD_KEY, SIDECAR_TOKEN, hapi_args

HAPI_JAVA_OPTS = (
    "-Xmx1536m -XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true -Dfile.encoding=UTF-8"
)
"""The bench's JVM: ``scripts/hapi.sh``'s default without ``-XX:TieredStopAtLevel=1`` (the
tests' fast-start setting keeps the JIT from optimising fully, as no server in production would)
and with more heap (H2 keeps the whole database in it). ``HAPI_JAVA_OPTS`` overrides it."""
SIDECAR_WORKERS = 2
SIDECAR_THREADS = 16
"""``fanoni-scheduling serve``'s default threads per worker process."""


def sidecar_identity() -> dict[str, str]:
    """The sidecar's own credentials and guard key, as the test HAPI knows them."""
    return {"UPSTREAM_AUTHORIZATION": SIDECAR_TOKEN, "GUARD_KEY": GUARD_KEY}


@dataclass
class Upstream:
    fhir_base: str
    database: str
    start_seconds: float
    pids: dict[str, int]
    """The process trees whose CPU time the benchmark reads: ``hapi`` (the JVM) and, on
    PostgreSQL, ``postgres`` (the postmaster; its backends are its children)."""


@contextlib.contextmanager
def upstream(database: str, fhir_base: str | None = None) -> Iterator[Upstream]:
    """HAPI on ``database`` (``h2`` or ``postgres``), registered; stopped (with its PostgreSQL)
    on the way out. ``fhir_base`` uses a running server instead (registered here too)."""
    began = time.perf_counter()
    pids: dict[str, int] = {}
    with contextlib.ExitStack() as stack:
        if fhir_base is None:
            extra: list[str] = []
            if database == "postgres":
                from tests.support.postgres import start_postgres

                postgres = stack.enter_context(start_postgres())
                extra = postgres.hapi_args()
                with contextlib.suppress(OSError, ValueError):
                    pids["postgres"] = int((postgres.data_dir / "postmaster.pid").read_text().split()[0])
            os.environ.setdefault("HAPI_JAVA_OPTS", HAPI_JAVA_OPTS)
            hapi = start_hapi(extra_args=[*hapi_args(), *extra])
            stack.callback(hapi.stop)
            fhir_base = hapi.base_url
            if hapi.pid is not None:
                pids["hapi"] = hapi.pid
        result = register(fhir_base, sidecar_identity())
        if result.returncode != 0:
            raise RuntimeError(f"register failed (exit {result.returncode}): {result.stdout}{result.stderr}")
        yield Upstream(fhir_base.rstrip("/"), database, time.perf_counter() - began, pids)


def start_sidecar(
    fhir_base: str,
    log_path: Path,
    *,
    workers: int = SIDECAR_WORKERS,
    log_level: str = "DEBUG",
    env: dict[str, str] | None = None,
) -> SidecarProcess:
    """``python -m plugin serve --workers N`` (gunicorn, gthread, 16 threads), by default with
    the DEBUG log the replay and the breakdowns read, and no hold sweeper (nothing to sweep)."""
    port = free_port()
    return SidecarProcess(
        fhir_base,
        workers=workers,
        log_path=log_path,
        port=port,
        env={
            **sidecar_identity(),
            "HOLD_SWEEP_SECONDS": "0",
            "SLOT_END_SEARCH": "on",  # `register` installed it before any Slot existed
            "LOG_LEVEL": log_level,
            **(env or {}),
        },
    )


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = ""
    with contextlib.suppress(OSError):
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        cpu = match.group(1).strip() if match else ""
    memory_gib = 0.0
    with contextlib.suppress(OSError, AttributeError, ValueError):
        match = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
        memory_gib = int(match.group(1)) / 1024 / 1024 if match else 0.0
    load = ""
    with contextlib.suppress(OSError):
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu or platform.processor(),
        "memory_gib": round(memory_gib, 1),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "java": _first_line(["java", "-version"]),
        "postgres": _first_line([*_postgres_bin("postgres"), "--version"]),
        "hapi_java_opts": os.environ.get("HAPI_JAVA_OPTS", HAPI_JAVA_OPTS),
        "load_average_at_start": load,
    }


def _postgres_bin(name: str) -> list[str]:
    with contextlib.suppress(Exception):
        from tests.support.postgres import postgres_bin_dir

        return [str(postgres_bin_dir() / name)]
    return [name]


def _first_line(command: list[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (result.stdout + result.stderr).strip().splitlines()[0] if (result.stdout + result.stderr) else ""


def _proc_stats() -> dict[int, tuple[int, float]]:
    """Every process's parent and CPU seconds so far (its own, and its waited-for children's)."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[int, tuple[int, float]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            text = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = text[text.rindex(")") + 2 :].split()
        # after the command: state ppid ... utime(12) stime(13) cutime(14) cstime(15), 1-based from state
        ppid = int(fields[1])
        ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
        found[int(name)] = (ppid, ticks / tick)
    return found


class CpuMeter:
    """CPU seconds used by named process trees (a gunicorn master and its workers, the JVM,
    the postmaster and its backends). On a shared machine wall times depend on what else runs;
    CPU time per request does much less, and on 2 cores it is what bounds throughput."""

    def __init__(self, roots: dict[str, int]) -> None:
        self.roots = dict(roots)

    def read(self) -> dict[str, float]:
        stats = _proc_stats()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in stats.items():
            children.setdefault(ppid, []).append(pid)
        totals: dict[str, float] = {}
        for name, root in self.roots.items():
            total, stack = 0.0, [root]
            while stack:
                pid = stack.pop()
                if pid in stats:
                    total += stats[pid][1]
                stack.extend(children.get(pid, []))
            totals[name] = total
        return totals

    @staticmethod
    def used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {name: after[name] - before.get(name, 0.0) for name in after}
