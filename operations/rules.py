"""The booking rules clinics set (SPEC §7.1): minimum notice, a rolling booking window, and at most
N visits per local calendar day or ISO week of a Schedule.

A rule applies per Schedule, with that Schedule's resolved parameters (so a provider and a room
booked together each apply their own). ``$find`` offers no start that breaks one; ``$book`` and
``$hold`` refuse it with 422 ``business-rule`` naming the rule. Limits count **visits**: the
``busy`` and live ``busy-tentative`` Slots of the Schedule (buffers and blocks are
``busy-unavailable`` and count not), each on the local day -- and the ISO week, Monday to
Sunday -- in which it starts, in the Schedule's own time zone.

Counting is part of the decision, so it is race-free like the rest: a booking on a limited
Schedule also takes the lock of its local day (or week), see :func:`period_keys` and
``operations/locks.py``.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from operations.availability import local_midnight, merge
from operations.fhir_values import format_instant
from operations.model import Interval, ResolvedParameters, SlotOverlay, SlotStatus

DAY = "d"
WEEK = "wk"


def day_of(start: datetime, zone: ZoneInfo) -> date:
    """The local calendar day a visit starting at ``start`` counts on."""
    return start.astimezone(zone).date()


def week_of(start: datetime, zone: ZoneInfo) -> date:
    """The ISO week a visit counts on, named by its local Monday."""
    return monday_of(day_of(start, zone))


def monday_of(day: date) -> date:
    """The Monday of ``day``'s ISO week."""
    return day - timedelta(days=day.weekday())


def period_span(first_day: date, unit: str, zone: ZoneInfo) -> Interval:
    """The instants of one local day (``d``) or ISO week (``wk``) starting on ``first_day``:
    real lengths, so a day with a DST change is 23 or 25 hours."""
    days = 1 if unit == DAY else 7
    return Interval(local_midnight(first_day, zone), local_midnight(first_day + timedelta(days=days), zone))


@dataclass(frozen=True)
class VisitCounts:
    """The visits already on one Schedule, per local day and per ISO week (by its Monday)."""

    daily: Counter[date] = field(default_factory=Counter)
    weekly: Counter[date] = field(default_factory=Counter)


def is_visit(slot: SlotOverlay, now: datetime) -> bool:
    """A booked visit, or a held one whose hold is live: what a booking limit counts."""
    if slot.status == SlotStatus.BUSY:
        return True
    return slot.status == SlotStatus.BUSY_TENTATIVE and (slot.hold_expires is None or slot.hold_expires > now)


def count_visits(
    slots: Iterable[SlotOverlay],
    schedule_id: str,
    zone: ZoneInfo,
    now: datetime,
    ignore: Collection[str] = (),
    *,
    weeks: bool = True,
) -> VisitCounts:
    """The visits on ``schedule_id`` among ``slots`` (those with ids in ``ignore`` left out: the
    Appointment being rescheduled), per local day and (unless ``weeks`` is false) week of
    ``zone``."""
    counts = VisitCounts()
    starts = [
        slot.interval.start
        for slot in slots
        if slot.schedule_id == schedule_id and slot.id not in ignore and is_visit(slot, now)
    ]
    counts.daily.update(map(day_of, starts, itertools.repeat(zone)))
    if weeks:  # a week's count is the sum of its days'
        for day, visits in counts.daily.items():
            counts.weekly[monday_of(day)] += visits
    return counts


def broken_rule(
    params: ResolvedParameters, starts: Sequence[datetime], now: datetime, counts: VisitCounts | None
) -> str | None:
    """The first rule that visits starting at ``starts`` (one booking, or every occurrence of a
    series) would break on a Schedule with ``params``, as a sentence that names it; ``None``
    when they break none. ``counts`` are the Schedule's visits already there (needed only when
    it has a limit)."""
    zone = params.timezone
    earliest = now + params.minimum_notice
    latest = now + params.booking_window if params.booking_window is not None else None
    for start in starts:
        if params.minimum_notice and start < earliest:
            return (
                f"minimumNotice: the visit at {format_instant(start, zone)} starts less than "
                f"{_span(params.minimum_notice)} from now (earliest {format_instant(earliest, zone)})"
            )
        if latest is not None and start > latest:
            return (
                f"bookingWindow: the visit at {format_instant(start, zone)} starts more than "
                f"{_span(params.booking_window)} from now (latest {format_instant(latest, zone)})"
            )
    if not params.has_limits:
        return None
    counts = counts or VisitCounts()
    for unit, limit, already, key_of in (
        (DAY, params.daily_limit, counts.daily, day_of),
        (WEEK, params.weekly_limit, counts.weekly, week_of),
    ):
        if limit is None:
            continue
        wanted = Counter(key_of(start, zone) for start in starts)
        for key in sorted(wanted):
            if already[key] + wanted[key] > limit:
                what = f"{key.isoformat()}" if unit == DAY else f"the week of {key.isoformat()}"
                return (
                    f"bookingLimit: at most {limit} visit{'s' if limit != 1 else ''} per "
                    f"{'day' if unit == DAY else 'week'}, and {what} ({zone.key}) already has {already[key]}"
                )
    return None


def _span(value: timedelta | None) -> str:
    if value is None:
        return "-"
    minutes = value.total_seconds() / 60
    if minutes % (24 * 60) == 0:
        days = int(minutes // (24 * 60))
        return f"{days} day{'s' if days != 1 else ''}"
    if minutes % 60 == 0:
        return f"{int(minutes // 60)} h"
    return f"{minutes:g} min"


def counting_spans(params: ResolvedParameters, starts: Iterable[datetime]) -> list[Interval]:
    """The local days and weeks whose visits a booking limit of ``params`` counts for visits
    starting at ``starts``: what the Slot search must cover (merged)."""
    zone = params.timezone
    spans: list[Interval] = []
    for start in starts:
        if params.daily_limit is not None:
            spans.append(period_span(day_of(start, zone), DAY, zone))
        if params.weekly_limit is not None:
            spans.append(period_span(week_of(start, zone), WEEK, zone))
    return merge(spans)


def period_keys(params: ResolvedParameters, starts: Iterable[datetime]) -> set[str]:
    """The lock keys (``d<date>``, ``w<monday>``) a booking of visits at ``starts`` takes on a
    Schedule with ``params``: one per local day (week) it adds a visit to, under a limit."""
    zone = params.timezone
    keys: set[str] = set()
    for start in starts:
        if params.daily_limit is not None:
            keys.add(f"d{day_of(start, zone).isoformat()}")
        if params.weekly_limit is not None:
            keys.add(f"w{week_of(start, zone).isoformat()}")
    return keys


# The furthest any IANA zone lies from UTC: a UTC instant falls on one of the local dates
# between these two offsets, whatever the Schedule's zone.
_WESTMOST = timedelta(hours=-12)
_EASTMOST = timedelta(hours=14)


def candidate_period_keys(starts: Iterable[datetime]) -> set[str]:
    """Every lock key :func:`period_keys` could give for ``starts`` in *any* time zone: read with
    the bucket locks before the configuration (and so the zone, and whether a limit applies)
    is known, so a booking on a limited Schedule still costs three round trips."""
    keys: set[str] = set()
    for start in starts:
        utc = start.astimezone(UTC)
        for shifted in (utc + _WESTMOST, utc + _EASTMOST):
            day = shifted.date()
            keys.add(f"d{day.isoformat()}")
            keys.add(f"w{(day - timedelta(days=day.weekday())).isoformat()}")
        # The dates in between (there is at most one more: 26 hours span at most three dates).
        middle = (utc + (_WESTMOST + _EASTMOST) / 2).date()
        keys.add(f"d{middle.isoformat()}")
        keys.add(f"w{(middle - timedelta(days=middle.weekday())).isoformat()}")
    return keys
