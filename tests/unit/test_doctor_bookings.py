"""The doctor's checks of Slots and Appointments on literal resources: overlaps beyond capacity,
Appointments without Slots and Slots without Appointments, stuck holds, and schedules booked
together whose grids disagree."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from operations.model import HOLD_EXPIRES_URL, SERVICE_TYPE_REFERENCE_URL, SLOT_CAPACITY_URL
from operations.writes import HOLD_TAG, booking_request_tag
from plugin.doctor_bookings import check_bookings
from plugin.doctor_config import check_configuration
from tests.unit import builders
from tests.unit.test_doctor_config import NOW, clinic_data

Resource = dict[str, Any]
DAY = "2027-03-08"  # a Monday a week after NOW
WEEKDAYS = [builders.hours("mon tue wed thu fri", "09:00", "17:00")]


def configuration(ann_block: Resource | None = None) -> list[Resource]:
    return [
        builders.practitioner("ann", "America/New_York"),
        builders.location("room", "America/New_York"),
        builders.service("visit", hours=WEEKDAYS, duration=30, alignmentInterval=30),
        builders.schedule("ann", "Practitioner/ann", ["visit"], blocks=[ann_block] if ann_block else None),
        builders.schedule("room", "Location/room", ["visit"]),
    ]


def slot(
    sid: str, start: str, end: str, status: str = "busy", schedule: str = "ann", **extra: Any
) -> Resource:
    return {
        **builders.slot(schedule, status, f"{DAY}T{start}:00-05:00", f"{DAY}T{end}:00-05:00", **extra),
        "id": sid,
    }


def appointment(
    aid: str,
    *slot_ids: str,
    status: str = "booked",
    actors: tuple[str, ...] = ("Practitioner/ann",),
    **extra: Any,
) -> Resource:
    return {
        "resourceType": "Appointment",
        "id": aid,
        "status": status,
        "start": f"{DAY}T10:00:00-05:00",
        "serviceType": [
            {
                "extension": [
                    {
                        "url": SERVICE_TYPE_REFERENCE_URL,
                        "valueReference": {"reference": "HealthcareService/visit"},
                    }
                ]
            }
        ],
        "participant": [{"actor": {"reference": a}} for a in actors],
        "slot": [{"reference": f"Slot/{s}"} for s in slot_ids],
        **extra,
    }


def capacity(n: int) -> dict[str, Any]:
    return {"extension": [{"url": SLOT_CAPACITY_URL, "valuePositiveInt": n}]}


def expiring(minutes_ago: float) -> dict[str, Any]:
    instant = (NOW - timedelta(minutes=minutes_ago)).isoformat()
    return {"extension": [{"url": HOLD_EXPIRES_URL, "valueInstant": instant}]}


def run(
    slots: list[Resource],
    appointments: list[Resource],
    *,
    config: list[Resource] | None = None,
    grace: timedelta = timedelta(seconds=60),
) -> list[tuple[str, str, str, str]]:
    clinic = clinic_data(
        *(config or configuration()), slots=slots, appointments=appointments, hold_grace=grace
    )
    _, parsed = check_configuration(clinic)
    return sorted((f.code, f.resource, f.expression, f.message) for f in check_bookings(clinic, parsed))


def codes(slots: list[Resource], appointments: list[Resource], **kwargs: Any) -> set[tuple[str, str, str]]:
    return {(c, r, e) for c, r, e, _ in run(slots, appointments, **kwargs)}


# ---- over capacity --------------------------------------------------------------------------


def test_a_clean_day_of_bookings_is_clean() -> None:
    mark: dict[str, Any] = {"meta": {"tag": [booking_request_tag("b1")]}}
    slots = [
        slot("v1", "10:00", "10:30", **mark, **capacity(1)),
        slot("a1", "10:30", "10:40", "busy-unavailable", comment="buffer after appointment", **mark),
        slot("v2", "10:40", "11:10", **capacity(1)),  # touches the buffer: no overlap
        slot("block", "12:00", "13:00", "busy-unavailable", comment="lunch"),
        slot("extra", "18:00", "19:00", "free"),
    ]
    assert run(slots, [appointment("b1", "v1", "a1"), appointment("b2", "v2")]) == []


def test_time_booked_around_the_sidecar_points_at_the_slot_it_did_not_write() -> None:
    slots = [
        slot("ours", "10:00", "10:30", meta={"tag": [booking_request_tag("x")]}, **capacity(1)),
        slot("theirs", "10:15", "10:45"),
    ]
    found = run(slots, [appointment("a", "ours"), appointment("b", "theirs")])
    assert found == [
        (
            "slots-over-capacity",
            "Slot/theirs",
            "Slot.start",
            "Schedule/ann has 2 bookings at once from 2027-03-08T10:15:00-05:00 to 2027-03-08T10:30:00-05:00 "
            "where their capacity allows 1: Slot/ours, Slot/theirs (Slot/theirs was not written by $book)",
        )
    ]


def test_capacity_stamps_allow_group_visits_up_to_the_smallest() -> None:
    two = [slot(f"s{i}", "10:00", "11:00", **capacity(2)) for i in range(2)]
    visits = [appointment(f"a{i}", f"s{i}") for i in range(3)]
    assert run(two, visits[:2]) == []
    three = [*two, slot("s2", "10:30", "11:30", **capacity(3))]
    found = run(three, visits)
    assert [(c, r) for c, r, _, _ in found] == [("slots-over-capacity", "Slot/s2")]
    assert "has 3 bookings at once from 2027-03-08T10:30:00-05:00 to 2027-03-08T11:00:00-05:00" in found[0][3]
    assert "capacity allows 2" in found[0][3]


def test_lapsed_holds_and_blocks_take_no_place() -> None:
    slots = [
        slot("visit", "10:00", "10:30"),
        slot("lapsed", "10:00", "10:30", "busy-tentative", **expiring(0.5)),
        slot("block", "09:00", "12:00", "busy-unavailable", comment="staff meeting"),
    ]
    assert codes(slots, [appointment("a", "visit"), appointment("h", "lapsed", status="pending")]) == set()


def test_overlaps_on_different_schedules_are_no_overlap() -> None:
    slots = [slot("a", "10:00", "10:30"), slot("b", "10:00", "10:30", schedule="room")]
    assert codes(slots, [appointment("x", "a", "b", actors=("Practitioner/ann", "Location/room"))]) == set()


def test_one_finding_per_overlapping_stretch() -> None:
    slots = [
        slot("a", "10:00", "11:00"),
        slot("b", "10:30", "11:30"),
        slot("c", "11:00", "12:00"),
        slot("d", "15:00", "15:30"),
        slot("e", "15:00", "15:30"),
    ]
    found = run(slots, [appointment(s, s) for s in "abcde"])
    assert [m.split(": ")[1].split(" (")[0] for _, _, _, m in found] == [
        "Slot/a, Slot/b, Slot/c",
        "Slot/d, Slot/e",
    ]


# ---- Appointments and their Slots -----------------------------------------------------------


def test_booked_appointments_that_take_no_time() -> None:
    slots = [slot("free-one", "10:00", "10:30", "free")]
    appointments = [
        appointment("none"),
        appointment("gone", "deleted"),
        appointment("freed", "free-one"),
        appointment("pending-none", status="pending"),  # not booked: nothing promised yet
        appointment("elsewhere", actors=("Practitioner/someone-else",)),  # on no Schedule read
    ]
    assert codes(slots, appointments) == {
        ("appointment-without-slots", "Appointment/none", "Appointment.slot"),
        ("appointment-without-slots", "Appointment/gone", "Appointment.slot[0]"),
        ("appointment-without-slots", "Appointment/freed", "Appointment.slot"),
    }


def test_booking_slots_nobody_references() -> None:
    mark: dict[str, Any] = {"meta": {"tag": [booking_request_tag("m")]}}
    slots = [
        slot("orphan", "10:00", "10:30"),
        slot(
            "orphan-buffer", "10:30", "10:40", "busy-unavailable", comment="buffer after appointment", **mark
        ),
        slot("left", "11:00", "11:30"),
        slot("shared", "12:00", "12:30"),
        slot("block", "13:00", "14:00", "busy-unavailable"),  # an administrator's block
        slot("other-schedule", "10:00", "10:30", schedule="not-read"),
    ]
    appointments = [
        appointment("ended", "left", status="cancelled"),
        appointment("noshow", "shared", status="noshow"),
        appointment("rebooked", "shared"),
    ]
    assert codes(slots, appointments) == {
        ("slot-without-appointment", "Slot/orphan", "Slot"),
        ("slot-without-appointment", "Slot/orphan-buffer", "Slot"),
        ("slot-of-ended-appointment", "Slot/left", "Slot"),
    }


# ---- holds ----------------------------------------------------------------------------------


def test_a_hold_stuck_past_the_sweep() -> None:
    held = slot("held", "10:00", "10:30", "busy-tentative", **expiring(30))
    hold = appointment(
        "hold", "held", status="pending", meta={"tag": [HOLD_TAG, booking_request_tag("h")]}, **expiring(30)
    )
    found = run([held], [hold])
    assert [(c, r, e) for c, r, e, _ in found] == [
        ("hold-stuck", "Appointment/hold", "Appointment.extension[0]")
    ]
    assert "the hold sweep should have cancelled it" in found[0][3]


def test_a_hold_the_sweep_will_never_touch_says_so() -> None:
    hold = appointment("hold", status="pending", meta={"tag": [HOLD_TAG]}, **expiring(30))
    assert "carries no booking request id" in run([], [hold])[0][3]


def test_a_hold_within_the_sweep_period_is_no_problem() -> None:
    held = slot("held", "10:00", "10:30", "busy-tentative", **expiring(0.5))
    hold = appointment("hold", "held", status="pending", **expiring(0.5))
    assert run([held], [hold]) == []
    assert codes([held], [hold], grace=timedelta(0)) == {
        ("hold-stuck", "Appointment/hold", "Appointment.extension[0]")
    }


def test_slots_of_a_lapsed_hold_without_its_appointment() -> None:
    held = slot("held", "10:00", "10:30", "busy-tentative", **expiring(30))
    buffer = slot(
        "buffer", "10:30", "10:40", "busy-unavailable", **expiring(30), comment="buffer after appointment"
    )
    assert codes([held, buffer], []) == {
        ("hold-stuck", "Slot/held", "Slot.extension[0]"),
        ("hold-stuck", "Slot/buffer", "Slot.extension[0]"),
    }


def test_a_tentative_slot_without_expiry_and_without_appointment_blocks_for_ever() -> None:
    assert codes([slot("t", "10:00", "10:30", "busy-tentative")], []) == {
        ("slot-without-appointment", "Slot/t", "Slot")
    }


# ---- schedules booked together --------------------------------------------------------------


def together(config: list[Resource], status: str = "booked") -> set[tuple[str, str, str]]:
    slots = [slot("a", "10:00", "10:30"), slot("r", "10:00", "10:30", schedule="room")]
    booked = appointment("j", "a", "r", status=status, actors=("Practitioner/ann", "Location/room"))
    return codes(slots, [booked], config=config)


def test_schedules_booked_together_on_one_grid_are_fine() -> None:
    assert together(configuration(builders.params_block(service="visit", bufferAfter=10))) == set()


def test_schedules_booked_together_on_different_grids() -> None:
    block = builders.params_block(service="visit", alignmentInterval=20)
    assert together(configuration(block)) == {("grid-mismatch", "Schedule/ann", "Schedule.extension[0]")}
    assert "grid-mismatch" not in {c for c, _, _ in together(configuration(block), status="cancelled")}
    duration = builders.params_block(service="visit", duration=45)
    assert together(configuration(duration)) == {("grid-mismatch", "Schedule/ann", "Schedule.extension[0]")}


def test_explicit_alignment_time_zones_must_agree() -> None:
    config = configuration(builders.params_block(service="visit", alignmentTimezone="Europe/London"))
    config[4] = builders.schedule(
        "room",
        "Location/room",
        ["visit"],
        blocks=[builders.params_block(service="visit", alignmentTimezone="Asia/Tokyo")],
    )
    found = run(
        [slot("a", "10:00", "10:30"), slot("r", "10:00", "10:30", schedule="room")],
        [appointment("j", "a", "r", actors=("Practitioner/ann", "Location/room"))],
        config=config,
    )
    assert [(c, r) for c, r, _, _ in found] == [("grid-mismatch", "Schedule/room")]
    assert "alignmentTimezone" in found[0][3] and "Appointment/j" in found[0][3]
