"""Reading the sidecar's DEBUG log and grouping a request's reads for the replay
(bench/upstream_log.py): no servers."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.replay import _headers
from bench.upstream_log import (
    AccessRecord,
    LogIndex,
    UpstreamCall,
    parse_line,
    plan_shape,
    replay_plan,
)

T0 = datetime(2026, 12, 7, 14, 0, 0, tzinfo=UTC)
BASE = "http://127.0.0.1:8080/fhir"


def call_line(
    request_id: str,
    url: str,
    *,
    start_ms: float,
    duration_ms: float,
    method: str = "GET",
    prefer: str | None = None,
    cache_control: str | None = "no-cache",
) -> str:
    """A line as plugin/transport.py logs it: written when the answer has arrived."""
    end = T0 + timedelta(milliseconds=start_ms + duration_ms)
    return json.dumps(
        {
            "time": end.isoformat(timespec="milliseconds"),
            "level": "DEBUG",
            "logger": "plugin.upstream",
            "message": "upstream call",
            "request_id": request_id,
            "upstream_method": method,
            "upstream_url": url,
            "upstream_status": 200,
            "duration_ms": duration_ms,
            "as_service": "Slot" in url or "Basic" in url,
            "upstream_prefer": prefer,
            "upstream_cache_control": cache_control,
        }
    )


def access_line(request_id: str, round_trips: int, attempts: int | None = None) -> str:
    record = {
        "time": T0.isoformat(timespec="milliseconds"),
        "level": "INFO",
        "logger": "plugin.app",
        "message": "GET /fhir/Appointment/$find -> 200",
        "request_id": request_id,
        "status": 200,
        "duration_ms": 42.5,
        "upstream_round_trips": round_trips,
    }
    if attempts is not None:
        record["attempts"] = attempts
    return json.dumps(record)


def calls(*lines: str) -> list[UpstreamCall]:
    parsed = [parse_line(line) for line in lines]
    return [p for p in parsed if isinstance(p, UpstreamCall)]


def test_parse_upstream_call_and_access_lines() -> None:
    call = parse_line(call_line("r1", f"{BASE}/Slot?schedule=Schedule/a", start_ms=10, duration_ms=25))
    assert isinstance(call, UpstreamCall)
    assert (call.request_id, call.method, call.as_service) == ("r1", "GET", True)
    assert call.end == (T0 + timedelta(milliseconds=35)).timestamp()
    assert abs(call.start - (T0 + timedelta(milliseconds=10)).timestamp()) < 1e-6
    access = parse_line(access_line("r1", 3, attempts=2))
    assert access == AccessRecord("r1", 200, 42.5, 3, 2)


def test_the_prefer_header_is_read_and_sent_again_by_the_replay() -> None:
    strict = parse_line(
        call_line(
            "r1", f"{BASE}/Slot?schedule=Schedule/a", start_ms=0, duration_ms=5, prefer="handling=strict"
        )
    )
    plain = parse_line(call_line("r1", f"{BASE}/HealthcareService/s", start_ms=0, duration_ms=5))
    assert isinstance(strict, UpstreamCall) and isinstance(plain, UpstreamCall)
    assert (strict.prefer, plain.prefer) == ("handling=strict", None)
    assert _headers(strict, "r1-replay")["Prefer"] == "handling=strict"
    assert "Prefer" not in _headers(plain, "r1-replay")


def test_the_cache_control_of_a_look_up_is_sent_again_by_the_replay() -> None:
    look_up = parse_line(
        call_line(
            "r1",
            f"{BASE}/Basic?_id=a,b&_total=accurate",
            start_ms=0,
            duration_ms=5,
            cache_control="no-cache, no-store",
        )
    )
    search = parse_line(call_line("r1", f"{BASE}/Slot?schedule=Schedule/a", start_ms=0, duration_ms=5))
    older = parse_line(
        call_line("r1", f"{BASE}/Slot?schedule=Schedule/a", start_ms=0, duration_ms=5, cache_control=None)
    )
    assert (
        isinstance(look_up, UpstreamCall)
        and isinstance(search, UpstreamCall)
        and isinstance(older, UpstreamCall)
    )
    assert _headers(look_up, "r1-replay")["Cache-Control"] == "no-cache, no-store"
    assert _headers(search, "r1-replay")["Cache-Control"] == "no-cache"
    assert _headers(older, "r1-replay")["Cache-Control"] == "no-cache"  # logs from before it was logged


def test_other_lines_are_ignored() -> None:
    assert parse_line("[2026-12-07 14:00:00 +0000] [123] [INFO] Booting worker with pid: 123") is None
    assert parse_line("{not json") is None
    assert parse_line(json.dumps({"message": "upstream call"})) is None  # no request id
    assert parse_line(json.dumps({"message": "x", "request_id": "r"})) is None


def test_find_reads_sent_together_are_one_round() -> None:
    """$find: Schedules, HealthcareService and Slots started within a few ms of each other."""
    plan = replay_plan(
        calls(
            call_line("r", f"{BASE}/HealthcareService?_id=s", start_ms=1.0, duration_ms=8),
            call_line("r", f"{BASE}/Schedule?_id=a&_include=Schedule:actor", start_ms=0, duration_ms=12),
            call_line("r", f"{BASE}/Slot?schedule=Schedule/a", start_ms=2.5, duration_ms=30),
        )
    )
    assert len(plan) == 1
    assert [chain.calls[0].url.split("?")[0].rsplit("/", 1)[1] for chain in plan[0].chains] == [
        "Schedule",
        "HealthcareService",
        "Slot",
    ]
    assert plan_shape(plan) == "3"


def test_pages_follow_the_search_they_continue_in_order() -> None:
    """The Slot search took three pages; the configuration reads had ended long before."""
    plan = replay_plan(
        calls(
            call_line("r", f"{BASE}/Schedule?_id=a", start_ms=0, duration_ms=10),
            call_line("r", f"{BASE}/HealthcareService?_id=s", start_ms=1, duration_ms=9),
            call_line("r", f"{BASE}/Slot?schedule=Schedule/a", start_ms=2, duration_ms=100),
            call_line("r", f"{BASE}?_getpages=abc&_getpagesoffset=1000", start_ms=102.5, duration_ms=50),
            call_line("r", f"{BASE}?_getpages=abc&_getpagesoffset=2000", start_ms=153, duration_ms=40),
        )
    )
    assert len(plan) == 1
    slot_chain = plan[0].chains[2]
    assert [c.url.rsplit("=", 1)[1] for c in slot_chain.calls] == ["Schedule/a", "1000", "2000"]
    assert plan_shape(plan) == "3p2"


def test_booking_rounds_are_sequential() -> None:
    """$book: configuration and locks together, then the Slot search, then the transaction."""
    plan = replay_plan(
        calls(
            call_line("b", f"{BASE}/Schedule?_id=a", start_ms=0, duration_ms=10),
            call_line("b", f"{BASE}/HealthcareService?_id=s", start_ms=0.4, duration_ms=6),
            call_line("b", f"{BASE}/Basic?_id=fanoni-lock-a", start_ms=0.8, duration_ms=7),
            call_line("b", f"{BASE}/Slot?schedule=Schedule/a", start_ms=10.6, duration_ms=9),
            call_line("b", BASE, start_ms=20.1, duration_ms=30, method="POST"),
        )
    )
    assert plan_shape(plan) == "3+1+1"
    assert plan[2].chains[0].calls[0].method == "POST"


def test_a_read_that_started_late_but_while_its_round_was_under_way_joins_it() -> None:
    """On a loaded machine a worker thread may start a read well after its round-mates."""
    plan = replay_plan(
        calls(
            call_line("r", f"{BASE}/Schedule?_id=a", start_ms=0, duration_ms=30),
            call_line("r", f"{BASE}/HealthcareService?_id=s", start_ms=12, duration_ms=10),
            call_line("r", f"{BASE}/Slot?x", start_ms=31, duration_ms=3),
        )
    )
    assert plan_shape(plan) == "2+1"


def test_a_read_right_after_its_round_ended_starts_the_next_even_within_a_few_ms() -> None:
    plan = replay_plan(
        calls(
            call_line("r", f"{BASE}/Slot?x", start_ms=0, duration_ms=2),
            call_line("r", BASE, start_ms=2.3, duration_ms=20, method="POST"),
        )
    )
    assert plan_shape(plan) == "1+1"


def test_log_index_follows_a_growing_file(tmp_path: Path) -> None:
    log = tmp_path / "sidecar.log"
    index = LogIndex(log)
    index.refresh()  # no file yet
    first = call_line("r1", f"{BASE}/Schedule?_id=a", start_ms=0, duration_ms=5) + "\n"
    log.write_text("[INFO] Booting worker\n" + first[:40])  # a line half written
    index.refresh()
    assert index.get("r1") is None
    with log.open("a") as out:
        out.write(first[40:] + access_line("r1", 1) + "\n")
    entry = index.wait_for("r1", timeout=1)
    assert len(entry.calls) == 1
    assert entry.access is not None
    assert entry.access.upstream_round_trips == 1
    index.forget("r1")
    assert index.get("r1") is None
