"""Compute-only benchmark of ``$find``: FHIR JSON dicts in, searchset Bundle out, no I/O.

Workload: 50 Schedules whose actors are spread over 5 time zones, one HealthcareService
(30-minute visits, 10-minute buffers before and after, 15-minute grid, Mon-Fri 08:00-18:00
plus Saturday 08:00-12:00), 200 busy Slots per Schedule over 31 days (``random.Random(seed)``).
Timed: 50 single-schedule ``Appointment/$find`` requests over 31 days (``_count=1000``), and
one joint request of two Schedules in different zones. Each timed call goes from the request
parameters through ``FindRequest.from_parameters`` and ``find_appointments`` to the Bundle,
reading from an in-memory store that only hands out the stored dicts.

Pools (issue 9): a pooled find of 3 practitioners x 3 rooms against 1 + 1
(``bench/find_pools.py``; ``--only pools`` runs just that).

Booking rules (issue 8): 10 single-schedule finds (two per zone) over the 31 days with the
service's every booking rule on -- a minimum notice, a booking window longer than the range,
a daily and a weekly limit high enough that they empty no day -- against the same 10 without,
on the same Slots, the runs of the two interleaved. The store here costs nothing per read, so
this is the rules' compute cost alone; ``python -m bench`` measures them end to end through
HAPI, where a limit may also cost a second Slot search (``bench/find_rules.py``).

    python bench/find.py [--runs N] [--seed S] [--profile] [--only pools]
    python -m bench.find [--runs N]
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import io
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from operations.find import (
    FindRequest,
    compute,
    decode_slots,
    find_appointments,
    find_availability,
    load_legs,
    slot_search_span,
)
from operations.model import Interval

Resource = dict[str, Any]

SCHEDULING_PARAMETERS = "https://medplum.com/fhir/StructureDefinition/SchedulingParameters"
SERVICE_TYPE_REFERENCE = "https://medplum.com/fhir/service-type-reference"
TIMEZONE = "http://hl7.org/fhir/StructureDefinition/timezone"

ZONES = ["America/New_York", "Europe/London", "Asia/Kolkata", "Australia/Sydney", "UTC"]
SCHEDULES = 50
SLOTS_PER_SCHEDULE = 200
DAYS = 31
COUNT = 1000
# A range that crosses the 2025 spring-forward in New York (Mar 9) and London (Mar 30).
RANGE_START = datetime(2025, 3, 3, tzinfo=UTC)
RANGE_END = RANGE_START + timedelta(days=DAYS)
NOW = RANGE_START - timedelta(days=1)
SERVICE_ID = "consult"


class MemoryStore:
    """A ``SchedulingStore`` over pre-indexed dicts: the cost of a read is a dict lookup (and,
    per Slot, two comparisons with the searched span)."""

    def __init__(self, resources: Sequence[Resource]) -> None:
        self.by_reference: dict[str, Resource] = {}
        self.slots_by_schedule: dict[str, list[tuple[datetime, datetime, Resource]]] = {}
        for resource in resources:
            self.by_reference[f"{resource['resourceType']}/{resource['id']}"] = resource
            if resource["resourceType"] == "Slot":
                schedule_id = resource["schedule"]["reference"].split("/")[-1]
                span = datetime.fromisoformat(resource["start"]), datetime.fromisoformat(resource["end"])
                self.slots_by_schedule.setdefault(schedule_id, []).append((*span, resource))

    def read_schedules(self, ids: Sequence[str]) -> tuple[list[Resource], dict[str, Resource]]:
        schedules = [self.by_reference[f"Schedule/{i}"] for i in ids]
        actors = {a["reference"]: self.by_reference[a["reference"]] for s in schedules for a in s["actor"]}
        return schedules, actors

    def read_service(self, service_id: str) -> Resource | None:
        return self.by_reference.get(f"HealthcareService/{service_id}")

    def search_slots(self, schedule_ids: Sequence[str], start: datetime, end: datetime) -> list[Resource]:
        # As HAPI's search: the Slots overlapping the span, so the searches a booking limit adds
        # (the rest of the local days and weeks) do not hand out every Slot a second time.
        return [
            slot
            for i in schedule_ids
            for slot_start, slot_end, slot in self.slots_by_schedule.get(i, [])
            if slot_start < end and slot_end > start
        ]


def _minutes(n: int) -> Resource:
    return {"value": n, "unit": "min"}


def build_workload(seed: int) -> list[Resource]:
    """The service, 50 actors and Schedules, and 200 busy Slots per Schedule."""
    rng = random.Random(seed)
    hours = [
        {
            "daysOfWeek": ["mon", "tue", "wed", "thu", "fri"],
            "availableStartTime": "08:00:00",
            "availableEndTime": "18:00:00",
        },
        {"daysOfWeek": ["sat"], "availableStartTime": "08:00:00", "availableEndTime": "12:00:00"},
    ]
    resources: list[Resource] = [
        {
            "resourceType": "HealthcareService",
            "id": SERVICE_ID,
            "active": True,
            "name": "Consultation",
            "type": [{"coding": [{"system": "http://example.org/visit", "code": "consult"}]}],
            "availableTime": hours,
            "extension": [
                {
                    "url": SCHEDULING_PARAMETERS,
                    "extension": [
                        {"url": "duration", "valueDuration": _minutes(30)},
                        {"url": "bufferBefore", "valueDuration": _minutes(10)},
                        {"url": "bufferAfter", "valueDuration": _minutes(10)},
                        {"url": "alignmentInterval", "valueDuration": _minutes(15)},
                    ],
                }
            ],
        }
    ]
    statuses = ["busy"] * 6 + ["busy-unavailable"] * 2 + ["busy-tentative"]
    for n in range(SCHEDULES):
        zone_name = ZONES[n % len(ZONES)]
        zone = ZoneInfo(zone_name)
        actor = f"Practitioner/p{n}"
        resources.append(
            {
                "resourceType": "Practitioner",
                "id": f"p{n}",
                "extension": [{"url": TIMEZONE, "valueCode": zone_name}],
            }
        )
        resources.append(
            {
                "resourceType": "Schedule",
                "id": f"s{n}",
                "active": True,
                "actor": [{"reference": actor}],
                "serviceType": [
                    {
                        "coding": [{"system": "http://example.org/visit", "code": "consult"}],
                        "extension": [
                            {
                                "url": SERVICE_TYPE_REFERENCE,
                                "valueReference": {"reference": f"HealthcareService/{SERVICE_ID}"},
                            }
                        ],
                    }
                ],
            }
        )
        first_day = RANGE_START.astimezone(zone).date()
        for k in range(SLOTS_PER_SCHEDULE):
            day = first_day + timedelta(days=rng.randrange(DAYS))
            local = datetime(day.year, day.month, day.day, 8, tzinfo=zone) + timedelta(
                minutes=15 * rng.randrange(40)
            )
            start = local.astimezone(UTC)
            end = start + timedelta(minutes=15 * rng.randint(1, 4))
            resources.append(
                {
                    "resourceType": "Slot",
                    "id": f"s{n}-{k}",
                    "schedule": {"reference": f"Schedule/s{n}"},
                    "status": rng.choice(statuses),
                    "start": start.astimezone(zone).isoformat(),
                    "end": end.astimezone(zone).isoformat(),
                }
            )
    return resources


RULES_SCHEDULES = 10
DAILY_LIMIT = 15
WEEKLY_LIMIT = 80
"""About 5 visits a day per Schedule (the ``busy`` and ``busy-tentative`` Slots): the limits
remove nothing, so both sides compute the same proposals."""


def with_rules(resources: Sequence[Resource]) -> list[Resource]:
    """The workload with every booking rule added to the service (a copy; the same Slots)."""
    ruled = copy.deepcopy([r for r in resources if r["resourceType"] == "HealthcareService"])
    for service in ruled:
        service["extension"][0]["extension"] += [
            {"url": "minimumNotice", "valueDuration": _minutes(12 * 60)},
            {"url": "bookingWindow", "valueDuration": _minutes(60 * 24 * 60)},
            *(
                {
                    "url": "bookingLimit",
                    "valueTiming": {"repeat": {"frequency": limit, "period": 1, "periodUnit": unit}},
                }
                for limit, unit in ((DAILY_LIMIT, "d"), (WEEKLY_LIMIT, "wk"))
            ),
        ]
    return ruled + [r for r in resources if r["resourceType"] != "HealthcareService"]


def rules_finds(store: MemoryStore) -> list[int]:
    return [find(store, [f"s{n}"])["total"] for n in range(RULES_SCHEDULES)]


def timed_pair(
    first: Callable[[], object], second: Callable[[], object], runs: int
) -> tuple[tuple[list[float], list[float]], tuple[list[float], list[float]]]:
    """:func:`timed` for two actions, their runs interleaved (the order alternating), so a
    change in the machine's load falls on both."""
    first(), second()
    samples: tuple[tuple[list[float], list[float]], ...] = (([], []), ([], []))
    for run in range(runs):
        for index in (0, 1) if run % 2 == 0 else (1, 0):
            began, began_cpu = time.perf_counter(), time.process_time()
            (first, second)[index]()
            samples[index][0].append((time.perf_counter() - began) * 1000)
            samples[index][1].append((time.process_time() - began_cpu) * 1000)
    return samples[0], samples[1]


def request(schedule_ids: Sequence[str]) -> FindRequest:
    params = [
        ("start", RANGE_START.isoformat()),
        ("end", RANGE_END.isoformat()),
        ("service-type-reference", f"HealthcareService/{SERVICE_ID}"),
        *(("schedule", f"Schedule/{i}") for i in schedule_ids),
        ("_count", str(COUNT)),
    ]
    return FindRequest.from_parameters(params, now=NOW, max_range_days=DAYS)


def find(store: MemoryStore, schedule_ids: Sequence[str]) -> Resource:
    return find_appointments(store, request(schedule_ids))


def single_finds(store: MemoryStore) -> list[int]:
    return [find(store, [f"s{n}"])["total"] for n in range(SCHEDULES)]


def single_availability(store: MemoryStore) -> list[int]:
    """The same 50 requests without rendering: parsing and free-time computation only."""
    return [len(find_availability(store, request([f"s{n}"])).starts) for n in range(SCHEDULES)]


def engine_inputs(store: MemoryStore) -> list[tuple[Any, ...]]:
    """Per request, what the engine core works on: the loaded legs and the already decoded
    Slots (decoding FHIR JSON is measured separately, in ``single_availability``)."""
    inputs = []
    for n in range(SCHEDULES):
        req = request([f"s{n}"])
        service, legs = load_legs(store, req.schedule_ids, req.service_id)
        window = Interval(req.start, req.end)
        span = slot_search_span(window, legs)
        overlays = decode_slots(store.search_slots(req.schedule_ids, span.start, span.end))
        inputs.append((service, legs, overlays, window, req.now, req.count))
    return inputs


def engine_core(inputs: list[tuple[Any, ...]]) -> list[int]:
    """Free time and the grid from decoded inputs (``compute``): windows, overlays, buffers,
    alignment."""
    return [len(compute(*arguments).starts) for arguments in inputs]


def joint_find(store: MemoryStore) -> int:
    # s0 works in New York, s1 in London: their hours overlap 13:00-18:00 UTC on weekdays
    total: int = find(store, ["s0", "s1"])["total"]
    return total


def timed(action: Callable[[], object], runs: int) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU milliseconds of ``action`` for each of ``runs`` runs (after a warm-up).

    CPU time is printed as well because a shared machine inflates wall-clock time."""
    action()
    wall, cpu = [], []
    for _ in range(runs):
        began, began_cpu = time.perf_counter(), time.process_time()
        action()
        wall.append((time.perf_counter() - began) * 1000)
        cpu.append((time.process_time() - began_cpu) * 1000)
    return wall, cpu


def describe(label: str, samples: tuple[list[float], list[float]], per: int = 1) -> str:
    wall, cpu = samples
    return (
        f"{label:<38} median {statistics.median(wall) / per:8.2f} ms  "
        f"min {min(wall) / per:8.2f}  max {max(wall) / per:8.2f}  "
        f"(cpu median {statistics.median(cpu) / per:8.2f})"
    )


def profile(store: MemoryStore, top: int, action: Callable[[MemoryStore], object] | None = None) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    (action or single_finds)(store)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=7, help="timed runs (default 7)")
    parser.add_argument("--seed", type=int, default=20250303, help="random seed for the Slots")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of the 50 finds")
    parser.add_argument(
        "--only", choices=["all", "pools"], default="all", help="pools: only the pooled find (issue 9)"
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    from bench import find_pools  # here: it imports this module

    store = MemoryStore(build_workload(args.seed))
    if args.only == "pools":
        print("\n".join(find_pools.report(store, args.runs)))
        return 0
    counts = single_finds(store)
    joint = joint_find(store)
    print(
        f"workload: {SCHEDULES} schedules over {len(ZONES)} zones, "
        f"{SLOTS_PER_SCHEDULE} busy Slots each, {DAYS}-day range, _count={COUNT}, "
        f"seed {args.seed}, {args.runs} runs"
    )
    print(
        f"proposals: single finds total {sum(counts)} "
        f"(min {min(counts)}, max {max(counts)} per schedule); joint s0+s1 (New York + London) {joint}"
    )
    singles = timed(lambda: single_finds(store), args.runs)
    joints = timed(lambda: joint_find(store), args.runs)
    unrendered = timed(lambda: single_availability(store), args.runs)
    inputs = engine_inputs(store)
    assert engine_core(inputs) == [min(c, COUNT) for c in counts], (
        "the core must find what the use case finds"
    )
    core = timed(lambda: engine_core(inputs), args.runs)
    print(describe(f"{SCHEDULES} single-schedule finds, total", singles))
    print(describe("per find", singles, per=SCHEDULES))
    print(describe("joint find (2 schedules)", joints))
    print(describe(f"  {SCHEDULES} finds w/o rendering", unrendered))
    print(describe(f"  {SCHEDULES} finds, engine core only", core))
    target = 50.0
    for label, samples in (
        ("engine core (decoded Slots -> starts)", core),
        ("+ decoding the FHIR JSON Slots", unrendered),
        ("+ rendering the Bundles", singles),
    ):
        verdict = "meets" if statistics.median(samples[0]) <= target else "misses"
        print(f"target <= {target:g} ms median, {label}: {verdict}")
    ruled = MemoryStore(with_rules(build_workload(args.seed)))
    plain_counts, ruled_counts = rules_finds(store), rules_finds(ruled)
    assert plain_counts == ruled_counts, "limits this high must remove no proposal"
    plain, with_all = timed_pair(lambda: rules_finds(store), lambda: rules_finds(ruled), args.runs)
    print(
        f"booking rules: {RULES_SCHEDULES} single-schedule finds x {DAYS} days, {sum(plain_counts)} "
        f"proposals either way (minimum notice 12 h, window 60 days, at most {DAILY_LIMIT}/day, "
        f"{WEEKLY_LIMIT}/week)"
    )
    print(describe(f"{RULES_SCHEDULES} finds, no rules", plain))
    print(describe(f"{RULES_SCHEDULES} finds, every rule on", with_all))
    rules_target = 1.10
    wall_ratio = statistics.median(with_all[0]) / statistics.median(plain[0])
    cpu_ratio = statistics.median(with_all[1]) / statistics.median(plain[1])
    verdict = "meets" if wall_ratio <= rules_target else "misses"
    print(
        f"target rules on <= {rules_target:.2f}x rules off, median: {verdict} "
        f"({wall_ratio:.2f}x wall, {cpu_ratio:.2f}x cpu)"
    )
    print("\n".join(find_pools.report(store, args.runs)))
    if args.profile:
        print(profile(store, 25))
        print(profile(ruled, 25, rules_finds))
        print(profile(store, 25, lambda s: find_pools.find(s, find_pools.POOLED)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
