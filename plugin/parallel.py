"""Independent upstream reads at the same time: their latencies overlap instead of adding up.

``$find`` reads the Schedules, the service and the Slots; none needs another's answer (the Slot
search takes a margin for buffers it does not know yet), so they go out together and the
operation waits one upstream round trip instead of three (issue 7; operations/find.py). A
booking sends its configuration, participant and lock reads together, then its Slot search and
identifier look-up together (operations/booking.py).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

READ_THREADS = 64
"""Threads per process for concurrent reads: a gthread worker's 16 request threads times the 3
to 5 reads of a round trip. Reads wait on the network, not on the CPU; a read that finds every
thread busy waits for one."""


class Parallel:
    """``operations.store.Together`` on a thread pool, one per process (created after a fork:
    a pool's threads do not survive one)."""

    def __init__(self, threads: int = READ_THREADS) -> None:
        self._threads = threads
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pid: int | None = None

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="fanoni-read")
                self._pid = os.getpid()
            return self._pool

    def __call__(self, *calls: Callable[[], Any]) -> list[Any]:
        """The results in order. Waits for every call; when several fail, the first failure in
        order is raised, so what the caller's credentials were refused wins over the rest."""
        if len(calls) < 2:
            return [call() for call in calls]
        futures: list[Future[Any]] = [self._executor().submit(call) for call in calls]
        results: list[Any] = []
        failure: BaseException | None = None
        for future in futures:
            try:
                results.append(future.result())
            except BaseException as exc:  # re-raised below, after every call has finished
                failure = failure or exc
                results.append(None)
        if failure is not None:
            raise failure
        return results
