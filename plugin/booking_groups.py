"""Group commit in one process: at most one booking group per key -- the time buckets a booking
takes -- is being written at a time; the bookings of the same buckets that arrive meanwhile wait
and are written next, together (``operations/booking_group.py`` decides and writes a group;
docs/consistency.md argues it).

Leader and followers, with no timer: a booking that finds its buckets idle commits at once,
alone, as if there were no grouping -- nothing is added at low load. One that finds them busy
queues. When a group is written, the thread that wrote it answers its members and hands the
next group -- everyone queued meanwhile, up to ``max_size`` -- to the first of them, which writes
it; so each request thread writes at most one group and returns. Groups grow with the load:
under a burst, a booking waits for the group before it (and more only when over ``max_size``
bookings queued ahead of it), and the upstream does the reads and the transaction once per
group instead of once per booking and per retry.

Only this process's bookings are grouped; the version-checked locks still decide between
processes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable
from dataclasses import dataclass

from operations.booking_group import Commit, Outcome, Prepared

logger = logging.getLogger(__name__)


@dataclass
class _Ticket:
    member: Prepared
    outcome: Outcome | None = None
    group: list[_Ticket] | None = None
    """Set when this ticket's thread is to write a group (it is the group's first member)."""


class BookingGroups:
    """``operations.booking_group.Grouping`` on threads (module docstring)."""

    def __init__(self, max_size: int) -> None:
        if max_size < 1:
            raise ValueError("a group has at least one member")
        self.max_size = max_size
        self._changed = threading.Condition()
        self._busy: set[Hashable] = set()
        self._queued: dict[Hashable, list[_Ticket]] = {}

    def __call__(self, key: Hashable, member: Prepared, commit: Commit) -> Outcome:
        ticket = _Ticket(member)
        with self._changed:
            if key in self._busy:
                self._queued.setdefault(key, []).append(ticket)
                while ticket.outcome is None and ticket.group is None:
                    self._changed.wait()
                if ticket.outcome is not None:
                    return ticket.outcome
                waited = True
            else:
                self._busy.add(key)
                ticket.group = [ticket]
                waited = False
        group = ticket.group
        assert group is not None
        outcomes: list[Outcome] = []
        try:
            outcomes = commit([t.member for t in group], waited)
        except Exception as exc:  # commit answers each member; this is a defect's safety net
            logger.exception("a booking group failed as a whole", extra={"members": len(group)})
            outcomes = [exc] * len(group)
        finally:
            # Whatever happened (even a BaseException), the next group must get its writer, or
            # every later booking of this time would wait forever.
            self._hand_over(key, group, outcomes)
        assert ticket.outcome is not None
        return ticket.outcome

    def _hand_over(self, key: Hashable, group: list[_Ticket], outcomes: list[Outcome]) -> None:
        with self._changed:
            for n, t in enumerate(group):
                t.outcome = (
                    outcomes[n] if n < len(outcomes) else RuntimeError("the booking group was interrupted")
                )
            queued = self._queued.get(key)
            if queued:
                following, rest = queued[: self.max_size], queued[self.max_size :]
                if rest:
                    self._queued[key] = rest
                else:
                    del self._queued[key]
                following[0].group = following
            else:
                self._busy.discard(key)
            self._changed.notify_all()

    def busy(self, key: Hashable) -> bool:
        with self._changed:
            return key in self._busy

    def waiting(self) -> int:
        """Bookings queued behind a group being written, in this process (tests, diagnostics)."""
        with self._changed:
            return sum(len(q) for q in self._queued.values())
