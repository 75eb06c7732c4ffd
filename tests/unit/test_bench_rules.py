"""The booking rules' benchmark (bench/find_rules.py, bench/report_rules.py, the rules part of
bench/find.py and bench/__main__.py): its configuration really switches every rule on, its
arithmetic and its verdict. No servers."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import pytest

from bench import find as compute_bench
from bench import find_rules
from bench.__main__ import _plans, parse_args
from bench.report import markdown, targets
from bench.report_rules import RULES_RATIO_TARGET, rules_table, rules_targets
from operations.find import FindRequest, find_appointments, load_legs
from tests.unit import builders


def call(ms: float, shape: str = "3", calls: int = 3) -> find_rules.Call:
    return find_rules.Call(
        client_ms=ms,
        server_ms=ms - 3,
        upstream_ms=ms - 20,
        later_rounds_ms=15.0 if "+" in shape else 0.0,
        shape=shape,
        upstream_calls=calls,
        proposals=79,
        cpu_ms={"sidecar": 40.0, "hapi": 300.0},
        later_reads=["http://hapi/fhir/Slot?start=lt...&end=gt..."] if "+" in shape else [],
    )


def cell(off_ms: list[float], on_ms: list[float], alignment: str = "09:30 local") -> dict[str, object]:
    return find_rules.summarize(
        1000,
        10,
        31,
        alignment,
        "2026-12-04T09:30:00-05:00",
        {"off": [call(ms) for ms in off_ms], "on": [call(ms, "3+2", 5) for ms in on_ms]},
    )


def test_ruled_service_configuration_resolves_to_every_rule() -> None:
    """RULES, as BenchClinic.service writes it, is a valid SchedulingParameters block with a
    notice, a window and both limits -- or the end-to-end comparison times no rules at all."""
    service = builders.service(
        "ruled",
        hours=[builders.hours("mon", "08:00", "18:00")],
        duration=30,
        alignmentInterval=15,
        **find_rules.RULES,
    )
    store = compute_bench.MemoryStore(
        [
            service,
            builders.practitioner("p", "America/New_York"),
            builders.schedule("s", "Practitioner/p", ["ruled"]),
        ]
    )
    _, legs = load_legs(store, ["s"], "ruled")
    params = legs[0].params
    assert params.minimum_notice == timedelta(days=1)
    assert params.booking_window == timedelta(days=60)
    assert (params.daily_limit, params.weekly_limit) == (find_rules.DAILY_LIMIT, find_rules.WEEKLY_LIMIT)


def test_ranges_from_midnight_and_from_within_a_day() -> None:
    offsets = dict(find_rules.ALIGNMENTS)
    assert timedelta(0) in offsets.values()
    assert any(o % timedelta(days=1) for o in offsets.values())


def test_summary_pairs_the_sides_and_divides_on_by_off() -> None:
    c = cell([100.0, 110.0, 120.0], [105.0, 121.0, 130.0])
    assert c["ratio_p50"] == pytest.approx(121.0 / 110.0)
    assert c["ratio_p95"] == pytest.approx(130.0 / 120.0)
    on, off = c["on"], c["off"]
    assert isinstance(on, dict) and isinstance(off, dict)
    assert (on["shape"], off["shape"]) == ("3+2", "3")
    assert (on["upstream_calls"], off["upstream_calls"]) == (5, 3)
    assert on["later_reads"] and not off["later_reads"]
    assert (on["later_rounds"]["p50"], off["later_rounds"]["p50"]) == (15.0, 0.0)


def test_target_met_within_ten_percent_and_missed_beyond() -> None:
    assert pytest.approx(1.10) == RULES_RATIO_TARGET
    within = cell([100.0] * 5, [109.0] * 5)
    beyond = cell([100.0] * 5, [125.0] * 5, alignment="local midnight")
    assert rules_targets([within])[0][1] is True
    verdict = rules_targets([within, beyond])[0]
    assert verdict[1] is False
    assert "1 of 2 cells" in verdict[2] and "worst 1.25" in verdict[2] and "local midnight" in verdict[2]
    assert "`3+2` vs `3`" in verdict[2]
    assert rules_targets([]) == []


def test_target_unmeasured_is_not_met() -> None:
    empty = find_rules.summarize(1000, 10, 31, "local midnight", "-", {"off": [], "on": []})
    assert math.isnan(empty["ratio_p50"])
    assert rules_targets([empty])[0][1] is None


def test_table_has_both_sides_and_the_ratio_on_the_ruled_row() -> None:
    lines = rules_table([cell([100.0] * 3, [112.0] * 3)])
    assert len(lines) == 4  # header, rule, off, on
    off_row, on_row = lines[2].split(" | "), lines[3].split(" | ")
    assert "none" in off_row and "all" in on_row
    assert "1.12" in on_row and "1.12" not in off_row


def test_report_shows_the_section_and_judges_the_target() -> None:
    results = {
        "meta": {
            "started": "2026-12-02T21:40:11+00:00",
            "wall_seconds": 57.0,
            "command": "python -m bench --quick --only rules",
            "machine": {
                "nproc": 2,
                "cpu": "x",
                "memory_gib": 1,
                "os": "y",
                "python": "3.11",
                "java": "17",
                "postgres": "15",
                "hapi_java_opts": "-Xmx",
                "load_average_at_start": "0.1",
            },
        },
        "rules": [cell([100.0] * 3, [130.0] * 3)],
    }
    text = markdown(results)
    assert "every booking rule on vs none" in text
    assert any("booking rule" in t and met is False for t, met, _ in targets(results))


def test_plans_and_parts_include_the_rules() -> None:
    args = parse_args(["--quick"])
    for quick in (True, False):
        plan = _plans(quick, args)["rules"]
        assert (plan.schedules, plan.days) == (10, 31)
        assert 1000 in plan.slots and plan.reps >= 11
    assert parse_args(["--only", "rules"]).only == ["rules"]


# bench/find.py: the compute-only comparison


def test_memory_store_searches_only_the_span() -> None:
    resources = compute_bench.build_workload(1)
    store = compute_bench.MemoryStore(resources)
    wide = timedelta(days=2)  # s0 is in New York: its first local day begins before the range
    everything = store.search_slots(["s0"], compute_bench.RANGE_START - wide, compute_bench.RANGE_END + wide)
    assert len(everything) == compute_bench.SLOTS_PER_SCHEDULE
    in_range = store.search_slots(["s0"], compute_bench.RANGE_START, compute_bench.RANGE_END)
    assert 0 < len(in_range) < len(everything)
    before = compute_bench.RANGE_START - timedelta(days=7)
    assert store.search_slots(["s0"], before, compute_bench.RANGE_START - wide) == []


def test_with_rules_switches_every_rule_on_and_keeps_the_slots() -> None:
    resources = compute_bench.build_workload(1)
    ruled = compute_bench.MemoryStore(compute_bench.with_rules(resources))
    plain = compute_bench.MemoryStore(resources)
    assert "minimumNotice" not in str(plain.read_service(compute_bench.SERVICE_ID))
    assert ruled.slots_by_schedule == plain.slots_by_schedule
    _, legs = load_legs(ruled, ["s0"], compute_bench.SERVICE_ID)
    params = legs[0].params
    assert params.minimum_notice == timedelta(hours=12)
    assert params.booking_window == timedelta(days=60)
    assert (params.daily_limit, params.weekly_limit) == (
        compute_bench.DAILY_LIMIT,
        compute_bench.WEEKLY_LIMIT,
    )
    # The notice bites when "now" is close: nothing in the first 12 hours with the rules.
    now = compute_bench.RANGE_START + timedelta(days=2, hours=8)
    params_list = [
        ("start", now.isoformat()),
        ("end", (now + timedelta(days=2)).isoformat()),
        ("service-type-reference", f"HealthcareService/{compute_bench.SERVICE_ID}"),
        ("schedule", "Schedule/s1"),
        ("_count", "1000"),
    ]
    request = FindRequest.from_parameters(params_list, now=now, max_range_days=31)
    firsts = {
        name: min(
            datetime.fromisoformat(e["resource"]["start"])
            for e in find_appointments(store, request)["entry"]
            if e["search"]["mode"] == "match"
        )
        for name, store in (("plain", plain), ("ruled", ruled))
    }
    assert firsts["plain"] < now + timedelta(hours=12) <= firsts["ruled"]


def test_the_limits_remove_no_proposal() -> None:
    """Both sides of the compute-only comparison do the same work but the checks."""
    resources = compute_bench.build_workload(20250303)
    plain = compute_bench.rules_finds(compute_bench.MemoryStore(resources))
    ruled = compute_bench.rules_finds(compute_bench.MemoryStore(compute_bench.with_rules(resources)))
    assert plain == ruled and sum(plain) > 0
