"""The benchmark's arithmetic (bench/stats.py, bench/report.py): no servers."""

from __future__ import annotations

import math

import pytest

from bench.report import targets
from bench.stats import latency, percentile, ratio, spread


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50
    assert percentile(values, 95) == 95
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile(values, 0) == 1


def test_percentile_of_few_values_is_one_of_them() -> None:
    assert percentile([30.0, 10.0, 20.0], 50) == 20
    assert percentile([30.0, 10.0, 20.0], 95) == 30
    assert percentile([7.0], 95) == 7
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_latency_summary() -> None:
    summary = latency([10.0, 20.0, 30.0, 40.0])
    assert summary["n"] == 4
    assert (summary["p50"], summary["p95"], summary["min"], summary["max"]) == (20, 40, 10, 40)
    assert summary["mean"] == 25
    assert latency([])["n"] == 0


def test_spread_across_repetitions() -> None:
    assert spread([3.0, 1.0, 2.0]) == {"n": 3, "median": 2.0, "min": 1.0, "max": 3.0, "q1": 1.0, "q3": 3.0}
    assert math.isnan(spread([])["median"])


def test_ratio_guards() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert math.isnan(ratio(1.0, 0.0))
    assert math.isnan(ratio(math.nan, 1.0))


def _mode(key: str, sidecar_rate: float, raw_rate: float, p95: float) -> dict[str, object]:
    side = {"throughput": {"median": sidecar_rate}, "latency": {"p95": p95}}
    return {
        "mode": key,
        "sidecar": side,
        "raw": {"throughput": {"median": raw_rate}},
        "ratio_throughput": sidecar_rate / raw_rate,
    }


def test_targets_are_judged_from_the_numbers() -> None:
    cell = {"days": 1, "schedules": 1, "slots": 0}
    results = {
        "find": [{**cell, "ratio_p50": 1.1}, {**cell, "ratio_p50": 1.3}],
        "book": {
            "h2": [
                _mode("seq", 40, 45, 30),
                _mode("dist16", 90, 100, 200),
                _mode("one16", 80, 100, 380),
            ]
        },
    }
    verdicts = {text: met for text, met, _ in targets(results)}
    assert verdicts["$find: sidecar p50 ≤ 1.25x the same reads alone"] is False
    assert verdicts["$book (h2) one at a time: ≥ 0.8x raw throughput"] is True
    assert verdicts["$book (h2) 16 clients on 1 schedule: ≥ 0.8x the 16-schedule throughput"] is True
    assert verdicts["$book (h2) 16 clients on 1 schedule: p95 ≤ 2.0x the 16-schedule p95"] is True
