"""Pools: "any one of" several Schedules in ``$find`` (SPEC §7.2).

Each ``schedule`` parameter of a request is a pool; its comma-separated members are "any one
of", the pools are "all of". For each start, every pool must offer a member that is free then
under that member's **own** rules -- its hours, buffers, capacity, minimum notice, booking
window and booking limits, and for a series every occurrence on that same member. Which
member: the first free one in the listed order (``listed``), or the free one with the fewest
visits on that local day of its own time zone, ties in listed order (``balanced``). The
proposal then names the chosen members only, so ``$book`` and ``$hold`` book exactly them.

How: each member's windows are computed once (``find.compute``); a pool's windows are their
union and the pools' unions are intersected. The union is only a sieve -- a visit may straddle
two members' windows -- so members are chosen, with an exact check, only for the grid starts
that survive it. A Schedule named in two pools may serve both; it then appears once.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from operations.availability import merge
from operations.find_request import BALANCED, LISTED
from operations.model import Interval, Leg, ResolvedParameters, SlotOverlay
from operations.rules import VisitCounts, broken_rule, count_visits, day_of
from operations.series import Recurrence

__all__ = ["BALANCED", "LISTED", "Chooser", "Member", "Pool", "own_rules", "pools_of"]


def own_rules(windows: Sequence[Interval], params: ResolvedParameters, now: datetime) -> list[Interval]:
    """``windows`` (where a visit may lie) cut to the visit starts a Schedule's own
    ``minimumNotice`` and ``bookingWindow`` allow: none before now + notice, none after
    now + window."""
    earliest = now + params.minimum_notice
    latest = now + params.booking_window + params.duration if params.booking_window is not None else None
    cut = []
    for window in windows:
        start = max(window.start, earliest)
        end = window.end if latest is None else min(window.end, latest)
        if end - start >= params.duration:
            cut.append(Interval(start, end))
    return cut


@dataclass
class Member:
    """One Schedule of a pool with where its visits may lie, its own rules applied."""

    leg: Leg
    index: int
    """Its place in the pool's listed order."""
    windows: list[Interval]
    counts: VisitCounts | None = None
    """Its visits already there, per local day and week (with a limit, or for ``balanced``)."""
    _starts: list[datetime] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._starts = [w.start for w in self.windows]

    def fits(self, start: datetime, duration: timedelta) -> bool:
        """Whether a visit at ``start`` lies inside one of its windows."""
        index = bisect.bisect_right(self._starts, start) - 1
        return index >= 0 and self.windows[index].end >= start + duration

    def free(self, starts: Sequence[datetime], duration: timedelta, now: datetime) -> bool:
        """Whether visits at every one of ``starts`` (one, or a series' occurrences) fit its
        windows and break none of its booking limits."""
        if not all(self.fits(start, duration) for start in starts):
            return False
        params = self.leg.params
        return not params.has_limits or broken_rule(params, starts, now, self.counts) is None

    def visits_on(self, start: datetime) -> int:
        """Its visits already on the local day (its own time zone) of ``start``."""
        return self.counts.daily[day_of(start, self.leg.params.timezone)] if self.counts else 0


@dataclass
class Pool:
    """The members of one ``schedule`` parameter, in the order listed."""

    members: tuple[Member, ...]

    @property
    def windows(self) -> list[Interval]:
        """Where some member may be free: a superset, never a promise (see the module)."""
        return merge(w for member in self.members for w in member.windows)

    def candidates(self, start: datetime, order: str) -> Sequence[Member]:
        """The members in the order they are tried at ``start``."""
        if order == BALANCED and len(self.members) > 1:
            return sorted(self.members, key=lambda m: (m.visits_on(start), m.index))
        return self.members


def pools_of(
    legs: Sequence[Leg],
    groups: Sequence[Sequence[str]],
    windows: Mapping[str, list[Interval]],
    slots: Sequence[SlotOverlay],
    now: datetime,
    order: str,
) -> list[Pool]:
    """One :class:`Pool` per group of Schedule ids; ``windows`` by Schedule id. Visits are
    counted once per Schedule that has a booking limit, or every Schedule of a pool of
    several under ``balanced``."""
    by_id = {leg.schedule.id: leg for leg in legs}
    counts: dict[str, VisitCounts] = {}
    pools = []
    for group in groups:
        members = []
        for index, schedule_id in enumerate(group):
            leg = by_id[schedule_id]
            needs_counts = leg.params.has_limits or (order == BALANCED and len(group) > 1)
            if needs_counts and schedule_id not in counts:
                counts[schedule_id] = count_visits(slots, schedule_id, leg.params.timezone, now)
            members.append(Member(leg, index, windows[schedule_id], counts.get(schedule_id)))
        pools.append(Pool(tuple(members)))
    return pools


class Chooser:
    """Chooses, start by start, the member of every pool; remembers each choice."""

    def __init__(
        self,
        pools: Sequence[Pool],
        duration: timedelta,
        now: datetime,
        recurrence: Recurrence | None,
        order: str,
    ) -> None:
        self.pools = pools
        self.duration = duration
        self.now = now
        self.recurrence = recurrence
        self.order = order
        self.chosen: dict[datetime, tuple[Leg, ...]] = {}

    @property
    def trivial(self) -> bool:
        """Nothing to choose or check: one member per pool, no limit, no series. A start in the
        intersection of the pools' windows is then free on every member."""
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
            for member in pool.candidates(start, self.order):
                starts = occurrences or self._series(start, member)
                if member.free(starts, self.duration, self.now):
                    occurrences = starts
                    legs.append(member.leg)
                    break
            else:
                return None
        return _distinct(legs)

    def accept(self) -> Callable[[datetime], bool] | None:
        """For ``aligned_starts``: whether a start can be offered (recording its members);
        ``None`` when :attr:`trivial`."""
        if self.trivial:
            return None

        def accept(start: datetime) -> bool:
            legs = self.choose(start)
            if legs is None:
                return False
            self.chosen[start] = legs
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
