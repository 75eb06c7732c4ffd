"""The booking rules' part of the report (``bench/find_rules.py``): the table and the target of
issue 8, ``$find`` with every rule on within 10 % of its time without them (no I/O)."""

from __future__ import annotations

import math
from typing import Any

from bench.report import num, table, upstream_cpu

RULES_RATIO_TARGET = 1.10


def rules_table(cells: list[dict[str, Any]]) -> list[str]:
    rows = []
    for c in cells:
        for side, label in (("off", "none"), ("on", "all")):
            s = c[side]
            lat = s["latency"]
            rows.append(
                [
                    str(c["days"]),
                    str(c["schedules"]),
                    str(c["slots"]),
                    c["alignment"],
                    label,
                    num(s["proposals"], 0),
                    num(lat["p50"]),
                    num(lat["p95"]),
                    f"{num(lat.get('min'))}-{num(lat.get('max'))}",
                    num(s["server"]["p50"]),
                    num(s["upstream_in_sidecar"]["p50"]),
                    num(s.get("later_rounds", {}).get("p50")),
                    num(s["server"]["p50"] - s["upstream_in_sidecar"]["p50"]),
                    num(s["cpu_ms_mean"].get("sidecar")),
                    num(upstream_cpu(s["cpu_ms_mean"])),
                    f"`{s['shape']}`",
                    num(s["upstream_calls"], 0),
                    num(c["ratio_p50"], 2) if side == "on" else "",
                    num(c["ratio_p95"], 2) if side == "on" else "",
                ]
            )
    return table(
        [
            "days",
            "schedules",
            "Slots",
            "range from",
            "rules",
            "proposals",
            "p50 ms",
            "p95 ms",
            "min-max",
            "in the sidecar p50",
            "its reads p50",
            "of which after the first round",
            "in the sidecar minus its reads",
            "sidecar CPU ms",
            "upstream CPU ms",
            "rounds",
            "upstream calls",
            "ratio p50",
            "ratio p95",
        ],
        rows,
    )


def rules_targets(cells: list[dict[str, Any]]) -> list[tuple[str, bool | None, str]]:
    """The target, judged on every cell's p50 (the p95 of a few repetitions is one sample)."""
    if not cells:
        return []
    measured = [c for c in cells if not math.isnan(c["ratio_p50"])]
    if not measured:
        return [(_target_text(), None, "no ratio measured")]
    met = [c for c in measured if c["ratio_p50"] <= RULES_RATIO_TARGET]
    worst = max(measured, key=lambda c: c["ratio_p50"])
    return [
        (
            _target_text(),
            len(met) == len(cells),
            f"{len(met)} of {len(cells)} cells; worst {worst['ratio_p50']:.2f} "
            f"({worst['slots']} Slots, range from {worst['alignment']}: "
            f"{worst['on']['latency']['p50']:.1f} vs {worst['off']['latency']['p50']:.1f} ms, "
            f"rounds `{worst['on']['shape']}` vs `{worst['off']['shape']}`)",
        )
    ]


def _target_text() -> str:
    return (
        f"$find with every booking rule on: p50 ≤ {RULES_RATIO_TARGET:.2f}x the same $find without "
        "(10 schedules x 31 days)"
    )


def rules_section(cells: list[dict[str, Any]]) -> list[str]:
    if not cells:
        return []
    return [
        "### `$find` with every booking rule on vs none (same Schedules and Slots, H2)",
        "",
        "Rules on: minimum notice 1 day, booking window 60 days, at most "
        f"{cells[0].get('daily_limit', '-')} visits a day and {cells[0].get('weekly_limit', '-')} a week "
        "per Schedule. Rounds: concurrent reads per round trip, `+` between rounds; the reads' time is "
        "the sidecar's upstream critical path (per round, the longest read), from its DEBUG log.",
        "",
        *rules_table(cells),
        "",
    ]
