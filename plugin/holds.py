"""Background clean-up of lapsed holds, one daemon thread per worker process; and the safety
net under the subscription webhook (Appointments ended on the upstream whose notification was
lost still get their time freed, within one sweep period).

Lapsed holds already block nothing (``$find`` and ``$book`` ignore Slots whose recorded expiry
has passed), so this is housekeeping: the Appointment becomes ``cancelled`` and its Slots are
deleted. Every worker of every replica may sweep: each cancellation is a version-checked
transaction (``operations.housekeeping.expire_holds``), so a hold is cancelled once and a hold
confirmed a moment earlier is left alone. The start is jittered so workers do not sweep in step.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from operations.housekeeping import expire_holds, release_missed
from plugin.metrics import record_holds_swept, record_sweep, record_sweep_failure
from plugin.upstream import UpstreamClient
from plugin.upstream_errors import UpstreamError

logger = logging.getLogger(__name__)

_started_in_pid: int | None = None
_lock = threading.Lock()


def start_sweeper(upstream: UpstreamClient, period_seconds: int, clock: Callable[[], datetime]) -> bool:
    """Start the sweeper thread once per process (after a fork, again); ``False`` if off or running."""
    global _started_in_pid  # noqa: PLW0603 - one sweeper per process, remembered by pid
    if period_seconds <= 0:
        return False
    with _lock:
        if _started_in_pid == os.getpid():
            return False
        _started_in_pid = os.getpid()
    thread = threading.Thread(
        target=_run, args=(upstream, period_seconds, clock), name="fanoni-hold-sweeper", daemon=True
    )
    thread.start()
    return True


RECONCILE_AT_START = timedelta(hours=24)
"""How far back the first pass of a process looks for ended Appointments with missed
notifications (a sidecar down overnight); later passes look back ``RECONCILE_RECENT``."""
RECONCILE_RECENT = timedelta(minutes=15)


def sweep_once(upstream: UpstreamClient, clock: Callable[[], datetime], *, first: bool = False) -> int:
    """One pass, with the sidecar's own credentials: cancel lapsed holds the sidecar wrote
    (bounded pages, oldest first), then free the time of Appointments that ended on the
    upstream recently (the last day on a process's ``first`` pass) but whose notification never
    arrived -- HAPI drops a delivery after a minute of failures."""
    store = upstream.background(f"sweep-{uuid.uuid4().hex[:12]}", "hold-expiry")
    now = clock()
    cancelled = expire_holds(store, now)
    record_holds_swept(cancelled)
    if cancelled:
        logger.info("expired holds cancelled", extra={"cancelled": cancelled})
    reconciler = upstream.background(f"reconcile-{uuid.uuid4().hex[:12]}", "release-ended-appointment")
    freed = release_missed(reconciler, now, window=RECONCILE_AT_START if first else RECONCILE_RECENT)
    if freed:
        logger.warning(
            "freed Slots of ended Appointments whose notification was missed",
            extra={"slots_deleted": freed},
        )
    record_sweep(freed)
    return cancelled


def _run(upstream: UpstreamClient, period_seconds: int, clock: Callable[[], datetime]) -> None:
    stop = threading.Event()
    stop.wait(random.uniform(0, period_seconds))  # jitter, not security
    first = True
    while not stop.is_set():
        if sweep_safely(upstream, clock, first=first):
            first = False
        stop.wait(period_seconds)


def sweep_safely(upstream: UpstreamClient, clock: Callable[[], datetime], *, first: bool) -> bool:
    """One pass of the sweeper thread: a failure is logged and counted, never raised (the next
    pass tries again); ``False`` when it failed."""
    try:
        sweep_once(upstream, clock, first=first)
    except UpstreamError as exc:
        logger.warning("hold sweep failed: %s", exc.diagnostics)
    except Exception:
        logger.exception("hold sweep failed")
    else:
        return True
    record_sweep_failure()
    return False
