"""Pools: "any one of" several Schedules in ``$find`` (SPEC §7.2).

Each ``schedule`` parameter of a request is a pool; its comma-separated members are "any one
of", the pools are "all of". For each start, every pool must offer a member that is free then
under that member's **own** rules -- its hours, buffers, capacity, minimum notice, booking
window and booking limits, and for a series every occurrence on that same member. Which
member: the first free one in the listed order (``listed``), or the free one with the fewest
visits on that local day of its own time zone, ties in listed order (``balanced``). The
proposal then names the chosen members only, so ``$book`` and ``$hold`` book exactly them.

How: each member's windows are computed once (``find.compute``) and read as the starts a visit
can have on it (``[window start, window end - duration]``, closed); a pool's possible starts are
their union, intersected across pools -- starts, not windows, so that no visit straddles two
members. Members are then chosen, with an exact check (limits, a series), only for the grid
starts that survive. Without a series, a choice also says how long it holds (until the chosen
member's window ends, a member ranked before it may be free, or a local day changes), and the
grid starts of that run take it as it is. A Schedule named in two pools may serve both; it
then appears once.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from operations.availability import ONE_DAY, intersect, joint_windows, local_midnight, merge
from operations.find_request import BALANCED, LISTED
from operations.model import Interval, Leg, ResolvedParameters, SlotOverlay
from operations.rules import DAY, VisitCounts, broken_rule, count_visits, day_of, is_visit, period_span
from operations.series import Recurrence

NEVER = datetime.max.replace(tzinfo=UTC)
INSTANT = timedelta(microseconds=1)
"""The resolution of ``datetime``: "before t" is "at or before t - INSTANT"."""

__all__ = ["BALANCED", "LISTED", "Chooser", "Member", "Pool", "offered_windows", "own_rules", "pools_of"]


def own_rules(windows: Sequence[Interval], params: ResolvedParameters, now: datetime) -> list[Interval]:
    """``windows`` (where a visit may lie) cut to the visit starts a Schedule's own
    ``minimumNotice`` and ``bookingWindow`` allow: none before now + notice, none after
    now + window."""
    if not params.minimum_notice and params.booking_window is None:
        return list(windows)  # nothing to cut: ``aligned_starts`` starts no earlier than now anyway
    earliest = now + params.minimum_notice
    latest = now + params.booking_window + params.duration if params.booking_window is not None else None
    cut = []
    for window in windows:
        start = max(window.start, earliest)
        end = window.end if latest is None else min(window.end, latest)
        if end - start >= params.duration:
            cut.append(Interval(start, end))
    return cut


class LocalDays:
    """The local days of one time zone as a table of midnights, grown as needed: a local date
    is then a bisect, not a zone conversion (a pooled find asks for thousands). Shared by the
    members of a zone."""

    def __init__(self, zone: ZoneInfo) -> None:
        self.zone = zone
        self._dates: list[date] = []
        self._midnights: list[datetime] = []
        """``_midnights[i]`` begins ``_dates[i]``; one more than dates (the last day's end)."""

    def of(self, instant: datetime) -> tuple[date, Interval]:
        """The local day of ``instant`` and its instants."""
        index = bisect.bisect_right(self._midnights, instant) - 1
        if not 0 <= index < len(self._dates):
            day = day_of(instant, self.zone)
            if not self._cover(day):
                return day, period_span(day, DAY, self.zone)
            index = bisect.bisect_right(self._midnights, instant) - 1
        return self._dates[index], Interval(self._midnights[index], self._midnights[index + 1])

    def _cover(self, day: date) -> bool:
        """Grow the table forward to hold ``day`` (only the days missing are computed); say no
        for a day before it (starts come in time order) or past :data:`TABLE_DAYS`."""
        if not self._dates:
            self._dates, self._midnights = [day], [self._midnight(day), self._midnight(day + ONE_DAY)]
            return True
        if day < self._dates[0] or (day - self._dates[0]).days >= TABLE_DAYS:
            return False
        while day > self._dates[-1]:
            self._dates.append(self._dates[-1] + ONE_DAY)
            self._midnights.append(self._midnight(self._dates[-1] + ONE_DAY))
        return True

    def _midnight(self, day: date) -> datetime:
        return local_midnight(day, self.zone)


TABLE_DAYS = 120
"""Days one :class:`LocalDays` table may span: a range (31 days), a series' occurrences
(12 weeks) and the margins fit."""


class Member:
    """One Schedule of a pool: where its visits may lie, its own rules applied."""

    def __init__(
        self,
        leg: Leg,
        index: int,
        windows: list[Interval],
        duration: timedelta,
        counts: VisitCounts | None,
        days: LocalDays,
        visits: list[datetime] | None = None,
    ) -> None:
        self.leg = leg
        self.index = index
        """Its place in the pool's listed order."""
        self.counts = counts
        """Its visits already there, per local day and week (with a booking limit)."""
        self.visits = visits or []
        """The starts of its visits already there, sorted (``balanced`` counts them per day)."""
        self.windows = windows
        self.duration = duration
        self.days = days
        self._limited = leg.params.has_limits

    @functools.cached_property
    def starts(self) -> list[Interval]:
        """Where a visit may start on it: per window, ``[first, last]`` (closed)."""
        return [Interval(w.start, w.end - self.duration) for w in self.windows]

    @functools.cached_property
    def firsts(self) -> list[datetime]:
        """The first start of each window (what a check bisects)."""
        return [w.start for w in self.windows]

    @functools.cached_property
    def lasts(self) -> list[datetime]:
        """The last start of each window."""
        return [w.end - self.duration for w in self.windows]

    def free(self, starts: Sequence[datetime], now: datetime, *, fits: bool = False) -> bool:
        """Whether visits at every one of ``starts`` (one, or a series' occurrences) fit its
        windows (``fits``: known already) and break none of its booking limits."""
        for start in () if fits else starts:
            index = bisect.bisect_right(self.firsts, start) - 1
            if index < 0 or start > self.lasts[index]:
                return False
        return not self._limited or broken_rule(self.leg.params, starts, now, self.counts) is None

    def day(self, start: datetime) -> tuple[Interval, int]:
        """The local day (its own time zone) of ``start`` and its visits already there."""
        _, span = self.days.of(start)
        visits = self.visits
        return span, bisect.bisect_left(visits, span.end) - bisect.bisect_left(visits, span.start)


@dataclass
class Pool:
    """The members of one ``schedule`` parameter, in the order listed."""

    members: tuple[Member, ...]
    balanced: bool = False
    _limited: bool = False
    _order: tuple[Member, ...] = ()
    _region: Interval | None = None

    @property
    def starts(self) -> list[Interval]:
        """Where some member can hold a visit: the union of the members' possible starts
        (closed: ``[first, last]``), exact as far as hours, buffers and Slots go."""
        return merge((span for member in self.members for span in member.starts), closed=True)

    def candidates(self, start: datetime) -> Sequence[Member]:
        """The members in the order they are tried at ``start``: as listed, or (balanced)
        by their visits on that local day, then as listed."""
        if not self.balanced:
            return self.members
        self.region(start)
        return self._order

    def region(self, start: datetime) -> Interval:
        """The instants around ``start`` in which no member's local day changes (and, for
        ``balanced``, the order of the members holds)."""
        if self._region is None or not self._region.start <= start < self._region.end:
            days = [(member.day(start), member) for member in self.members]
            if self.balanced:
                ranked = sorted(days, key=lambda found: (found[0][1], found[1].index))
                self._order = tuple(member for _, member in ranked)
            self._region = Interval(max(d.start for (d, _), _ in days), min(d.end for (d, _), _ in days))
        return self._region

    def choose(self, start: datetime, now: datetime) -> tuple[Member | None, datetime]:
        """The member a single visit at ``start`` gets (``None``: none is free), and the latest
        start up to which that answer stays the same: the chosen member's window holds it,
        every member ranked before it stays busy, and (balanced, or with a booking limit) no
        member's local day changes."""
        until, ranked = NEVER, self.members
        if self.balanced or self._limited:
            until = self.region(start).end - INSTANT
            ranked = self._order if self.balanced else self.members
        for member in ranked:
            # One bisect tells whether it is free, until when, or when it may be next.
            firsts, lasts = member.firsts, member.lasts
            index = bisect.bisect_right(firsts, start) - 1
            if index >= 0 and start <= lasts[index] and member.free((start,), now, fits=True):
                return member, min(until, lasts[index])
            if index + 1 < len(firsts):
                until = min(until, firsts[index + 1] - INSTANT)
        return None, until


def offered_windows(pools: Sequence[Pool], duration: timedelta) -> list[Interval]:
    """Where ``aligned_starts`` looks for starts: the starts every pool can hold (each pool's
    union, intersected across pools), each given as ``[first, last + duration]``. Their starts
    are disjoint and in order; the visits may overlap."""
    if all(len(pool.members) == 1 for pool in pools):
        # The same starts, found the way a joint request always found them (and cheaper).
        return joint_windows([pool.members[0].windows for pool in pools], duration)
    common: list[Interval] | None = None
    for pool in pools:
        common = pool.starts if common is None else intersect(common, pool.starts, closed=True)
    return [Interval(first, last + duration) for first, last in common or []]


def pools_of(
    legs: Sequence[Leg],
    groups: Sequence[Sequence[str]],
    windows: Mapping[str, list[Interval]],
    slots: Sequence[SlotOverlay],
    now: datetime,
    duration: timedelta,
    order: str,
) -> list[Pool]:
    """One :class:`Pool` per group of Schedule ids; ``windows`` by Schedule id. Visits are
    counted per local day and week for a Schedule with a booking limit, and listed in time
    order under ``balanced``."""
    by_id = {leg.schedule.id: leg for leg in legs}
    slots_of: dict[str, list[SlotOverlay]] = {}
    if order == BALANCED or any(leg.params.has_limits for leg in legs):
        for overlay in slots:
            slots_of.setdefault(overlay.schedule_id, []).append(overlay)
    counts: dict[str, VisitCounts] = {}
    zones: dict[str, LocalDays] = {}
    pools = []
    for group in groups:
        members = []
        for index, schedule_id in enumerate(group):
            leg = by_id[schedule_id]
            mine = slots_of.get(schedule_id, [])
            if leg.params.has_limits and schedule_id not in counts:
                counts[schedule_id] = count_visits(
                    mine, schedule_id, leg.params.timezone, now, weeks=leg.params.weekly_limit is not None
                )
            # balanced: per local day, a bisect in the sorted visit starts (what count_visits counts).
            visits = sorted(s.interval.start for s in mine if is_visit(s, now)) if order == BALANCED else None
            zone = leg.params.timezone
            days = zones.setdefault(zone.key, LocalDays(zone))
            members.append(
                Member(leg, index, windows[schedule_id], duration, counts.get(schedule_id), days, visits)
            )
        limited = any(member.leg.params.has_limits for member in members)
        pools.append(Pool(tuple(members), balanced=order == BALANCED and len(members) > 1, _limited=limited))
    return pools


class Chooser:
    """Chooses, start by start, the member of every pool; remembers each choice."""

    def __init__(
        self,
        pools: Sequence[Pool],
        duration: timedelta,
        now: datetime,
        recurrence: Recurrence | None,
    ) -> None:
        self.pools = pools
        self.duration = duration
        self.now = now
        self.recurrence = recurrence
        ids = [member.leg.schedule.id for pool in pools for member in pool.members]
        self._disjoint = len(ids) == len(set(ids))
        self.chosen: list[tuple[Leg, ...]] = []
        """The members of each start accepted, in the order accepted."""
        self._run: tuple[datetime, datetime, tuple[Leg, ...] | None] = (NEVER, NEVER, None)
        """From, to (inclusive) and the answer of the last run of starts with one answer."""

    @property
    def trivial(self) -> bool:
        """Nothing to choose or check: one member per pool, no limit, no series. A start in the
        intersection of the pools' possible starts is then free on every member."""
        return self.recurrence is None and all(
            len(pool.members) == 1 and not pool.members[0].leg.params.has_limits for pool in self.pools
        )

    def fixed(self) -> tuple[Leg, ...]:
        """The legs of every proposal when :attr:`trivial`."""
        return _distinct(pool.members[0].leg for pool in self.pools)

    def choose(self, start: datetime) -> tuple[Leg, ...] | None:
        """The member of every pool for a visit at ``start``, or ``None`` when some pool has
        none free. A series' occurrences keep the wall-clock time of the first pool's chosen
        member (the Schedule ``$book`` reads them in)."""
        occurrences: list[datetime] | None = None if self.recurrence is not None else [start]
        legs = []
        for pool in self.pools:
            for member in pool.candidates(start):
                starts = occurrences or self._series(start, member)
                if member.free(starts, self.now):
                    occurrences = starts
                    legs.append(member.leg)
                    break
            else:
                return None
        return tuple(legs) if self._disjoint else _distinct(legs)

    def choose_single(self, start: datetime) -> tuple[Leg, ...] | None:
        """:meth:`choose` for a single visit (no series), by runs: the answer holds for every
        start up to the earliest of the pools' ``until``, so a run of grid starts with the
        same members costs one choice."""
        first, last, legs = self._run
        if first <= start <= last:
            return legs
        until = NEVER
        chosen = []
        for pool in self.pools:
            member, pool_until = pool.choose(start, self.now)
            if member is None:
                self._run = (start, pool_until, None)
                return None
            until = min(until, pool_until)
            chosen.append(member.leg)
        legs = tuple(chosen) if self._disjoint else _distinct(chosen)
        self._run = (start, until, legs)
        return legs

    def accept(self) -> Callable[[datetime], bool] | None:
        """For ``aligned_starts``: whether a start can be offered (recording its members);
        ``None`` when :attr:`trivial`."""
        if self.trivial:
            return None
        choose = self.choose if self.recurrence is not None else self.choose_single
        chosen = self.chosen

        def accept(start: datetime) -> bool:
            # aligned_starts offers exactly the starts accepted, in order: ``chosen`` follows it.
            first, last, legs = self._run
            if not first <= start <= last:
                legs = choose(start)
            if legs is None:
                return False
            chosen.append(legs)
            return True

        return accept

    def _series(self, start: datetime, member: Member) -> list[datetime]:
        assert self.recurrence is not None
        return self.recurrence.starts(start, member.leg.params.timezone)


def _distinct(legs: Iterable[Leg]) -> tuple[Leg, ...]:
    """Each Schedule once (one serving two pools), in the order first chosen."""
    seen: dict[str, Leg] = {}
    for leg in legs:
        seen.setdefault(leg.schedule.id, leg)
    return tuple(seen.values())
