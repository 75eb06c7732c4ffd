"""What a look-up costs HAPI asked the usual way (``Cache-Control: no-cache``: HAPI keeps the
search's results for paging) against as the sidecar asks it (``no-cache, no-store`` with
``_total=accurate``: one page, not kept, counted; ``plugin/transport.py``), side by side.

The look-ups are the sidecar's own: a lock search of 20 ids, the Schedule search with its actor
included, a participant by id, an identifier look-up that finds nothing. Each is sent
``reps`` times one way then the other, in alternating order over ``rounds`` rounds, one at a
time on a kept-alive connection; HAPI's CPU comes from ``/proc`` (its process tree, 10 ms ticks
over the whole batch) and wall time from the client.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

from bench import clinic as bench_clinic
from bench.servers import CpuMeter
from tests.integration.trust import SERVICE_HEADERS, SIDECAR_TOKEN

FHIR_JSON = "application/fhir+json"
WAYS = {
    "paged": ("no-cache", []),
    "one page": ("no-cache, no-store", [("_total", "accurate")]),
}


@dataclass(frozen=True)
class LookupPlan:
    reps: int = 100
    rounds: int = 3


def _headers(cache_control: str) -> dict[str, str]:
    """The sidecar's own identity, as its look-ups carry it."""
    return {
        "Accept": FHIR_JSON,
        "Authorization": SIDECAR_TOKEN,
        **SERVICE_HEADERS,
        "Cache-Control": cache_control,
    }


def _load(fhir_base: str, prefix: str) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """A Practitioner, its Schedule, 20 lock resources and a Patient; the look-ups on them."""
    bench_clinic.load(
        fhir_base,
        [
            {"resourceType": "Practitioner", "id": f"{prefix}-p"},
            {"resourceType": "Patient", "id": f"{prefix}-pat"},
            {
                "resourceType": "Schedule",
                "id": f"{prefix}-s",
                "actor": [{"reference": f"Practitioner/{prefix}-p"}],
            },
            *(
                {"resourceType": "Basic", "id": f"{prefix}-l{n}", "code": {"text": "bench lock"}}
                for n in range(20)
            ),
        ],
    )
    return {
        "lock search, 20 ids": ("Basic", [("_id", ",".join(f"{prefix}-l{n}" for n in range(20)))]),
        "Schedule with its actor": ("Schedule", [("_id", f"{prefix}-s"), ("_include", "Schedule:actor")]),
        "a participant by id": ("Patient", [("_id", f"{prefix}-pat")]),
        "identifier, none found": ("Appointment", [("identifier", f"urn:bench|{prefix}")]),
    }


def run(
    fhir_base: str, hapi_pid: int | None, plan: LookupPlan, progress: Callable[[str], None]
) -> dict[str, Any]:
    """Per look-up and way: HAPI CPU ms and wall ms per call (median over the rounds), and the
    ratio one page / paged."""
    meter = CpuMeter({"hapi": hapi_pid} if hapi_pid else {})
    results: dict[str, Any] = {}
    with requests.Session() as session:
        lookups = _load(fhir_base, f"blk{uuid.uuid4().hex[:8]}")
        for name, (resource_type, query) in lookups.items():
            per_way: dict[str, dict[str, list[float]]] = {way: {"cpu_ms": [], "wall_ms": []} for way in WAYS}
            for round_ in range(plan.rounds):
                order = list(WAYS) if round_ % 2 == 0 else list(reversed(WAYS))
                for way in order:
                    cache_control, extra = WAYS[way]
                    url, params, headers = (
                        f"{fhir_base}/{resource_type}",
                        [*query, ("_count", "1000"), *extra],
                        _headers(cache_control),
                    )
                    for _ in range(10):  # warm this shape
                        session.get(url, params=params, headers=headers, timeout=60).raise_for_status()
                    before, began = meter.read(), time.perf_counter()
                    for _ in range(plan.reps):
                        session.get(url, params=params, headers=headers, timeout=60).raise_for_status()
                    wall = (time.perf_counter() - began) / plan.reps * 1000
                    cpu = CpuMeter.used(before, meter.read()).get("hapi", float("nan")) / plan.reps * 1000
                    per_way[way]["cpu_ms"].append(cpu)
                    per_way[way]["wall_ms"].append(wall)
            row: dict[str, Any] = {
                way: {key: statistics.median(values) for key, values in measured.items()}
                for way, measured in per_way.items()
            }
            paged_cpu = row["paged"]["cpu_ms"]
            row["cpu_ratio"] = row["one page"]["cpu_ms"] / paged_cpu if paged_cpu else None
            results[name] = row
            progress(
                f"  {name}: HAPI CPU {row['paged']['cpu_ms']:.1f} ms paged, {row['one page']['cpu_ms']:.1f} ms one page"
            )
    return results
