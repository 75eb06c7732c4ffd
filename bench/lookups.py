"""What a search costs HAPI asked the usual way (``Cache-Control: no-cache``: HAPI keeps the
search's results for paging) against as the sidecar asks it (``no-cache, no-store,
max-results=1000``: one page, not kept; ``plugin/transport.py``), side by side.

The searches are the sidecar's own: a lock search of 20 ids, the Schedule search with its actor
included, a participant by id, an identifier look-up that finds nothing, and the Slots of a
booked day (300; sent a tenth as often, each costs HAPI tens of times more). Each is sent
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
from plugin.transport import ONE_PAGE
from tests.integration.trust import SERVICE_HEADERS, SIDECAR_TOKEN

FHIR_JSON = "application/fhir+json"
WAYS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "paged": ("no-cache", []),
    "one page": (ONE_PAGE, []),
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


DAY_SLOTS = 300
SLOTS_REPS_DIVISOR = 10


def _load(fhir_base: str, prefix: str) -> dict[str, tuple[str, list[tuple[str, str]], int]]:
    """A Practitioner, its Schedule with a day of Slots, 20 lock resources and a Patient; the
    searches on them, each with how much less often it is sent."""
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
            *(
                {
                    "resourceType": "Slot",
                    "schedule": {"reference": f"Schedule/{prefix}-s"},
                    "status": "busy-unavailable",
                    "start": f"2031-03-03T{8 + n // 30:02d}:{n % 30 * 2:02d}:00Z",
                    "end": f"2031-03-03T{8 + n // 30:02d}:{n % 30 * 2 + 1:02d}:00Z",
                }
                for n in range(DAY_SLOTS)
            ),
        ],
    )
    return {
        "lock search, 20 ids": ("Basic", [("_id", ",".join(f"{prefix}-l{n}" for n in range(20)))], 1),
        "Schedule with its actor": ("Schedule", [("_id", f"{prefix}-s"), ("_include", "Schedule:actor")], 1),
        "a participant by id": ("Patient", [("_id", f"{prefix}-pat")], 1),
        "identifier, none found": ("Appointment", [("identifier", f"urn:bench|{prefix}")], 1),
        f"Slots of a day ({DAY_SLOTS})": (
            "Slot",
            [("schedule", f"Schedule/{prefix}-s"), ("start", "lt2031-03-04"), ("start", "ge2031-03-03")],
            SLOTS_REPS_DIVISOR,
        ),
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
        for name, (resource_type, query, divisor) in lookups.items():
            reps = max(1, plan.reps // divisor)
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
                    for _ in range(max(2, 10 // divisor)):  # warm this shape
                        session.get(url, params=params, headers=headers, timeout=60).raise_for_status()
                    before, began = meter.read(), time.perf_counter()
                    for _ in range(reps):
                        session.get(url, params=params, headers=headers, timeout=60).raise_for_status()
                    wall = (time.perf_counter() - began) / reps * 1000
                    cpu = CpuMeter.used(before, meter.read()).get("hapi", float("nan")) / reps * 1000
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
