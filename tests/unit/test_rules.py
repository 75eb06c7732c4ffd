"""Booking rules (SPEC §7.1) as a front desk reads them: minimum notice, a rolling booking window,
at most N visits a local day or ISO week -- in ``$find`` (nothing offered that breaks one) and
in ``$book``/``$hold`` (422 ``business-rule`` naming the rule), race-free."""

from __future__ import annotations

import copy
from collections import Counter
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operations.booking import BookingRequest, book
from operations.errors import InvalidConfiguration, Unprocessable
from operations.find import FindRequest, find_appointments
from operations.parameters import parse_service
from tests.unit.builders import hours, params_block, practitioner, schedule, service, slot
from tests.unit.fake_store import FakeFhirStore
from tests.unit.test_booking import TTL, FakeClock

NY = "America/New_York"
# Tuesday 2026-12-01 08:00 in New York.
NOW = datetime(2026, 12, 1, 13, 0, tzinfo=UTC)


def clinic(
    *, days: str = "mon tue wed thu fri sat sun", start: str = "09:00", end: str = "17:00", **rules: Any
) -> FakeFhirStore:
    return FakeFhirStore(
        practitioner("alice", NY),
        service(hours=[hours(days, start, end)], duration=30, alignmentInterval=30, **rules),
        schedule("alice", "Practitioner/alice", ["checkup"]),
    )


def starts(store: FakeFhirStore, first: str, last: str, now: datetime = NOW, count: int = 1000) -> list[str]:
    """Offered visit starts between two local dates (New York), as ``MM-DDTHH:MM``."""
    found = find_appointments(
        store,
        FindRequest.from_parameters(
            [
                ("start", f"2026-{first}T00:00:00-05:00"),
                ("end", f"2026-{last}T00:00:00-05:00"),
                ("service-type-reference", "HealthcareService/checkup"),
                ("schedule", "Schedule/alice"),
                ("_count", str(count)),
            ],
            now=now,
            max_range_days=31,
        ),
    )
    return [e["resource"]["start"][5:16] for e in found.get("entry", []) if e["search"]["mode"] == "match"]


def proposal(
    store: FakeFhirStore, when: str, now: datetime = NOW, zone_offset: str = "-05:00"
) -> dict[str, Any]:
    """The proposal starting at ``when`` (``MM-DDTHH:MM`` local), found with no rule in the way."""
    free = copy.deepcopy(store)
    free.resources["HealthcareService/checkup"] = service(
        hours=[hours("mon tue wed thu fri sat sun", "00:00", "00:00")], duration=30, alignmentInterval=30
    )
    day = when[:5]
    found = find_appointments(
        free,
        FindRequest.from_parameters(
            [
                ("start", f"2026-{day}T00:00:00{zone_offset}"),
                ("end", f"2026-{day}T23:59:00{zone_offset}"),
                ("service-type-reference", "HealthcareService/checkup"),
                ("schedule", "Schedule/alice"),
                ("_count", "1000"),
            ],
            now=now - timedelta(days=400),
            max_range_days=31,
        ),
    )
    return next(e["resource"] for e in found["entry"] if e["resource"]["start"][5:16] == when)


def do_book(store: FakeFhirStore, when: str, now: datetime = NOW, **kwargs: Any) -> Any:
    request = BookingRequest.from_body(proposal(store, when, **kwargs))
    return book(store, request, hold=False, hold_ttl=TTL, clock=FakeClock(now).clock())


class TestMinimumNotice:
    def test_nothing_is_offered_sooner_than_the_notice(self) -> None:
        store = clinic(minimumNotice={"value": 26, "unit": "h"})  # now + 26 h = Wed 10:00
        assert starts(store, "12-02", "12-03")[:2] == ["12-02T10:00", "12-02T10:30"]

    def test_booking_sooner_is_refused_naming_the_rule(self) -> None:
        store = clinic(minimumNotice={"value": 2, "unit": "d"})
        with pytest.raises(Unprocessable) as refused:
            do_book(store, "12-02T16:30")
        assert refused.value.code == "business-rule"
        assert "minimumNotice" in refused.value.diagnostics
        assert refused.value.expression == ["Appointment.start"]
        assert not [r for r in store.resources if r.startswith("Appointment/")]
        assert do_book(store, "12-03T09:00").status == 201


class TestBookingWindow:
    def test_nothing_is_offered_beyond_the_window(self) -> None:
        store = clinic(bookingWindow={"value": 1, "unit": "wk"})  # now + 1 week = Tue 12-08 08:00
        offered = starts(store, "12-07", "12-10")
        assert offered[-1] == "12-07T16:30"
        assert not any(s.startswith("12-08") for s in offered)

    def test_a_window_ending_inside_opening_hours_keeps_the_starts_up_to_it(self) -> None:
        store = clinic(bookingWindow={"value": 7 * 24 + 3, "unit": "h"})  # Tue 12-08 11:00
        assert [s for s in starts(store, "12-08", "12-09") if s.startswith("12-08")] == [
            "12-08T09:00",
            "12-08T09:30",
            "12-08T10:00",
            "12-08T10:30",
            "12-08T11:00",
        ]

    def test_booking_beyond_the_window_is_refused(self) -> None:
        store = clinic(bookingWindow={"value": 7, "unit": "d"})
        with pytest.raises(Unprocessable, match="bookingWindow"):
            do_book(store, "12-09T09:00")


class TestDailyLimit:
    def test_a_full_day_offers_nothing_more_and_the_next_day_everything(self) -> None:
        store = clinic(bookingLimit=[(2, "d")])
        do_book(store, "12-07T09:00")
        assert "12-07T09:30" in starts(store, "12-07", "12-09")
        do_book(store, "12-07T15:00")
        offered = starts(store, "12-07", "12-09")
        assert not any(s.startswith("12-07") for s in offered)
        assert offered[0] == "12-08T09:00"

    def test_booking_on_a_full_day_is_refused_naming_the_rule(self) -> None:
        store = clinic(bookingLimit=[(1, "d")])
        do_book(store, "12-07T09:00")
        with pytest.raises(Unprocessable) as refused:
            do_book(store, "12-07T11:00")
        assert refused.value.code == "business-rule"
        assert "bookingLimit" in refused.value.diagnostics and "2026-12-07" in refused.value.diagnostics

    def test_lapsed_holds_and_buffers_do_not_count_live_holds_do(self) -> None:
        store = clinic(bookingLimit=[(1, "d")])
        request = BookingRequest.from_body(proposal(store, "12-07T09:00"))
        book(store, request, hold=True, hold_ttl=TTL, clock=FakeClock(NOW).clock())
        assert not any(s.startswith("12-07") for s in starts(store, "12-07", "12-08"))
        later = NOW + TTL + timedelta(seconds=1)
        assert starts(store, "12-07", "12-08", now=later)[0] == "12-07T09:00"

    def test_the_day_is_the_schedules_local_day_on_a_dst_change(self) -> None:
        # Sunday 2026-11-01, New York falls back at 02:00: the local day is 25 hours long.
        store = clinic(start="00:00", end="00:00", bookingLimit=[(1, "d")])
        now = datetime(2026, 10, 20, tzinfo=UTC)
        do_book(store, "11-01T00:30", now=now, zone_offset="-04:00")  # 04:30Z
        offered = starts_between(store, "2026-11-01T00:00:00-04:00", "2026-11-02T03:00:00-05:00", now)
        # 23:30 local on Nov 1 is 04:30Z on Nov 2, still Nov 1's visit: not offered. Nov 2 is free.
        assert not any(s.startswith("2026-11-01") for s in offered)
        assert offered[0] == "2026-11-02T00:00:00-05:00"


def starts_between(store: FakeFhirStore, start: str, end: str, now: datetime) -> list[str]:
    found = find_appointments(
        store,
        FindRequest.from_parameters(
            [
                ("start", start),
                ("end", end),
                ("service-type-reference", "HealthcareService/checkup"),
                ("schedule", "Schedule/alice"),
                ("_count", "1000"),
            ],
            now=now,
            max_range_days=31,
        ),
    )
    return [e["resource"]["start"] for e in found.get("entry", []) if e["search"]["mode"] == "match"]


class TestWeeklyLimit:
    def test_an_iso_week_spanning_a_month_end(self) -> None:
        # ISO week 49 of 2026: Monday 11-30 to Sunday 12-06.
        store = clinic(bookingLimit=[(2, "wk")])
        now = datetime(2026, 11, 20, tzinfo=UTC)
        do_book(store, "11-30T09:00", now=now)
        do_book(store, "12-01T09:00", now=now)
        offered = starts(store, "11-29", "12-08", now=now)
        days = sorted({s[:5] for s in offered})
        assert days == ["11-29", "12-07"]  # the Sunday before, and the next week

    def test_a_week_limit_on_the_service_and_a_day_limit_on_the_schedule_both_apply(self) -> None:
        store = clinic(bookingLimit=[(3, "d"), (2, "wk")])
        store.resources["Schedule/alice"] = schedule(
            "alice",
            "Practitioner/alice",
            ["checkup"],
            blocks=[params_block(service="checkup", bookingLimit=[(1, "d")])],
        )
        do_book(store, "12-07T09:00")
        assert not any(s.startswith("12-07") for s in starts(store, "12-07", "12-09"))  # the day: 1
        do_book(store, "12-08T09:00")
        assert not any(s[:5] in ("12-09", "12-10") for s in starts(store, "12-07", "12-12"))  # the week: 2


class TestRace:
    def test_two_bookings_cannot_both_take_the_last_place_of_a_day(self) -> None:
        store = clinic(bookingLimit=[(2, "d")])
        do_book(store, "12-07T09:00")
        do_book(store, "12-08T09:00")  # creates period and bucket locks elsewhere: nothing shared
        ours = BookingRequest.from_body(proposal(store, "12-07T15:00"))
        rival = BookingRequest.from_body(proposal(store, "12-07T11:00"))  # no shared time bucket
        store.pause_after(
            "search_slots", lambda: book(store, rival, hold=False, hold_ttl=TTL, clock=FakeClock(NOW).clock())
        )
        with pytest.raises(Unprocessable, match="bookingLimit"):
            book(store, ours, hold=False, hold_ttl=TTL, clock=FakeClock(NOW).clock())
        monday = [
            r
            for k, r in store.resources.items()
            if k.startswith("Appointment/") and r["start"].startswith("2026-12-07")
        ]
        assert len(monday) == 2


class TestConfiguration:
    @pytest.mark.parametrize(
        ("sub", "path", "text"),
        [
            (
                {
                    "url": "bookingLimit",
                    "valueTiming": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "mo"}},
                },
                "HealthcareService.extension[0].extension[1].valueTiming.repeat.periodUnit",
                "periodUnit",
            ),
            (
                {
                    "url": "bookingLimit",
                    "valueTiming": {"repeat": {"frequency": 2, "period": 2, "periodUnit": "d"}},
                },
                "HealthcareService.extension[0].extension[1].valueTiming.repeat.period",
                "period",
            ),
            (
                {
                    "url": "bookingLimit",
                    "valueTiming": {"repeat": {"frequency": 0, "period": 1, "periodUnit": "d"}},
                },
                "HealthcareService.extension[0].extension[1].valueTiming.repeat.frequency",
                "frequency",
            ),
            (
                {
                    "url": "bookingLimit",
                    "valueTiming": {
                        "repeat": {"frequency": 2, "period": 1, "periodUnit": "d", "dayOfWeek": ["mon"]}
                    },
                },
                "HealthcareService.extension[0].extension[1].valueTiming.repeat.dayOfWeek",
                "dayOfWeek",
            ),
            (
                {"url": "bookingLimit", "valueInteger": 3},
                "HealthcareService.extension[0].extension[1]",
                "valueTiming",
            ),
            (
                {"url": "minimumNotice", "valueDuration": {"value": -1, "unit": "h"}},
                "HealthcareService.extension[0].extension[1]",
                "negative",
            ),
            (
                {"url": "bookingWindow", "valueDuration": {"value": 0, "unit": "d"}},
                "HealthcareService.extension[0].extension[1]",
                "longer than zero",
            ),
            (
                {"url": "bookingWindow", "valueDuration": {"value": 3, "unit": "mo"}},
                "HealthcareService.extension[0].extension[1]",
                "unit",
            ),
        ],
    )
    def test_each_malformed_rule_points_at_the_culprit(
        self, sub: dict[str, Any], path: str, text: str
    ) -> None:
        resource = service(duration=30)
        resource["extension"][0]["extension"].append(sub)
        with pytest.raises(InvalidConfiguration) as bad:
            parse_service(resource)
        assert bad.value.expression == [path]
        assert text in bad.value.diagnostics

    def test_one_limit_per_unit(self) -> None:
        block = parse_service(service(duration=30, bookingLimit=[(2, "d"), (10, "wk")])).parameters
        assert block is not None
        assert (block.daily_limit, block.weekly_limit) == (2, 10)
        twice = service(duration=30, bookingLimit=[(2, "d"), (3, "d")])
        with pytest.raises(InvalidConfiguration, match="twice") as bad:
            parse_service(twice)
        assert bad.value.expression == ["HealthcareService.extension[0].extension[2]"]


@settings(max_examples=60, deadline=None)
@given(
    notice_hours=st.integers(0, 72),
    window_days=st.one_of(st.none(), st.integers(1, 20)),
    daily=st.one_of(st.none(), st.integers(1, 4)),
    weekly=st.one_of(st.none(), st.integers(1, 12)),
    booked=st.lists(st.tuples(st.integers(0, 13), st.integers(0, 15)), max_size=12, unique=True),
    now_offset_hours=st.integers(0, 96),
)
def test_no_offered_start_breaks_a_rule(
    notice_hours: int,
    window_days: int | None,
    daily: int | None,
    weekly: int | None,
    booked: list[tuple[int, int]],
    now_offset_hours: int,
) -> None:
    """Counted independently of the engine: every offered start is at least the notice away,
    within the window, and on a local day and ISO week that still have room."""
    limits = [(n, u) for n, u in ((daily, "d"), (weekly, "wk")) if n is not None]
    rules: dict[str, Any] = {"minimumNotice": {"value": notice_hours, "unit": "h"}}
    if window_days is not None:
        rules["bookingWindow"] = {"value": window_days, "unit": "d"}
    if limits:
        rules["bookingLimit"] = limits
    store = clinic(**rules)
    zone = ZoneInfo(NY)
    first = date(2026, 12, 7)
    visits: list[datetime] = []
    for day, half_hour in booked:  # visits already there (written around the rules)
        start = datetime.combine(first + timedelta(days=day), time(9), tzinfo=zone) + timedelta(
            minutes=30 * half_hour
        )
        visits.append(start)
        store.add(slot("alice", "busy", start.isoformat(), (start + timedelta(minutes=30)).isoformat()))
    now = datetime(2026, 12, 6, 12, tzinfo=UTC) + timedelta(hours=now_offset_hours)
    per_day = Counter(v.date() for v in visits)
    per_week = Counter(v.date() - timedelta(days=v.weekday()) for v in visits)
    for text in starts(store, "12-07", "12-21", now=now):
        start = datetime.fromisoformat(f"2026-{text}:00").replace(tzinfo=zone)
        assert start >= now + timedelta(hours=notice_hours)
        if window_days is not None:
            assert start <= now + timedelta(days=window_days)
        if daily is not None:
            assert per_day[start.date()] < daily
        if weekly is not None:
            assert per_week[start.date() - timedelta(days=start.weekday())] < weekly
