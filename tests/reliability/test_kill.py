"""A gunicorn worker killed (SIGKILL) in the middle of a booking.

The sidecar runs with one worker (and a long read timeout, so the worker is certainly still
waiting for HAPI when it dies). The proxy holds the booking transaction; the test kills the
worker, lets the transaction go on (or not) in one of three orders, and the client -- which
saw its connection drop -- asks again with the same Appointment identifier, as a client must
when it cannot know whether its request took effect. gunicorn has started a new worker by
then. The retry answers the truth, and the scan finds exactly one Appointment.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.clinic import Clinic
from tests.integration.conftest import Sidecar
from tests.integration.hapi_server import HapiServer
from tests.integration.test_find import monday_ahead
from tests.reliability import proxy as faults
from tests.reliability.calls import (
    CALLER_SYSTEM,
    appointment_of,
    book,
    identified,
    new_identifier,
    proposals,
)
from tests.reliability.conftest import start_sidecar
from tests.reliability.proxy import Fault, FaultProxy
from tests.reliability.scan import scan


@pytest.fixture(scope="module")
def one_worker(registered: str, proxy: FaultProxy) -> Iterator[Sidecar]:
    process = start_sidecar(proxy, "reliability-one-worker", workers=1, UPSTREAM_READ_TIMEOUT="30")
    try:
        yield process
    finally:
        process.stop()


def children(pid: int) -> set[int]:
    """The live child processes of ``pid`` (gunicorn's master: its workers)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found |= {int(c) for c in task.read_text().split()}
        except OSError:
            continue
    return found


def worker_of(sidecar: Sidecar, *, not_pid: int | None = None, timeout: float = 30.0) -> int:
    """The pid of the sidecar's single worker (a new one, if ``not_pid`` is given), once it
    answers: the master restarts a killed worker; wait for it rather than guess."""
    assert sidecar.process is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = children(sidecar.process.pid) - {not_pid}
        if len(workers) == 1:
            try:
                if requests.get(f"http://127.0.0.1:{sidecar.port}/livez", timeout=5).status_code == 200:
                    return workers.pop()
            except requests.RequestException:
                pass
        time.sleep(0.05)
    raise AssertionError(f"no worker of {sidecar.process.pid} came up: {sidecar.log_tail()}")


class Client(threading.Thread):
    """``$book`` from another thread, remembering what it got."""

    def __init__(self, sidecar: Sidecar, proposal: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.sidecar, self.proposal = sidecar, proposal
        self.response: requests.Response | None = None
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            self.response = book(self.sidecar, self.proposal)
        except requests.RequestException as exc:
            self.error = exc


ORDERS = {
    # HAPI committed; the worker dies before it reads the answer.
    "committed-then-killed": (faults.pause_after_forward(), 200, 200),
    # The worker dies with the transaction still in the proxy; it reaches HAPI afterwards, before
    # the client asks again: a transaction outliving its sender still commits, once.
    "killed-then-landed": (faults.pause(), 200, 200),
    # The client asks again while the dead worker's transaction is still held; the retry books;
    # the old transaction, released last, fails its lock version check.
    "killed-retried-then-refused": (faults.pause(), 201, 409),
}


@pytest.mark.parametrize("order", list(ORDERS))
def test_a_worker_killed_mid_booking(
    order: str, one_worker: Sidecar, hapi: HapiServer, proxy: FaultProxy, record: Any
) -> None:
    action, retry_status, old_transaction_status = ORDERS[order]
    clinic = Clinic(hapi.base_url).load()
    mine = new_identifier()
    proposal = identified(proposals(one_worker, clinic, monday_ahead())[0], mine)
    worker = worker_of(one_worker)
    fault = proxy.inject(Fault(action, faults.transaction(operation="book", containing=clinic.prefix)))
    client = Client(one_worker, proposal)
    client.start()
    if action.kind == "pause_after_forward":
        assert fault.wait_forwarded(timeout=30), "the booking never reached HAPI"
    else:
        assert fault.wait_hits(timeout=30), "the booking never reached the proxy"
    started = time.monotonic()
    os.kill(worker, signal.SIGKILL)
    client.join(30)
    assert not client.is_alive()
    assert client.response is None, client.response.text if client.response else None
    assert isinstance(client.error, requests.ConnectionError), client.error
    replacement = worker_of(one_worker, not_pid=worker)
    restart_seconds = time.monotonic() - started

    if order != "killed-retried-then-refused":
        fault.release.set()
        assert fault.wait_done(timeout=30)
    retried = book(one_worker, proposal)
    if order == "killed-retried-then-refused":
        fault.release.set()
        assert fault.wait_done(timeout=30)
    assert retried.status_code == retry_status, retried.text
    old = fault.done[0]
    if old_transaction_status == 409:
        assert old.upstream_status in (409, 412), old
    else:
        assert old.upstream_status == 200, old

    report = scan(hapi.base_url, [clinic.alice, clinic.room])
    assert report.clean, "\n".join(report.problems)
    stored = report.with_identifier(CALLER_SYSTEM, mine)
    assert [a.id for a in stored] == [appointment_of(retried)["id"]]
    assert [a.id for a in report.live()] == [stored[0].id]
    record(
        order=order,
        killed_worker=worker,
        new_worker=replacement,
        worker_restart_seconds=round(restart_seconds, 2),
        client_saw=type(client.error).__name__,
        old_transaction_at_hapi=old.upstream_status,
        retry=retried.status_code,
        scan=report.summary(),
    )
