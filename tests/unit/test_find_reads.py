"""How ``$find`` issues its reads: together when they are independent (one round trip of
latency), a second Slot search only when a buffer reaches past the margin, and the caller's
refusal first when reads fail (issue 7, deliver 1)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from operations.errors import Unprocessable
from operations.find import SLOT_MARGIN, FindRequest, find_appointments
from operations.read_hints import ReadHints
from operations.store import Stores
from tests.unit.builders import LONG_AGO, hours, practitioner, schedule, service, slot
from tests.unit.fake_store import FakeFhirStore


class Recording:
    """A ``Together`` that runs the calls in order and remembers how they were grouped."""

    def __init__(self) -> None:
        self.groups: list[int] = []

    def __call__(self, *calls: Callable[[], Any]) -> list[Any]:
        self.groups.append(len(calls))
        return [call() for call in calls]


def clinic(**block: Any) -> FakeFhirStore:
    return FakeFhirStore(
        practitioner("alice", "America/New_York"),
        service(hours=[hours("mon", "09:00", "12:00")], duration=30, **block),
        schedule("alice", "Practitioner/alice", ["checkup"]),
    )


def find(
    store: FakeFhirStore,
    together: Callable[..., list[Any]],
    service_id: str = "checkup",
    hints: ReadHints | None = None,
) -> dict[str, Any]:
    request = FindRequest.from_parameters(
        [
            ("start", "2026-12-07T00:00:00-05:00"),
            ("end", "2026-12-08T00:00:00-05:00"),
            ("service-type-reference", f"HealthcareService/{service_id}"),
            ("schedule", "Schedule/alice"),
        ],
        now=LONG_AGO,
        max_range_days=31,
    )
    return find_appointments(Stores(caller=store, service=store, together=together, hints=hints), request)


def test_the_three_reads_go_out_together() -> None:
    store, together = clinic(bufferBefore=10), Recording()
    starts = [e["resource"]["start"][11:16] for e in find(store, together)["entry"]]
    assert starts == ["10:00", "11:00"]  # hourly grid; 09:00 has no room for the buffer before
    assert together.groups == [3]
    assert store.calls == ["read_schedules", "read_service", "search_slots"]


def test_a_buffer_longer_than_the_margin_gets_a_second_slot_search() -> None:
    minutes = int(SLOT_MARGIN.total_seconds() // 60) + 60
    store, together = clinic(bufferAfter=minutes), Recording()
    find(store, together)
    assert store.calls == ["read_schedules", "read_service", "search_slots", "search_slots"]


def test_when_reads_fail_the_first_failure_in_order_is_the_answer() -> None:
    store = clinic()
    with pytest.raises(Unprocessable, match="HealthcareService/nope does not exist"):
        find(store, Recording(), service_id="nope")


def test_without_the_service_named_the_slot_search_goes_with_the_schedules() -> None:
    store, together = clinic(), Recording()
    request = FindRequest.from_parameters(
        [
            ("start", "2026-12-07T00:00:00-05:00"),
            ("end", "2026-12-08T00:00:00-05:00"),
        ],
        now=LONG_AGO,
        max_range_days=31,
        schedule_id="alice",  # Schedule/alice/$find: the Schedule's one service
    )
    found = find_appointments(Stores(caller=store, service=store, together=together), request)
    assert len(found["entry"]) == 3  # 09:00, 10:00, 11:00 (30-minute visits on an hourly grid)
    assert together.groups == [2]  # Schedules and Slots together; then the service they name
    assert store.calls == ["read_schedules", "read_service", "search_slots"]


def test_a_weekly_limit_reads_its_whole_week_in_a_second_round_only_until_hinted() -> None:
    """The week a limit counts lies beyond the range's margin: the first ``$find`` learns that
    from the configuration and searches it in a second round; the next one searches it at once."""
    store, hints = clinic(bookingLimit=[(1, "wk")]), ReadHints()
    store.add(slot("alice", "busy", "2026-12-09T15:00:00Z", "2026-12-09T15:30:00Z"))  # Wednesday
    first, second = Recording(), Recording()
    assert "entry" not in find(store, first, hints=hints)  # the week already has its one visit
    assert first.groups == [3, 1]
    assert "entry" not in find(store, second, hints=hints)
    assert second.groups == [3]
    assert store.calls[-3:] == ["read_schedules", "read_service", "search_slots"]


def test_a_stale_hint_costs_a_round_trip_never_a_wrong_answer() -> None:
    """Hinted without a limit, then the clinic sets one: the configuration just read decides,
    and the week the new limit counts is searched before anything is offered."""
    store, hints = clinic(), ReadHints()
    store.add(slot("alice", "busy", "2026-12-09T15:00:00Z", "2026-12-09T15:30:00Z"))
    assert len(find(store, Recording(), hints=hints)["entry"]) == 3
    limited = clinic(bookingLimit=[(1, "wk")]).resources["HealthcareService/checkup"]
    store.add(limited)
    later = Recording()
    assert "entry" not in find(store, later, hints=hints)
    assert later.groups == [3, 1]


class SpanRecording(FakeFhirStore):
    """Remembers the spans its Slot searches asked for."""

    def __init__(self, *resources: Any) -> None:
        super().__init__(*resources)
        self.spans: list[tuple[datetime, datetime]] = []

    def search_slots(self, schedule_ids: Sequence[str], start: datetime, end: datetime) -> list[Any]:
        self.spans.append((start, end))
        return super().search_slots(schedule_ids, start, end)


def test_balanced_reads_whole_days_in_any_zone_until_hinted_then_exactly_its_own() -> None:
    """``pool-order=balanced`` counts each member's whole local days: without hints the first
    Slot search reaches 26 h beyond the range (any zone's day); with every Schedule hinted,
    the range's margin and the members' own local days, in one round trip and the same answer."""
    store = SpanRecording(*clinic().resources.values())
    store.add(practitioner("bob", "America/New_York"))
    store.add(schedule("bob", "Practitioner/bob", ["checkup"]))
    hints = ReadHints()

    def balanced(together: Recording) -> list[str]:
        request = FindRequest.from_parameters(
            [
                ("start", "2026-12-07T09:00:00-05:00"),
                ("end", "2026-12-07T12:00:00-05:00"),
                ("service-type-reference", "HealthcareService/checkup"),
                ("schedule", "Schedule/alice,Schedule/bob"),
                ("pool-order", "balanced"),
            ],
            now=LONG_AGO,
            max_range_days=31,
        )
        found = find_appointments(
            Stores(caller=store, service=store, together=together, hints=hints), request
        )
        return [e["resource"]["start"] for e in found["entry"]]

    first, second = Recording(), Recording()
    assert balanced(first) == balanced(second)
    assert first.groups == [3] and second.groups == [3]
    (cold_start, cold_end), (warm_start, warm_end) = store.spans
    assert (cold_start, cold_end) == (
        datetime(2026, 12, 6, 12, tzinfo=UTC),  # 09:00 New York less 26 h
        datetime(2026, 12, 8, 19, tzinfo=UTC),
    )
    # Monday 7 December in New York, whole: 05:00Z to 05:00Z the next day.
    assert (warm_start, warm_end) == (
        datetime(2026, 12, 7, 5, tzinfo=UTC),
        datetime(2026, 12, 8, 5, tzinfo=UTC),
    )
