"""Properties of pools in ``$find`` (SPEC §7.2), against an independent oracle.

The oracle of "member m is free at t under its own rules" is the single-schedule ``$find`` of
m alone (same range, same now, same series): its hours, buffers, capacity, planning horizon,
notice, window, limits and series apply there with no pool around. Hypothesis draws clinics of
1-3 pools of 1-3 members in several time zones (the service fixes the alignment zone, so every
request has the same grid), each member with its own buffers, hours, capacity, rules, horizon
and Slots (visits, live and lapsed holds, blocks, extra free time). Then:

* a start is offered exactly when every pool has a member free then (up to ``_count``);
* each proposal's chosen members are free then, and name one member per pool, in pool order;
* ``listed``: no member listed before the chosen one was free;
* ``balanced``: the chosen member has the fewest visits on that local day (its own zone) of the
  free members, counted here from the drawn Slots, and no free member listed before it has as few;
* booking the first ``balanced`` proposal of a day again and again spreads the visits: the
  members' counts end within one of each other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operations.find import FindRequest, find_appointments
from operations.model import HOLD_EXPIRES_URL
from tests.unit.builders import params_block, practitioner, schedule, service, slot, window
from tests.unit.fake_store import FakeFhirStore, FakeStore
from tests.unit.test_pools import book_it, visits_per_schedule

Resource = dict[str, Any]
ZONES = ["America/New_York", "Europe/London", "Asia/Kolkata", "Australia/Sydney"]
GRID_ZONE = "America/New_York"
DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
# Monday 2025-03-03; New York springs forward on Sunday 03-09, so some ranges cross it.
FIRST_DAY = date(2025, 3, 3)
SERVICE = "checkup"


@dataclass(frozen=True)
class SlotSpec:
    status: str
    start: datetime
    minutes: int
    expires: datetime | None


@dataclass(frozen=True)
class MemberSpec:
    id: str
    zone: str
    active: bool
    block: dict[str, Any]
    """The Schedule's own SchedulingParameters fields (``params_block`` keywords)."""
    horizon_end: datetime | None
    slots: tuple[SlotSpec, ...]


@dataclass(frozen=True)
class PoolScenario:
    duration: int
    interval: int
    pools: tuple[tuple[MemberSpec, ...], ...]
    start: datetime
    end: datetime
    now: datetime
    order: str
    weeks: int | None
    """A weekly series of this many occurrences, or none."""

    def store(self) -> FakeStore:
        store = FakeStore(
            service(
                SERVICE,
                hours=[
                    {"daysOfWeek": DAYS, "availableStartTime": "05:00:00", "availableEndTime": "23:00:00"}
                ],
                duration=self.duration,
                alignmentInterval=self.interval,
                alignmentTimezone=GRID_ZONE,
            )
        )
        for member in self.members:
            store.add(practitioner(member.id, member.zone))
            blocks = [params_block(service=SERVICE, **member.block)] if member.block else None
            horizon = (None, member.horizon_end.isoformat()) if member.horizon_end else None
            store.add(
                schedule(
                    member.id,
                    f"Practitioner/{member.id}",
                    [SERVICE],
                    blocks=blocks,
                    active=member.active,
                    horizon=horizon,
                )
            )
            for n, spec in enumerate(member.slots):
                extra: Resource = {"id": f"{member.id}-{n}"}
                if spec.expires is not None:
                    extra["extension"] = [{"url": HOLD_EXPIRES_URL, "valueInstant": spec.expires.isoformat()}]
                end = spec.start + timedelta(minutes=spec.minutes)
                store.add(slot(member.id, spec.status, spec.start.isoformat(), end.isoformat(), **extra))
        return store

    @property
    def members(self) -> list[MemberSpec]:
        return [m for pool in self.pools for m in pool]

    def params(self, pools: list[list[str]], count: int = 1000) -> list[tuple[str, str]]:
        params = [
            ("start", self.start.isoformat()),
            ("end", self.end.isoformat()),
            ("service-type-reference", f"HealthcareService/{SERVICE}"),
            *(("schedule", ",".join(f"Schedule/{i}" for i in pool)) for pool in pools),
            ("_count", str(count)),
            ("pool-order", self.order),
        ]
        if self.weeks:
            timing = {"repeat": {"frequency": 1, "period": 1, "periodUnit": "wk", "count": self.weeks}}
            params.append(("recurrence", json.dumps(timing)))
        return params

    def find(self, store: FakeStore, pools: list[list[str]]) -> list[Resource]:
        request = FindRequest.from_parameters(self.params(pools), now=self.now, max_range_days=31)
        bundle = find_appointments(store, request)
        return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]

    def visits_on(self, member: MemberSpec, start: datetime) -> int:
        """Visits (booked, or held with a live hold) already on ``member`` on the local day of
        ``start`` in the member's own time zone: counted from the drawn Slots."""
        zone = ZoneInfo(member.block.get("timezone", member.zone))
        day = start.astimezone(zone).date()
        return sum(
            1
            for s in member.slots
            if (
                s.status == "busy"
                or (s.status == "busy-tentative" and (s.expires is None or s.expires > self.now))
            )
            and s.start.astimezone(zone).date() == day
        )


def instant(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(UTC)


@st.composite
def slot_st(draw: st.DrawFn, zone: str, days: int) -> SlotSpec:
    day = FIRST_DAY + timedelta(days=draw(st.integers(-1, days)))
    local = datetime.combine(day, time(7), tzinfo=ZoneInfo(zone)) + timedelta(
        minutes=15 * draw(st.integers(0, 48))
    )
    status = draw(st.sampled_from(["busy", "busy", "busy-tentative", "busy-unavailable", "free"]))
    expires = None
    if status == "busy-tentative" and draw(st.booleans()):
        expires = local.astimezone(UTC) + timedelta(hours=draw(st.sampled_from([-24 * 30, 24 * 30])))
    return SlotSpec(status, local.astimezone(UTC), draw(st.sampled_from([15, 30, 45, 60, 120])), expires)


@st.composite
def member_st(draw: st.DrawFn, member_id: str, zone: str | None, days: int) -> MemberSpec:
    zone = zone or draw(st.sampled_from(ZONES))
    block: dict[str, Any] = {}
    for field, choices in (
        ("bufferBefore", [0, 15, 30]),
        ("bufferAfter", [0, 15, 30]),
        ("slotCapacity", [1, 2]),
    ):
        if draw(st.booleans()):
            block[field] = draw(st.sampled_from(choices))
    if draw(st.integers(0, 3)) == 0:
        start = draw(st.sampled_from(["07:00", "09:00", "12:30", "22:00"]))
        end = draw(st.sampled_from(["11:00", "14:00", "17:30", "02:00"]))
        chosen = draw(st.lists(st.sampled_from(DAYS), min_size=1, max_size=7, unique=True))
        block["availability"] = [window(" ".join(chosen), start, end)]
    if draw(st.integers(0, 3)) == 0:
        block["minimumNotice"] = {"value": draw(st.integers(1, 72)), "unit": "h"}
    if draw(st.integers(0, 3)) == 0:
        block["bookingWindow"] = {"value": draw(st.integers(1, 30)), "unit": "d"}
    if draw(st.integers(0, 2)) == 0:
        block["bookingLimit"] = [(draw(st.integers(1, 4)), "d")]
    if block.get("slotCapacity") == 1:
        del block["slotCapacity"]
    horizon_end = None
    if draw(st.integers(0, 5)) == 0:
        horizon_end = datetime.combine(FIRST_DAY, time(12), tzinfo=UTC) + timedelta(
            hours=draw(st.integers(0, 72))
        )
    return MemberSpec(
        id=member_id,
        zone=zone,
        active=draw(st.integers(0, 7)) != 0,
        block=block,
        horizon_end=horizon_end,
        slots=tuple(draw(st.lists(slot_st(zone, days), max_size=8))),
    )


@st.composite
def pool_scenario_st(draw: st.DrawFn) -> PoolScenario:
    weeks = draw(st.sampled_from([None, None, None, 2, 3]))
    days = draw(st.integers(1, 3))
    # A series keeps the first pool's member's wall-clock time: the members share a zone so that
    # each one's own single $find means the same occurrences.
    shared = draw(st.sampled_from(ZONES)) if weeks else None
    shape = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    pools = []
    n = 0
    for size in shape:
        members = []
        for _ in range(size):
            members.append(draw(member_st(f"s{n}", shared, days)))
            n += 1
        pools.append(tuple(members))
    start = datetime.combine(FIRST_DAY, time(0), tzinfo=ZoneInfo(GRID_ZONE)).astimezone(UTC)
    start += timedelta(hours=draw(st.integers(0, 12)))
    return PoolScenario(
        duration=draw(st.sampled_from([15, 30, 60])),
        interval=draw(st.sampled_from([15, 30, 60])),
        pools=tuple(pools),
        start=start,
        end=start + timedelta(days=days),
        now=start + timedelta(hours=draw(st.integers(-48, 12))),
        order=draw(st.sampled_from(["listed", "balanced"])),
        weeks=weeks,
    )


def visit_schedules(proposal: Resource) -> list[str]:
    return [
        s["schedule"]["reference"][len("Schedule/") :] for s in proposal["contained"] if s["status"] == "busy"
    ]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pool_scenario_st())
def test_pools_choose_free_members_in_order_against_each_members_own_find(scenario: PoolScenario) -> None:
    store = scenario.store()
    alone = {m.id: {instant(p["start"]) for p in scenario.find(store, [[m.id]])} for m in scenario.members}
    found = scenario.find(store, [[m.id for m in pool] for pool in scenario.pools])
    offered = [instant(p["start"]) for p in found]

    expected = set.intersection(*(set().union(*(alone[m.id] for m in pool)) for pool in scenario.pools))
    assert offered == sorted(expected)

    for proposal, start in zip(found, offered, strict=True):
        chosen = visit_schedules(proposal)
        assert len(chosen) == len(scenario.pools)
        assert len(proposal["participant"]) == len(scenario.pools)
        for pool, chosen_id in zip(scenario.pools, chosen, strict=True):
            ids = [m.id for m in pool]
            assert chosen_id in ids, "one member of each pool, in the order of the pools"
            assert start in alone[chosen_id], f"{chosen_id} is not free at {start} on its own"
            free = [m for m in pool if start in alone[m.id]]
            before = free[: [m.id for m in free].index(chosen_id)]
            if scenario.order == "listed":
                assert not before, f"{before[0].id} was free at {start} and is listed first"
            else:
                mine = scenario.visits_on(next(m for m in pool if m.id == chosen_id), start)
                assert mine == min(scenario.visits_on(m, start) for m in free), "not the fewest visits"
                assert all(scenario.visits_on(m, start) > mine for m in before), "a tie goes to the first"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.integers(2, 4),
    bookings=st.integers(1, 12),
    duration=st.sampled_from([15, 30, 60]),
    zone=st.sampled_from(ZONES),
    shuffled=st.randoms(use_true_random=False),
)
def test_balanced_spreads_a_day_of_bookings_evenly(
    size: int, bookings: int, duration: int, zone: str, shuffled: Any
) -> None:
    """Book the first ``balanced`` proposal of a day again and again: the members' visits end
    within one of each other (each has room for all of them)."""
    ids = [f"p{n}" for n in range(size)]
    store = FakeFhirStore(
        service(
            SERVICE,
            hours=[{"daysOfWeek": DAYS, "availableStartTime": "08:00:00", "availableEndTime": "20:00:00"}],
            duration=duration,
            alignmentInterval=duration,
        )
    )
    for member in ids:
        store.add(practitioner(member, zone))
        store.add(schedule(member, f"Practitioner/{member}", [SERVICE]))
    shuffled.shuffle(ids)  # the listed order is not the order they were made in
    day_start = datetime.combine(FIRST_DAY, time(0), tzinfo=ZoneInfo(zone))
    now = day_start.astimezone(UTC) - timedelta(days=1)
    params = [
        ("start", day_start.isoformat()),
        ("end", (day_start + timedelta(days=1)).isoformat()),
        ("service-type-reference", f"HealthcareService/{SERVICE}"),
        ("schedule", ",".join(f"Schedule/{i}" for i in ids)),
        ("pool-order", "balanced"),
        ("_count", "1"),
    ]
    for _ in range(bookings):
        request = FindRequest.from_parameters(params, now=now, max_range_days=31)
        [first] = [e["resource"] for e in find_appointments(store, request)["entry"]]
        assert book_it(store, first, now) == 201
    counts = visits_per_schedule(store)
    per_member = [counts[f"Schedule/{i}"] for i in ids]
    assert sum(per_member) == bookings
    assert max(per_member) - min(per_member) <= 1, per_member
