"""``$find`` on small clinics, read like a calendar: literal instants, named weekdays.

2026-12-07 is a Monday. America/New_York springs forward on Sunday 2026-03-08 (02:00 -> 03:00)
and falls back on Sunday 2026-11-01 (02:00 -> 01:00).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from operations.errors import InvalidConfiguration, Unprocessable
from operations.find import FindRequest, find_appointments, find_slots
from operations.model import HOLD_EXPIRES_URL, SLOT_CAPACITY_URL
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
from tests.unit.fake_store import FakeStore

NY = "America/New_York"

MONDAY = "2026-12-07"
TUESDAY = "2026-12-08"


def find(
    store: FakeStore,
    start: str,
    end: str,
    schedules: list[str],
    service_id: str = "checkup",
    count: int = 100,
    now: datetime = LONG_AGO,
) -> dict[str, Any]:
    params = [("start", start), ("end", end), ("service-type-reference", f"HealthcareService/{service_id}")]
    params += [("schedule", f"Schedule/{s}") for s in schedules]
    params.append(("_count", str(count)))
    request = FindRequest.from_parameters(params, now=now, max_range_days=31)
    return find_appointments(store, request)


def starts(bundle: dict[str, Any]) -> list[str]:
    """Each proposal's start as written (local time with its offset), trimmed to the minute."""
    return [
        e["resource"]["start"][:16] + e["resource"]["start"][19:]
        for e in bundle.get("entry", [])
        if e["search"]["mode"] == "match"
    ]


def clinic(*extra: dict[str, Any], tz: str = NY, **block: Any) -> FakeStore:
    """Dr. Alice in ``tz``, one service (30-min default), Mondays 09:00-12:00 unless overridden."""
    block.setdefault("duration", 30)
    return FakeStore(
        practitioner("alice", tz),
        service(hours=[hours("mon", "09:00", "12:00")], **block),
        schedule("alice", "Practitioner/alice", ["checkup"]),
        *extra,
    )


class TestWeeklyHours:
    def test_hourly_grid_by_default(self) -> None:
        bundle = find(clinic(), f"{MONDAY}T00:00:00-05:00", f"{TUESDAY}T00:00:00-05:00", ["alice"])
        assert starts(bundle) == [
            "2026-12-07T09:00-05:00",
            "2026-12-07T10:00-05:00",
            "2026-12-07T11:00-05:00",
        ]
        assert bundle["total"] == 3
        assert bundle["type"] == "searchset"

    def test_negative_offset_is_taken_modulo_the_interval(self) -> None:
        store = clinic(alignmentInterval=15, alignmentOffset=-5)
        bundle = find(store, f"{MONDAY}T09:00:00-05:00", f"{MONDAY}T10:00:00-05:00", ["alice"])
        assert starts(bundle) == ["2026-12-07T09:10-05:00", "2026-12-07T09:25-05:00"]

    def test_zero_interval_means_sixty_minutes(self) -> None:
        bundle = find(
            clinic(alignmentInterval=0), f"{MONDAY}T00:00:00-05:00", f"{TUESDAY}T00:00:00-05:00", ["alice"]
        )
        assert len(starts(bundle)) == 3

    def test_other_days_offer_nothing(self) -> None:
        bundle = find(clinic(), f"{TUESDAY}T00:00:00-05:00", "2026-12-09T00:00:00-05:00", ["alice"])
        assert bundle == {"resourceType": "Bundle", "type": "searchset", "total": 0}

    def test_window_over_midnight_belongs_to_the_day_it_starts(self) -> None:
        store = FakeStore(
            practitioner("alice", NY),
            service(duration=60),
            schedule(
                "alice",
                "Practitioner/alice",
                ["checkup"],
                blocks=[params_block(service="checkup", availability=[window("fri", "22:00", "02:00")])],
            ),
        )
        # Saturday only: the Friday-night window still reaches into it.
        bundle = find(store, "2026-12-12T00:00:00-05:00", "2026-12-12T12:00:00-05:00", ["alice"])
        assert starts(bundle) == ["2026-12-12T00:00-05:00", "2026-12-12T01:00-05:00"]
        bundle = find(store, "2026-12-11T00:00:00-05:00", "2026-12-13T00:00:00-05:00", ["alice"])
        assert len(starts(bundle)) == 4

    def test_all_day_and_midnight_to_midnight_are_24_hours(self) -> None:
        for availability in ([window("sat", all_day=True)], [window("sat", "00:00", "00:00")]):
            store = FakeStore(
                practitioner("alice", NY),
                service(duration=60),
                schedule(
                    "alice",
                    "Practitioner/alice",
                    ["checkup"],
                    blocks=[params_block(service="checkup", availability=availability)],
                ),
            )
            bundle = find(store, "2026-12-12T00:00:00-05:00", "2026-12-14T00:00:00-05:00", ["alice"])
            assert len(starts(bundle)) == 24

    def test_no_hours_anywhere_means_always_available(self) -> None:
        store = FakeStore(
            practitioner("alice", NY),
            service(duration=60),
            schedule("alice", "Practitioner/alice", ["checkup"]),
        )
        bundle = find(store, f"{MONDAY}T00:00:00-05:00", f"{TUESDAY}T00:00:00-05:00", ["alice"])
        assert len(starts(bundle)) == 24

    def test_schedule_availability_replaces_the_service_hours(self) -> None:
        store = FakeStore(
            practitioner("alice", NY),
            service(hours=[hours("mon", "09:00", "12:00")], duration=30),
            schedule(
                "alice",
                "Practitioner/alice",
                ["checkup"],
                blocks=[params_block(service="checkup", availability=[window("mon", "14:00", "16:00")])],
            ),
        )
        bundle = find(store, f"{MONDAY}T00:00:00-05:00", f"{TUESDAY}T00:00:00-05:00", ["alice"])
        assert starts(bundle) == ["2026-12-07T14:00-05:00", "2026-12-07T15:00-05:00"]

    def test_quarter_past_five_thirty_zone(self) -> None:
        store = clinic(tz="Asia/Kolkata")
        bundle = find(store, f"{MONDAY}T00:00:00+05:30", f"{TUESDAY}T00:00:00+05:30", ["alice"])
        assert starts(bundle) == [
            "2026-12-07T09:00+05:30",
            "2026-12-07T10:00+05:30",
            "2026-12-07T11:00+05:30",
        ]
        first = bundle["entry"][0]["resource"]
        assert datetime.fromisoformat(first["start"]).astimezone(UTC) == datetime(
            2026, 12, 7, 3, 30, tzinfo=UTC
        )


class TestDaylightSaving:
    def _night_store(self, start: str, end: str, day: str, **block: Any) -> FakeStore:
        block.setdefault("duration", 30)
        return FakeStore(
            practitioner("alice", NY),
            service(**block),
            schedule(
                "alice",
                "Practitioner/alice",
                ["checkup"],
                blocks=[params_block(service="checkup", availability=[window(day, start, end)])],
            ),
        )

    def test_spring_forward_night_window_is_five_real_hours(self) -> None:
        store = self._night_store("00:30", "06:30", "sun", alignmentInterval=30)
        bundle = find(store, "2026-03-08T00:00:00-05:00", "2026-03-09T00:00:00-04:00", ["alice"])
        # 00:30 EST .. 06:30 EDT is 5 hours: ten half-hour visits, none in the missing hour.
        assert starts(bundle) == [
            "2026-03-08T00:30-05:00",
            "2026-03-08T01:00-05:00",
            "2026-03-08T01:30-05:00",
            "2026-03-08T03:00-04:00",
            "2026-03-08T03:30-04:00",
            "2026-03-08T04:00-04:00",
            "2026-03-08T04:30-04:00",
            "2026-03-08T05:00-04:00",
            "2026-03-08T05:30-04:00",
            "2026-03-08T06:00-04:00",
        ]

    def test_start_in_the_gap_moves_forward_by_the_gap(self) -> None:
        store = self._night_store("02:30", "04:00", "sun", alignmentInterval=30)
        bundle = find(store, "2026-03-08T00:00:00-05:00", "2026-03-09T00:00:00-04:00", ["alice"])
        assert starts(bundle) == ["2026-03-08T03:30-04:00"]

    def test_fall_back_repeated_hour_is_offered_twice(self) -> None:
        store = self._night_store("01:00", "03:00", "sun", duration=60)
        bundle = find(store, "2026-11-01T00:00:00-04:00", "2026-11-02T00:00:00-05:00", ["alice"])
        # 01:00 is ambiguous: the window starts at the earlier one (EDT) and is 3 real hours.
        assert starts(bundle) == [
            "2026-11-01T01:00-04:00",
            "2026-11-01T01:00-05:00",
            "2026-11-01T02:00-05:00",
        ]

    def test_working_hours_on_dst_days_keep_their_wall_clock(self) -> None:
        store = FakeStore(
            practitioner("alice", NY),
            service(hours=[hours("sun mon", "09:00", "11:00")], duration=60),
            schedule("alice", "Practitioner/alice", ["checkup"]),
        )
        spring = find(store, "2026-03-08T00:00:00-05:00", "2026-03-09T00:00:00-04:00", ["alice"])
        assert starts(spring) == ["2026-03-08T09:00-04:00", "2026-03-08T10:00-04:00"]
        fall = find(store, "2026-11-01T00:00:00-04:00", "2026-11-02T00:00:00-05:00", ["alice"])
        assert starts(fall) == ["2026-11-01T09:00-05:00", "2026-11-01T10:00-05:00"]


class TestSlotsAsOverrides:
    def test_busy_slot_removes_time(self) -> None:
        store = clinic(slot("alice", "busy", f"{MONDAY}T10:00:00-05:00", f"{MONDAY}T10:30:00-05:00"))
        bundle = find(store, f"{MONDAY}T00:00:00-05:00", f"{TUESDAY}T00:00:00-05:00", ["alice"])
        assert starts(bundle) == ["2026-12-07T09:00-05:00", "2026-12-07T11:00-05:00"]

    def test_long_block_that_began_before_the_range_still_counts(self) -> None:
        vacation = slot("alice", "busy-unavailable", "2026-11-20T00:00:00-05:00", "2026-12-11T00:00:00-05:00")
        bundle = find(clinic(vacation), f"{MONDAY}T00:00:00-05:00", "2026-12-15T00:00:00-05:00", ["alice"])
        assert starts(bundle) == [
            "2026-12-14T09:00-05:00",
            "2026-12-14T10:00-05:00",
            "2026-12-14T11:00-05:00",
        ]

    def test_free_slot_adds_time_outside_the_hours_and_touching_ones_merge(self) -> None:
        store = clinic(
            slot("alice", "free", f"{TUESDAY}T14:00:00-05:00", f"{TUESDAY}T14:30:00-05:00"),
            slot("alice", "free", f"{TUESDAY}T14:30:00-05:00", f"{TUESDAY}T15:00:00-05:00"),
            duration=60,
        )
        bundle = find(store, f"{TUESDAY}T00:00:00-05:00", "2026-12-09T00:00:00-05:00", ["alice"])
        assert starts(bundle) == ["2026-12-08T14:00-05:00"]

    def test_busy_beats_free(self) -> None:
        store = clinic(
            slot("alice", "free", f"{TUESDAY}T14:00:00-05:00", f"{TUESDAY}T16:00:00-05:00"),
            slot("alice", "busy", f"{TUESDAY}T14:00:00-05:00", f"{TUESDAY}T15:00:00-05:00"),
        )
        bundle = find(store, f"{TUESDAY}T00:00:00-05:00", "2026-12-09T00:00:00-05:00", ["alice"])
        assert starts(bundle) == ["2026-12-08T15:00-05:00"]

    def test_entered_in_error_is_ignored(self) -> None:
        store = clinic(
            slot("alice", "entered-in-error", f"{MONDAY}T09:00:00-05:00", f"{MONDAY}T12:00:00-05:00")
        )
        bundle = find(store, f"{MONDAY}T00:00:00-05:00", f"{TUESDAY}T00:00:00-05:00", ["alice"])
        assert len(starts(bundle)) == 3

    def test_slot_with_service_type_applies_only_to_matching_services(self) -> None:
        other = {"coding": [{"system": "http://example.org/visit-type", "code": "surgery"}]}
        same = {"coding": [{"system": "http://example.org/visit-type", "code": "checkup"}]}
        code_only = {"coding": [{"code": "checkup"}]}  # no system: not the same coding
        store = clinic(
            slot(
                "alice", "busy", f"{MONDAY}T09:00:00-05:00", f"{MONDAY}T09:30:00-05:00", serviceType=[other]
            ),
            slot("alice", "busy", f"{MONDAY}T10:00:00-05:00", f"{MONDAY}T10:30:00-05:00", serviceType=[same]),
            slot(
                "alice",
                "busy",
                f"{MONDAY}T11:00:00-05:00",
                f"{MONDAY}T11:30:00-05:00",
                serviceType=[code_only],
            ),
        )
        bundle = find(store, f"{MONDAY}T00:00:00-05:00", f"{TUESDAY}T00:00:00-05:00", ["alice"])
        assert starts(bundle) == ["2026-12-07T09:00-05:00", "2026-12-07T11:00-05:00"]

    def test_holds_block_until_they_expire(self) -> None:
        def hold(start: str, end: str, expires: str | None) -> dict[str, Any]:
            extra = {"extension": [{"url": HOLD_EXPIRES_URL, "valueInstant": expires}]} if expires else {}
            return slot("alice", "busy-tentative", start, end, **extra)

        now = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)  # 03:00 New York time
        store = clinic(
            hold(f"{MONDAY}T09:00:00-05:00", f"{MONDAY}T09:30:00-05:00", "2026-12-07T07:00:00Z"),  # lapsed
            hold(f"{MONDAY}T10:00:00-05:00", f"{MONDAY}T10:30:00-05:00", "2026-12-07T09:00:00Z"),  # live
            hold(f"{MONDAY}T11:00:00-05:00", f"{MONDAY}T11:30:00-05:00", None),  # never lapses
        )
        bundle = find(store, f"{MONDAY}T00:00:00-05:00", f"{TUESDAY}T00:00:00-05:00", ["alice"], now=now)
        assert starts(bundle) == ["2026-12-07T09:00-05:00"]


class TestBuffers:
    def test_buffers_must_lie_in_available_time(self) -> None:
        store = clinic(bufferBefore=10, bufferAfter=5, alignmentInterval=15)
        bundle = find(store, f"{MONDAY}T00:00:00-05:00", f"{TUESDAY}T00:00:00-05:00", ["alice"])
        found = starts(bundle)
        assert found[0] == "2026-12-07T09:15-05:00"  # 09:00 would need 08:50-09:00
        assert found[-1] == "2026-12-07T11:15-05:00"  # 11:30 would need 12:00-12:05

    def test_buffers_never_overlap_busy_time(self) -> None:
        store = clinic(
            slot("alice", "busy", f"{MONDAY}T10:00:00-05:00", f"{MONDAY}T10:30:00-05:00"),
            bufferAfter=10,
            alignmentInterval=30,
        )
        bundle = find(store, f"{MONDAY}T00:00:00-05:00", f"{TUESDAY}T00:00:00-05:00", ["alice"])
        assert "2026-12-07T09:30-05:00" not in starts(bundle)  # its buffer would touch 10:00-10:10
        assert "2026-12-07T10:30-05:00" in starts(bundle)

    def test_contained_slots_carry_the_visit_and_its_buffers(self) -> None:
        store = clinic(bufferBefore=10, bufferAfter=5, alignmentInterval=15)
        bundle = find(store, f"{MONDAY}T09:00:00-05:00", f"{MONDAY}T10:00:00-05:00", ["alice"], count=1)
        appointment = bundle["entry"][0]["resource"]
        assert [
            (s["status"], s["start"][11:16], s["end"][11:16], s.get("comment"))
            for s in appointment["contained"]
        ] == [
            ("busy-unavailable", "09:05", "09:15", "buffer before appointment"),
            ("busy", "09:15", "09:45", None),
            ("busy-unavailable", "09:45", "09:50", "buffer after appointment"),
        ]
        assert appointment["status"] == "proposed"
        assert "id" not in appointment
        assert appointment["participant"] == [
            {"actor": {"reference": "Practitioner/alice"}, "required": "required", "status": "needs-action"}
        ]

    def test_visit_must_lie_in_the_range_but_buffers_need_not(self) -> None:
        store = clinic(bufferBefore=10, bufferAfter=10, alignmentInterval=30)
        bundle = find(store, f"{MONDAY}T09:30:00-05:00", f"{MONDAY}T10:30:00-05:00", ["alice"])
        assert starts(bundle) == ["2026-12-07T09:30-05:00", "2026-12-07T10:00-05:00"]


class TestCapacity:
    def _visit(self, capacity: int | None) -> dict[str, Any]:
        extra = {"extension": [{"url": SLOT_CAPACITY_URL, "valuePositiveInt": capacity}]} if capacity else {}
        return slot("alice", "busy", f"{MONDAY}T09:00:00-05:00", f"{MONDAY}T09:30:00-05:00", **extra)

    def test_group_visit_admits_until_full(self) -> None:
        one = clinic(self._visit(2), slotCapacity=2)
        assert "2026-12-07T09:00-05:00" in starts(
            find(one, f"{MONDAY}T09:00:00-05:00", f"{MONDAY}T10:00:00-05:00", ["alice"])
        )
        two = clinic(self._visit(2), self._visit(2), slotCapacity=2)
        assert starts(find(two, f"{MONDAY}T09:00:00-05:00", f"{MONDAY}T10:00:00-05:00", ["alice"])) == []

    def test_unstamped_booking_counts_as_capacity_one(self) -> None:
        store = clinic(self._visit(None), slotCapacity=3)
        assert starts(find(store, f"{MONDAY}T09:00:00-05:00", f"{MONDAY}T10:00:00-05:00", ["alice"])) == []

    def test_hard_block_beats_capacity(self) -> None:
        block = slot("alice", "busy-unavailable", f"{MONDAY}T09:00:00-05:00", f"{MONDAY}T09:30:00-05:00")
        store = clinic(block, slotCapacity=5)
        assert starts(find(store, f"{MONDAY}T09:00:00-05:00", f"{MONDAY}T10:00:00-05:00", ["alice"])) == []

    def test_buffer_slots_of_a_group_booking_count_as_its_footprint(self) -> None:
        stamp = {"extension": [{"url": SLOT_CAPACITY_URL, "valuePositiveInt": 2}]}
        buffer = slot(
            "alice",
            "busy-unavailable",
            f"{MONDAY}T09:30:00-05:00",
            f"{MONDAY}T09:40:00-05:00",
            comment="buffer after appointment",
            **stamp,
        )
        store = clinic(buffer, slotCapacity=2, alignmentInterval=30)
        assert "2026-12-07T09:30-05:00" in starts(
            find(store, f"{MONDAY}T09:00:00-05:00", f"{MONDAY}T11:00:00-05:00", ["alice"])
        )


class TestJointSchedules:
    def _store(self, **block: Any) -> FakeStore:
        block.setdefault("duration", 60)
        return FakeStore(
            practitioner("alice", NY),
            location("room-london", "Europe/London"),
            service(**block),
            schedule(
                "alice",
                "Practitioner/alice",
                ["checkup"],
                blocks=[params_block(service="checkup", availability=[window("mon", "09:00", "17:00")])],
            ),
            schedule(
                "room",
                "Location/room-london",
                ["checkup"],
                # 13:00-18:00 in London is 08:00-13:00 in New York in December.
                blocks=[params_block(service="checkup", availability=[window("mon", "13:00", "18:00")])],
            ),
        )

    def test_both_must_be_free_and_the_grid_follows_the_first_schedule(self) -> None:
        bundle = find(
            self._store(), f"{MONDAY}T00:00:00-05:00", f"{TUESDAY}T00:00:00-05:00", ["alice", "room"]
        )
        assert starts(bundle) == [
            "2026-12-07T09:00-05:00",
            "2026-12-07T10:00-05:00",
            "2026-12-07T11:00-05:00",
            "2026-12-07T12:00-05:00",
        ]
        participants = bundle["entry"][0]["resource"]["participant"]
        assert [p["actor"]["reference"] for p in participants] == [
            "Practitioner/alice",
            "Location/room-london",
        ]
        contained = bundle["entry"][0]["resource"]["contained"]
        assert [(s["schedule"]["reference"], s["status"]) for s in contained] == [
            ("Schedule/alice", "busy"),
            ("Schedule/room", "busy"),
        ]

    def test_explicit_alignment_time_zone_anchors_the_grid(self) -> None:
        store = self._store(alignmentTimezone="Asia/Kolkata")  # +05:30: whole hours there are :30 here
        bundle = find(store, f"{MONDAY}T00:00:00-05:00", f"{TUESDAY}T00:00:00-05:00", ["alice", "room"])
        assert starts(bundle)[0] == "2026-12-07T09:30-05:00"

    def test_busy_on_either_removes_the_time(self) -> None:
        store = self._store()
        store.add(slot("room", "busy", f"{MONDAY}T15:00:00+00:00", f"{MONDAY}T16:00:00+00:00"))  # 10:00 NY
        bundle = find(store, f"{MONDAY}T00:00:00-05:00", f"{TUESDAY}T00:00:00-05:00", ["alice", "room"])
        assert starts(bundle) == [
            "2026-12-07T09:00-05:00",
            "2026-12-07T11:00-05:00",
            "2026-12-07T12:00-05:00",
        ]

    def test_schedules_must_agree_on_duration(self) -> None:
        store = self._store()
        store.add(
            schedule(
                "room",
                "Location/room-london",
                ["checkup"],
                blocks=[params_block(service="checkup", duration=45)],
            )
        )
        with pytest.raises(Unprocessable) as caught:
            find(store, f"{MONDAY}T00:00:00-05:00", f"{TUESDAY}T00:00:00-05:00", ["alice", "room"])
        assert caught.value.expression == ["Parameters.schedule[1]"]
        assert "duration" in caught.value.diagnostics


class TestWhatCannotBeOffered:
    def test_inactive_schedule_is_reported_in_the_bundle(self) -> None:
        store = clinic()
        store.add(schedule("alice", "Practitioner/alice", ["checkup"], active=False))
        bundle = find(store, f"{MONDAY}T00:00:00-05:00", f"{TUESDAY}T00:00:00-05:00", ["alice"])
        assert bundle["total"] == 0
        [entry] = bundle["entry"]
        assert entry["search"]["mode"] == "outcome"
        assert "not active" in entry["resource"]["issue"][0]["diagnostics"]

    def test_planning_horizon_limits_and_reports(self) -> None:
        store = clinic()
        store.add(
            schedule("alice", "Practitioner/alice", ["checkup"], horizon=(None, f"{MONDAY}T10:30:00-05:00"))
        )
        bundle = find(store, f"{MONDAY}T00:00:00-05:00", f"{TUESDAY}T00:00:00-05:00", ["alice"])
        assert starts(bundle) == ["2026-12-07T09:00-05:00", "2026-12-07T10:00-05:00"]
        later = find(store, "2026-12-14T00:00:00-05:00", "2026-12-15T00:00:00-05:00", ["alice"])
        assert later["total"] == 0
        assert later["entry"][0]["search"]["mode"] == "outcome"

    def test_nothing_before_now_and_count_cuts(self) -> None:
        now = datetime(2026, 12, 7, 15, 5, tzinfo=UTC)  # 10:05 in New York
        bundle = find(clinic(), f"{MONDAY}T00:00:00-05:00", f"{TUESDAY}T00:00:00-05:00", ["alice"], now=now)
        assert starts(bundle) == ["2026-12-07T11:00-05:00"]
        two = find(clinic(), f"{MONDAY}T00:00:00-05:00", "2026-12-22T00:00:00-05:00", ["alice"], count=2)
        assert starts(two) == ["2026-12-07T09:00-05:00", "2026-12-07T10:00-05:00"]
        assert two["total"] == 2

    def test_inactive_service_is_422(self) -> None:
        store = FakeStore(
            practitioner("alice", NY),
            service(duration=30, active=False),
            schedule("alice", "Practitioner/alice", ["checkup"]),
        )
        with pytest.raises(Unprocessable) as caught:
            find(store, f"{MONDAY}T00:00:00-05:00", f"{TUESDAY}T00:00:00-05:00", ["alice"])
        assert caught.value.status == 422
        assert caught.value.expression == ["Parameters.service-type-reference"]

    def test_missing_schedule_and_service_not_offered_are_422(self) -> None:
        store = clinic(service("dental", duration=30))
        with pytest.raises(Unprocessable) as missing:
            find(store, f"{MONDAY}T00:00:00-05:00", f"{TUESDAY}T00:00:00-05:00", ["alice", "nobody"])
        assert missing.value.code == "not-found"
        assert missing.value.expression == ["Parameters.schedule[1]"]
        with pytest.raises(Unprocessable) as not_offered:
            find(
                store, f"{MONDAY}T00:00:00-05:00", f"{TUESDAY}T00:00:00-05:00", ["alice"], service_id="dental"
            )
        assert not_offered.value.code == "business-rule"

    def test_actor_without_time_zone_is_a_configuration_error(self) -> None:
        store = clinic(tz="")
        with pytest.raises(InvalidConfiguration) as caught:
            find(store, f"{MONDAY}T00:00:00-05:00", f"{TUESDAY}T00:00:00-05:00", ["alice"])
        assert "timezone" in caught.value.diagnostics

    def test_timezone_in_the_parameters_stands_in_for_the_actor(self) -> None:
        store = clinic(tz="", timezone="Asia/Kolkata")
        bundle = find(store, f"{MONDAY}T00:00:00+05:30", f"{TUESDAY}T00:00:00+05:30", ["alice"])
        assert starts(bundle)[0] == "2026-12-07T09:00+05:30"


class TestScheduleFind:
    def test_free_slots_of_one_schedule_with_the_only_service_implied(self) -> None:
        request = FindRequest.from_parameters(
            [("start", f"{MONDAY}T00:00:00-05:00"), ("end", f"{TUESDAY}T00:00:00-05:00")],
            now=LONG_AGO,
            max_range_days=31,
            schedule_id="alice",
        )
        bundle = find_slots(clinic(), request)
        slots = [e["resource"] for e in bundle["entry"]]
        assert [(s["status"], s["start"][11:16], s["end"][11:16]) for s in slots] == [
            ("free", "09:00", "09:30"),
            ("free", "10:00", "10:30"),
            ("free", "11:00", "11:30"),
        ]
        assert all(s["schedule"] == {"reference": "Schedule/alice"} for s in slots)
        assert all("id" not in s for s in slots)
