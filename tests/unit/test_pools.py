"""Pools in ``$find`` (SPEC §7.2), read like a front desk's calendar: a comma in ``schedule`` is
"any one of", repeating it is "all of"; each member keeps its own rules; ``listed`` takes the
first free member, ``balanced`` the one with the fewest visits that day.

2026-12-07 is a Monday; New York is at -05:00. Dr. Alice, Dr. Bob and Dr. Carol see 30-minute
check-ups Mondays 09:00-12:00 on an hourly grid; rooms 1 and 2 are open the same hours.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from operations.availability import subtract
from operations.booking import BookingRequest, book
from operations.errors import InvalidRequest, Unprocessable
from operations.fhir_values import parse_instant as instant
from operations.find import FindRequest, find_appointments, load_legs, needed_spans
from operations.model import Interval
from operations.store import Stores
from tests.unit.builders import (
    LONG_AGO,
    hours,
    location,
    params_block,
    practitioner,
    schedule,
    service,
    slot,
    window,
)
from tests.unit.fake_store import FakeFhirStore
from tests.unit.test_booking import TTL, FakeClock
from tests.unit.test_find_reads import Recording

NY = "America/New_York"
MONDAY = "2026-12-07"
DAY = (f"{MONDAY}T00:00:00-05:00", "2026-12-08T00:00:00-05:00")
DOCTORS = ("alice", "bob", "carol")
ROOMS = ("room-1", "room-2")
# Tuesday 2026-12-01, 08:00 in New York: before the Monday of the calendar.
NOW = datetime(2026, 12, 1, 13, 0, tzinfo=UTC)


def clinic(**own: list[dict[str, Any]]) -> FakeFhirStore:
    """The three doctors and two rooms; ``own`` gives a Schedule its own parameter blocks
    (``bob=[params_block(service="checkup", bufferBefore=30)]``)."""
    store = FakeFhirStore(service(hours=[hours("mon", "09:00", "12:00")], duration=30))
    for doctor in DOCTORS:
        store.add(practitioner(doctor, NY))
        store.add(schedule(doctor, f"Practitioner/{doctor}", ["checkup"], blocks=own.get(doctor)))
    for room in ROOMS:
        store.add(location(room, NY))
        store.add(schedule(room, f"Location/{room}", ["checkup"], blocks=own.get(room)))
    return store


def at(hhmm: str) -> str:
    return f"{MONDAY}T{hhmm}:00-05:00"


def busy(schedule_id: str, start: str, end: str, status: str = "busy") -> dict[str, Any]:
    return slot(schedule_id, status, at(start), at(end))


def request(
    *pools: str,
    order: str | None = None,
    span: tuple[str, str] = DAY,
    extra: Sequence[tuple[str, str]] = (),
    now: datetime = NOW,
) -> FindRequest:
    params = [
        ("start", span[0]),
        ("end", span[1]),
        ("service-type-reference", "HealthcareService/checkup"),
        *(("schedule", ",".join(f"Schedule/{s}" for s in pool.split(","))) for pool in pools),
        ("_count", "100"),
        *extra,
    ]
    if order is not None:
        params.append(("pool-order", order))
    return FindRequest.from_parameters(params, now=now, max_range_days=31)


def proposals(
    store: FakeFhirStore,
    *pools: str,
    order: str | None = None,
    span: tuple[str, str] = DAY,
    extra: Sequence[tuple[str, str]] = (),
    now: datetime = NOW,
) -> list[dict[str, Any]]:
    bundle = find_appointments(store, request(*pools, order=order, span=span, extra=extra, now=now))
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def book_it(store: FakeFhirStore, proposal: dict[str, Any], now: datetime = NOW) -> int:
    """``$book`` the proposal as it came from ``$find``; the status."""
    request = BookingRequest.from_body(proposal)
    return book(store, request, hold=False, hold_ttl=TTL, clock=FakeClock(now).clock()).status


def visits_per_schedule(store: FakeFhirStore, keys: Iterable[str] | None = None) -> Counter[str]:
    """The stored visit (``busy``) Slots per Schedule reference (among ``keys``, if given)."""
    return Counter(
        r["schedule"]["reference"]
        for k, r in store.resources.items()
        if k.startswith("Slot/") and r["status"] == "busy" and (keys is None or k in keys)
    )


def who(proposals: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """Per proposal: its local start and the Schedules of its contained visit Slots."""
    return [
        (
            p["start"][11:16],
            *(s["schedule"]["reference"][9:] for s in p["contained"] if s["status"] == "busy"),
        )
        for p in proposals
    ]


class TestListedOrder:
    def test_the_first_listed_member_takes_every_time_it_is_free(self) -> None:
        assert who(proposals(clinic(), "alice,bob")) == [
            ("09:00", "alice"),
            ("10:00", "alice"),
            ("11:00", "alice"),
        ]
        assert who(proposals(clinic(), "bob,alice"))[0] == ("09:00", "bob")

    def test_a_busy_first_member_falls_to_the_second(self) -> None:
        store = clinic()
        store.add(busy("alice", "10:00", "10:30"))
        store.add(busy("alice", "11:15", "11:45", status="busy-unavailable"))  # a blocked quarter
        assert who(proposals(store, "alice,bob")) == [
            ("09:00", "alice"),
            ("10:00", "bob"),
            ("11:00", "bob"),
        ]

    def test_a_time_no_member_has_is_not_offered(self) -> None:
        store = clinic()
        store.add(busy("alice", "10:00", "10:30"))
        store.add(busy("bob", "10:00", "10:30"))
        assert [t for t, *_ in who(proposals(store, "alice,bob"))] == ["09:00", "11:00"]

    def test_a_gap_exactly_one_visit_long_is_offered(self) -> None:
        # Alice is free 09:00-09:30 only, Bob not at all: the one start 09:00 is still a start.
        store = clinic()
        store.add(busy("alice", "09:30", "12:00"))
        store.add(busy("bob", "09:00", "12:00"))
        assert who(proposals(store, "alice,bob", "room-1,room-2")) == [("09:00", "alice", "room-1")]

    def test_a_visit_never_straddles_two_members(self) -> None:
        # Alice is free 09:00-09:20, Bob 09:20-10:00: together they cover 09:00-09:30, neither alone.
        store = clinic()
        store.add(busy("alice", "09:20", "12:00"))
        store.add(busy("bob", "09:00", "09:20"))
        store.add(busy("bob", "10:00", "12:00"))
        assert proposals(store, "alice,bob") == []


class TestOwnRules:
    def test_a_members_own_hours_exclude_a_time(self) -> None:
        store = clinic(bob=[params_block(service="checkup", availability=[window("mon", "09:00", "10:00")])])
        store.add(busy("alice", "09:00", "11:00"))
        assert who(proposals(store, "alice,bob")) == [("09:00", "bob"), ("11:00", "alice")]

    def test_a_members_own_buffer_must_fit_on_that_member(self) -> None:
        # Bob needs 30 minutes before a visit, inside his hours: 09:00 is not his.
        store = clinic(bob=[params_block(service="checkup", bufferBefore=30)])
        store.add(busy("alice", "09:00", "09:30"))
        store.add(busy("alice", "10:00", "10:30"))
        assert who(proposals(store, "alice,bob")) == [("10:00", "bob"), ("11:00", "alice")]
        booked = proposals(store, "alice,bob")[0]
        assert [(s["schedule"]["reference"], s["status"]) for s in booked["contained"]] == [
            ("Schedule/bob", "busy-unavailable"),
            ("Schedule/bob", "busy"),
        ]

    def test_a_member_at_its_daily_limit_steps_aside(self) -> None:
        store = clinic(bob=[params_block(service="checkup", bookingLimit=[(1, "d")])])
        store.add(busy("bob", "11:00", "11:30"))  # Bob's one visit of the day
        store.add(busy("alice", "09:00", "10:30"))
        assert who(proposals(store, "alice,bob")) == [("11:00", "alice")]

    def test_a_members_minimum_notice_is_its_own(self) -> None:
        # Now is Tuesday 08:00; Alice needs 146 hours' notice (Monday 10:00 onward), Bob none.
        store = clinic(alice=[params_block(service="checkup", minimumNotice={"value": 146, "unit": "h"})])
        assert who(proposals(store, "alice,bob")) == [
            ("09:00", "bob"),
            ("10:00", "alice"),
            ("11:00", "alice"),
        ]

    def test_a_members_booking_window_is_its_own(self) -> None:
        # Alice books at most six days ahead (until Monday 08:00): the Monday is Bob's.
        store = clinic(alice=[params_block(service="checkup", bookingWindow={"value": 6, "unit": "d"})])
        assert [w for _, w in who(proposals(store, "alice,bob"))] == ["bob", "bob", "bob"]

    def test_an_inactive_member_is_reported_and_the_pool_offers_the_others(self) -> None:
        store = clinic()
        store.add(schedule("alice", "Practitioner/alice", ["checkup"], active=False))
        bundle = find_appointments(store, request("alice,bob"))
        offered = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "match"]
        assert [w for _, w in who(offered)] == ["bob", "bob", "bob"]
        [outcome] = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
        assert "Schedule/alice is not active" in outcome["issue"][0]["diagnostics"]
        assert outcome["issue"][0]["expression"] == ["Parameters.schedule[0]"]

    def test_a_series_stays_on_one_member(self) -> None:
        # Alice is busy at 09:00 two Mondays later: the weekly series at 09:00 goes to Bob, whole.
        store = clinic()
        store.add(slot("alice", "busy", "2026-12-21T09:00:00-05:00", "2026-12-21T09:30:00-05:00"))
        weekly = {"repeat": {"frequency": 1, "period": 1, "periodUnit": "wk", "count": 3}}
        found = proposals(store, "alice,bob", extra=[("recurrence", json.dumps(weekly))])
        assert who(found) == [("09:00", "bob"), ("10:00", "alice"), ("11:00", "alice")]

    def test_a_series_keeps_the_wall_clock_time_of_the_first_pools_member(self) -> None:
        # New York springs forward on 2026-03-08, London only on 03-29: Alice's weekly 09:00 is
        # 14:00Z, then 13:00Z. The London room must be free at 13:00Z the second week, not 14:00Z.
        store = clinic()
        store.add(location("room-london", "Europe/London"))
        all_monday = [params_block(service="checkup", availability=[window("mon", all_day=True)])]
        store.add(schedule("room-london", "Location/room-london", ["checkup"], blocks=all_monday))
        store.add(slot("room-london", "busy", "2026-03-09T13:00:00Z", "2026-03-09T13:30:00Z"))
        weekly = {"repeat": {"frequency": 1, "period": 1, "periodUnit": "wk", "count": 2}}
        found = proposals(
            store,
            "alice,bob",
            "room-london",
            span=("2026-03-02T00:00:00-05:00", "2026-03-03T00:00:00-05:00"),
            extra=[("recurrence", json.dumps(weekly))],
            now=datetime(2026, 2, 1, tzinfo=UTC),
        )
        assert who(found) == [("10:00", "alice", "room-london"), ("11:00", "alice", "room-london")]


class TestBalanced:
    def test_the_member_with_the_fewest_visits_that_day(self) -> None:
        store = clinic()
        store.add(busy("alice", "09:00", "09:30"))
        store.add(busy("alice", "11:30", "12:00"))
        store.add(busy("bob", "10:30", "11:00"))
        # Visits today: Alice 2, Bob 1, Carol 0. Carol is free all morning.
        assert {w for _, w in who(proposals(store, "alice,bob,carol", order="balanced"))} == {"carol"}
        assert who(proposals(store, "alice,bob", order="balanced")) == [
            ("09:00", "bob"),
            ("10:00", "bob"),  # Alice is free too, but Bob has fewer visits
            ("11:00", "bob"),
        ]
        assert who(proposals(store, "alice,bob")) == [
            ("09:00", "bob"),
            ("10:00", "alice"),
            ("11:00", "alice"),
        ]

    def test_ties_go_in_listed_order_and_holds_count_blocks_do_not(self) -> None:
        store = clinic()
        store.add(busy("alice", "11:30", "12:00", status="busy-tentative"))  # a live hold: a visit
        store.add(busy("bob", "11:30", "12:00", status="busy-unavailable"))  # a block: no visit
        store.add(busy("carol", "11:30", "12:00"))
        assert {w for _, w in who(proposals(store, "carol,bob,alice", order="balanced"))} == {"bob"}
        assert {w for _, w in who(proposals(clinic(), "carol,bob,alice", order="balanced"))} == {"carol"}

    def test_visits_count_on_the_members_local_day(self) -> None:
        # Bob works from London (14:00-17:00 there is 09:00-12:00 in New York): a visit at 23:00
        # Sunday New York time is Monday 04:00 for him, and still Sunday for Alice.
        london = [
            params_block(
                service="checkup", timezone="Europe/London", availability=[window("mon", "14:00", "17:00")]
            )
        ]
        store = clinic(bob=london)
        store.add(slot("bob", "busy", "2026-12-06T23:00:00-05:00", "2026-12-06T23:30:00-05:00"))
        store.add(slot("alice", "busy", "2026-12-06T23:00:00-05:00", "2026-12-06T23:30:00-05:00"))
        assert len(proposals(store, "bob,alice", order="balanced")) == 3
        assert {w for _, w in who(proposals(store, "bob,alice", order="balanced"))} == {"alice"}

    def test_booking_the_first_proposal_again_and_again_spreads_the_day(self) -> None:
        store = clinic()
        for _ in range(3):
            assert book_it(store, proposals(store, "alice,bob,carol", order="balanced")[0]) == 201
        assert visits_per_schedule(store) == {"Schedule/alice": 1, "Schedule/bob": 1, "Schedule/carol": 1}


class TestAcrossMidnight:
    """Doctors with no hours (always available): a run of free starts crosses local midnight,
    where the day's counts -- and so the choice -- change."""

    @staticmethod
    def _store(**own: list[dict[str, Any]]) -> FakeFhirStore:
        store = FakeFhirStore(service(duration=60))
        for doctor in ("alice", "bob"):
            store.add(practitioner(doctor, NY))
            store.add(schedule(doctor, f"Practitioner/{doctor}", ["checkup"], blocks=own.get(doctor)))
        return store

    EVENING = (f"{MONDAY}T20:00:00-05:00", "2026-12-08T03:00:00-05:00")

    def test_balanced_changes_member_at_midnight(self) -> None:
        store = self._store()
        store.add(busy("alice", "09:00", "10:00"))  # Monday: Alice 1 visit, Bob none
        store.add(slot("bob", "busy", "2026-12-08T15:00:00-05:00", "2026-12-08T16:00:00-05:00"))
        store.add(slot("bob", "busy", "2026-12-08T17:00:00-05:00", "2026-12-08T18:00:00-05:00"))
        found = who(proposals(store, "alice,bob", order="balanced", span=self.EVENING))
        assert found == [
            ("20:00", "bob"), ("21:00", "bob"), ("22:00", "bob"), ("23:00", "bob"),
            ("00:00", "alice"), ("01:00", "alice"), ("02:00", "alice"),
        ]  # fmt: skip

    def test_balanced_days_follow_the_wall_clock_across_spring_forward(self) -> None:
        # New York springs forward on Sunday 2026-03-08: that day has 23 hours.
        store = self._store()
        visits = {"alice": ["03-07T10", "03-09T10", "03-09T11", "03-09T12"], "bob": ["03-08T10", "03-08T11"]}
        for doctor, starts in visits.items():
            for start in starts:
                offset = "-04:00" if start.startswith("03-09") else "-05:00"
                store.add(slot(doctor, "busy", f"2026-{start}:00:00{offset}", f"2026-{start}:30:00{offset}"))
        found = who(
            proposals(
                store,
                "alice,bob",
                order="balanced",
                span=("2026-03-07T22:00:00-05:00", "2026-03-09T02:00:00-04:00"),
                now=datetime(2026, 2, 1, tzinfo=UTC),
            )
        )
        # Saturday: Alice has 1, Bob 0. Sunday: Bob 2, Alice 0. Monday: Alice 3, Bob 0.
        assert found[:2] == [("22:00", "bob"), ("23:00", "bob")]
        assert {w for _, w in found[2:-2]} == {"alice"}
        assert found[-2:] == [("00:00", "bob"), ("01:00", "bob")]

    def test_a_full_day_ends_at_midnight(self) -> None:
        store = self._store(alice=[params_block(service="checkup", bookingLimit=[(1, "d")])])
        store.add(busy("alice", "09:00", "10:00"))  # Alice's one visit of Monday
        found = who(proposals(store, "alice,bob", span=self.EVENING))
        assert [w for _, w in found] == ["bob"] * 4 + ["alice"] * 3


class TestJointPools:
    def test_a_doctor_and_a_room_each_from_their_pool(self) -> None:
        store = clinic()
        store.add(busy("room-1", "10:00", "10:30"))
        store.add(busy("alice", "11:00", "11:30"))
        found = proposals(store, "alice,bob", "room-1,room-2")
        assert who(found) == [
            ("09:00", "alice", "room-1"),
            ("10:00", "alice", "room-2"),
            ("11:00", "bob", "room-1"),
        ]
        assert [p["actor"]["reference"] for p in found[1]["participant"]] == [
            "Practitioner/alice",
            "Location/room-2",
        ]

    def test_a_pool_with_nobody_free_empties_the_time(self) -> None:
        store = clinic()
        store.add(busy("room-1", "10:00", "10:30"))
        store.add(busy("room-2", "10:00", "10:30"))
        assert [t for t, *_ in who(proposals(store, "alice,bob", "room-1,room-2"))] == ["09:00", "11:00"]

    def test_a_schedule_in_two_pools_serves_both_once(self) -> None:
        found = proposals(clinic(), "alice,bob", "alice")
        assert who(found)[0] == ("09:00", "alice")
        assert len(found[0]["participant"]) == 1

    def test_a_pooled_proposal_books_the_chosen_members_only(self) -> None:
        store = clinic()
        store.add(busy("alice", "09:00", "09:30"))
        first = proposals(store, "alice,bob", "room-1,room-2")[0]
        before = set(store.resources)
        assert book_it(store, first) == 201
        written = sorted(visits_per_schedule(store, set(store.resources) - before))
        assert written == ["Schedule/bob", "Schedule/room-1"]
        # 09:00 again: Bob and room 1 are taken now, Alice was already: nobody is left for it.
        assert who(proposals(store, "alice,bob", "room-1,room-2"))[0] == ("10:00", "alice", "room-1")
        assert who(proposals(store, "alice,carol", "room-1,room-2"))[0] == ("09:00", "carol", "room-2")


class TestErrors:
    def test_pool_order_must_be_listed_or_balanced_and_given_once(self) -> None:
        with pytest.raises(InvalidRequest) as bad:
            request("alice,bob", order="random")
        assert (bad.value.status, bad.value.code, bad.value.expression) == (
            400,
            "value",
            ["Parameters.pool-order"],
        )
        with pytest.raises(InvalidRequest) as twice:
            request("alice,bob", order="listed", extra=[("pool-order", "balanced")])
        assert twice.value.expression == ["Parameters.pool-order[1]"]

    def test_a_member_that_does_not_offer_the_service_is_422_at_its_pool(self) -> None:
        store = clinic()
        store.add(service("dental", duration=30))
        store.add(schedule("bob", "Practitioner/bob", ["dental"]))
        with pytest.raises(Unprocessable) as caught:
            proposals(store, "room-1", "alice,bob")
        assert caught.value.expression == ["Parameters.schedule[1]"]
        assert "Schedule/bob does not offer HealthcareService/checkup" in caught.value.diagnostics

    def test_an_unknown_member_is_422_at_its_pool(self) -> None:
        with pytest.raises(Unprocessable) as caught:
            proposals(clinic(), "alice,bob", "room-1,nowhere")
        assert (caught.value.code, caught.value.expression) == ("not-found", ["Parameters.schedule[1]"])

    def test_members_of_a_pool_must_agree_on_the_grid(self) -> None:
        store = clinic(bob=[params_block(service="checkup", duration=45)])
        with pytest.raises(Unprocessable) as caught:
            proposals(store, "alice,bob")
        assert "duration" in caught.value.diagnostics
        assert caught.value.expression == ["Parameters.schedule[0]"]


class TestReads:
    def test_a_pooled_find_is_one_round_trip_whatever_the_pool_sizes(self) -> None:
        for order in ("listed", "balanced"):
            store, together = clinic(), Recording()
            stores = Stores(caller=store, service=store, together=together)
            find_appointments(stores, request("alice,bob,carol", "room-1,room-2", order=order))
            assert together.groups == [3], order
            assert store.calls == ["read_schedules", "read_service", "search_slots"]

    def test_balanced_counts_the_whole_day_from_the_first_search(self) -> None:
        # A range from 09:30: Alice's 07:00 visit lies far outside it, and still counts.
        store = clinic()
        store.add(slot("alice", "busy", at("07:00"), at("07:30")))
        together = Recording()
        found = find_appointments(
            Stores(caller=store, service=store, together=together),
            request("alice,bob", order="balanced", span=(at("09:30"), at("12:00"))),
        )
        assert together.groups == [3]
        assert {e["resource"]["contained"][0]["schedule"]["reference"] for e in found["entry"]} == {
            "Schedule/bob"
        }


def test_balanced_needs_every_members_whole_local_days() -> None:
    store = clinic(bob=[params_block(service="checkup", timezone="Asia/Kolkata")])
    _, legs = load_legs(store, ["alice", "bob"], "checkup")
    morning = Interval(instant(at("09:30")), instant(at("12:00")))
    new_york_day = Interval(instant(at("00:00")), instant("2026-12-08T00:00:00-05:00"))
    kolkata_day = Interval(instant("2026-12-07T00:00:00+05:30"), instant("2026-12-08T00:00:00+05:30"))
    balanced = needed_spans(morning, legs, None, balanced=True)
    assert not subtract([new_york_day, kolkata_day], balanced)
    assert subtract([new_york_day], needed_spans(morning, legs, None))


def test_a_query_string_comma_is_any_one_of() -> None:
    found = FindRequest.from_parameters(
        [
            ("start", DAY[0]),
            ("end", DAY[1]),
            ("service-type-reference", "HealthcareService/checkup"),
            ("schedule", "Schedule/alice,Schedule/bob"),
            ("schedule", "Schedule/room-1"),
        ],
        now=LONG_AGO,
        max_range_days=31,
    )
    assert found.groups == (("alice", "bob"), ("room-1",))
    assert found.schedule_expressions == ("Parameters.schedule[0]",) * 2 + ("Parameters.schedule[1]",)
    assert found.pool_order == "listed"
