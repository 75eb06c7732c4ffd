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

Bookings of *neighbouring* times -- other keys that share a bucket, such as 10-minute visits at
09:00 and 09:10 in the 09:00 bucket -- are not grouped (a group of mixed times would collide
with other processes far more often), but they do not race each other either: a group is
written only while no other group of this process holds one of its buckets, and waits
otherwise (at most :data:`BUCKET_WAIT_SECONDS`, then it goes ahead and lets the locks decide).
Without that, the later one read the shared lock before the earlier one's transaction moved it,
and lost its version check: a lock read, a Slot search and a refused transaction for nothing.

The worker processes of one host wait for each other's groups the same way, through a file
they share (``plugin/host_buckets.py``), within the same bound. Only this process's bookings
are grouped, and the version-checked locks still decide between processes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass

from operations.booking_group import Commit, Outcome, Prepared
from plugin.host_buckets import Held, HostBuckets

logger = logging.getLogger(__name__)

BUCKET_WAIT_SECONDS = 5.0
"""How long a group waits for a bucket another group of this process holds before it goes
ahead anyway (the locks still decide; this only spares lost version checks)."""


@dataclass
class _Ticket:
    member: Prepared
    outcome: Outcome | None = None
    group: list[_Ticket] | None = None
    """Set when this ticket's thread is to write a group (it is the group's first member)."""


class BookingGroups:
    """``operations.booking_group.Grouping`` on threads (module docstring)."""

    def __init__(self, max_size: int, host: HostBuckets | None = None) -> None:
        if max_size < 1:
            raise ValueError("a group has at least one member")
        self.max_size = max_size
        self._host = host if host is not None else HostBuckets(None)
        """The same wait between the worker processes of the host (``plugin/host_buckets.py``)."""
        self._changed = threading.Condition()
        self._busy: set[Hashable] = set()
        self._queued: dict[Hashable, list[_Ticket]] = {}
        self._held: Counter[Hashable] = Counter()
        """The buckets of the groups being written (a key is the tuple of its buckets)."""
        self._bucket_waits = 0

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
        held = Held(None)
        try:
            began = time.monotonic()
            waited = self._take_buckets(key) or waited
            # The same wait between processes, within what is left of the one bound.
            left = max(0.0, BUCKET_WAIT_SECONDS - (time.monotonic() - began))
            held, waited_for_host = self._host.take(_buckets(key), left)
            outcomes = commit([t.member for t in group], waited or waited_for_host)
        except Exception as exc:  # commit answers each member; this is a defect's safety net
            logger.exception("a booking group failed as a whole", extra={"members": len(group)})
            outcomes = [exc] * len(group)
        finally:
            held.release()
            # Whatever happened (even a BaseException), the next group must get its writer, or
            # every later booking of this time would wait forever.
            self._hand_over(key, group, outcomes)
        assert ticket.outcome is not None
        return ticket.outcome

    def _take_buckets(self, key: Hashable) -> bool:
        """Wait until no other group of this process holds one of ``key``'s buckets, then hold
        them; whether it waited (its speculative lock read is stale then)."""
        buckets = _buckets(key)
        deadline = time.monotonic() + BUCKET_WAIT_SECONDS
        waited = False
        with self._changed:
            while any(self._held[b] for b in buckets):
                left = deadline - time.monotonic()
                if left <= 0:
                    logger.info(
                        "a booking group stopped waiting for a bucket", extra={"buckets": len(buckets)}
                    )
                    break
                if not waited:
                    waited = True
                    self._bucket_waits += 1
                self._changed.wait(left)
            if waited:
                self._bucket_waits -= 1
            self._held.update(buckets)
        return waited

    def _hand_over(self, key: Hashable, group: list[_Ticket], outcomes: list[Outcome]) -> None:
        with self._changed:
            self._held.subtract(_buckets(key))
            self._held = +self._held  # drop the zeros
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
        """Whether a booking of ``key`` would wait: for a group of its time, or for a bucket."""
        with self._changed:
            return key in self._busy or any(self._held[b] for b in _buckets(key))

    def waiting(self) -> int:
        """Bookings queued behind a group being written, or waiting for a bucket (held in this
        process or, through the host's bucket file, in another), in this process (tests,
        diagnostics)."""
        with self._changed:
            return sum(len(q) for q in self._queued.values()) + self._bucket_waits + self._host.waiting


def _buckets(key: Hashable) -> tuple[Hashable, ...]:
    """The buckets of a key (``operations.booking_group.group_key``: the sorted tuple of the
    lock ids a booking takes); any other key is a bucket of its own."""
    return key if isinstance(key, tuple) else (key,)
