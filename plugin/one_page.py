"""Which searches a process asks as one page HAPI does not keep (``plugin/transport.py``,
``Transport._one_page``): whether the upstream takes ``max-results`` at all, and which searches
filled such a page lately."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

FULL_SEARCH_MEMORY = 1024
"""Searches remembered per process as having filled one page (the least recently used go)."""
FULL_SEARCH_SECONDS = 600.0
"""How long such a search is asked paged straight away."""


class OnePageSearches:
    """What a process knows about asking searches as one page (:meth:`Transport._one_page`):
    whether the upstream takes ``max-results`` at all, and which searches filled such a page
    lately. The same search again -- the day's ``$find`` of a busy Schedule, asked by every
    patient -- would fill it again, and that first answer would be thrown away, so it is asked
    paged straight away for :data:`FULL_SEARCH_SECONDS`. Only which way a search is sent
    depends on it, never what it finds. Thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._full: OrderedDict[Hashable, float] = OrderedDict()
        self.refused = False

    def worth_asking(self, search: Hashable) -> bool:
        """Whether to ask ``search`` as one page: the upstream takes it, and it did not fill one
        lately."""
        return not self.refused and not self.filled_lately(search)

    def filled_lately(self, search: Hashable) -> bool:
        with self._lock:
            filled = self._full.get(search)
            if filled is None:
                return False
            if self._clock() - filled < FULL_SEARCH_SECONDS:
                self._full.move_to_end(search)
                return True
            del self._full[search]
            return False

    def filled(self, search: Hashable) -> None:
        with self._lock:
            self._full[search] = self._clock()
            self._full.move_to_end(search)
            while len(self._full) > FULL_SEARCH_MEMORY:
                self._full.popitem(last=False)

    def refuse(self) -> None:
        with self._lock:
            self.refused = True
