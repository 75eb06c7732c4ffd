"""What earlier ``$find`` requests of this process learned about a Schedule's configuration,
kept only to size the next request's Slot search -- never to decide anything.

``$find`` reads the configuration and the Slots in one round trip, so it must choose the Slot
search's span before it knows the Schedules' zones, buffers and booking limits. A limit counts
whole local days or ISO weeks, so a limited Schedule needs more Slots than the range: without a
hint they are searched in a second round trip once the configuration is back. With a hint (the
:class:`Leg` the last request resolved for the same Schedule and service) the first round's
search already covers them.

A hint cannot make an answer wrong: after the reads, ``$find`` computes the spans it needs from
the configuration it has just read (with the caller's credentials) and searches whatever the
first round did not cover. A stale hint costs at most that second round trip, or a wider search;
a hint never widens what a caller may see, since it only changes which Slots the sidecar reads
with its own credentials, and what the caller gets is computed from its own configuration reads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from operations.model import Leg

DEFAULT_CAPACITY = 4096
"""(Schedule, service) pairs remembered per process; the least recently used are forgotten."""


class ReadHints:
    """A bounded, thread-safe memory of the :class:`Leg` last resolved per Schedule and service."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self._capacity = capacity
        self._legs: OrderedDict[tuple[str, str], Leg] = OrderedDict()
        self._lock = threading.Lock()

    def recall(self, schedule_ids: Sequence[str], service_id: str) -> list[Leg]:
        """The legs remembered for those of ``schedule_ids`` that are known (possibly none)."""
        found: list[Leg] = []
        with self._lock:
            for schedule_id in schedule_ids:
                leg = self._legs.get((schedule_id, service_id))
                if leg is not None:
                    self._legs.move_to_end((schedule_id, service_id))
                    found.append(leg)
        return found

    def remember(self, service_id: str, legs: Sequence[Leg]) -> None:
        """Keep ``legs`` (just resolved for ``service_id``) for the next request."""
        with self._lock:
            for leg in legs:
                key = (leg.schedule.id, service_id)
                self._legs[key] = leg
                self._legs.move_to_end(key)
            while len(self._legs) > self._capacity:
                self._legs.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._legs)
