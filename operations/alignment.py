"""Start times on the alignment grid (SPEC §3).

Per local day of the alignment time zone, starts lie at ``midnight + offset + k * interval``,
counted in real elapsed time from the instant that day begins. The grid is therefore evenly
spaced in real time: on a spring-forward day no start is duplicated, on a fall-back day the
repeated hour is offered twice, and whole-hour grids stay on whole local hours.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from operations.availability import ONE_DAY, local_midnight
from operations.model import Interval


class Grid:
    """The alignment grid of one request: interval, offset (already modulo) and time zone."""

    def __init__(self, interval: timedelta, offset: timedelta, zone: ZoneInfo) -> None:
        if interval <= timedelta(0):
            raise ValueError("the alignment interval must be positive")
        self.interval = interval
        self.offset = offset % interval
        self.zone = zone
        self._midnights: dict[date, datetime] = {}

    def midnight(self, day: date) -> datetime:
        """The UTC instant ``day`` begins in the alignment zone (cached per day)."""
        found = self._midnights.get(day)
        if found is None:
            found = self._midnights[day] = local_midnight(day, self.zone)
        return found

    def starts_between(self, low: datetime, high: datetime) -> Iterator[datetime]:
        """Grid instants ``t`` with ``low <= t <= high``, in order."""
        day = low.astimezone(self.zone).date()
        last = high.astimezone(self.zone).date()
        while day <= last:
            day_start = self.midnight(day)
            day_end = self.midnight(day + ONE_DAY)
            base = day_start + self.offset
            if low > base:
                steps = -((base - low) // self.interval)  # ceil((low - base) / interval)
                current = base + steps * self.interval
            else:
                current = base
            while current <= high and current < day_end:
                yield current
                current += self.interval
            day += ONE_DAY


def aligned_starts(
    windows: Sequence[Interval],
    duration: timedelta,
    grid: Grid,
    request: Interval,
    not_before: datetime,
    limit: int,
    accept: Callable[[datetime], bool] | None = None,
) -> list[datetime]:
    """Up to ``limit`` grid starts whose visit ``[start, start + duration]`` fits in one of
    ``windows`` and inside ``request``, starting no earlier than ``not_before`` (and, with
    ``accept``, that it accepts: booking limits, the other occurrences of a series)."""
    starts: list[datetime] = []
    for window in windows:
        low = max(window.start, request.start, not_before)
        high = min(window.end, request.end) - duration
        if high < low:
            continue
        for start in grid.starts_between(low, high):
            if accept is not None and not accept(start):
                continue
            starts.append(start)
            if len(starts) >= limit:
                return starts
    return starts
