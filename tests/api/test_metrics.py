"""``GET /metrics``: each metric moves, with exactly the labels docs/metrics.md names, when the
sidecar answers requests, calls the upstream, books, sweeps and takes notifications.

Metrics are per process (like prometheus_client's registry), so every test compares a scrape
after with a scrape before. The use cases are substituted where a test is about the HTTP side
(their rules are tested in ``tests/unit``); the upstream is ``responses``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest
import requests
import responses
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from operations import booking, find, housekeeping
from operations.errors import Conflict
from operations.store import Stores
from operations.writes import BookingResult
from plugin import holds, metrics
from plugin.app import create_app
from plugin.config import Settings
from plugin.upstream import UpstreamClient
from plugin.upstream_errors import UpstreamUnavailable
from tests.api.conftest import BASE, NOW, PLAIN_REQUEST

SECRET = "notification-secret-0123456789"
Labels = tuple[tuple[str, str], ...]


class Scrape:
    """One ``GET /metrics``, parsed: ``scrape["fanoni_requests_total", operation="livez"]``."""

    def __init__(self, client: FlaskClient) -> None:
        response = client.get("/metrics")
        assert response.status_code == 200, response.get_data(as_text=True)
        self.samples: dict[tuple[str, Labels], float] = {}
        for family in text_string_to_metric_families(response.get_data(as_text=True)):
            for sample in family.samples:
                self.samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


@pytest.fixture
def mock() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as upstream:
        yield upstream


@pytest.fixture
def sidecar() -> Flask:
    settings = Settings(
        fhir_base_url=BASE,
        upstream_authorization="Bearer sidecar",
        hold_sweep_seconds=0,
        slot_end_search="on",
        notification_url="http://sidecar.test/fanoni/notifications",
        notification_secret=SECRET,
    )
    return create_app(settings, clock=lambda: NOW)


@pytest.fixture
def web(sidecar: Flask) -> FlaskClient:
    return sidecar.test_client()


# ---- the endpoint ------------------------------------------------------------------------------


def test_metrics_are_prometheus_text_at_the_root_whatever_base_path(mock: responses.RequestsMock) -> None:
    app = create_app(Settings(fhir_base_url=BASE, base_path="/r4", hold_sweep_seconds=0))
    client = app.test_client()
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    text = response.get_data(as_text=True)
    assert "# TYPE fanoni_requests_total counter" in text
    assert "# TYPE fanoni_request_duration_seconds histogram" in text
    assert "# TYPE fanoni_upstream_requests_total counter" in text
    assert client.get("/r4/metrics").status_code == 404
    assert len(mock.calls) == 0  # a scrape never reaches the upstream


def test_openmetrics_when_the_scraper_asks_for_it(web: FlaskClient) -> None:
    response = web.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert response.get_data(as_text=True).rstrip().endswith("# EOF")


def test_only_get_is_served(web: FlaskClient) -> None:
    response = web.post("/metrics")
    assert response.status_code == 405
    assert response.get_json()["resourceType"] == "OperationOutcome"


# ---- requests ----------------------------------------------------------------------------------


def test_requests_are_counted_by_operation_and_status(web: FlaskClient) -> None:
    before = Scrape(web)
    assert web.get("/livez").status_code == 200
    assert web.get("/livez").status_code == 200
    assert web.get("/fhir/metadata").status_code == 200
    assert web.get("/fhir/Appointment/$find?start=tomorrow").status_code == 400
    assert web.get("/fhir/Appointment/$find", query_string={"_format": "xml"}).status_code == 406
    assert web.get("/fhir/Patient/1/$everything").status_code == 404
    after = Scrape(web)

    assert moved(before, after, "fanoni_requests_total", operation="livez", status="200") == 2
    assert moved(before, after, "fanoni_requests_total", operation="metadata", status="200") == 1
    assert moved(before, after, "fanoni_requests_total", operation="Appointment/$find", status="400") == 1
    # Refused before the route ran: named by the route's endpoint, never by the path.
    assert moved(before, after, "fanoni_requests_total", operation="appointment_find", status="406") == 1
    assert moved(before, after, "fanoni_requests_total", operation="unmatched", status="404") == 1
    # The scrape before is counted in the scrape after.
    assert moved(before, after, "fanoni_requests_total", operation="metrics", status="200") == 1
    count = "fanoni_request_duration_seconds_count"
    assert moved(before, after, count, operation="livez") == 2
    assert moved(before, after, count, operation="Appointment/$find") == 1
    assert moved(before, after, "fanoni_request_duration_seconds_bucket", operation="livez", le="+Inf") == 2
    assert after.value("fanoni_request_duration_seconds_sum", operation="livez") >= before.value(
        "fanoni_request_duration_seconds_sum", operation="livez"
    )


def test_latency_lands_in_the_right_buckets(web: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def find_appointments(stores: Stores, request: Any) -> dict[str, Any]:
        time.sleep(0.3)
        return {"resourceType": "Bundle", "type": "searchset", "total": 0}

    monkeypatch.setattr(find.FindRequest, "from_parameters", lambda params, **kwargs: PLAIN_REQUEST)
    monkeypatch.setattr(find, "find_appointments", find_appointments)
    before = Scrape(web)
    assert web.get("/fhir/Appointment/$find").status_code == 200
    after = Scrape(web)
    bucket = "fanoni_request_duration_seconds_bucket"
    assert moved(before, after, bucket, operation="Appointment/$find", le="0.25") == 0
    assert moved(before, after, bucket, operation="Appointment/$find", le="60.0") == 1
    assert moved(before, after, bucket, operation="Appointment/$find", le="+Inf") == 1
    assert moved(before, after, "fanoni_request_duration_seconds_sum", operation="Appointment/$find") >= 0.3


def test_requests_in_flight_counts_the_request_being_answered(
    web: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Scraped from inside the $find through another app: a nested request of the same app
    # would share its application context (and its ``g``).
    other = create_app(Settings(fhir_base_url=BASE, hold_sweep_seconds=0)).test_client()
    seen: list[float] = []

    def find_appointments(stores: Stores, request: Any) -> dict[str, Any]:
        seen.append(Scrape(other).value("fanoni_requests_in_flight"))
        return {"resourceType": "Bundle", "type": "searchset", "total": 0}

    monkeypatch.setattr(find.FindRequest, "from_parameters", lambda params, **kwargs: PLAIN_REQUEST)
    monkeypatch.setattr(find, "find_appointments", find_appointments)
    idle = Scrape(web).value("fanoni_requests_in_flight")  # counts the scrape itself
    assert web.get("/fhir/Appointment/$find").status_code == 200
    assert seen == [idle + 1]  # the $find, and the scrape made from inside it
    assert Scrape(web).value("fanoni_requests_in_flight") == idle


# ---- upstream calls ----------------------------------------------------------------------------


def test_upstream_calls_by_identity_method_and_status(
    web: FlaskClient, mock: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    def find_appointments(stores: Stores, request: Any) -> dict[str, Any]:
        stores.caller.read("Schedule", "a")  # as the caller
        stores.service.read("Schedule", "b")  # as the sidecar
        return {"resourceType": "Bundle", "type": "searchset", "total": 0}

    monkeypatch.setattr(find.FindRequest, "from_parameters", lambda params, **kwargs: PLAIN_REQUEST)
    monkeypatch.setattr(find, "find_appointments", find_appointments)
    mock.get(f"{BASE}/Schedule/a", json={"resourceType": "Schedule", "id": "a"})
    mock.get(f"{BASE}/Schedule/b", status=404, json={"resourceType": "OperationOutcome"})
    mock.get(f"{BASE}/metadata", json={"resourceType": "CapabilityStatement"})

    before = Scrape(web)
    response = web.get("/fhir/Appointment/$find")
    assert response.status_code == 200
    assert response.headers["X-Upstream-Round-Trips"] == "2"
    assert web.get("/readyz").status_code == 200
    after = Scrape(web)

    calls = "fanoni_upstream_requests_total"
    assert moved(before, after, calls, identity="caller", method="GET", status="200") == 1
    assert moved(before, after, calls, identity="service", method="GET", status="404") == 1
    assert moved(before, after, calls, identity="service", method="GET", status="200") == 1  # /readyz
    seconds = "fanoni_upstream_request_duration_seconds_count"
    assert moved(before, after, seconds, identity="caller", method="GET") == 1
    assert moved(before, after, seconds, identity="service", method="GET") == 2
    trips = "fanoni_request_upstream_round_trips"
    assert moved(before, after, f"{trips}_sum", operation="Appointment/$find") == 2
    assert moved(before, after, f"{trips}_bucket", operation="Appointment/$find", le="1.0") == 0
    assert moved(before, after, f"{trips}_bucket", operation="Appointment/$find", le="2.0") == 1
    assert moved(before, after, f"{trips}_sum", operation="readyz") == 1


def test_upstream_failures_are_counted_by_kind(web: FlaskClient, mock: responses.RequestsMock) -> None:
    before = Scrape(web)
    mock.get(f"{BASE}/metadata", body=requests.exceptions.ReadTimeout("slow"))
    assert web.get("/readyz").status_code == 503
    mock.replace(responses.GET, f"{BASE}/metadata", body=requests.exceptions.ConnectionError("refused"))
    assert web.get("/readyz").status_code == 503
    mock.replace(responses.GET, f"{BASE}/metadata", status=500, json={"resourceType": "OperationOutcome"})
    assert web.get("/readyz").status_code == 503
    after = Scrape(web)

    calls = "fanoni_upstream_requests_total"
    assert moved(before, after, calls, identity="service", method="GET", status="timeout") == 1
    assert moved(before, after, calls, identity="service", method="GET", status="unreachable") == 1
    assert moved(before, after, calls, identity="service", method="GET", status="500") == 1
    assert moved(before, after, "fanoni_requests_total", operation="readyz", status="503") == 3


# ---- bookings ----------------------------------------------------------------------------------


def booked_after(attempts: int, group: int = 1) -> BookingResult:
    appointment = {"resourceType": "Appointment", "id": "appt-1", "status": "booked"}
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": appointment}]}
    return BookingResult(status=201, bundle=bundle, expires=None, attempts=attempts, group=group)


def test_booking_retries_and_conflicts(web: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    outcomes: list[Any] = [booked_after(3, group=5), booked_after(1), Conflict("the time is taken")]

    def book(*args: Any, **kwargs: Any) -> Any:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(booking.BookingRequest, "from_body", lambda body, **kwargs: "request")
    monkeypatch.setattr(booking, "book", book)
    body = {"resourceType": "Parameters"}
    before = Scrape(web)
    first = web.post("/fhir/Appointment/$book", json=body)
    assert (first.status_code, first.headers["X-Fanoni-Attempts"], first.headers["X-Fanoni-Group"]) == (
        201,
        "3",
        "5",
    )
    assert web.post("/fhir/Appointment/$hold", json=body).status_code == 201
    assert web.post("/fhir/Appointment/$book", json=body).status_code == 409
    after = Scrape(web)

    assert moved(before, after, "fanoni_booking_retries_total", operation="Appointment/$book") == 2
    assert moved(before, after, "fanoni_booking_retries_total", operation="Appointment/$hold") == 0
    assert moved(before, after, "fanoni_booking_conflicts_total", operation="Appointment/$book") == 1
    assert moved(before, after, "fanoni_booking_group_size_sum", operation="Appointment/$book") == 5
    assert moved(before, after, "fanoni_booking_group_size_count", operation="Appointment/$hold") == 1
    assert moved(before, after, "fanoni_booking_conflicts_total", operation="Appointment/$hold") == 0
    assert moved(before, after, "fanoni_requests_total", operation="Appointment/$book", status="201") == 1
    assert moved(before, after, "fanoni_requests_total", operation="Appointment/$book", status="409") == 1


# ---- the hold sweep ----------------------------------------------------------------------------


def test_shared_slot_searches_count_sent_and_joined(sidecar: Flask, web: FlaskClient) -> None:
    upstream: UpstreamClient = sidecar.extensions["fanoni"].upstream
    release, answered = threading.Event(), threading.Event()

    def held() -> list[Any]:
        answered.set()
        assert release.wait(5)
        return []

    before = Scrape(web)
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(upstream.shared_reads.read, "day", held)
        assert answered.wait(5)
        riders: list[Future[list[Any]]] = [
            pool.submit(upstream.shared_reads.read, "day", list) for _ in range(2)
        ]
        while upstream.shared_reads.waiting("day") < 2:
            time.sleep(0.001)
        release.set()
        assert first.result(5) == [] and [r.result(5) for r in riders] == [[], []]
    after = Scrape(web)
    assert moved(before, after, "fanoni_shared_reads_total", kind="sent") == 2
    assert moved(before, after, "fanoni_shared_reads_total", kind="joined") == 1


def test_the_sweep_counts_holds_cancelled_slots_freed_and_passes(
    sidecar: Flask, web: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream: UpstreamClient = sidecar.extensions["fanoni"].upstream
    monkeypatch.setattr(holds, "expire_holds", lambda store, now: 2)
    monkeypatch.setattr(holds, "release_missed", lambda store, now, window: 3)
    before = Scrape(web)
    assert holds.sweep_safely(upstream, lambda: NOW, first=True)
    after = Scrape(web)
    assert moved(before, after, "fanoni_holds_swept_total") == 2
    assert moved(before, after, "fanoni_sweep_released_slots_total") == 3
    assert moved(before, after, "fanoni_sweeps_total", outcome="ok") == 1
    assert moved(before, after, "fanoni_sweeps_total", outcome="failed") == 0


def test_a_failed_sweep_is_counted_and_keeps_the_holds_it_cancelled(
    sidecar: Flask, web: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream: UpstreamClient = sidecar.extensions["fanoni"].upstream

    def release_missed(store: Any, now: Any, window: Any) -> int:
        raise UpstreamUnavailable("the upstream FHIR server is unreachable")

    monkeypatch.setattr(holds, "expire_holds", lambda store, now: 1)
    monkeypatch.setattr(holds, "release_missed", release_missed)
    before = Scrape(web)
    assert not holds.sweep_safely(upstream, lambda: NOW, first=False)
    after = Scrape(web)
    assert moved(before, after, "fanoni_holds_swept_total") == 1
    assert moved(before, after, "fanoni_sweeps_total", outcome="failed") == 1
    assert moved(before, after, "fanoni_sweeps_total", outcome="ok") == 0


# ---- the webhook -------------------------------------------------------------------------------


def test_notifications_by_outcome(web: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    freed = [2, 0]

    def release_ended(store: Any, appointment_id: str, **kwargs: Any) -> int:
        if not freed:
            raise UpstreamUnavailable("the upstream FHIR server is unreachable")
        return freed.pop(0)

    monkeypatch.setattr(housekeeping, "release_ended", release_ended)
    path = "/fanoni/notifications/Appointment/appt-1"
    secret = {"Authorization": f"Bearer {SECRET}"}
    before = Scrape(web)
    assert web.put(path).status_code == 401
    assert web.post("/fanoni/notifications", headers=secret).status_code == 200  # a ping
    assert web.put(path, headers=secret).status_code == 200
    assert web.put(path, headers=secret).status_code == 200
    assert web.put(path, headers=secret).status_code == 503
    after = Scrape(web)

    for outcome in ("unauthorized", "ignored", "released", "unchanged", "failed"):
        assert moved(before, after, "fanoni_notifications_total", outcome=outcome) == 1, outcome
    assert moved(before, after, "fanoni_requests_total", operation="notification", status="200") == 3


# ---- gunicorn's part ---------------------------------------------------------------------------


def test_a_run_gets_an_empty_directory_of_its_own(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.delenv(metrics.MULTIPROCESS_ENV, raising=False)
    with metrics.multiprocess_directory() as directory:
        assert directory.is_dir()
        assert list(directory.iterdir()) == []
        assert os.environ[metrics.MULTIPROCESS_ENV] == str(directory)
        (directory / "counter_123.db").write_bytes(b"x")
    assert not directory.exists()
    assert metrics.MULTIPROCESS_ENV not in os.environ

    # An operator's own directory is kept, but emptied of an earlier run's files.
    given = tmp_path / "metrics"
    given.mkdir()
    (given / "counter_99.db").write_bytes(b"old")
    (given / "gauge_livesum_99.db").write_bytes(b"old")
    monkeypatch.setenv(metrics.MULTIPROCESS_ENV, str(given))
    with metrics.multiprocess_directory() as directory:
        assert directory == given
        assert list(given.iterdir()) == []
    assert given.is_dir()


def test_a_dead_workers_in_flight_gauge_is_dropped(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv(metrics.MULTIPROCESS_ENV, str(tmp_path))
    (tmp_path / "gauge_livesum_4242.db").write_bytes(b"")
    (tmp_path / "counter_4242.db").write_bytes(b"")
    metrics.mark_process_dead(4242)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter_4242.db"]


def test_serve_marks_exited_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    from plugin import cli

    options = cli.gunicorn_options(
        cli.build_parser().parse_args(["serve"]), Settings(fhir_base_url=BASE, hold_sweep_seconds=0)
    )
    dead: list[int] = []
    monkeypatch.setattr(cli, "mark_process_dead", dead.append)
    options["child_exit"](None, SimpleNamespace(pid=77))
    assert dead == [77]
