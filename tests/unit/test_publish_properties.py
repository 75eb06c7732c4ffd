"""Publishing offers exactly what ``$find`` offers (SPEC §7.5: "only bookable times"): for random
hours, buffers, booking rules, capacity and booked, held and blocked Slots, the published Slots of
each Schedule and service are ``Schedule/<id>/$find``'s free Slots over the same days."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operations.booking_link import BookingLinkTemplate
from operations.find import FindRequest, find_slots
from operations.publish import PublishRequest, publish
from tests.unit.builders import hours, params_block, schedule, service, slot
from tests.unit.fake_store import FakeFhirStore
from tests.unit.test_publish import clinic_location, tagged

ZONE = ZoneInfo("Europe/London")
MONDAY = datetime(2025, 3, 24, tzinfo=ZONE)  # the week before London's clocks go forward
DAYS = 8


@st.composite
def clinics(draw: st.DrawFn) -> tuple[FakeFhirStore, datetime]:
    block: dict[str, Any] = {"duration": draw(st.sampled_from([20, 30, 45])), "alignmentInterval": 15}
    for name, choices in (
        ("bufferBefore", [0, 5, 10]),
        ("bufferAfter", [0, 10, 15]),
        ("minimumNotice", [0, 90, 24 * 60]),
        ("slotCapacity", [1, 1, 2, 3]),
    ):
        block[name] = draw(st.sampled_from(choices))
    if draw(st.booleans()):
        block["bookingWindow"] = draw(st.sampled_from([2, 5])) * 24 * 60
    limits = draw(st.sampled_from([[], [(2, "d")], [(5, "wk")], [(2, "d"), (6, "wk")]]))
    if limits:
        block["bookingLimit"] = limits
    start, end = draw(st.sampled_from([("08:00", "12:00"), ("09:00", "17:00"), ("22:00", "02:00")]))
    busy = [
        slot(
            "room",
            draw(st.sampled_from(["busy", "busy-tentative", "busy-unavailable", "free"])),
            (at := MONDAY + timedelta(minutes=15 * draw(st.integers(0, 4 * 24 * 9)))).isoformat(),
            (at + timedelta(minutes=draw(st.sampled_from([15, 30, 60, 240])))).isoformat(),
            id=f"s{n}",
        )
        for n in range(draw(st.integers(0, 12)))
    ]
    store = FakeFhirStore(
        clinic_location("room"),
        service("checkup", hours=[hours("mon tue wed thu fri sat", start, end)], timezone="Europe/London"),
        tagged(
            schedule("room", "Location/room", ["checkup"], blocks=[params_block(service="checkup", **block)])
        ),
        *busy,
    )
    now = MONDAY + timedelta(minutes=draw(st.integers(0, 3 * 24 * 60)))
    return store, now


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clinics())
def test_what_is_published_is_what_find_offers(drawn: tuple[FakeFhirStore, datetime]) -> None:
    store, now = drawn
    request = PublishRequest(
        now=now,
        days=DAYS,
        link=BookingLinkTemplate.parse("https://p.example/{start}"),
        identifier_system="https://f.example/Location",
    )
    published = [(s["start"], s["end"]) for s in publish(store, request).slots]
    find = FindRequest.from_parameters(
        [
            ("start", now.isoformat()),
            ("end", (now + timedelta(days=DAYS)).isoformat()),
            ("service-type-reference", "HealthcareService/checkup"),
            ("_count", "1000"),
        ],
        now=now,
        max_range_days=31,
        schedule_id="room",
    )
    found = [(e["resource"]["start"], e["resource"]["end"]) for e in find_slots(store, find).get("entry", [])]
    assert published == [f for f in found if f[0]]
