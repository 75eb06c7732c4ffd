"""Recurring series (SPEC §7.4): a weekly 09:00 stays 09:00 across DST, ``$find`` offers only
first starts whose every occurrence is free, ``$book`` books all or none, ``$cancel
series=true`` cancels this and the later occurrences."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operations.booking import BookingRequest, book
from operations.cancel import cancel
from operations.errors import Conflict, InvalidRequest, Unprocessable
from operations.find import FindRequest, find_appointments
from operations.model import SERIES_URL
from operations.series import Recurrence, parse_recurrence, series_id_of
from tests.unit.builders import hours, practitioner, schedule, service, slot
from tests.unit.fake_store import FakeFhirStore
from tests.unit.test_booking import TTL, FakeClock

NY = ZoneInfo("America/New_York")
NOW = datetime(2026, 10, 1, tzinfo=UTC)
WEEKLY_4 = {"repeat": {"frequency": 1, "period": 1, "periodUnit": "wk", "count": 4}}


def clinic() -> FakeFhirStore:
    return FakeFhirStore(
        practitioner("alice", "America/New_York"),
        service(hours=[hours("mon tue wed thu fri", "09:00", "12:00")], duration=30, alignmentInterval=30),
        schedule("alice", "Practitioner/alice", ["checkup"]),
    )


def find(
    store: FakeFhirStore, day: str, recurrence: dict[str, Any] | None = WEEKLY_4
) -> list[dict[str, Any]]:
    params = [
        ("start", f"{day}T00:00:00-04:00"),
        ("end", f"{day}T23:00:00-04:00"),
        ("service-type-reference", "HealthcareService/checkup"),
        ("schedule", "Schedule/alice"),
    ]
    if recurrence is not None:
        params.append(("recurrence", json.dumps(recurrence)))
    request = FindRequest.from_parameters(params, now=NOW, max_range_days=31)
    return [
        e["resource"]
        for e in find_appointments(store, request).get("entry", [])
        if e["search"]["mode"] == "match"
    ]


def book_series(store: FakeFhirStore, proposal: dict[str, Any], recurrence: dict[str, Any] = WEEKLY_4) -> Any:
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "appointment", "resource": copy.deepcopy(proposal)},
            {"name": "recurrence", "valueTiming": recurrence},
        ],
    }
    return book(store, BookingRequest.from_body(body), hold=False, hold_ttl=TTL, clock=FakeClock(NOW).clock())


def appointments(store: FakeFhirStore) -> list[dict[str, Any]]:
    return sorted(
        (r for k, r in store.resources.items() if k.startswith("Appointment/")), key=lambda a: a["start"]
    )


def test_a_weekly_nine_oclock_stays_nine_oclock_across_the_dst_change() -> None:
    # New York falls back on Sunday 2026-11-01.
    first = datetime(2026, 10, 19, 9, 0, tzinfo=NY)
    starts = Recurrence("wk", 4).starts(first.astimezone(UTC), NY)
    assert [s.astimezone(NY).strftime("%m-%d %H:%M") for s in starts] == [
        "10-19 09:00",
        "10-26 09:00",
        "11-02 09:00",
        "11-09 09:00",
    ]
    assert [s.hour for s in starts] == [13, 13, 14, 14]  # UTC moves by the change


def test_a_daily_wall_time_in_the_spring_gap_moves_forward_by_the_gap() -> None:
    # 02:30 does not exist on 2027-03-14 in New York: that occurrence is at 03:30 EDT.
    first = datetime(2027, 3, 13, 2, 30, tzinfo=NY)
    starts = Recurrence("d", 3).starts(first.astimezone(UTC), NY)
    assert [s.astimezone(NY).strftime("%d %H:%M") for s in starts] == ["13 02:30", "14 03:30", "15 02:30"]


def test_find_offers_only_first_starts_whose_every_occurrence_is_free() -> None:
    store = clinic()
    # Block the third Monday's 10:00-11:00 (2026-11-02, after the DST change).
    store.add(slot("alice", "busy-unavailable", "2026-11-02T10:00:00-05:00", "2026-11-02T11:00:00-05:00"))
    single = [p["start"][11:16] for p in find(store, "2026-10-19", recurrence=None)]
    series = [p["start"][11:16] for p in find(store, "2026-10-19")]
    assert single == ["09:00", "09:30", "10:00", "10:30", "11:00", "11:30"]
    assert series == ["09:00", "09:30", "11:00", "11:30"]


def test_book_writes_every_occurrence_in_one_transaction_in_order() -> None:
    store = clinic()
    proposal = find(store, "2026-10-19")[0]
    result = book_series(store, proposal)
    assert result.status == 201
    assert len(store.transactions) == 1
    kinds = [e["resource"]["resourceType"] for e in result.bundle["entry"]]
    assert kinds == ["Appointment", "Slot"] * 4
    booked = [e["resource"] for e in result.bundle["entry"] if e["resource"]["resourceType"] == "Appointment"]
    assert [a["start"] for a in booked] == [
        "2026-10-19T09:00:00-04:00",
        "2026-10-26T09:00:00-04:00",
        "2026-11-02T09:00:00-05:00",
        "2026-11-09T09:00:00-05:00",
    ]
    ids = {series_id_of(a) for a in booked}
    assert len(ids) == 1 and None not in ids
    numbers = [
        next(
            s["valuePositiveInt"]
            for e in a["extension"]
            if e["url"] == SERIES_URL
            for s in e["extension"]
            if s["url"] == "occurrence"
        )
        for a in booked
    ]
    assert numbers == [1, 2, 3, 4]
    for appointment, slot_entry in zip(
        result.bundle["entry"][::2], result.bundle["entry"][1::2], strict=True
    ):
        assert appointment["resource"]["slot"] == [{"reference": f"Slot/{slot_entry['resource']['id']}"}]


def test_a_taken_occurrence_books_nothing_and_is_named() -> None:
    store = clinic()
    proposal = find(store, "2026-10-19")[0]
    store.add(slot("alice", "busy", "2026-11-02T09:00:00-05:00", "2026-11-02T09:30:00-05:00"))
    with pytest.raises(Conflict) as taken:
        book_series(store, proposal)
    assert "Occurrence 3 of 4 (2026-11-02T09:00:00-05:00)" in taken.value.diagnostics
    assert appointments(store) == []
    assert store.transactions == []


def test_an_occurrence_outside_opening_hours_is_422() -> None:
    store = clinic()
    proposal = find(store, "2026-10-23")[0]  # a Friday: daily for 3 days reaches Sunday
    with pytest.raises(Unprocessable, match="Occurrence 2 of 3"):
        book_series(store, proposal, {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d", "count": 3}})


def test_cancel_series_cancels_this_and_every_later_occurrence() -> None:
    store = clinic()
    book_series(store, find(store, "2026-10-19")[0])
    second = appointments(store)[1]
    result = cancel(store, second["id"], reason=None, clock=FakeClock(NOW).clock(), series=True)
    assert result.status == 200
    assert [e["resource"]["start"][:10] for e in result.bundle["entry"]] == [
        "2026-10-26",
        "2026-11-02",
        "2026-11-09",
    ]
    assert [a["status"] for a in appointments(store)] == ["booked", "cancelled", "cancelled", "cancelled"]
    slots = [r for k, r in store.resources.items() if k.startswith("Slot/")]
    assert [s["start"][:10] for s in slots] == ["2026-10-19"]  # the later occurrences' time is free again


def test_cancel_series_of_a_single_appointment_is_422() -> None:
    store = clinic()
    proposal = find(store, "2026-10-19", recurrence=None)[0]
    book(store, BookingRequest.from_body(proposal), hold=False, hold_ttl=TTL, clock=FakeClock(NOW).clock())
    with pytest.raises(Unprocessable, match="not an occurrence of a series"):
        cancel(store, appointments(store)[0]["id"], reason=None, clock=FakeClock(NOW).clock(), series=True)


def test_a_repeated_series_booking_with_its_identifier_replays_every_occurrence() -> None:
    store = clinic()
    proposal = find(store, "2026-10-19")[0] | {"identifier": [{"system": "urn:app", "value": "s-1"}]}
    first = book_series(store, proposal)
    again = book_series(store, proposal)
    assert again.status == 200
    assert [e["resource"]["id"] for e in again.bundle["entry"]] == [
        e["resource"]["id"] for e in first.bundle["entry"]
    ]
    assert len(appointments(store)) == 4


@pytest.mark.parametrize(
    ("repeat", "path"),
    [
        ({"frequency": 1, "period": 1, "periodUnit": "wk", "count": 1}, "Parameters.recurrence.repeat.count"),
        (
            {"frequency": 1, "period": 1, "periodUnit": "wk", "count": 13},
            "Parameters.recurrence.repeat.count",
        ),
        ({"frequency": 1, "period": 1, "periodUnit": "wk"}, "Parameters.recurrence.repeat.count"),
        (
            {"frequency": 2, "period": 1, "periodUnit": "wk", "count": 3},
            "Parameters.recurrence.repeat.frequency",
        ),
        (
            {"frequency": 1, "period": 2, "periodUnit": "wk", "count": 3},
            "Parameters.recurrence.repeat.period",
        ),
        (
            {"frequency": 1, "period": 1, "periodUnit": "mo", "count": 3},
            "Parameters.recurrence.repeat.periodUnit",
        ),
        (
            {"frequency": 1, "period": 1, "periodUnit": "d", "count": 3, "dayOfWeek": ["mon"]},
            "Parameters.recurrence.repeat.dayOfWeek",
        ),
    ],
)
def test_a_malformed_recurrence_is_400_naming_the_field(repeat: dict[str, Any], path: str) -> None:
    with pytest.raises(InvalidRequest) as bad:
        parse_recurrence({"repeat": repeat}, expression="Parameters.recurrence", max_series=12)
    assert bad.value.expression == [path]


def test_a_recurrence_that_is_no_timing_is_400() -> None:
    with pytest.raises(InvalidRequest, match="POST Parameters body"):
        parse_recurrence("weekly", expression="Parameters.recurrence", max_series=12)


@settings(max_examples=40, deadline=None)
@given(
    blocked=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 5)), max_size=3),
    start_index=st.integers(0, 5),
)
def test_a_series_is_all_or_nothing(blocked: list[tuple[int, int]], start_index: int) -> None:
    """Whatever is blocked, a series booking stores every occurrence or none, and $find's offer
    of a first start means the booking succeeds."""
    store = clinic()
    mondays = ["2026-10-19", "2026-10-26", "2026-11-02", "2026-11-09"]
    for week, half_hour in blocked:
        offset = "-04:00" if week < 2 else "-05:00"
        hh, mm = divmod(9 * 60 + 30 * half_hour, 60)
        start = f"{mondays[week]}T{hh:02d}:{mm:02d}:00{offset}"
        hh2, mm2 = divmod(9 * 60 + 30 * half_hour + 30, 60)
        store.add(slot("alice", "busy-unavailable", start, f"{mondays[week]}T{hh2:02d}:{mm2:02d}:00{offset}"))
    offered = {p["start"] for p in find(store, mondays[0])}
    single = find(store, mondays[0], recurrence=None) or find(clinic(), mondays[0], recurrence=None)
    proposal = next(
        (
            p
            for p in find(clinic(), mondays[0], recurrence=None)
            if p["start"].endswith(f"T{9 + start_index // 2:02d}:{30 * (start_index % 2):02d}:00-04:00")
        ),
        single[0],
    )
    try:
        book_series(store, proposal)
        booked = True
    except (Conflict, Unprocessable):
        booked = False
    assert len(appointments(store)) == (4 if booked else 0)
    assert booked == (proposal["start"] in offered)
