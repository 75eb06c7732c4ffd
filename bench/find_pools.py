"""Compute-only benchmark of pools in ``$find`` (issue 9, SPEC §7.2): no I/O.

On the workload of ``bench/find.py`` (30-minute visits, 10-minute buffers, a 15-minute grid,
200 busy Slots per Schedule over 31 days), six Schedules of the same time zone (New York):
three stand for practitioners and three for rooms. Timed against each other, the runs
interleaved:

* **joint** -- ``schedule=s0&schedule=s15``: one practitioner and one room, both free at once;
* **pooled** -- ``schedule=s0,s5,s10&schedule=s15,s20,s25``: any one of three practitioners with
  any one of three rooms, ``pool-order=listed`` and ``balanced``.

Every request covers the 31 days with ``_count=1000`` and goes from the request parameters to
the rendered Bundle. The target: pooled <= 3x joint (median).

    python bench/find.py --only pools [--runs N]
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Sequence
from typing import Any

from bench.find import COUNT, DAYS, NOW, RANGE_END, RANGE_START, SERVICE_ID, MemoryStore, describe, timed_pair
from operations.find import FindRequest, find_appointments

PRACTITIONERS = ("s0", "s5", "s10")
ROOMS = ("s15", "s20", "s25")
"""Schedules ``n`` with ``n % 5 == 0`` work in New York in the workload of ``bench/find.py``."""
TARGET = 3.0


def pooled_request(pools: Sequence[Sequence[str]], order: str = "listed") -> FindRequest:
    params = [
        ("start", RANGE_START.isoformat()),
        ("end", RANGE_END.isoformat()),
        ("service-type-reference", f"HealthcareService/{SERVICE_ID}"),
        *(("schedule", ",".join(f"Schedule/{i}" for i in pool)) for pool in pools),
        ("_count", str(COUNT)),
        ("pool-order", order),
    ]
    return FindRequest.from_parameters(params, now=NOW, max_range_days=DAYS)


def find(store: MemoryStore, pools: Sequence[Sequence[str]], order: str = "listed") -> dict[str, Any]:
    return find_appointments(store, pooled_request(pools, order))


JOINT = ((PRACTITIONERS[0],), (ROOMS[0],))
POOLED = (PRACTITIONERS, ROOMS)


def members_named(bundle: dict[str, Any]) -> set[str]:
    return {
        s["schedule"]["reference"]
        for e in bundle.get("entry", [])
        for s in e["resource"].get("contained", [])
        if s["status"] == "busy"
    }


def report(store: MemoryStore, runs: int) -> list[str]:
    """The pooled and the joint find timed against each other, and the ratio judged."""
    joint, pooled = find(store, JOINT), find(store, POOLED)
    balanced = find(store, POOLED, "balanced")
    lines = [
        f"pools: {len(PRACTITIONERS)} practitioners x {len(ROOMS)} rooms (New York) x {DAYS} days, "
        f"_count={COUNT}: joint 1+1 {joint['total']} proposals, pooled {pooled['total']} "
        f"(listed names {len(members_named(pooled))} Schedules, balanced {len(members_named(balanced))})"
    ]
    results = {}
    for order in ("listed", "balanced"):
        base, pool = timed_pair(
            lambda: find(store, JOINT), functools.partial(find, store, POOLED, order), runs
        )
        results[order] = (base, pool)
        lines.append(describe("joint find, 1 practitioner + 1 room", base))
        lines.append(describe(f"pooled find, 3 + 3, {order}", pool))
    for order, (base, pool) in results.items():
        wall = statistics.median(pool[0]) / statistics.median(base[0])
        cpu = statistics.median(pool[1]) / statistics.median(base[1])
        verdict = "meets" if wall <= TARGET else "misses"
        lines.append(
            f"target pooled ({order}) <= {TARGET:g}x joint, median: {verdict} ({wall:.2f}x wall, {cpu:.2f}x cpu)"
        )
    return lines
