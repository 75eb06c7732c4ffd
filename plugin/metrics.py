"""Prometheus metrics, served at ``GET /metrics``: requests, upstream calls, booking retries and
conflicts, the hold sweep and the webhook, every name ``fanoni_*`` (docs/metrics.md lists them,
their labels and what to alert on).

Under ``fanoni-scheduling serve`` every gunicorn worker writes its values to files in a directory
of that run (``PROMETHEUS_MULTIPROC_DIR``) and ``/metrics`` adds up the files of every process, so
one scrape of any worker sees the whole pod. Without that directory (the Flask test client,
``--dev``) the values live in the memory of the one process.

prometheus_client decides between files and memory when it is first imported, so it is imported
when an app is created (:func:`install`), never when this module is: the ``serve`` master, which
never creates the app, sets the directory first (:func:`multiprocess_directory`) and the workers
import the library after the fork. A process without an app (the gunicorn master, ``register``)
records nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from flask import Blueprint, Flask, Response, g, request

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

logger = logging.getLogger(__name__)

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_PATH = "/metrics"
"""At the root whatever ``BASE_PATH`` is, like ``/livez``: it is not a FHIR endpoint."""

# Seconds. A $find takes tens of milliseconds, a booking that keeps losing races up to the
# operation budget (60 s by default); an upstream call a few milliseconds up to its read timeout.
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_UPSTREAM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_ROUND_TRIP_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50)


class _Instruments:
    """Every metric of the process, made once (:func:`install`)."""

    def __init__(self) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            disable_created_metrics,
            values,
        )

        # The *_created series exist only in memory mode; without them both modes expose the same.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.multiprocess = values.ValueClass is not values.MutexValue
        if os.environ.get(MULTIPROCESS_ENV) and not self.multiprocess:
            logger.warning(
                "prometheus_client was imported before %s was set: /metrics shows this process only",
                MULTIPROCESS_ENV,
            )
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "fanoni_requests",
            "Requests answered, by operation and HTTP status.",
            ["operation", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "fanoni_request_duration_seconds",
            "Time from receiving a request to its answer, by operation.",
            ["operation"],
            buckets=_REQUEST_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "fanoni_requests_in_flight",
            "Requests being handled now (all worker processes and threads).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.request_round_trips = Histogram(
            "fanoni_request_upstream_round_trips",
            "Upstream FHIR calls made for one request, by operation.",
            ["operation"],
            buckets=_ROUND_TRIP_BUCKETS,
            registry=registry,
        )
        self.upstream = Counter(
            "fanoni_upstream_requests",
            "HTTP calls to the upstream FHIR server, by identity (caller or service), method and "
            "status (the HTTP status, or timeout, unreachable, error when none came back).",
            ["identity", "method", "status"],
            registry=registry,
        )
        self.upstream_seconds = Histogram(
            "fanoni_upstream_request_duration_seconds",
            "Time of one HTTP call to the upstream FHIR server, by identity and method.",
            ["identity", "method"],
            buckets=_UPSTREAM_BUCKETS,
            registry=registry,
        )
        self.retries = Counter(
            "fanoni_booking_retries",
            "Bookings decided again after a concurrent change (attempts beyond the first), by operation.",
            ["operation"],
            registry=registry,
        )
        self.booking_group = Histogram(
            "fanoni_booking_group_size",
            "Bookings decided and written in one transaction with each booking (itself included; "
            "group commit), by operation.",
            ["operation"],
            buckets=(1, 2, 4, 8, 16, 30),
            registry=registry,
        )
        self.shared_reads = Counter(
            "fanoni_shared_reads",
            "Slot searches of read-only operations (``$find``): sent (went to the upstream) and joined "
            "(answered by an identical search sent after the request arrived; plugin/shared_reads.py).",
            ["kind"],
            registry=registry,
        )
        self.conflicts = Counter(
            "fanoni_booking_conflicts",
            "409 answers (the time was taken, or concurrent changes did not settle), by operation.",
            ["operation"],
            registry=registry,
        )
        self.holds_swept = Counter(
            "fanoni_holds_swept",
            "Lapsed holds the background sweep cancelled.",
            registry=registry,
        )
        self.sweep_released = Counter(
            "fanoni_sweep_released_slots",
            "Slots the sweep freed for Appointments ended on the upstream whose notification was missed.",
            registry=registry,
        )
        self.sweeps = Counter(
            "fanoni_sweeps",
            "Passes of the background sweep, by outcome (ok, failed).",
            ["outcome"],
            registry=registry,
        )
        self.notifications = Counter(
            "fanoni_notifications",
            "Subscription webhook deliveries, by outcome (released, unchanged, ignored, "
            "unauthorized, failed).",
            ["outcome"],
            registry=registry,
        )


_instruments: _Instruments | None = None
_building = threading.Lock()


def _built() -> _Instruments:
    global _instruments  # noqa: PLW0603 - one set of metrics per process, like the registry
    with _building:
        if _instruments is None:
            _instruments = _Instruments()
        return _instruments


# ---- recording ---------------------------------------------------------------------------------


def record_upstream_call(identity: str, method: str, status: str, seconds: float) -> None:
    """One HTTP call to the upstream (``plugin/transport.py``)."""
    if (instruments := _instruments) is not None:
        instruments.upstream.labels(identity, method, status).inc()
        instruments.upstream_seconds.labels(identity, method).observe(seconds)


def record_shared_read(kind: str, count: int = 1) -> None:
    """Slot searches sent, or joined by ``count`` more requests (``plugin/shared_reads.py``)."""
    if (instruments := _instruments) is not None:
        instruments.shared_reads.labels(kind).inc(count)


def record_holds_swept(cancelled: int) -> None:
    """Holds the sweep cancelled (``plugin/holds.py``), counted even if the rest of the pass fails."""
    if (instruments := _instruments) is not None:
        instruments.holds_swept.inc(cancelled)


def record_sweep(slots_released: int) -> None:
    """A pass of the sweep that completed, and the Slots it freed of ended Appointments."""
    if (instruments := _instruments) is not None:
        instruments.sweeps.labels("ok").inc()
        instruments.sweep_released.inc(slots_released)


def record_sweep_failure() -> None:
    if (instruments := _instruments) is not None:
        instruments.sweeps.labels("failed").inc()


def record_notification(outcome: str) -> None:
    """One webhook delivery (``plugin/notifications.py``)."""
    if (instruments := _instruments) is not None:
        instruments.notifications.labels(outcome).inc()


def _operation() -> str:
    """The operation a request was for: what the route set (``Appointment/$find``, ...), else the
    route's endpoint name (``livez``, ``metrics``; also an operation refused before its route
    ran, e.g. ``_format=xml``), else ``unmatched``. Never the path: ids would make every request
    a series of its own."""
    operation = g.get("operation")
    if isinstance(operation, str) and operation:
        return operation
    if request.url_rule is None or not request.endpoint:
        return "unmatched"
    return request.endpoint.rsplit(".", 1)[-1]


def _record_request(response: Response) -> Response:
    instruments = _instruments
    if instruments is None:
        return response
    from plugin.context import round_trips  # imported here: context imports the upstream client

    operation = _operation()
    started = g.get("metrics_started", time.monotonic())
    instruments.requests.labels(operation, str(response.status_code)).inc()
    instruments.request_seconds.labels(operation).observe(time.monotonic() - started)
    instruments.request_round_trips.labels(operation).observe(round_trips())
    attempts = g.get("attempts")
    if isinstance(attempts, int) and attempts > 1:
        instruments.retries.labels(operation).inc(attempts - 1)
    group = g.get("group")
    if isinstance(group, int):
        instruments.booking_group.labels(operation).observe(group)
    if response.status_code == 409:
        instruments.conflicts.labels(operation).inc()
    return response


# ---- the app's part ----------------------------------------------------------------------------

endpoint = Blueprint("metrics", __name__)


@endpoint.get(METRICS_PATH)
def metrics() -> Response:
    """Prometheus text format (or OpenMetrics, when the scraper asks for it)."""
    from prometheus_client.exposition import choose_encoder

    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encoder(_registry()), status=200, headers={"Content-Type": content_type})


def _registry() -> CollectorRegistry:
    instruments = _built()
    if not instruments.multiprocess:
        return instruments.registry
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    # A fresh registry per scrape, reading every process's files (prometheus_client's recipe).
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def install(app: Flask) -> None:
    """Serve ``/metrics`` and count every request of ``app``."""
    instruments = _built()
    app.register_blueprint(endpoint)

    @app.before_request
    def start_counting() -> None:
        g.metrics_started = time.monotonic()
        instruments.in_flight.inc()
        g.metrics_in_flight = True

    app.after_request(_record_request)

    @app.teardown_request
    def stop_counting(_exc: BaseException | None) -> None:
        if g.pop("metrics_in_flight", False):
            instruments.in_flight.dec()


# ---- multi-process mode (``serve``) --------------------------------------------------------------


@contextmanager
def multiprocess_directory() -> Iterator[Path]:
    """The directory the workers of one ``serve`` run share their values through, set as
    ``PROMETHEUS_MULTIPROC_DIR`` for the processes forked inside this block.

    An operator's own ``PROMETHEUS_MULTIPROC_DIR`` is used and emptied first (the files of an
    earlier run would be added to this one's forever); otherwise a fresh directory under the
    temporary directory, removed at the end.
    """
    if "prometheus_client" in sys.modules:
        logger.warning("prometheus_client is already imported: the workers' metrics may not be shared")
    given = os.environ.get(MULTIPROCESS_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="fanoni-metrics-"))
    os.environ[MULTIPROCESS_ENV] = str(path)
    try:
        yield path
    finally:
        os.environ.pop(MULTIPROCESS_ENV, None)
        shutil.rmtree(path, ignore_errors=True)


def mark_process_dead(pid: int) -> None:
    """For gunicorn's ``child_exit``: a dead worker's in-flight gauge no longer counts (its
    counters do: a counter never goes down)."""
    if os.environ.get(MULTIPROCESS_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
