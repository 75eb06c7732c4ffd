"""``bench/call_costs.py``: which call is which, and the bound the report states."""

from __future__ import annotations

from bench.call_costs import _kind
from bench.report import costs_table

BASE = "http://127.0.0.1:8080/fhir"


def test_calls_are_grouped_by_what_they_are_for() -> None:
    assert _kind("GET", f"{BASE}/Schedule?_id=a&_include=Schedule:actor") == "permission"
    assert _kind("GET", f"{BASE}/HealthcareService/visit") == "permission"
    assert _kind("GET", f"{BASE}/Basic?_id=lock-a,lock-b") == "locks"
    assert _kind("GET", f"{BASE}/Slot?schedule=Schedule/a&start=lt2031-01-01T10:00:00Z") == "slots"
    assert _kind("POST", BASE) == "transaction"
    assert _kind("GET", f"{BASE}/Patient/p") == "other"


def test_the_report_states_both_bounds() -> None:
    costs = {
        "kinds": {
            "locks": {"calls_per_booking": 1.0, "cpu_ms": 10.0, "wall_ms": 8.0},
            "permission": {"calls_per_booking": 2.0, "cpu_ms": 10.0, "wall_ms": 9.0},
            "slots": {"calls_per_booking": 1.0, "cpu_ms": 20.0, "wall_ms": 10.0},
            "transaction": {"calls_per_booking": 1.0, "cpu_ms": 40.0, "wall_ms": 22.0},
        },
        "hapi_cpu_ms_per_booking": 100.0,
        "raw_share_cpu_ms": 50.0,
        "bound": 0.5,
        "raw_wall_ms": 30.0,
        "rounds_wall_ms": 41.0,
        "latency_bound": 30.0 / 41.0,
    }
    text = "\n".join(costs_table(costs))
    assert "| permission | no | 2.00 | 10.0 | 20.0 | 9.0 |" in text
    assert "at most 0.50x raw" in text and "so at most 0.73x" in text
