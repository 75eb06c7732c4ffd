"""The run's results as Markdown tables, and the targets checked (no I/O)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

FIND_RATIO_TARGET = 1.25
BOOK_RATIO_TARGET = 0.8
ONE_SCHEDULE_THROUGHPUT_TARGET = 0.8
ONE_SCHEDULE_P95_TARGET = 2.0
MASS_P99_TARGET_MS = 2000.0


def num(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def find_table(cells: list[dict[str, Any]]) -> list[str]:
    rows = []
    for c in cells:
        s, r = c["sidecar"], c["replay"]
        rows.append(
            [
                str(c["days"]),
                str(c["schedules"]),
                str(c["slots"]),
                num(c["proposals"], 0),
                num(s["p50"]),
                num(s["p95"]),
                f"{num(s.get('min'))}-{num(s.get('max'))}",
                num(c["server"]["p50"]),
                num(c["upstream_in_sidecar"]["p50"]),
                num(r["p50"]),
                num(r["p95"]),
                num(c["ratio_p50"], 2),
                num(c["ratio_p95"], 2),
                num(c.get("cpu_ms_mean", {}).get("sidecar")),
                f"{num(upstream_cpu(c.get('cpu_ms_mean', {})))} / {num(upstream_cpu(c.get('replay_cpu_ms_mean', {})))}",
                f"`{c['shape']}`",
            ]
        )
    return table(
        [
            "days",
            "schedules",
            "Slots",
            "proposals",
            "sidecar p50 ms",
            "p95",
            "min-max",
            "in the sidecar p50",
            "its reads p50",
            "reads alone p50 ms",
            "p95",
            "ratio p50",
            "ratio p95",
            "sidecar CPU ms",
            "upstream CPU ms (call / alone)",
            "reads",
        ],
        rows,
    )


def upstream_cpu(cpu: dict[str, float]) -> float:
    """CPU of everything but the sidecar: HAPI's JVM, and PostgreSQL when it runs."""
    values = [v for name, v in cpu.items() if name != "sidecar"]
    return sum(values) if values else math.nan


def book_cpu(modes: list[dict[str, Any]]) -> list[str]:
    rows = []
    for m in modes:
        s, r = m["sidecar"].get("cpu_ms_per_booking", {}), m["raw"].get("cpu_ms_per_booking", {})
        via_sidecar = s.get("sidecar", math.nan) + upstream_cpu(s)
        raw = upstream_cpu(r)
        rows.append(
            [
                m["title"],
                num(s.get("sidecar")),
                num(upstream_cpu(s)),
                num(raw),
                num(via_sidecar),
                num(raw / via_sidecar if via_sidecar else math.nan, 2),
            ]
        )
    return table(
        [
            "mode",
            "sidecar CPU ms/booking",
            "upstream CPU ms/booking (via sidecar)",
            "upstream CPU ms/raw booking",
            "total via sidecar",
            "raw / total (CPU-bound throughput ratio)",
        ],
        rows,
    )


def book_table(modes: list[dict[str, Any]]) -> list[str]:
    rows = []
    for m in modes:
        s, r = m["sidecar"], m["raw"]
        rows.append(
            [
                m["title"],
                f"{num(s['throughput']['median'])} ({num(s['throughput']['min'])}-{num(s['throughput']['max'])})",
                num(s["latency"]["p50"]),
                num(s["latency"]["p95"]),
                f"{num(r['throughput']['median'])} ({num(r['throughput']['min'])}-{num(r['throughput']['max'])})",
                num(r["latency"]["p50"]),
                num(r["latency"]["p95"]),
                num(m["ratio_throughput"], 2),
                f"{num(s['retries_mean'], 2)} / {s['retries_max']}",
                f"{num(r['retries_mean'], 2)} / {r['retries_max']}",
                f"{num(s['upstream_calls_mean'])} / {num(r['upstream_calls_mean'])}",
                _failures(s, r),
            ]
        )
    return table(
        [
            "mode",
            "sidecar bookings/s (min-max)",
            "p50 ms",
            "p95 ms",
            "raw tx/s (min-max)",
            "p50 ms",
            "p95 ms",
            "ratio",
            "retries/booking sidecar (mean / max)",
            "raw",
            "upstream calls/booking (sidecar / raw)",
            "not 201",
        ],
        rows,
    )


def _failures(s: dict[str, Any], r: dict[str, Any]) -> str:
    parts = [f"sidecar {k}x{v}" for k, v in s["failures"].items()] + [
        f"raw {k}x{v}" for k, v in r["failures"].items()
    ]
    return ", ".join(parts) or "none"


def book_breakdown(modes: list[dict[str, Any]]) -> list[str]:
    rows = []
    for m in modes:
        s = m["sidecar"]
        own = s["server_ms_p50"] - s["upstream_critical_ms_p50"]
        rows.append(
            [
                m["title"],
                num(s["server_ms_p50"]),
                num(s["upstream_critical_ms_p50"]),
                num(own),
                ", ".join(f"`{k}`x{v}" for k, v in s["shapes"].items()),
            ]
        )
    return table(
        ["mode", "in the sidecar p50 ms", "upstream critical path p50 ms", "difference", "upstream rounds"],
        rows,
    )


def costs_table(costs: dict[str, Any]) -> list[str]:
    """``bench/call_costs.py``: HAPI CPU per call of a sequential ``$book``, by kind."""
    rows = [
        [
            kind,
            "yes" if kind in ("locks", "transaction") else "no",
            num(row["calls_per_booking"], 2),
            num(row["cpu_ms"]),
            num(row["cpu_ms"] * row["calls_per_booking"]),
            num(row["wall_ms"]),
        ]
        for kind, row in costs["kinds"].items()
    ]
    rows.append(["per booking", "", "", "", num(costs["hapi_cpu_ms_per_booking"]), ""])
    return [
        *table(
            [
                "call",
                "raw sends it",
                "calls per booking",
                "HAPI CPU ms per call",
                "per booking",
                "wall p50 ms",
            ],
            rows,
        ),
        "",
        f"Of {num(costs['hapi_cpu_ms_per_booking'])} ms of HAPI CPU per booking, raw HAPI sends the calls of "
        f"{num(costs['raw_share_cpu_ms'])} ms: while HAPI's CPU bounds throughput, `$book` reaches at most "
        f"{num(costs['bound'], 2)}x raw, however little the sidecar itself costs. One booking at a time, "
        f"where latency bounds it: raw waits {num(costs['raw_wall_ms'])} ms of upstream calls, the sidecar's three "
        f"rounds {num(costs['rounds_wall_ms'])} ms, so at most {num(costs['latency_bound'], 2)}x.",
    ]


def lookups_table(rows: dict[str, Any]) -> list[str]:
    return table(
        [
            "look-up",
            "HAPI CPU ms, paged",
            "one page",
            "ratio",
            "wall ms, paged",
            "one page",
        ],
        [
            [
                name,
                num(row["paged"]["cpu_ms"]),
                num(row["one page"]["cpu_ms"]),
                num(row["cpu_ratio"], 2) if row.get("cpu_ratio") is not None else "-",
                num(row["paged"]["wall_ms"]),
                num(row["one page"]["wall_ms"]),
            ]
            for name, row in rows.items()
        ],
    )


def _cpu_text(per_booking: dict[str, float]) -> str:
    """Sidecar / upstream (HAPI, and PostgreSQL when it runs) CPU ms per booking."""
    if not per_booking:
        return "-"
    upstream = sum(v for name, v in per_booking.items() if name != "sidecar")
    return f"{num(per_booking.get('sidecar', math.nan))} / {num(upstream)}"


def mass_table(results: dict[str, Any]) -> list[str]:
    """The mass booking with group commit off and on, side by side, per database."""
    rows = []
    runs = [
        (database, label, m)
        for database in (results.get("mass") or {})
        for label, key in (("off", "mass_ungrouped"), ("on", "mass"))
        if (m := (results.get(key) or {}).get(database))
    ]
    for database, label, m in runs:
        rows.append(
            [
                database,
                label,
                f"{num(m.get('group_mean', 1.0), 1)} / {m.get('group_max', 1)}",
                f"{m['booked_201']}/{m['places']}",
                num(m["wall_seconds"]),
                num(m["throughput"]),
                num(m["latency"]["p50"]),
                num(m["latency"]["p95"]),
                num(m["latency"]["p99"]),
                f"{num(m['retries_mean'], 2)} / {m['retries_max']}",
                str(m["taken_409"]),
                str(m["deadline_409"]),
                str(m["server_errors_5xx"]),
                _scan_text(m),
                "yes" if m["every_place_filled"] else "**no**",
                _cpu_text(m.get("cpu_ms_per_booking") or {}),
            ]
        )
    return table(
        [
            "database",
            "group commit",
            "group (mean / max)",
            "booked",
            "wall s",
            "bookings/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "retries (mean / max)",
            "409 full",
            "409 deadline",
            "5xx",
            "scan",
            "every place filled",
            "CPU ms per booking (sidecar / upstream)",
        ],
        rows,
    )


def soak_table(runs: dict[str, dict[str, Any]]) -> list[str]:
    rows = []
    for database, s in runs.items():
        rows.append(
            [
                database,
                str(s["attempts"]),
                num(s["wall_seconds"]),
                num(s["attempts_per_second"]),
                str(s["booked_201"]),
                str(s["taken_409"]),
                str(s["deadline_409"]),
                str(s["server_errors_5xx"]),
                str(s["double_bookings"]),
                num(s["latency"]["p50"]),
                num(s["latency"]["p95"]),
                f"{num(s['retries_mean'], 2)} / {s['retries_max']}",
                _scan_text(s),
            ]
        )
    return table(
        [
            "database",
            "attempts",
            "wall s",
            "attempts/s",
            "201",
            "409 taken",
            "409 deadline",
            "5xx",
            "double bookings",
            "p50 ms",
            "p95 ms",
            "retries (mean / max)",
            "scan",
        ],
        rows,
    )


def _scan_text(run: dict[str, Any]) -> str:
    if run["clean"]:
        return "clean"
    return (
        f"**{run['over_booked']} over-booked, {run['told_201_not_stored']} 201 not stored, "
        f"{run['stored_without_201']} stored without 201**"
    )


def targets(results: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    """(target, met -- ``None`` when not measured --, the numbers)."""
    checks: list[tuple[str, bool | None, str]] = []
    cells = results.get("find") or []
    if cells:
        ratios = [c["ratio_p50"] for c in cells if not math.isnan(c["ratio_p50"])]
        met = sum(1 for r in ratios if r <= FIND_RATIO_TARGET)
        worst = max(cells, key=lambda c: c["ratio_p50"])
        checks.append(
            (
                f"$find: sidecar p50 ≤ {FIND_RATIO_TARGET}x the same reads alone",
                met == len(ratios),
                f"{met} of {len(ratios)} cells; worst {worst['ratio_p50']:.2f} "
                f"({worst['days']} d x {worst['schedules']} schedules x {worst['slots']} Slots)",
            )
        )
    # Imported here: bench.report_rules builds its table with this module's helpers.
    from bench.report_rules import rules_targets

    checks += rules_targets(results.get("rules") or [])
    for database, modes in (results.get("book") or {}).items():
        by = {m["mode"]: m for m in modes}
        for key, label in (("seq", "one at a time"), ("dist16", "16 clients on 16 schedules")):
            if key in by:
                value = by[key]["ratio_throughput"]
                checks.append(
                    (
                        f"$book ({database}) {label}: ≥ {BOOK_RATIO_TARGET}x raw throughput",
                        value >= BOOK_RATIO_TARGET,
                        f"{value:.2f}x",
                    )
                )
        if "one16" in by and "dist16" in by:
            one, dist = by["one16"]["sidecar"], by["dist16"]["sidecar"]
            tp = one["throughput"]["median"] / dist["throughput"]["median"]
            p95 = one["latency"]["p95"] / dist["latency"]["p95"]
            checks.append(
                (
                    f"$book ({database}) 16 clients on 1 schedule: ≥ {ONE_SCHEDULE_THROUGHPUT_TARGET}x the "
                    "16-schedule throughput",
                    tp >= ONE_SCHEDULE_THROUGHPUT_TARGET,
                    f"{tp:.2f}x ({one['throughput']['median']:.1f} vs {dist['throughput']['median']:.1f}/s)",
                )
            )
            checks.append(
                (
                    f"$book ({database}) 16 clients on 1 schedule: p95 ≤ {ONE_SCHEDULE_P95_TARGET}x the "
                    "16-schedule p95",
                    p95 <= ONE_SCHEDULE_P95_TARGET,
                    f"{p95:.2f}x ({one['latency']['p95']:.0f} vs {dist['latency']['p95']:.0f} ms)",
                )
            )
    for database, m in (results.get("mass") or {}).items():
        ok = m["deadline_409"] == 0 and m["server_errors_5xx"] == 0 and m["clean"] and m["every_place_filled"]
        checks.append(
            (
                f"mass booking ({database}): no deadline-409, no 5xx, scan clean, every place filled",
                ok,
                f"deadline-409 {m['deadline_409']}, 5xx {m['server_errors_5xx']}, "
                f"scan {'clean' if m['clean'] else 'not clean'}, {m['booked_201']}/{m['places']} places",
            )
        )
        checks.append(
            (
                f"mass booking ({database}): p99 < {MASS_P99_TARGET_MS / 1000:.0f} s",
                m["latency"]["p99"] < MASS_P99_TARGET_MS,
                f"p99 {m['latency']['p99']:.0f} ms, {m['throughput']:.1f} bookings/s",
            )
        )
    for database, s in (results.get("soak") or {}).items():
        ok = s["server_errors_5xx"] == 0 and s["double_bookings"] == 0 and s["clean"]
        checks.append(
            (
                f"soak ({database}): no 5xx, no double booking",
                ok,
                f"5xx {s['server_errors_5xx']}, double bookings {s['double_bookings']}, "
                f"deadline-409 {s['deadline_409']}, scan {'clean' if s['clean'] else 'not clean'}",
            )
        )
    return checks


def markdown(results: dict[str, Any]) -> str:
    out: list[str] = []
    meta = results["meta"]
    machine = meta["machine"]
    out += [
        f"Run {meta['started']} ({meta['wall_seconds']:.0f} s): `{meta['command']}`",
        "",
        f"Machine: {machine['nproc']} CPUs ({machine['cpu']}), {machine['memory_gib']} GiB, {machine['os']}; "
        f"Python {machine['python']}; {machine['java']}; {machine['postgres']}; "
        f"HAPI JVM `{machine['hapi_java_opts']}`; load average at start {machine['load_average_at_start']}.",
        "",
    ]
    if results.get("find"):
        out += ["### `$find`: sidecar vs the same upstream reads alone (H2)", ""]
        out += [*find_table(results["find"]), ""]
    if results.get("rules"):
        from bench.report_rules import rules_section

        out += rules_section(results["rules"])
    for database, modes in (results.get("book") or {}).items():
        out += [f"### `$book` vs raw HAPI transactions ({database})", ""]
        out += [*book_table(modes), ""]
        out += [f"Inside the sidecar ({database}, its DEBUG log, booked requests):", ""]
        out += [*book_breakdown(modes), ""]
        out += [
            f"CPU per booking ({database}; from /proc: the sidecar's gunicorn processes, and upstream = "
            "HAPI's JVM plus PostgreSQL's server processes when it runs; the benchmark's clients excluded):",
            "",
        ]
        out += [*book_cpu(modes), ""]
    if results.get("costs"):
        out += ["### What each call of a `$book` costs HAPI (H2, one booking at a time)", ""]
        out += [*costs_table(results["costs"]), ""]
    if results.get("lookups"):
        out += ["### Look-ups: paged (HAPI keeps the results) vs one page not kept (H2)", ""]
        out += [*lookups_table(results["lookups"]), ""]
    if results.get("mass"):
        out += ["### Mass booking: 64 clients fill one Schedule", ""]
        out += [*mass_table(results), ""]
    if results.get("soak"):
        out += ["### Soak", ""]
        out += [*soak_table(results["soak"]), ""]
    checks = targets(results)
    if checks:
        out += ["### Targets", ""]
        out += table(
            ["target", "met", "measured"],
            [[t, "yes" if met else ("-" if met is None else "**no**"), text] for t, met, text in checks],
        )
        out.append("")
    return "\n".join(out)
