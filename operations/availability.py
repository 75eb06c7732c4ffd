"""Free time as a pipeline of small functions over sorted lists of ``Interval`` (SPEC §3).

Weekly windows -> instants (DST by ``zoneinfo``), plus free Slots, merged, minus busy time,
shrunk by buffers, intersected across Schedules. Every list returned here is sorted by
start and holds disjoint, non-touching intervals.
"""

from __future__ import annotations

import functools
import heapq
import itertools
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from operations.model import (
    Interval,
    ResolvedParameters,
    Schedule,
    Service,
    SlotOverlay,
    SlotStatus,
    WeeklyWindow,
)

ONE_DAY = timedelta(days=1)


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    """The UTC instant at which ``day`` begins in ``zone`` (a skipped midnight moves forward)."""
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)


def local_days(span: Interval, zone: ZoneInfo) -> list[date]:
    """Every local date in ``zone`` that touches ``span``, plus the day before it (a window
    that starts the evening before may run into the span)."""
    first = span.start.astimezone(zone).date() - ONE_DAY
    last = span.end.astimezone(zone).date()
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def expand_weekly(windows: Iterable[WeeklyWindow], zone: ZoneInfo, span: Interval) -> list[Interval]:
    """The instants of the weekly windows that overlap ``span`` (merged, not clipped)."""
    return list(_expanded(tuple(windows), zone, span))


@functools.lru_cache(maxsize=1024)
def _expanded(windows: tuple[WeeklyWindow, ...], zone: ZoneInfo, span: Interval) -> tuple[Interval, ...]:
    """:func:`expand_weekly`, remembered: the Schedules of one request often keep the same hours
    (10 Schedules x 31 days: one expansion instead of ten), and a request asked again spans the
    same days. A pure function of its arguments, so a remembered answer is never stale."""
    found: list[Interval] = []
    for day in local_days(span, zone):
        weekday = day.weekday()
        for window in windows:
            if weekday not in window.weekdays:
                continue
            start = datetime.combine(day, window.start, tzinfo=zone).astimezone(UTC)
            end_day = day if window.end > window.start else day + ONE_DAY
            end = datetime.combine(end_day, window.end, tzinfo=zone).astimezone(UTC)
            if end > start and end > span.start and start < span.end:
                found.append(Interval(start, end))
    return tuple(merge(found))


def merge(intervals: Iterable[Interval], *, closed: bool = False) -> list[Interval]:
    """Sort and merge overlapping or touching intervals; empty ones are dropped. ``closed``:
    they are closed spans ``[start, end]`` (sets of visit starts), and a single instant is one."""
    ordered = sorted(intervals) if closed else sorted(i for i in intervals if i.end > i.start)
    merged: list[Interval] = []
    for current in ordered:
        if merged and current.start <= merged[-1].end:
            if current.end > merged[-1].end:
                merged[-1] = Interval(merged[-1].start, current.end)
        else:
            merged.append(current)
    return merged


def subtract(base: Sequence[Interval], cuts: Sequence[Interval]) -> list[Interval]:
    """``base`` minus ``cuts`` (both sorted and merged)."""
    result: list[Interval] = []
    j = 0
    for start, end in base:
        while j < len(cuts) and cuts[j].end <= start:
            j += 1
        k = j
        cursor = start
        while k < len(cuts) and cuts[k].start < end:
            if cuts[k].start > cursor:
                result.append(Interval(cursor, cuts[k].start))
            cursor = max(cursor, cuts[k].end)
            if cursor >= end:
                break
            k += 1
        if cursor < end:
            result.append(Interval(cursor, end))
    return result


def intersect(a: Sequence[Interval], b: Sequence[Interval], *, closed: bool = False) -> list[Interval]:
    """The instants in both ``a`` and ``b`` (both sorted and merged; ``closed`` as for
    :func:`merge`: a single shared instant is kept)."""
    result: list[Interval] = []
    i = j = 0
    while i < len(a) and j < len(b):
        start = max(a[i].start, b[j].start)
        end = min(a[i].end, b[j].end)
        if start < end or (closed and start == end):
            result.append(Interval(start, end))
        if a[i].end < b[j].end:
            i += 1
        else:
            j += 1
    return result


def shrink(
    intervals: Iterable[Interval], before: timedelta, after: timedelta, minimum: timedelta
) -> list[Interval]:
    """Cut ``before`` off each start and ``after`` off each end; keep what is at least
    ``minimum`` long. The result is where a visit may lie so that its buffers fit."""
    result = []
    for interval in intervals:
        start, end = interval.start + before, interval.end - after
        if end - start >= minimum:
            result.append(Interval(start, end))
    return result


def slot_applies(slot: SlotOverlay, service: Service) -> bool:
    """A Slot without serviceType applies to every service; otherwise it applies to services
    whose ``type`` shares a coding with it (or that it names by service-type-reference)."""
    if slot.service_codings is None:
        return True
    return bool(slot.service_codings & service.type_codings) or service.id in slot.service_ids


def _blocks_and_footprints(
    slots: Iterable[SlotOverlay], now: datetime
) -> tuple[list[Interval], list[tuple[datetime, datetime, int]]]:
    """The hard blocks, and the bookings' footprints as (start, end, stamped capacity), among
    ``slots`` that take time now: free Slots, entered-in-error and lapsed holds take none."""
    hard: list[Interval] = []
    footprints: list[tuple[datetime, datetime, int]] = []
    for slot in slots:
        if slot.status in (SlotStatus.FREE, SlotStatus.ENTERED_IN_ERROR):
            continue
        if slot.hold_expires is not None and slot.hold_expires <= now:
            continue
        if slot.status == SlotStatus.BUSY_UNAVAILABLE and not slot.is_buffer:
            hard.append(slot.interval)
        else:
            footprints.append((slot.interval.start, slot.interval.end, slot.capacity or 1))
    return hard, footprints


def busy_time(slots: Iterable[SlotOverlay], capacity: int, now: datetime) -> list[Interval]:
    """The time a new booking of ``capacity`` cannot use (SPEC §3, ``slotCapacity``).

    Hard blocks (``busy-unavailable`` that are not booking buffers) always count. Footprints
    of bookings (visit and buffer Slots) block where their number reaches the new booking's
    capacity or the capacity stamped on any of them (unstamped = 1). Lapsed holds count not.
    """
    hard, footprints = _blocks_and_footprints(slots, now)
    if capacity <= 1 or all(cap <= 1 for _, _, cap in footprints):
        return merge([*hard, *(Interval(s, e) for s, e, _ in footprints)])
    return merge([*hard, *_over_capacity(footprints, capacity)])


def spare_capacity(slots: Iterable[SlotOverlay], capacity: int, now: datetime, footprint: Interval) -> int:
    """How many more bookings of ``capacity`` fit in ``footprint`` (SPEC §3, ``slotCapacity``):
    the least, over every instant of it, of the admitting limit (``capacity``, or a smaller
    capacity stamped on a footprint there) minus the footprints there. Hard blocks are not
    looked at: a footprint that meets one is not offered in the first place."""
    footprints = [
        (start, end, cap)
        for start, end, cap in _blocks_and_footprints(slots, now)[1]
        if start < footprint.end and end > footprint.start
    ]
    spare = capacity
    bounds = sorted({footprint.start, footprint.end, *(t for s, e, _ in footprints for t in (s, e))})
    for left, right in itertools.pairwise(bounds):
        if left < footprint.start or right > footprint.end:
            continue
        present = [cap for s, e, cap in footprints if s <= left and e >= right]
        spare = min(spare, min([capacity, *present]) - len(present))
    return max(spare, 0)


def _over_capacity(footprints: list[tuple[datetime, datetime, int]], capacity: int) -> list[Interval]:
    """Sweep over footprint boundaries, counting what covers each elementary segment."""
    bounds = sorted({t for s, e, _ in footprints for t in (s, e)})
    ordered = sorted(footprints)
    active: list[tuple[datetime, int]] = []  # heap of (end, stamped capacity)
    blocked: list[Interval] = []
    index = 0
    for left, right in itertools.pairwise(bounds):
        while index < len(ordered) and ordered[index][0] <= left:
            heapq.heappush(active, (ordered[index][1], ordered[index][2]))
            index += 1
        while active and active[0][0] <= left:
            heapq.heappop(active)
        if active:
            limit = min(capacity, *(cap for _, cap in active))
            if len(active) >= limit:
                blocked.append(Interval(left, right))
    return blocked


def schedule_windows(
    schedule: Schedule,
    service: Service,
    params: ResolvedParameters,
    slots: Iterable[SlotOverlay],
    span: Interval,
    now: datetime,
) -> list[Interval]:
    """Where a visit of ``params.duration`` may lie on this Schedule (buffers accounted for).

    ``span`` is the range to compute (already widened by the buffers around the request).
    """
    if not schedule.active:
        return []
    if params.availability is None:
        base = [span]
    else:
        base = expand_weekly(params.availability, params.timezone, span)
    if params.not_available:
        base = subtract(base, merge(params.not_available))
    applicable = [s for s in slots if s.schedule_id == schedule.id and slot_applies(s, service)]
    free = [s.interval for s in applicable if s.status == SlotStatus.FREE]
    if free:
        base = merge([*base, *free])
    if schedule.planning_horizon is not None:
        base = intersect(base, [schedule.planning_horizon])
    base = subtract(base, busy_time(applicable, params.slot_capacity, now))
    return shrink(base, params.buffer_before, params.buffer_after, params.duration)


def joint_windows(per_schedule: Sequence[list[Interval]], duration: timedelta) -> list[Interval]:
    """Where all Schedules are free at once, keeping spans that can hold a visit."""
    if not per_schedule:
        return []
    result = per_schedule[0]
    for windows in per_schedule[1:]:
        if windows != result:  # Schedules with the same hours and no Slots: nothing to cut
            result = intersect(result, windows)
    return [w for w in result if w.duration >= duration]
