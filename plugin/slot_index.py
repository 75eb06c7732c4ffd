"""What a process knows of the upstream's Slot ``end`` search parameter, and how it finds out.

R4 defines no Slot ``end`` search parameter; registration installs one. ``end=`` finds long
blocks exactly, but only for Slots the upstream has indexed, so no decision may use it before
the index is complete (docs/consistency.md, "The Slot end index"). :class:`SlotEndIndex` is the
per-process memory of both answers -- does the parameter exist, is its index complete -- and
the counting that establishes them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from plugin.transport import Params
from plugin.upstream_errors import UpstreamRejected

logger = logging.getLogger("plugin.upstream")

SLOT_END_CACHE_SECONDS = 600.0
"""How long an answer about Slot ``end`` (supported, index complete) is trusted before it is
checked again."""
SLOT_END_NOT_READY_RECHECK_SECONDS = 10.0
"""While the upstream is still indexing Slot ``end``, how often to look again."""
_EARLIEST_END = "ge1000-01-01"

Count = Callable[[str, Params], int]
"""Counts the matches of a search (``_summary=count``) with some identity's credentials."""


class SlotEndIndex:
    """Whether Slot searches may use ``end``; thread-safe, one per process."""

    def __init__(self, mode: str, clock: Callable[[], float]) -> None:
        self._mode = mode  # SLOT_END_SEARCH: auto, on, off
        self._clock = clock
        self._lock = threading.Lock()
        self._supported: tuple[bool, float] | None = None
        self._ready: tuple[bool, float] | None = None

    def supported(self) -> bool | None:
        """Whether the upstream has the parameter; ``None``: unknown, the next query finds out."""
        if self._mode == "off":
            return False
        with self._lock:
            if self._supported is not None:
                supported, checked_at = self._supported
                if self._clock() - checked_at < SLOT_END_CACHE_SECONDS:
                    return supported
        return None

    def index_ready(self) -> bool | None:
        """Whether every stored Slot is indexed by ``end`` (``None``: unknown, or time to look
        again). Not ready is looked at again after a few seconds, ready after ten minutes."""
        with self._lock:
            if self._ready is None:
                return None
            ready, checked_at = self._ready
            limit = SLOT_END_CACHE_SECONDS if ready else SLOT_END_NOT_READY_RECHECK_SECONDS
            return ready if self._clock() - checked_at < limit else None

    def _remember(self, *, supported: bool | None = None, ready: bool | None = None) -> None:
        with self._lock:
            if supported is not None:
                self._supported = (supported, self._clock())
            if ready is not None:
                self._ready = (ready, self._clock())

    def usable(self, count: Count) -> bool:
        """Whether a Slot search may use ``end`` now: the parameter exists and every stored Slot
        is indexed by it. Costs two or three counting searches once per process (and again every
        ten minutes, or every few seconds while the upstream is still indexing)."""
        if self._mode == "on":
            return True  # the operator vouches for the parameter and its index
        if self.supported() is False:
            return False
        ready = self.index_ready()
        if ready is None:
            ready = self._index_complete(count)
            if ready is None:
                return False  # the parameter is unknown: remembered as unsupported
            self._remember(ready=ready)
            if not ready:
                logger.info("the upstream is still indexing Slot end; using the start look-back meanwhile")
        return ready

    def _index_complete(self, count: Count) -> bool | None:
        """``True`` when every Slot on the upstream is found by an ``end`` search -- every Slot
        has an ``end``, so the count of ``Slot?end=ge1000-01-01`` equals the count of all Slots
        (counted before and after it) when the index is complete. ``None``: the upstream does not
        know ``end``.

        A server-agnostic way to learn that a reindex has finished, whichever process or tool
        asked for it. Slots written between the two counts make them differ; that only means
        "look again shortly"; a wrong "complete" would need writes that exactly make up for the
        Slots not yet indexed, between two of the three counts.
        """
        before = count("Slot", [])
        try:
            indexed = count("Slot", [("end", _EARLIEST_END)])
        except UpstreamRejected as exc:
            if exc.upstream_status != 400:
                raise
            logger.info(
                "upstream refused the Slot 'end' search parameter; using the start look-back",
                extra={"upstream_diagnostics": exc.diagnostics},
            )
            self._remember(supported=False)
            return None
        self._remember(supported=True)
        # Counted before and after: a Slot written or deleted meanwhile shows as a difference.
        return before == indexed == count("Slot", [])
