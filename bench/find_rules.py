"""``$find`` with every booking rule on against the same ``$find`` without them (issue 8: within
10 %), 10 schedules x 31 days, on the same Schedules and the same busy Slots in HAPI.

Two HealthcareServices differ only in their rules: ``plain`` has none, ``ruled`` has a minimum
notice of one day, a booking window of 60 days (longer than any range asked) and limits of
:data:`DAILY_LIMIT` visits a day and :data:`WEEKLY_LIMIT` a week. The Schedules offer both, so
``service-type-reference`` alone decides whether the rules apply. The limits are high enough
that they do not empty the calendar -- the busy Slots are ``busy``, so each counts as a visit
(about 3 per Schedule and day for 1,000 Slots) -- and both sides compute the same proposals:
what is compared is the cost of checking the rules, not of offering less.

Two ranges: from a local midnight to a local midnight, and from 09:30 to 09:30 local. A booking
limit makes ``$find`` read every Slot of the local days (and ISO weeks) it counts, so where the
range does not cover whole days or weeks it searches the rest afterwards -- a second round trip
to HAPI. The rounds (from the sidecar's DEBUG log) and the upstream calls
(``X-Upstream-Round-Trips``) are reported per side.

Each repetition asks both sides once, in alternating order, so neither always finds HAPI warmed
by the other.
"""

from __future__ import annotations

import random
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import requests

from bench import clinic as bench_clinic
from bench.find_matrix import critical_path_ms
from bench.servers import CpuMeter
from bench.stats import latency, ratio
from bench.upstream_log import LogIndex, plan_shape, replay_plan

DAILY_LIMIT = 10
WEEKLY_LIMIT = 50
RULES: dict[str, Any] = {
    "minimumNotice": 24 * 60,
    "bookingWindow": 60 * 24 * 60,
    "bookingLimit": [(DAILY_LIMIT, "d"), (WEEKLY_LIMIT, "wk")],
}
"""``builders.params_block`` fields (minutes) of the ruled service."""
ALIGNMENTS: tuple[tuple[str, timedelta], ...] = (
    ("local midnight", timedelta(0)),
    ("09:30 local", timedelta(hours=9, minutes=30)),
)
"""Where the range begins (and, ``days`` later, ends), from the first bench day's midnight."""
SIDES = ("off", "on")
SPREAD_DAYS = 31
COUNT = 100
"""``_count``, as in the ``$find`` matrix."""
SEED = 20261208
PROBE_DAYS_AHEAD = 70
"""A day beyond the booking window: the ruled service must offer nothing there."""


@dataclass(frozen=True)
class RulesPlan:
    slots: tuple[int, ...]
    """Busy Slot levels: each on its own Schedules, spread over them and over 31 days."""
    reps: int
    warmup: int
    schedules: int = 10
    days: int = 31


@dataclass
class Call:
    client_ms: float
    server_ms: float
    upstream_ms: float
    """The sidecar's upstream critical path as it timed it: per round, the longest chain."""
    later_rounds_ms: float
    """The part of it after the first round: what a booking limit's extra Slot searches cost."""
    shape: str
    upstream_calls: int
    """``X-Upstream-Round-Trips``: the HTTP calls the sidecar made upstream for the request."""
    proposals: int
    cpu_ms: dict[str, float]
    later_reads: list[str]
    """The URLs of the reads after the first round (the rest of the days and weeks counted)."""


def run(
    fhir_base: str,
    sidecar: str,
    log: LogIndex,
    plan: RulesPlan,
    cpu: CpuMeter,
    progress: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    rng = random.Random(SEED)
    clinic = bench_clinic.BenchClinic(fhir_base, "rules")
    services = {
        "off": clinic.service("plain", duration=30, grid=15),
        "on": clinic.service("ruled", duration=30, grid=15, rules=RULES),
    }
    start = bench_clinic.first_day()
    cells: list[dict[str, Any]] = []
    with requests.Session() as session:
        for level in plan.slots:
            began = time.perf_counter()
            ids = clinic.schedules(f"s{level}", plan.schedules, list(services.values()))
            bench_clinic.load(fhir_base, bench_clinic.busy_slots(ids, start, SPREAD_DAYS, level, rng))
            progress(
                f"  $find rules: {level} busy Slots on {len(ids)} Schedules loaded in "
                f"{time.perf_counter() - began:.1f} s"
            )
            check_rules_apply(session, sidecar, services, ids, start)
            for alignment, offset in ALIGNMENTS:
                begins = start + offset
                params = {
                    side: bench_clinic.find_params(services[side], ids, begins, plan.days, COUNT)
                    for side in SIDES
                }
                label = f"rules-{level}-{offset.seconds // 60}"
                calls = _pairs(session, sidecar, log, params, plan, cpu, label)
                cell = summarize(level, plan.schedules, plan.days, alignment, begins.isoformat(), calls)
                cells.append(cell)
                progress(
                    f"  $find {plan.days} d x {plan.schedules} sched x {level:>5} Slots, {alignment}: "
                    f"rules off p50 {cell['off']['latency']['p50']:6.1f} ms ({cell['off']['shape']}), "
                    f"on p50 {cell['on']['latency']['p50']:6.1f} ms ({cell['on']['shape']}), "
                    f"ratio {cell['ratio_p50']:.2f}"
                )
    return cells


def check_rules_apply(
    session: requests.Session,
    sidecar: str,
    services: dict[str, str],
    ids: Sequence[str],
    start: datetime,
) -> None:
    """One day beyond the booking window: the ruled service offers nothing, the plain one does --
    or the comparison would time two services without rules."""
    day = start + timedelta(days=PROBE_DAYS_AHEAD)
    found = {
        side: len(bench_clinic.matches(bench_clinic.find(session, sidecar, p)))
        for side, p in (
            (side, bench_clinic.find_params(services[side], ids[:1], day, 1, COUNT)) for side in SIDES
        )
    }
    if found["on"] != 0 or found["off"] == 0:
        raise RuntimeError(
            f"the booking rules do not apply as configured: {found['on']} proposals with rules, "
            f"{found['off']} without, {PROBE_DAYS_AHEAD} days ahead"
        )


def _pairs(
    session: requests.Session,
    sidecar: str,
    log: LogIndex,
    params: dict[str, list[tuple[str, str]]],
    plan: RulesPlan,
    cpu: CpuMeter,
    label: str,
) -> dict[str, list[Call]]:
    calls: dict[str, list[Call]] = {side: [] for side in SIDES}
    for rep in range(plan.warmup + plan.reps):
        order = SIDES if rep % 2 == 0 else tuple(reversed(SIDES))
        for side in order:
            request_id = f"bench-{label}-{side}-{rep}-{uuid.uuid4().hex[:6]}"
            call = _call(session, sidecar, log, params[side], cpu, request_id)
            if rep >= plan.warmup:
                calls[side].append(call)
    return calls


def _call(
    session: requests.Session,
    sidecar: str,
    log: LogIndex,
    params: list[tuple[str, str]],
    cpu: CpuMeter,
    request_id: str,
) -> Call:
    before = cpu.read()
    began = time.perf_counter()
    response = bench_clinic.find(session, sidecar, params, request_id)
    client_s = time.perf_counter() - began
    used = CpuMeter.used(before, cpu.read())
    proposals = len(bench_clinic.matches(response))
    entry = log.wait_for(request_id)
    log.forget(request_id)
    assert entry.access is not None
    rounds = replay_plan(entry.calls)
    return Call(
        client_ms=client_s * 1000,
        server_ms=entry.access.duration_ms,
        upstream_ms=critical_path_ms(rounds),
        later_rounds_ms=critical_path_ms(rounds[1:]),
        shape=plan_shape(rounds),
        upstream_calls=int(response.headers.get("X-Upstream-Round-Trips", "-1")),
        proposals=proposals,
        cpu_ms={k: v * 1000 for k, v in used.items()},
        later_reads=[c.url for r in rounds[1:] for ch in r.chains for c in ch.calls],
    )


def side_summary(calls: Sequence[Call]) -> dict[str, Any]:
    shapes = Counter(c.shape for c in calls)
    names = sorted({name for c in calls for name in c.cpu_ms})
    return {
        "latency": latency([c.client_ms for c in calls]),
        "server": latency([c.server_ms for c in calls]),
        "upstream_in_sidecar": latency([c.upstream_ms for c in calls]),
        "later_rounds": latency([c.later_rounds_ms for c in calls]),
        "proposals": statistics.median(c.proposals for c in calls) if calls else 0,
        "upstream_calls": statistics.median(c.upstream_calls for c in calls) if calls else 0,
        "shape": shapes.most_common(1)[0][0] if calls else "",
        "shapes": dict(shapes),
        "cpu_ms_mean": {n: statistics.fmean(c.cpu_ms.get(n, 0.0) for c in calls) for n in names},
        "later_reads": calls[0].later_reads if calls else [],
    }


def summarize(
    slots: int, schedules: int, days: int, alignment: str, start: str, calls: dict[str, list[Call]]
) -> dict[str, Any]:
    off, on = side_summary(calls["off"]), side_summary(calls["on"])
    return {
        "slots": slots,
        "schedules": schedules,
        "days": days,
        "alignment": alignment,
        "start": start,
        "reps": len(calls["on"]),
        "daily_limit": DAILY_LIMIT,
        "weekly_limit": WEEKLY_LIMIT,
        "off": off,
        "on": on,
        "ratio_p50": ratio(on["latency"]["p50"], off["latency"]["p50"]),
        "ratio_p95": ratio(on["latency"]["p95"], off["latency"]["p95"]),
    }
