"""Property-based tests of ``$find`` against an independent oracle (SPEC §2-§4).

Hypothesis draws random but valid FHIR inputs: actors in several time zones (some with DST,
Lord Howe with a 30-minute shift, Kolkata at +05:30), a HealthcareService with a
SchedulingParameters block, Schedules that may override buffers, time zone, alignment zone
and weekly hours, planning horizons, inactive Schedules, and busy / held / blocked / free /
entered-in-error Slots, often around DST transitions.

The oracle below is written from the SPEC alone and uses none of the engine's helpers:
weekly windows are expanded from the zone's UTC offsets (a repeated local time takes the
earlier instant, a skipped one moves forward by the gap), free Slots are added, busy time is
checked per visit, and the grid is enumerated per local day of the alignment zone.

Where the SPEC leaves a choice open the oracle computes two answers, a *strict* one (less
open time, more busy time) and a *loose* one, and the engine may choose either:

- a window *end* in a repeated local hour (the SPEC fixes only the start: earlier instant);
- a hold that lapses exactly now;
- a Slot whose ``serviceType`` names the service by reference only (no shared coding);
- whether the buffers, or only the visit, must lie inside ``planningHorizon``.

Every proposal must be allowed by the loose oracle; every start the strict oracle requires
must be offered (up to ``_count``). Besides, each SPEC invariant is asserted on its own so
that a failure says which rule broke.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operations.find import FindRequest, find_appointments
from tests.unit.fake_store import FakeStore

Resource = dict[str, Any]
Span = tuple[datetime, datetime]

SCHEDULING_PARAMETERS = "https://medplum.com/fhir/StructureDefinition/SchedulingParameters"
SERVICE_TYPE_REFERENCE = "https://medplum.com/fhir/service-type-reference"
TIMEZONE = "http://hl7.org/fhir/StructureDefinition/timezone"
HOLD_EXPIRES = "https://fanoni.dev/fhir/StructureDefinition/hold-expires"
BUFFER_BEFORE = "buffer before appointment"
BUFFER_AFTER = "buffer after appointment"

SERVICE_ID = "svc"
SERVICE_CODING = {"system": "http://example.org/visit-type", "code": "consult"}
OTHER_CODING = {"system": "http://example.org/visit-type", "code": "x-ray"}

ZONES = ["America/New_York", "Europe/London", "Asia/Kolkata", "Australia/Lord_Howe", "UTC"]
DAY_CODES = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
# DST transitions in 2025, with the zone that shifts: New York and London (an hour each way),
# Lord Howe (half an hour each way).
DST_DAYS = [
    (date(2025, 3, 9), "America/New_York"),
    (date(2025, 11, 2), "America/New_York"),
    (date(2025, 3, 30), "Europe/London"),
    (date(2025, 10, 26), "Europe/London"),
    (date(2025, 4, 6), "Australia/Lord_Howe"),
    (date(2025, 10, 5), "Australia/Lord_Howe"),
]
PLAIN_DAYS = [
    (date(2025, 1, 15), "Asia/Kolkata"),
    (date(2025, 6, 16), "UTC"),
    (date(2025, 12, 31), "America/New_York"),
]
# Local times chosen to hit DST gaps and repeats (01:00-03:00) as well as ordinary hours.
TIMES = [
    time(0, 0),
    time(0, 30),
    time(1, 0),
    time(1, 30),
    time(1, 45),
    time(2, 0),
    time(2, 15),
    time(2, 30),
    time(3, 0),
    time(6, 30),
    time(8, 0),
    time(9, 15),
    time(12, 0),
    time(17, 0),
    time(18, 0),
    time(22, 30),
    time(23, 0),
]
# The hours where the 2025 transitions of these zones skip or repeat local time.
DST_TIMES = [time(1, 0), time(1, 30), time(1, 45), time(2, 0), time(2, 15), time(2, 30)]
SLOT_STATUSES = ["busy", "busy-unavailable", "busy-tentative", "free", "free", "entered-in-error"]
BLOCKING = {"busy", "busy-unavailable", "busy-tentative"}
FAR = timedelta(days=60)


# --------------------------------------------------------------------------- scenario model


@dataclass(frozen=True)
class Window:
    """A weekly window; ``start is None`` means ``allDay``."""

    days: tuple[str, ...]
    start: time | None
    end: time | None


@dataclass(frozen=True)
class SlotSpec:
    status: str
    start: datetime
    end: datetime
    service_type: str | None
    """None: no serviceType; "match"/"other": a coding; "ref": the service by reference only."""
    expires: datetime | None
    buffer_comment: str | None
    zone: str


@dataclass(frozen=True)
class ScheduleSpec:
    id: str
    active: bool
    actor_type: str
    actor_zone: str
    own_zone: str | None
    alignment_zone: str | None
    buffer_before: int | None
    buffer_after: int | None
    availability: tuple[Window, ...] | None
    horizon: tuple[datetime | None, datetime | None] | None
    slots: tuple[SlotSpec, ...]


@dataclass(frozen=True)
class ServiceSpec:
    duration: int
    duration_unit: str
    buffer_before: int | None
    buffer_after: int | None
    interval: int | None
    offset: int | None
    alignment_zone: str | None
    zone: str | None
    available_times: tuple[Window, ...] | None


@dataclass(frozen=True)
class Scenario:
    service: ServiceSpec
    schedules: tuple[ScheduleSpec, ...]
    start: datetime
    end: datetime
    now: datetime
    count: int
    request_zone: str


# --------------------------------------------------------------------------- strategies

times_st = st.sampled_from(TIMES) | st.sampled_from(DST_TIMES)
windows_st = st.lists(
    st.builds(
        lambda days, times, all_day: Window(
            tuple(sorted(days, key=DAY_CODES.index)),
            None if all_day else times[0],
            None if all_day else times[1],
        ),
        st.sets(st.sampled_from(DAY_CODES), min_size=1) | st.just(set(DAY_CODES)),
        st.tuples(times_st, times_st),
        st.sampled_from([False, False, True]),
    ),
    min_size=1,
    max_size=3,
).map(tuple)


def zone_st(focus: str) -> st.SearchStrategy[str]:
    """Any zone, but most often the one whose DST transition the scenario is about."""
    return st.sampled_from([focus, focus, focus, *ZONES])


@st.composite
def slot_st(draw: st.DrawFn, start: datetime, end: datetime, now: datetime) -> SlotSpec:
    status = draw(st.sampled_from(SLOT_STATUSES))
    span_minutes = int((end - start).total_seconds() // 60)
    begin = start + timedelta(minutes=5 * draw(st.integers(-24 * 12, span_minutes // 5 + 12 * 12)))
    if draw(st.integers(0, 9)) == 0:
        length = timedelta(days=draw(st.integers(1, 3)))  # a long block (vacation)
    else:
        length = timedelta(minutes=5 * draw(st.integers(1, 48)))
    expires = None
    if status == "busy-tentative":
        expires = draw(st.sampled_from([None, now - timedelta(minutes=1), now + timedelta(minutes=10), now]))
    comment = None
    if status == "busy-unavailable":
        comment = draw(st.sampled_from([None, BUFFER_BEFORE, BUFFER_AFTER]))
    return SlotSpec(
        status=status,
        start=begin,
        end=begin + length,
        service_type=draw(st.sampled_from([None, None, None, None, "match", "other", "ref"])),
        expires=expires,
        buffer_comment=comment,
        zone=draw(st.sampled_from(ZONES)),
    )


@st.composite
def service_st(draw: st.DrawFn, alignment_zone: str | None, focus: str) -> ServiceSpec:
    duration = draw(st.sampled_from([10, 15, 20, 30, 45, 60, 90]))
    unit = "min"
    if duration % 30 == 0 and draw(st.booleans()):
        unit = "h"
    return ServiceSpec(
        duration=duration,
        duration_unit=unit,
        buffer_before=draw(st.sampled_from([None, 0, 5, 10, 15, 30])),
        buffer_after=draw(st.sampled_from([None, 0, 5, 10, 15, 30])),
        interval=draw(st.sampled_from([None, 0, 10, 15, 20, 25, 30, 45, 60, 90, 120])),
        offset=draw(st.none() | st.integers(-150, 150)),
        alignment_zone=draw(st.sampled_from([None, alignment_zone])),
        zone=draw(st.none() | st.none() | st.none() | zone_st(focus)),
        available_times=draw(st.none() | windows_st),
    )


@st.composite
def horizon_st(draw: st.DrawFn, start: datetime, end: datetime) -> tuple[datetime | None, datetime | None]:
    quarters = int((end - start).total_seconds() // 900)
    low = start + timedelta(minutes=15 * draw(st.integers(-100, quarters + 20)))
    high = low + timedelta(minutes=15 * draw(st.integers(1, quarters + 100)))
    return draw(st.sampled_from([(low, high), (None, high), (low, None)]))


@st.composite
def schedule_st(
    draw: st.DrawFn,
    sid: str,
    start: datetime,
    end: datetime,
    now: datetime,
    alignment_zone: str | None,
    focus: str,
) -> ScheduleSpec:
    return ScheduleSpec(
        id=sid,
        active=draw(st.integers(0, 19)) > 0,
        actor_type=draw(st.sampled_from(["Practitioner", "Location"])),
        actor_zone=draw(zone_st(focus)),
        own_zone=draw(st.none() | st.none() | zone_st(focus)),
        alignment_zone=draw(st.sampled_from([None, None, alignment_zone])),
        buffer_before=draw(st.none() | st.none() | st.sampled_from([0, 5, 20])),
        buffer_after=draw(st.none() | st.none() | st.sampled_from([0, 5, 20])),
        availability=draw(st.none() | windows_st),
        horizon=draw(st.none() | st.none() | st.none() | horizon_st(start, end)),
        slots=tuple(draw(st.lists(slot_st(start, end, now), max_size=12))),
    )


@st.composite
def scenario_st(draw: st.DrawFn, schedules: int, max_days: int = 4) -> Scenario:
    day, focus = draw(st.sampled_from(DST_DAYS) | st.sampled_from(PLAIN_DAYS))
    start = datetime.combine(day, time(0), tzinfo=UTC) + timedelta(
        minutes=draw(st.integers(-36 * 60, 36 * 60))
    )
    length = timedelta(minutes=draw(st.integers(30, max_days * 24 * 60)))
    end = start + length
    now = start + timedelta(seconds=draw(st.integers(-2 * 86400, int(length.total_seconds()))))
    # an explicit alignment zone, when set anywhere, is the same everywhere (SPEC §3)
    alignment_zone = draw(st.none() | zone_st(focus))
    return Scenario(
        service=draw(service_st(alignment_zone, focus)),
        schedules=tuple(
            draw(schedule_st(f"s{i}", start, end, now, alignment_zone, focus)) for i in range(schedules)
        ),
        start=start,
        end=end,
        now=now,
        count=draw(st.integers(1, 60)),
        request_zone=draw(st.sampled_from(ZONES)),
    )


@st.composite
def dst_night_st(draw: st.DrawFn) -> Scenario:
    """One schedule in the zone that shifts, its hours starting or ending in the skipped or
    repeated hour, and a request that spans the transition night."""
    day, focus = draw(st.sampled_from(DST_DAYS))
    zone = ZoneInfo(focus)
    midnight = datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)
    start = midnight - timedelta(minutes=15 * draw(st.integers(0, 48)))
    end = midnight + timedelta(hours=draw(st.integers(6, 30)))
    now = start - timedelta(days=1)
    night = st.sampled_from([*DST_TIMES, time(0), time(3, 0), time(6, 30), time(23, 0)])
    window = st.builds(
        lambda a, b: Window(tuple(DAY_CODES), a, b),
        night,
        night,
    )
    service = ServiceSpec(
        duration=draw(st.sampled_from([10, 15, 30, 60])),
        duration_unit="min",
        buffer_before=draw(st.sampled_from([None, 5, 15])),
        buffer_after=draw(st.sampled_from([None, 5, 15])),
        interval=draw(st.sampled_from([10, 15, 30, 60])),
        offset=draw(st.sampled_from([None, 0, 5, -10])),
        alignment_zone=None,
        zone=None,
        available_times=None,
    )
    schedule = ScheduleSpec(
        id="s0",
        active=True,
        actor_type="Practitioner",
        actor_zone=focus,
        own_zone=None,
        alignment_zone=None,
        buffer_before=None,
        buffer_after=None,
        availability=tuple(draw(st.lists(window, min_size=1, max_size=2))),
        horizon=None,
        slots=tuple(draw(st.lists(slot_st(start, end, now), max_size=3))),
    )
    return Scenario(service, (schedule,), start, end, now, 1000, focus)


# --------------------------------------------------------------------------- FHIR builders


def _duration(minutes: int, unit: str = "min") -> Resource:
    if unit == "h":
        return {"value": minutes / 60, "unit": "h"}
    return {"value": minutes, "unit": "min"}


def _hhmmss(value: time) -> str:
    return value.strftime("%H:%M:%S")


def _nested_window(window: Window) -> Resource:
    subs: list[Resource] = [{"url": "daysOfWeek", "valueCode": d} for d in window.days]
    if window.start is None or window.end is None:
        subs.append({"url": "allDay", "valueBoolean": True})
    else:
        subs.append({"url": "availableStartTime", "valueTime": _hhmmss(window.start)})
        subs.append({"url": "availableEndTime", "valueTime": _hhmmss(window.end)})
    return {"url": "availableTime", "extension": subs}


def _native_window(window: Window) -> Resource:
    element: Resource = {"daysOfWeek": list(window.days)}
    if window.start is None or window.end is None:
        element["allDay"] = True
    else:
        element["availableStartTime"] = _hhmmss(window.start)
        element["availableEndTime"] = _hhmmss(window.end)
    return element


def _service_reference() -> Resource:
    return {
        "url": SERVICE_TYPE_REFERENCE,
        "valueReference": {"reference": f"HealthcareService/{SERVICE_ID}"},
    }


def _slot_resource(schedule_id: str, index: int, slot: SlotSpec) -> Resource:
    zone = ZoneInfo(slot.zone)
    resource: Resource = {
        "resourceType": "Slot",
        "id": f"{schedule_id}-slot-{index}",
        "schedule": {"reference": f"Schedule/{schedule_id}"},
        "status": slot.status,
        "start": slot.start.astimezone(zone).isoformat(),
        "end": slot.end.astimezone(zone).isoformat(),
    }
    if slot.service_type == "ref":
        resource["serviceType"] = [{"extension": [_service_reference()]}]
    elif slot.service_type is not None:
        coding = SERVICE_CODING if slot.service_type == "match" else OTHER_CODING
        resource["serviceType"] = [{"coding": [dict(coding)]}]
    if slot.expires is not None:
        resource["extension"] = [{"url": HOLD_EXPIRES, "valueInstant": slot.expires.isoformat()}]
    if slot.buffer_comment is not None:
        resource["comment"] = slot.buffer_comment
    return resource


def build_resources(scenario: Scenario) -> list[Resource]:
    service = scenario.service
    subs: list[Resource] = [
        {"url": "duration", "valueDuration": _duration(service.duration, service.duration_unit)}
    ]
    for url, value in (
        ("bufferBefore", service.buffer_before),
        ("bufferAfter", service.buffer_after),
        ("alignmentInterval", service.interval),
        ("alignmentOffset", service.offset),
    ):
        if value is not None:
            subs.append({"url": url, "valueDuration": _duration(value)})
    if service.alignment_zone:
        subs.append({"url": "alignmentTimezone", "valueCode": service.alignment_zone})
    if service.zone:
        subs.append({"url": "timezone", "valueCode": service.zone})
    service_resource: Resource = {
        "resourceType": "HealthcareService",
        "id": SERVICE_ID,
        "active": True,
        "name": "Consultation",
        "type": [{"coding": [dict(SERVICE_CODING)]}],
        "extension": [{"url": SCHEDULING_PARAMETERS, "extension": subs}],
    }
    if service.available_times is not None:
        service_resource["availableTime"] = [_native_window(w) for w in service.available_times]
    resources = [service_resource]

    for schedule in scenario.schedules:
        resources.append(
            {
                "resourceType": schedule.actor_type,
                "id": f"a-{schedule.id}",
                "extension": [{"url": TIMEZONE, "valueCode": schedule.actor_zone}],
            }
        )
        block: list[Resource] = [
            {"url": "service", "valueReference": {"reference": f"HealthcareService/{SERVICE_ID}"}}
        ]
        if schedule.own_zone:
            block.append({"url": "timezone", "valueCode": schedule.own_zone})
        if schedule.alignment_zone:
            block.append({"url": "alignmentTimezone", "valueCode": schedule.alignment_zone})
        if schedule.buffer_before is not None:
            block.append({"url": "bufferBefore", "valueDuration": _duration(schedule.buffer_before)})
        if schedule.buffer_after is not None:
            block.append({"url": "bufferAfter", "valueDuration": _duration(schedule.buffer_after)})
        if schedule.availability is not None:
            windows = [_nested_window(w) for w in schedule.availability]
            block.append({"url": "availability", "extension": windows})
        resource: Resource = {
            "resourceType": "Schedule",
            "id": schedule.id,
            "active": schedule.active,
            "actor": [{"reference": f"{schedule.actor_type}/a-{schedule.id}"}],
            "serviceType": [{"coding": [dict(SERVICE_CODING)], "extension": [_service_reference()]}],
            "extension": [{"url": SCHEDULING_PARAMETERS, "extension": block}],
        }
        if schedule.horizon is not None:
            low, high = schedule.horizon
            resource["planningHorizon"] = {
                **({"start": low.isoformat()} if low else {}),
                **({"end": high.isoformat()} if high else {}),
            }
        resources.append(resource)
        resources.extend(_slot_resource(schedule.id, i, slot) for i, slot in enumerate(schedule.slots))
    return resources


def run_find(scenario: Scenario, schedule_ids: Sequence[str], count: int | None = None) -> Resource:
    zone = ZoneInfo(scenario.request_zone)
    params = [
        ("start", scenario.start.astimezone(zone).isoformat()),
        ("end", scenario.end.astimezone(zone).isoformat()),
        ("service-type-reference", f"HealthcareService/{SERVICE_ID}"),
        *(("schedule", f"Schedule/{sid}") for sid in schedule_ids),
        ("_count", str(scenario.count if count is None else count)),
    ]
    request = FindRequest.from_parameters(params, now=scenario.now, max_range_days=31)
    return find_appointments(FakeStore(*build_resources(scenario)), request)


# --------------------------------------------------------------------------- the oracle


def to_instant(day: date, at: time, zone: ZoneInfo, *, later: bool = False) -> datetime:
    """Local wall time -> UTC instant, from the zone's offsets alone (SPEC §2.2): a time that
    occurs twice takes the earlier instant (the later with ``later``); one that does not exist
    moves forward by the gap."""
    naive = datetime.combine(day, at)
    before = (naive - timedelta(days=1)).replace(tzinfo=UTC).astimezone(zone).utcoffset()
    after = (naive + timedelta(days=1)).replace(tzinfo=UTC).astimezone(zone).utcoffset()
    assert before is not None and after is not None
    candidates = []
    for offset in {before, after}:
        instant = (naive - offset).replace(tzinfo=UTC)
        if instant.astimezone(zone).replace(tzinfo=None) == naive:
            candidates.append(instant)
    if candidates:
        return max(candidates) if later else min(candidates)
    return (naive - before).replace(tzinfo=UTC)  # in the gap: the offset before it


def union(spans: Sequence[Span]) -> list[Span]:
    result: list[Span] = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if result and start <= result[-1][1]:
            result[-1] = (result[-1][0], max(result[-1][1], end))
        else:
            result.append((start, end))
    return result


@dataclass(frozen=True)
class Leg:
    """What the oracle knows of one Schedule, in a strict and a loose reading."""

    id: str
    active: bool
    zone: ZoneInfo
    alignment_zone: ZoneInfo | None
    before: timedelta
    after: timedelta
    horizon: Span
    open_strict: list[Span]
    open_loose: list[Span]
    busy_strict: list[Span]
    busy_loose: list[Span]

    def is_free(self, start: datetime, end: datetime, *, strict: bool) -> bool:
        low, high = start - self.before, end + self.after
        opened = self.open_strict if strict else self.open_loose
        busy = self.busy_strict if strict else self.busy_loose
        h_low, h_high = (low, high) if strict else (start, end)
        return (
            self.active
            and self.horizon[0] <= h_low
            and h_high <= self.horizon[1]
            and any(a <= low and high <= b for a, b in opened)
            and not any(a < high and b > low for a, b in busy)
        )


def oracle_leg(scenario: Scenario, schedule: ScheduleSpec) -> Leg:
    service = scenario.service
    zone = ZoneInfo(schedule.own_zone or service.zone or schedule.actor_zone)
    windows = schedule.availability
    if windows is None:
        windows = service.available_times
    strict: list[Span] = []
    loose: list[Span] = []
    if windows is None:
        strict.append((scenario.start - FAR, scenario.end + FAR))
    else:
        day = scenario.start.astimezone(zone).date() - timedelta(days=3)
        while day <= scenario.end.astimezone(zone).date() + timedelta(days=3):
            for window in windows:
                if DAY_CODES[day.weekday()] not in window.days:
                    continue
                begin, finish = window.start or time(0), window.end or time(0)
                end_day = day if finish > begin else day + timedelta(days=1)
                start = to_instant(day, begin, zone)
                strict.append((start, to_instant(end_day, finish, zone)))
                loose.append((start, to_instant(end_day, finish, zone, later=True)))
            day += timedelta(days=1)
    loose.extend(strict)

    def applies(slot: SlotSpec, *, to_busy: bool, strict: bool) -> bool:
        if slot.service_type == "ref":  # unspecified: either reading is acceptable
            return strict == to_busy
        return slot.service_type in (None, "match")

    def blocks(slot: SlotSpec, *, strict: bool) -> bool:
        if slot.status not in BLOCKING or not applies(slot, to_busy=True, strict=strict):
            return False
        if slot.expires is None or slot.expires > scenario.now:
            return True
        return strict and slot.expires == scenario.now

    for slot in schedule.slots:
        if slot.status == "free":
            if applies(slot, to_busy=False, strict=True):
                strict.append((slot.start, slot.end))
            if applies(slot, to_busy=False, strict=False):
                loose.append((slot.start, slot.end))
    before = schedule.buffer_before
    if before is None:
        before = service.buffer_before
    after = schedule.buffer_after
    if after is None:
        after = service.buffer_after
    low, high = schedule.horizon or (None, None)
    explicit = schedule.alignment_zone or service.alignment_zone
    return Leg(
        id=schedule.id,
        active=schedule.active,
        zone=zone,
        alignment_zone=ZoneInfo(explicit) if explicit else None,
        before=timedelta(minutes=before or 0),
        after=timedelta(minutes=after or 0),
        horizon=(low or scenario.start - FAR, high or scenario.end + FAR),
        open_strict=union(strict),
        open_loose=union(loose),
        busy_strict=union([(s.start, s.end) for s in schedule.slots if blocks(s, strict=True)]),
        busy_loose=union([(s.start, s.end) for s in schedule.slots if blocks(s, strict=False)]),
    )


@dataclass(frozen=True)
class GridSpec:
    interval: timedelta
    offset: timedelta
    zone: ZoneInfo

    def on_grid(self, start: datetime) -> bool:
        midnight = to_instant(start.astimezone(self.zone).date(), time(0), self.zone)
        return (start - midnight) % self.interval == self.offset

    def starts(self, low: datetime, high: datetime) -> Iterator[datetime]:
        day = low.astimezone(self.zone).date() - timedelta(days=1)
        while day <= high.astimezone(self.zone).date() + timedelta(days=1):
            midnight = to_instant(day, time(0), self.zone)
            next_midnight = to_instant(day + timedelta(days=1), time(0), self.zone)
            current = midnight + self.offset
            while current < next_midnight:
                yield current
                current += self.interval
            day += timedelta(days=1)


def oracle_grid(scenario: Scenario, legs: Sequence[Leg]) -> GridSpec:
    """SPEC §2.2/§3: interval (0 or unset = 60 min), offset modulo the interval, and the
    alignment zone set explicitly anywhere in the request, else the first schedule's zone."""
    service = scenario.service
    interval = timedelta(minutes=service.interval or 60)
    offset = timedelta(minutes=service.offset or 0) % interval
    explicit = [leg.alignment_zone for leg in legs if leg.alignment_zone is not None]
    return GridSpec(interval, offset, explicit[0] if explicit else legs[0].zone)


def oracle_starts(scenario: Scenario, legs: Sequence[Leg], grid: GridSpec, *, strict: bool) -> list[datetime]:
    duration = timedelta(minutes=scenario.service.duration)
    return [
        start
        for start in grid.starts(scenario.start, scenario.end)
        if start >= scenario.start
        and start + duration <= scenario.end
        and start >= scenario.now
        and all(leg.is_free(start, start + duration, strict=strict) for leg in legs)
    ]


# --------------------------------------------------------------------------- checks


def instant(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert value.tzinfo is not None, text
    return value.astimezone(UTC)


def matches(bundle: Resource) -> list[Resource]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def outcomes(bundle: Resource) -> list[Resource]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "outcome"]


def check_bundle(scenario: Scenario, legs: Sequence[Leg], bundle: Resource) -> list[datetime]:
    """Every SPEC invariant on one $find answer; returns the proposed starts."""
    duration = timedelta(minutes=scenario.service.duration)
    grid = oracle_grid(scenario, legs)
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "searchset"
    appointments = matches(bundle)
    assert bundle["total"] == len(appointments)
    assert "entry" not in bundle or bundle["entry"], "an empty entry list"
    assert len(appointments) <= scenario.count
    starts = []
    for appointment in appointments:
        assert appointment["resourceType"] == "Appointment"
        assert appointment["status"] == "proposed"
        assert "id" not in appointment
        start, end = instant(appointment["start"]), instant(appointment["end"])
        starts.append(start)
        assert end - start == duration, appointment
        # the visit inside the requested range, and not in the past
        assert scenario.start <= start and end <= scenario.end, appointment
        assert start >= scenario.now, appointment
        # on the grid, in real elapsed time from the local midnight of the alignment zone
        assert grid.on_grid(start), (start, grid)
        # free on every schedule: inside availability, no busy overlap (buffers included)
        for leg in legs:
            assert leg.is_free(start, end, strict=False), (leg.id, start, end, leg)
        [concept] = appointment["serviceType"]
        assert any(
            e["url"] == SERVICE_TYPE_REFERENCE
            and e["valueReference"]["reference"] == f"HealthcareService/{SERVICE_ID}"
            for e in concept["extension"]
        )
        assert SERVICE_CODING in concept["coding"]
        actors = [p["actor"]["reference"] for p in appointment["participant"]]
        assert actors == [f"{s.actor_type}/a-{s.id}" for s in scenario.schedules]
        assert all(
            p["required"] == "required" and p["status"] == "needs-action" for p in appointment["participant"]
        )
        check_contained(appointment["contained"], legs, start, end)
    # sorted strictly by start
    assert all(a < b for a, b in itertools.pairwise(starts)), starts
    # a schedule that can offer nothing for a known reason says so
    for leg in legs:
        outside = leg.horizon[1] <= scenario.start or leg.horizon[0] >= scenario.end
        if not leg.active or outside:
            assert not appointments
            assert any(
                any(f"Schedule/{leg.id}" in issue["diagnostics"] for issue in o["issue"])
                for o in outcomes(bundle)
            ), (leg.id, bundle)
    return starts


def check_contained(contained: list[Resource], legs: Sequence[Leg], start: datetime, end: datetime) -> None:
    for leg in legs:
        mine = [s for s in contained if s["schedule"]["reference"] == f"Schedule/{leg.id}"]
        assert all(s["resourceType"] == "Slot" for s in mine)
        busy = [s for s in mine if s["status"] == "busy"]
        assert len(busy) == 1, mine
        assert (instant(busy[0]["start"]), instant(busy[0]["end"])) == (start, end)
        buffers = [s for s in mine if s["status"] == "busy-unavailable"]
        assert len(mine) == 1 + len(buffers)
        expected = []
        if leg.before:
            expected.append((BUFFER_BEFORE, start - leg.before, start))
        if leg.after:
            expected.append((BUFFER_AFTER, end, end + leg.after))
        found = sorted((s.get("comment"), instant(s["start"]), instant(s["end"])) for s in buffers)
        assert found == sorted(expected), (leg.id, found, expected)
    assert len(contained) == sum(1 + bool(leg.before) + bool(leg.after) for leg in legs)


def check_scenario(scenario: Scenario) -> list[datetime]:
    ids = [s.id for s in scenario.schedules]
    bundle = run_find(scenario, ids)
    # same input -> same output
    again = run_find(scenario, ids)
    assert json.dumps(bundle, sort_keys=True) == json.dumps(again, sort_keys=True)

    legs = [oracle_leg(scenario, s) for s in scenario.schedules]
    starts = check_bundle(scenario, legs, bundle)
    grid = oracle_grid(scenario, legs)
    allowed = set(oracle_starts(scenario, legs, grid, strict=False))
    required = oracle_starts(scenario, legs, grid, strict=True)
    assert set(required) <= allowed, "oracle: strict must imply loose"
    unexpected = [s for s in starts if s not in allowed]
    assert not unexpected, f"offered but not free: {unexpected[:5]}"
    if len(starts) < scenario.count:
        missing = [s for s in required if s not in starts]
    else:  # cut at _count: nothing free may be skipped before the last offered start
        missing = [s for s in required if s < starts[-1] and s not in starts]
    assert not missing, f"free but not offered: {missing[:5]}"
    return starts


# --------------------------------------------------------------------------- the properties

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@SETTINGS
@given(scenario_st(schedules=1))
def test_single_schedule_matches_the_oracle(scenario: Scenario) -> None:
    check_scenario(scenario)


@settings(SETTINGS, max_examples=40)
@given(scenario_st(schedules=1, max_days=31))
def test_month_long_ranges_match_the_oracle(scenario: Scenario) -> None:
    check_scenario(scenario)


@settings(SETTINGS, max_examples=200)
@given(dst_night_st())
def test_hours_across_a_dst_transition_match_the_oracle(scenario: Scenario) -> None:
    check_scenario(scenario)


@settings(SETTINGS, max_examples=150)
@given(scenario_st(schedules=2))
def test_joint_search_matches_the_oracle_and_each_schedule_alone(scenario: Scenario) -> None:
    starts = check_scenario(scenario)
    duration = timedelta(minutes=scenario.service.duration)
    for schedule in scenario.schedules:
        alone = run_find(scenario, [schedule.id], count=1000)
        leg = oracle_leg(scenario, schedule)
        single = [instant(a["start"]) for a in matches(alone)]
        for start in starts:
            # free for this schedule alone, whatever the grid
            assert leg.is_free(start, start + duration, strict=False)
            # where the schedule's own grid agrees, its own $find offers the start too
            # (unless its answer was cut at _count before reaching it)
            cut = len(single) == 1000 and start > single[-1]
            if oracle_grid(scenario, [leg]).on_grid(start) and not cut:
                assert start in single, (schedule.id, start)


# --------------------------------------------------------------------------- oracle self-checks


def test_oracle_resolves_dst_gaps_and_repeats() -> None:
    new_york = ZoneInfo("America/New_York")
    lord_howe = ZoneInfo("Australia/Lord_Howe")

    def utc(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
        return datetime(year, month, day, hour, minute, tzinfo=UTC)

    # 02:30 does not exist on 2025-03-09 in New York: it moves forward by the gap (03:30 EDT)
    assert to_instant(date(2025, 3, 9), time(2, 30), new_york) == utc(2025, 3, 9, 7, 30)
    # 01:30 occurs twice on 2025-11-02: the earlier instant (EDT), or the later one (EST)
    assert to_instant(date(2025, 11, 2), time(1, 30), new_york) == utc(2025, 11, 2, 5, 30)
    later = to_instant(date(2025, 11, 2), time(1, 30), new_york, later=True)
    assert later == utc(2025, 11, 2, 6, 30)
    # Lord Howe springs forward 30 min at 02:00 on 2025-10-05: 02:10 -> 02:40 (+11:00)
    assert to_instant(date(2025, 10, 5), time(2, 10), lord_howe) == utc(2025, 10, 4, 15, 40)
    # and falls back 30 min at 02:00 on 2025-04-06: 01:45 taken at +11:00 (the earlier)
    assert to_instant(date(2025, 4, 6), time(1, 45), lord_howe) == utc(2025, 4, 5, 14, 45)
    kolkata = ZoneInfo("Asia/Kolkata")
    assert to_instant(date(2025, 1, 1), time(0), kolkata) == utc(2024, 12, 31, 18, 30)


def test_oracle_grid_on_a_fall_back_day_is_evenly_spaced() -> None:
    grid = GridSpec(timedelta(minutes=60), timedelta(0), ZoneInfo("America/New_York"))
    low = datetime(2025, 11, 2, 4, 0, tzinfo=UTC)
    day = [
        s
        for s in grid.starts(low, low + timedelta(hours=23))
        if s.astimezone(grid.zone).date() == date(2025, 11, 2)
    ]
    assert len(day) == 25
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(day))
