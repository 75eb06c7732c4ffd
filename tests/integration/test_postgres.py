"""Booking against HAPI FHIR on PostgreSQL, as production clinics run it.

On PostgreSQL a version-checked write that loses a race fails in more ways than on H2: 409s
with HAPI-0823, HAPI-0825, HAPI-0989 or the database's own reason, and, under serializable
isolation, 500s (docs/reliability.md, "HAPI on PostgreSQL"). This module starts a throwaway
PostgreSQL and HAPI on it (``tests/support/postgres.py``) with the guard and test authorization,
registers, and starts a sidecar under gunicorn (2 workers). It checks that every losing answer
HAPI gives is read as "re-read and decide again", and that contested bookings end as on H2:
exactly the right number stored, every 201 stored, nothing stored without a 201 (the
independent scan of ``tests/reliability/scan.py``), and never a 5xx from the sidecar.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from tests.integration.clinic import Clinic
from tests.integration.conftest import Sidecar
from tests.integration.hapi_server import BASE_URL_ENV, HapiServer
from tests.integration.processes import free_port, register
from tests.integration.test_find import get_find, local, monday_ahead
from tests.integration.trust import hapi_args, sidecar_env
from tests.reliability.scan import scan
from tests.support.hapi_races import RaceReport, run_races, sidecar_reading
from tests.support.postgres import PostgresServer, start_hapi_on_postgres

pytestmark = pytest.mark.integration
FHIR_JSON = {"Content-Type": "application/fhir+json"}
RACE_WIDTH = 12


@dataclass
class OnPostgres:
    hapi: HapiServer
    postgres: PostgresServer
    sidecar: Sidecar


@pytest.fixture(scope="module")
def pg() -> Iterator[OnPostgres]:
    if os.environ.get(BASE_URL_ENV, "").strip():
        pytest.skip(f"{BASE_URL_ENV} is set: this module starts its own HAPI server (on PostgreSQL)")
    with ExitStack() as stack:
        hapi, postgres = stack.enter_context(start_hapi_on_postgres(hapi_args()))
        port = free_port()
        registered = register(hapi.base_url, sidecar_env(port))
        assert registered.returncode == 0, registered.stdout + registered.stderr
        sidecar = Sidecar(hapi.base_url, workers=2, log_name="sidecar-postgres", port=port)
        stack.callback(sidecar.stop)
        yield OnPostgres(hapi, postgres, sidecar)


# --------------------------------------------------------------------------------------------
# HAPI's answers to the losers, straight from HAPI.


def check_races(report: RaceReport) -> None:
    losers = report.losers()
    assert losers, "no request lost a race"
    readings = {(a.status, a.kind): sidecar_reading(a) for a in losers}
    assert set(readings.values()) == {"ConcurrentChange"}, readings
    assert not any(a.stored for a in losers), [a.text for a in losers if a.stored]
    assert all(a.stored for a in report.answers if 200 <= a.status < 300 and a.stored is not None)
    assert not report.inconsistent(), [(r.scenario, r.note) for r in report.inconsistent()]


def test_every_losing_answer_means_re_read_and_nothing_was_stored(pg: OnPostgres) -> None:
    check_races(run_races(pg.hapi.base_url, width=RACE_WIDTH))


# --------------------------------------------------------------------------------------------
# Contested bookings through the sidecar.


def proposals(pg: OnPostgres, clinic: Clinic, start: str, end: str) -> list[dict[str, Any]]:
    response = get_find(pg.sidecar, clinic.find_params(start, end, count=100))
    assert response.status_code == 200, response.text
    return [e["resource"] for e in response.json().get("entry", []) if e["search"]["mode"] == "match"]


def book_all(pg: OnPostgres, chosen: Sequence[dict[str, Any]]) -> list[requests.Response]:
    """``$book`` each proposal, all at once, one client each."""

    def book(proposal: dict[str, Any]) -> requests.Response:
        body = {"resourceType": "Parameters", "parameter": [{"name": "appointment", "resource": proposal}]}
        return requests.post(
            f"{pg.sidecar.base_url}/Appointment/$book", json=body, headers=FHIR_JSON, timeout=120
        )

    with ThreadPoolExecutor(max_workers=len(chosen)) as pool:
        return list(pool.map(book, chosen))


def check_against_scan(pg: OnPostgres, clinic: Clinic, answers: Sequence[requests.Response]) -> None:
    """The sidecar never answered 5xx; HAPI holds no overlap beyond capacity, no partial
    write; the booked Appointments are exactly those answered 201."""
    assert all(r.status_code in (201, 409) for r in answers), [
        (r.status_code, r.text[:500]) for r in answers if r.status_code not in (201, 409)
    ]
    assert all(r.json()["issue"][0]["code"] == "conflict" for r in answers if r.status_code == 409)
    told = sorted(r.json()["entry"][0]["resource"]["id"] for r in answers if r.status_code == 201)
    report = scan(pg.hapi.base_url, [clinic.alice, clinic.room])
    assert report.clean, report.problems
    assert sorted(a.id for a in report.live()) == told
    assert all(a.status == "booked" for a in report.live())


def test_twenty_concurrent_bookings_of_one_time_give_exactly_one(pg: OnPostgres) -> None:
    clinic = Clinic(pg.hapi.base_url).load()
    day = monday_ahead()
    proposal = proposals(pg, clinic, local(day, "09:00"), local(day, "10:00"))[0]
    answers = book_all(pg, [proposal] * 20)
    assert sorted(r.status_code for r in answers) == [201] + [409] * 19, [
        (r.status_code, r.text[:300]) for r in answers if r.status_code != 409
    ]
    check_against_scan(pg, clinic, answers)


def test_twenty_concurrent_bookings_of_different_times_all_succeed(pg: OnPostgres) -> None:
    clinic = Clinic(pg.hapi.base_url, alignmentInterval=15, duration=15).load()
    day = monday_ahead()
    found = proposals(pg, clinic, local(day, "09:00"), local(day, "17:00"))
    assert len(found) >= 20
    answers = book_all(pg, found[:20])
    assert [r.status_code for r in answers] == [201] * 20, [
        (r.status_code, r.text[:300]) for r in answers if r.status_code != 201
    ]
    check_against_scan(pg, clinic, answers)


def test_a_capacity_of_three_hammered_by_twelve_clients_stores_three(pg: OnPostgres) -> None:
    clinic = Clinic(pg.hapi.base_url, slotCapacity=3).load()
    day = monday_ahead()
    proposal = proposals(pg, clinic, local(day, "09:00"), local(day, "10:00"))[0]
    answers = book_all(pg, [proposal] * 12)
    assert sorted(r.status_code for r in answers) == [201] * 3 + [409] * 9, [
        (r.status_code, r.text[:300]) for r in answers if r.status_code != 409
    ]
    check_against_scan(pg, clinic, answers)
    assert len(clinic.slots()) == 3


# --------------------------------------------------------------------------------------------
# Serializable isolation: the losers' answers include 500s.


@contextmanager
def serializable(postgres: PostgresServer) -> Iterator[None]:
    """PostgreSQL's default isolation switched to serializable for HAPI's connections, and back."""
    postgres.configure({"default_transaction_isolation": "serializable"})
    try:
        yield
    finally:
        postgres.configure({"default_transaction_isolation": "DEFAULT"})


def test_under_serializable_isolation_500s_are_lost_races_too(pg: OnPostgres) -> None:
    # Loaded first: under serializable even an uncontested write can fail, against HAPI's own
    # background work.
    clinic = Clinic(pg.hapi.base_url).load()
    day = monday_ahead()
    proposal = proposals(pg, clinic, local(day, "09:00"), local(day, "10:00"))[0]
    with serializable(pg.postgres):
        check_races(run_races(pg.hapi.base_url, width=RACE_WIDTH))
        answers = book_all(pg, [proposal] * 20)
    assert sorted(r.status_code for r in answers) == [201] + [409] * 19, [
        (r.status_code, r.text[:300]) for r in answers if r.status_code != 409
    ]
    check_against_scan(pg, clinic, answers)
