"""Many bookings at once through two sidecar processes while the proxy breaks a fifth of the
booking transactions at random; then every answer is checked against what HAPI holds.

16 client threads send 48 ``$book`` requests, each with its own Appointment identifier: 24 of
them fight over 3 proposals (8 each) of one clinic, the other 24 book different times on three
other clinics. Like a well-behaved client, each asks again with the same identifier after a
5xx (at most 4 attempts). Each request goes to one of two sidecar processes (2 gunicorn workers each),
both behind the proxy, which injects one of five faults into about 20 % of the booking
transactions (seeded): the connection cut after HAPI committed, 502 after commit, 500 without
forwarding, the answer held past the read timeout, the request held past it.

Afterwards (once the proxy has let every held request go): the scan finds no overlap, no
orphan Slot, no partial write; each 201 answer is a stored ``booked`` Appointment with the
caller's identifier and the id it was given, written by that very request (the Provenance
of its transaction names the request id); each 200 answer is the Appointment an earlier
attempt of the same client wrote; no 409 and no "Nothing was stored" answer came from a
request that wrote anything; and no Appointment is stored that no caller was told about.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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
    MAYBE_STORED,
    NOTHING_STORED,
    appointment_of,
    book,
    identified,
    issue,
    new_identifier,
    new_request_id,
    proposals,
)
from tests.reliability.conftest import BEYOND_TIMEOUT, start_sidecar
from tests.reliability.proxy import FaultProxy, RandomFaults
from tests.reliability.scan import creating_requests, scan

THREADS = 16
CONTESTED = 3
"""Proposals everybody wants."""
PER_CONTESTED = 8
"""Requests for each contested proposal."""
DISTINCT_CLINICS = 3
PER_DISTINCT_CLINIC = 8
FAULT_RATE = 0.2
ATTEMPTS = 4
"""How often a client asks (the same identifier) before giving up on 5xx answers."""
SEED = 20261202
LOAD_DEADLINE = "20"
"""``BOOKING_DEADLINE_SECONDS`` of the load sidecars: the default, so twenty-odd contenders for
one Schedule's lock settle before it (a 409 then means taken, not "did not settle")."""


@pytest.fixture(scope="module")
def two_sidecars(registered: str, proxy: FaultProxy) -> Iterator[tuple[Sidecar, Sidecar]]:
    started: list[Sidecar] = []
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = [
                pool.submit(
                    start_sidecar,
                    proxy,
                    f"reliability-load-{name}",
                    workers=2,
                    BOOKING_DEADLINE_SECONDS=LOAD_DEADLINE,
                )
                for name in ("a", "b")
            ]
            for future in futures:
                started.append(future.result())
        yield started[0], started[1]
    finally:
        for process in started:
            process.stop()


@dataclass(frozen=True)
class Job:
    sidecar: Sidecar
    proposal: dict[str, Any]
    identifier: str
    contested: int | None
    """Which contested proposal, or ``None`` for a time nobody else asks for."""


@dataclass
class Attempt:
    job: Job
    request_id: str
    status: int | None
    code: str | None = None
    diagnostics: str = ""
    appointment_id: str | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def category(self) -> str:
        if self.status in (200, 201):
            return f"{self.status}"
        if self.status is None:
            return f"client error {self.error}"
        if MAYBE_STORED in self.diagnostics:
            return f"{self.status} may or may not"
        if NOTHING_STORED in self.diagnostics:
            return f"{self.status} nothing stored"
        if self.status == 409:
            return "409 taken" if "already booked" in self.diagnostics else "409 did not settle"
        return f"{self.status} {self.code}"

    @property
    def final(self) -> bool:
        """A client stops here: booked, or taken. Anything else it asks again (same identifier)."""
        return self.status in (200, 201, 409)


def attempt(job: Job) -> Attempt:
    request_id = new_request_id()
    started = time.monotonic()
    try:
        response = book(job.sidecar, job.proposal, request_id=request_id)
    except requests.RequestException as exc:
        return Attempt(job, request_id, None, error=type(exc).__name__, seconds=time.monotonic() - started)
    result = Attempt(job, request_id, response.status_code, seconds=time.monotonic() - started)
    if response.status_code in (200, 201):
        result.appointment_id = appointment_of(response)["id"]
    else:
        result.code, result.diagnostics = issue(response)
    return result


def run(job: Job) -> list[Attempt]:
    """A well-behaved client: on a 5xx (or no answer) it asks again with the same identifier."""
    attempts = [attempt(job)]
    while not attempts[-1].final and len(attempts) < ATTEMPTS:
        attempts.append(attempt(job))
    return attempts


def test_bookings_under_random_faults_leave_no_trace(
    two_sidecars: tuple[Sidecar, Sidecar], hapi: HapiServer, proxy: FaultProxy, record: Any
) -> None:
    day = monday_ahead(weeks=4)
    contested_clinic = Clinic(hapi.base_url, alignmentInterval=15, duration=15).load()
    distinct_clinics = [
        Clinic(hapi.base_url, alignmentInterval=15, duration=15).load() for _ in range(DISTINCT_CLINICS)
    ]
    a, b = two_sidecars
    rng = random.Random(SEED)
    jobs: list[Job] = []
    wanted = proposals(a, contested_clinic, day)[:CONTESTED]
    for index, proposal in enumerate(wanted):
        for _ in range(PER_CONTESTED):
            value = new_identifier()
            jobs.append(Job(rng.choice((a, b)), identified(proposal, value), value, index))
    for clinic in distinct_clinics:
        for proposal in proposals(b, clinic, day)[:PER_DISTINCT_CLINIC]:
            value = new_identifier()
            jobs.append(Job(rng.choice((a, b)), identified(proposal, value), value, None))
    rng.shuffle(jobs)
    clinics = [contested_clinic, *distinct_clinics]
    fault = proxy.inject(
        RandomFaults(
            [
                faults.CUT_AFTER_SEND,
                faults.status_after_forward(502),
                faults.status(500),
                faults.delay_response(BEYOND_TIMEOUT),
                faults.delay_request(BEYOND_TIMEOUT),
            ],
            faults.transaction(operation="book", containing=[c.prefix for c in clinics]),
            rate=FAULT_RATE,
            seed=SEED,
        )
    )
    mark = proxy.mark()
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        per_job = list(pool.map(run, jobs))
    seconds = time.monotonic() - started
    assert proxy.wait_idle(60), "held requests are still in the proxy"  # late transactions landed or not

    report = scan(hapi.base_url, [s for c in clinics for s in (c.alice, c.room)])
    attempts = [a for job_attempts in per_job for a in job_attempts]
    creators = creating_requests(hapi.base_url, [a.id for a in report.sidecar_appointments()])
    injected = Counter(str(p.action) for p in fault.done)
    record(
        requests=len(jobs),
        attempts=len(attempts),
        threads=THREADS,
        sidecars=2,
        seconds=round(seconds, 1),
        slowest_answer_seconds=round(max(a.seconds for a in attempts), 2),
        answers=dict(sorted(Counter(a.category for a in attempts).items())),
        final_answers=dict(sorted(Counter(j[-1].category for j in per_job).items())),
        booking_transactions=fault.considered,
        faults_injected=dict(sorted(injected.items())),
        faulted_transactions_at_hapi=dict(
            sorted(Counter(f"{p.action} -> {p.upstream_status}" for p in fault.done).items())
        ),
        upstream_requests=sum(proxy.counts(since=mark).values()),
        scan=report.summary(),
        scan_seconds=round(report.duration_seconds, 2),
    )

    assert report.clean, "\n".join(report.problems)
    unexpected = [a for a in attempts if a.status is None or a.status not in (200, 201, 409, 502, 503, 504)]
    assert not unexpected, unexpected
    # One transaction wrote each Appointment; the request that wrote it is the one told 201.
    assert all(len(c) == 1 for c in creators.values()), creators
    creator = {requests[0]: appointment for appointment, requests in creators.items()}
    told: set[str] = set()
    for job, job_attempts in zip(jobs, per_job, strict=True):
        stored = report.with_identifier(CALLER_SYSTEM, job.identifier)
        assert len(stored) <= 1, (job, stored)
        for number, one in enumerate(job_attempts):
            wrote = creator.get(one.request_id)
            if one.status == 201:
                assert [(a.id, a.status) for a in stored] == [(one.appointment_id, "booked")], one
                assert wrote == one.appointment_id, one
            elif one.status == 200:
                assert [a.id for a in stored] == [one.appointment_id], one
                earlier = {e.request_id for e in job_attempts[:number]}
                assert creators[str(one.appointment_id)][0] in earlier, one
            elif MAYBE_STORED in one.diagnostics or one.status is None:
                pass  # either way; a retry tells
            else:
                # 409 (taken), "Nothing was stored", or a failure before anything was written.
                assert wrote is None, (one, wrote)
            if one.appointment_id:
                told.add(one.appointment_id)
    assert {a.id for a in report.live()} == told, "an Appointment no caller was told about"
    for index in range(CONTESTED):
        booked = {
            a.appointment_id for j in per_job for a in j if a.job.contested == index and a.appointment_id
        }
        assert len(booked) <= 1, booked
    # Different times never conflict: a 409 for one of them would be a false conflict.
    assert not [a for a in attempts if a.job.contested is None and a.status == 409]
    assert sum(injected.values()) > 0, "no fault was injected"
