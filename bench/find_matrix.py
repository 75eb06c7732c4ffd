"""``Appointment/$find`` through the sidecar against the same upstream reads replayed alone.

For every cell (days x schedules x existing busy Slots) the same ``$find`` is asked
``warmup + reps`` times. After each call its upstream reads are taken from the sidecar's DEBUG
log by request id and sent again straight to HAPI (``bench.replay``); in every other repetition
the replay goes first (with the previous call's reads, the same URLs), so neither side always
finds HAPI freshly warmed by the other. The ratio sidecar p50 / replay p50 is the sidecar's
cost over the reads it cannot avoid.

The Slots: for each Slot count a separate pool of Schedules (as many as the largest cell asks
for) holds that many busy Slots, dealt over its Schedules and spread over 31 days from the
first day, so a cell of fewer Schedules or days sees its share of them.
"""

from __future__ import annotations

import random
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import requests

from bench import clinic as bench_clinic
from bench.replay import Replayer
from bench.servers import CpuMeter
from bench.stats import latency, ratio
from bench.upstream_log import LogIndex, Round, plan_shape, replay_plan

SPREAD_DAYS = 31
COUNT = 100
"""``_count`` of every ``$find``: a page of proposals a booking screen might show."""
SEED = 20261207


@dataclass(frozen=True)
class FindPlan:
    days: tuple[int, ...]
    schedules: tuple[int, ...]
    slots: tuple[int, ...]
    reps: int
    warmup: int


@dataclass
class Sample:
    client_ms: float
    server_ms: float
    upstream_ms: float
    """The sidecar's upstream critical path as it measured it: per round, the longest chain."""
    replay_ms: float
    shape: str
    proposals: int
    cpu_ms: dict[str, float]
    """CPU used during the sidecar's call, per process tree (``sidecar``, ``hapi``, ...)."""
    replay_cpu_ms: dict[str, float]
    """CPU used during the replay."""


def critical_path_ms(plan: Sequence[Round]) -> float:
    return sum(max(sum(c.duration_ms for c in chain.calls) for chain in r.chains) for r in plan)


def run(
    fhir_base: str,
    sidecar: str,
    log: LogIndex,
    plan: FindPlan,
    cpu: CpuMeter,
    progress: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    rng = random.Random(SEED)
    clinic = bench_clinic.BenchClinic(fhir_base, "find")
    service = clinic.service("visit", duration=30, grid=15)
    start = bench_clinic.first_day()
    pools: dict[int, list[str]] = {}
    for level in plan.slots:
        began = time.perf_counter()
        pools[level] = clinic.schedules(f"s{level}", max(plan.schedules), [service])
        bench_clinic.load(fhir_base, bench_clinic.busy_slots(pools[level], start, SPREAD_DAYS, level, rng))
        progress(
            f"  $find: {level} busy Slots on {len(pools[level])} Schedules loaded in "
            f"{time.perf_counter() - began:.1f} s"
        )
    cells: list[dict[str, Any]] = []
    with requests.Session() as session, Replayer() as replayer:
        for level in plan.slots:
            for schedules in plan.schedules:
                for days in plan.days:
                    params = bench_clinic.find_params(service, pools[level][:schedules], start, days, COUNT)
                    samples = _cell(
                        session, replayer, sidecar, log, params, plan, cpu, f"{level}-{schedules}-{days}"
                    )
                    cell = summarize(days, schedules, level, samples)
                    cells.append(cell)
                    progress(
                        f"  $find {days:>2} d x {schedules:>2} sched x {level:>5} Slots: "
                        f"sidecar p50 {cell['sidecar']['p50']:7.1f} ms, replay p50 {cell['replay']['p50']:7.1f} ms, "
                        f"ratio {cell['ratio_p50']:.2f} ({cell['shape']})"
                    )
    return cells


def _cell(
    session: requests.Session,
    replayer: Replayer,
    sidecar: str,
    log: LogIndex,
    params: list[tuple[str, str]],
    plan: FindPlan,
    cpu: CpuMeter,
    label: str,
) -> list[Sample]:
    samples: list[Sample] = []
    last: list[Round] | None = None
    for rep in range(plan.warmup + plan.reps):
        request_id = f"bench-find-{label}-{rep}-{uuid.uuid4().hex[:6]}"
        replay_first = last is not None and rep % 2 == 1
        if replay_first:
            assert last is not None
            replay_s, replay_cpu = _replay(replayer, cpu, last, request_id)
        before = cpu.read()
        began = time.perf_counter()
        response = bench_clinic.find(session, sidecar, params, request_id)
        client_s = time.perf_counter() - began
        call_cpu = CpuMeter.used(before, cpu.read())
        proposals = len(bench_clinic.matches(response))
        entry = log.wait_for(request_id)
        log.forget(request_id)
        reads = replay_plan(entry.calls)
        if not replay_first:
            replay_s, replay_cpu = _replay(replayer, cpu, reads, request_id)
        last = reads
        assert entry.access is not None
        if rep >= plan.warmup:
            samples.append(
                Sample(
                    client_ms=client_s * 1000,
                    server_ms=entry.access.duration_ms,
                    upstream_ms=critical_path_ms(reads),
                    replay_ms=replay_s * 1000,
                    shape=plan_shape(reads),
                    proposals=proposals,
                    cpu_ms={k: v * 1000 for k, v in call_cpu.items()},
                    replay_cpu_ms={k: v * 1000 for k, v in replay_cpu.items()},
                )
            )
    return samples


def _replay(
    replayer: Replayer, cpu: CpuMeter, reads: list[Round], request_id: str
) -> tuple[float, dict[str, float]]:
    before = cpu.read()
    seconds = replayer.replay(reads, request_id + "-replay")
    return seconds, CpuMeter.used(before, cpu.read())


def _mean_cpu(samples: list[dict[str, float]]) -> dict[str, float]:
    names = sorted({name for sample in samples for name in sample})
    return {name: statistics.fmean(sample.get(name, 0.0) for sample in samples) for name in names}


def summarize(days: int, schedules: int, slots: int, samples: list[Sample]) -> dict[str, Any]:
    sidecar = latency([s.client_ms for s in samples])
    replay = latency([s.replay_ms for s in samples])
    shapes = Counter(s.shape for s in samples)
    return {
        "days": days,
        "schedules": schedules,
        "slots": slots,
        "reps": len(samples),
        "proposals": statistics.median(s.proposals for s in samples),
        "sidecar": sidecar,
        "replay": replay,
        "server": latency([s.server_ms for s in samples]),
        "upstream_in_sidecar": latency([s.upstream_ms for s in samples]),
        "ratio_p50": ratio(sidecar["p50"], replay["p50"]),
        "ratio_p95": ratio(sidecar["p95"], replay["p95"]),
        "cpu_ms_mean": _mean_cpu([s.cpu_ms for s in samples]),
        "replay_cpu_ms_mean": _mean_cpu([s.replay_cpu_ms for s in samples]),
        "shape": shapes.most_common(1)[0][0],
        "shapes": dict(shapes),
    }
