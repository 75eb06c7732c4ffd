"""What each upstream call of a ``$book`` costs HAPI: the floor under the ``$book`` / raw ratio.

The sidecar runs in-process (``create_app``) and books, one at a time, the times its
``$find`` offers on a fresh Schedule; its reads of one round trip are sent one after another
(a read pool of one thread), and HAPI's CPU (the JVM's ``/proc`` times) is read before and
after every call, so each call's cost is its own. The first third of the calls of each kind
warm HAPI up and are left out. Calls are grouped by what they are for:

* ``permission``: the Schedule with its actors and the HealthcareService, read with the
  caller's credentials (SPEC §5.1) -- raw HAPI does not send them;
* ``locks``: the lock search -- raw sends it too;
* ``slots``: the deciding Slot search -- raw does not send it;
* ``transaction``: locks, Slot, Appointment, Provenance -- raw sends the same.

The ratio the sidecar can reach when HAPI's CPU bounds throughput is then at most
(locks + transaction) / (all of them), however little the sidecar itself costs; one booking at
a time, where latency bounds it, at most (locks + transaction) / (the slower of locks and
permission, read together, + slots + transaction), each a median wall time. The JVM's
times tick every 10 ms; over 200 calls a kind the mean is what counts, not one call.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests

from bench import clinic as bench_clinic
from bench.servers import CpuMeter, sidecar_identity
from plugin.app import create_app
from plugin.config import Settings
from plugin.context import EXTENSION_KEY
from plugin.parallel import Parallel
from plugin.transport import new_session
from plugin.upstream import UpstreamClient

BOOKINGS = 300
KINDS = {"Schedule": "permission", "HealthcareService": "permission", "Basic": "locks", "Slot": "slots"}
RAW_SENDS = ("locks", "transaction")


def _kind(method: str, url: str) -> str:
    if method == "POST":
        return "transaction"
    path = urlsplit(url).path.rstrip("/").split("/")
    resource_type = next((part for part in path if part in KINDS), "other")
    return KINDS.get(resource_type, "other")


def run(
    fhir_base: str, hapi_pid: int | None, progress: Callable[[str], None], bookings: int = BOOKINGS
) -> dict[str, Any]:
    """HAPI CPU ms per call (mean) and wall ms (median) by kind, per booking, and the bound."""
    if hapi_pid is None:
        return {}
    meter = CpuMeter({"hapi": hapi_pid})
    samples: dict[str, list[tuple[float, float]]] = {}

    def session() -> requests.Session:
        made = new_session()
        send = made.request

        def request(method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
            before, began = meter.read(), time.perf_counter()
            response = send(method, url, *args, **kwargs)
            cpu = CpuMeter.used(before, meter.read())["hapi"]
            samples.setdefault(_kind(method, url), []).append(
                (cpu * 1000, (time.perf_counter() - began) * 1000)
            )
            return response

        made.request = request  # type: ignore[method-assign,assignment]
        return made

    settings = Settings.from_env(
        {
            "FHIR_BASE_URL": fhir_base,
            **sidecar_identity(),
            "HOLD_SWEEP_SECONDS": "0",
            "SLOT_END_SEARCH": "on",
            "LOG_LEVEL": "WARNING",
        }
    )
    app = create_app(settings, upstream=UpstreamClient(settings, session_factory=session))
    app.extensions[EXTENSION_KEY] = dataclasses.replace(app.extensions[EXTENSION_KEY], parallel=Parallel(1))
    client = app.test_client()
    clinic = bench_clinic.BenchClinic(fhir_base, "costs")
    service = clinic.service("visit", duration=10, grid=10)
    schedules = clinic.schedules("room", 1, [service])
    day = bench_clinic.first_day()
    params = bench_clinic.find_params(service, schedules, day, 7, 1000)
    found = client.get(f"{settings.base_path}/Appointment/$find", query_string=params)
    proposals = [e["resource"] for e in found.get_json()["entry"] if e["search"]["mode"] == "match"]
    samples.clear()
    booked = 0
    for proposal in proposals[:bookings]:
        answer = client.post(
            f"{settings.base_path}/Appointment/$book",
            json={"resourceType": "Parameters", "parameter": [{"name": "appointment", "resource": proposal}]},
            headers={"Content-Type": "application/fhir+json"},
        )
        if answer.status_code != 201:
            raise RuntimeError(f"$book answered {answer.status_code}: {answer.get_data(as_text=True)[:300]}")
        booked += 1
    kinds: dict[str, Any] = {}
    for kind, measured in sorted(samples.items()):
        kept = measured[len(measured) // 3 :]
        kinds[kind] = {
            "calls_per_booking": len(measured) / booked,
            "cpu_ms": statistics.mean(cpu for cpu, _ in kept),
            "wall_ms": statistics.median(wall for _, wall in kept),
        }
    per_booking = {kind: row["cpu_ms"] * row["calls_per_booking"] for kind, row in kinds.items()}
    total = sum(per_booking.values())
    raw = sum(per_booking.get(kind, 0.0) for kind in RAW_SENDS)
    wall = {kind: row["wall_ms"] for kind, row in kinds.items()}
    raw_wall = wall.get("locks", 0.0) + wall.get("transaction", 0.0)
    rounds_wall = (
        max(wall.get("locks", 0.0), wall.get("permission", 0.0))
        + wall.get("slots", 0.0)
        + wall.get("transaction", 0.0)
    )
    result = {
        "bookings": booked,
        "raw_wall_ms": raw_wall,
        "rounds_wall_ms": rounds_wall,
        "latency_bound": raw_wall / rounds_wall if rounds_wall else None,
        "kinds": kinds,
        "hapi_cpu_ms_per_booking": total,
        "raw_share_cpu_ms": raw,
        "bound": raw / total if total else None,
    }
    progress(
        f"  HAPI CPU per booking {total:.1f} ms, of which raw HAPI sends {raw:.1f} ms: "
        f"$book/raw is at most {result['bound']:.2f} while HAPI's CPU bounds throughput"
    )
    return result
