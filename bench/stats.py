"""Percentiles and spreads: the numbers every table of the benchmark is made of (no I/O)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100): the smallest value with at least ``q`` % of
    the values at or below it. Always one of the values; NaN for none."""
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not within 0..100")
    ordered = sorted(values)
    rank = math.ceil(q / 100 * len(ordered))
    return ordered[max(0, min(len(ordered) - 1, rank - 1))]


def latency(values_ms: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99, mean, min and max of latencies (milliseconds), and how many."""
    if not values_ms:
        return {"n": 0, "p50": math.nan, "p95": math.nan, "p99": math.nan, "mean": math.nan}
    return {
        "n": len(values_ms),
        "p50": percentile(values_ms, 50),
        "p95": percentile(values_ms, 95),
        "p99": percentile(values_ms, 99),
        "mean": statistics.fmean(values_ms),
        "min": min(values_ms),
        "max": max(values_ms),
    }


def spread(values: Sequence[float]) -> dict[str, float]:
    """A figure measured once per repetition: its median, min, max and interquartile range
    (quartiles by nearest rank, so with 3 repetitions q1/q3 are the outer ones)."""
    if not values:
        return {"n": 0, "median": math.nan, "min": math.nan, "max": math.nan, "q1": math.nan, "q3": math.nan}
    return {
        "n": len(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "q1": percentile(values, 25),
        "q3": percentile(values, 75),
    }


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``; NaN when either is missing or the denominator is 0."""
    if math.isnan(numerator) or math.isnan(denominator) or denominator == 0:
        return math.nan
    return numerator / denominator
