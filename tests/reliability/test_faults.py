"""Faults between the sidecar and a real HAPI FHIR server, one at a time.

Each test makes one fault happen to one upstream request (the proxy, ``proxy.py``), calls the
sidecar as a client would, checks the answer, and then scans HAPI directly (``scan.py``): no
partial write, no orphan Slot, no overlap, and no Appointment the caller was not told about.
"""

from __future__ import annotations

import time
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
    cancel,
    confirm,
    find,
    identified,
    issue,
    new_identifier,
    new_request_id,
    proposals,
)
from tests.reliability.conftest import BEYOND_TIMEOUT
from tests.reliability.proxy import Action, Fault, FaultProxy
from tests.reliability.scan import ScanReport, scan


def scanned(hapi: HapiServer, clinic: Clinic) -> ScanReport:
    report = scan(hapi.base_url, [clinic.alice, clinic.room])
    assert report.clean, "\n".join(report.problems)
    return report


def fresh_clinic(hapi: HapiServer, **service: Any) -> Clinic:
    return Clinic(hapi.base_url, **service).load()


# ---- HAPI stopped -------------------------------------------------------------------------------


def test_hapi_stopped_is_503_transient_and_nothing_is_stored(
    sidecar: Sidecar, hapi: HapiServer, proxy: FaultProxy, record: Any
) -> None:
    clinic = fresh_clinic(hapi)
    day = monday_ahead()
    proposal = identified(proposals(sidecar, clinic, day)[0], new_identifier())
    proxy.stop()
    started = time.monotonic()
    booked = book(sidecar, proposal)
    book_seconds = time.monotonic() - started
    assert booked.status_code == 503, booked.text
    code, text = issue(booked)
    assert code == "transient"
    assert "unreachable" in text
    found = find(sidecar, clinic, day, "09:00", "12:00")
    assert found.status_code == 503, found.text
    assert issue(found)[0] == "transient"
    ready = requests.get(f"http://127.0.0.1:{sidecar.port}/readyz", timeout=30)
    assert ready.status_code == 503, ready.text
    assert scanned(hapi, clinic).summary()["appointments"] == 0

    proxy.resume()
    again = book(sidecar, proposal)
    assert again.status_code == 201, again.text
    report = scanned(hapi, clinic)
    assert [a.id for a in report.live()] == [appointment_of(again)["id"]]
    record(
        fault="stopped",
        answer=booked.status_code,
        code=code,
        diagnostics=text,
        seconds=round(book_seconds, 2),
        find=found.status_code,
        readyz=ready.status_code,
        after_resume=again.status_code,
        scan=report.summary(),
    )


# ---- one fault on the booking transaction -----------------------------------------------------


@dataclass(frozen=True)
class Case:
    action: Action
    status: int
    """What the caller gets."""
    code: str | None
    """issue.code when the answer is an OperationOutcome."""
    words: str | None
    """In the diagnostics."""
    stored: int
    """Appointments stored afterwards."""
    upstream: str
    """What HAPI did with the faulted transaction."""


BOOKING_CASES = {
    "answer-delayed-past-timeout": Case(
        faults.delay_response(BEYOND_TIMEOUT), 201, None, None, 1, "committed; answer held past the timeout"
    ),
    "request-delayed-past-timeout": Case(
        faults.delay_request(BEYOND_TIMEOUT),
        504,
        "timeout",
        NOTHING_STORED,
        0,
        "reached HAPI after the fence: refused",
    ),
    "5xx-without-commit": Case(faults.status(500), 502, "exception", NOTHING_STORED, 0, "never reached"),
    "5xx-after-commit": Case(faults.status_after_forward(502), 201, None, None, 1, "committed"),
    "cut-after-send": Case(faults.CUT_AFTER_SEND, 201, None, None, 1, "committed"),
    "cut-before-send": Case(faults.CUT_BEFORE_SEND, 503, "transient", NOTHING_STORED, 0, "never reached"),
}


@pytest.mark.parametrize("name", list(BOOKING_CASES))
def test_a_fault_on_a_booking_transaction(
    name: str, sidecar: Sidecar, hapi: HapiServer, proxy: FaultProxy, record: Any
) -> None:
    case = BOOKING_CASES[name]
    clinic = fresh_clinic(hapi)
    day = monday_ahead()
    mine = new_identifier()
    proposal = identified(proposals(sidecar, clinic, day)[0], mine)
    # A fresh clinic: the faulted transaction also creates the bucket locks (If-Match W/"0"),
    # so a lost answer is settled by fencing a lock that did not exist before.
    fault = proxy.inject(Fault(case.action, faults.transaction(operation="book", containing=clinic.prefix)))
    request_id = new_request_id()
    started = time.monotonic()
    answer = book(sidecar, proposal, request_id=request_id)
    seconds = time.monotonic() - started
    assert fault.wait_hits(timeout=0), "the fault never happened"
    assert fault.wait_done(timeout=BEYOND_TIMEOUT + 10), "the faulted request is still in the proxy"
    upstream_calls = proxy.counts(request_id=request_id)
    assert answer.status_code == case.status, answer.text
    code = text = None
    if case.code is not None:
        code, text = issue(answer)
        assert code == case.code, text
        assert case.words is not None and case.words in text, text
    report = scanned(hapi, clinic)
    stored = report.with_identifier(CALLER_SYSTEM, mine)
    assert len(stored) == case.stored, stored
    assert len(report.live()) == case.stored  # nothing stored the caller was not told about
    if case.stored:
        assert stored[0].id == appointment_of(answer)["id"]
        assert stored[0].status == "booked"
        assert len(stored[0].slot_ids) == 1
    late = fault.done[0]
    if case.action.kind == "delay_request":
        # The transaction reached HAPI after the sidecar gave up and fenced the lock: refused.
        assert late.upstream_status in (409, 412), late
    # Asking again: the first booking if it landed, a new one if nothing was stored.
    retried = book(sidecar, proposal)
    assert retried.status_code == (200 if case.stored else 201), retried.text
    assert len(scanned(hapi, clinic).with_identifier(CALLER_SYSTEM, mine)) == 1
    record(
        fault=str(case.action),
        hapi=case.upstream,
        upstream_status=late.upstream_status,
        answer=answer.status_code,
        code=code,
        diagnostics=text,
        seconds=round(seconds, 2),
        upstream_calls=dict(upstream_calls),
        retry=retried.status_code,
        scan=report.summary(),
    )


# ---- $hold, $confirm, $cancel ---------------------------------------------------------------------


def test_a_hold_whose_answer_was_cut_is_201_with_its_expiry(
    sidecar: Sidecar, hapi: HapiServer, proxy: FaultProxy, record: Any
) -> None:
    clinic = fresh_clinic(hapi)
    proposal = proposals(sidecar, clinic, monday_ahead())[0]
    proxy.inject(Fault(faults.CUT_AFTER_SEND, faults.transaction(operation="hold", containing=clinic.prefix)))
    started = time.monotonic()
    held = book(sidecar, proposal, operation="hold")
    seconds = time.monotonic() - started
    assert held.status_code == 201, held.text
    assert "Expires" in held.headers
    appointment = appointment_of(held)
    assert appointment["status"] == "pending"
    report = scanned(hapi, clinic)
    assert [(a.id, a.status) for a in report.live()] == [(appointment["id"], "pending")]
    record(
        fault=str(faults.CUT_AFTER_SEND),
        operation="hold",
        answer=held.status_code,
        seconds=round(seconds, 2),
        scan=report.summary(),
    )


@dataclass(frozen=True)
class LifecycleCase:
    action: Action
    status: int
    code: str | None
    words: str | None
    landed: bool
    """Whether the faulted operation's own transaction took effect."""


CONFIRM_CASES = {
    "cut-after-send": LifecycleCase(faults.CUT_AFTER_SEND, 200, None, None, True),
    "5xx-after-commit": LifecycleCase(faults.status_after_forward(502), 200, None, None, True),
    "5xx-without-commit": LifecycleCase(faults.status(500), 502, "exception", NOTHING_STORED, False),
    "answer-delayed-past-timeout": LifecycleCase(
        faults.delay_response(BEYOND_TIMEOUT), 200, None, None, True
    ),
    "request-delayed-past-timeout": LifecycleCase(
        faults.delay_request(BEYOND_TIMEOUT), 504, "timeout", NOTHING_STORED, False
    ),
}


@pytest.mark.parametrize("name", list(CONFIRM_CASES))
def test_a_fault_on_a_confirmation(
    name: str, sidecar: Sidecar, hapi: HapiServer, proxy: FaultProxy, record: Any
) -> None:
    case = CONFIRM_CASES[name]
    clinic = fresh_clinic(hapi)
    held = book(sidecar, proposals(sidecar, clinic, monday_ahead())[0], operation="hold")
    assert held.status_code == 201, held.text
    appointment_id = appointment_of(held)["id"]
    fault = proxy.inject(
        Fault(case.action, faults.transaction(operation="confirm", containing=appointment_id))
    )
    request_id = new_request_id()
    started = time.monotonic()
    answer = confirm(sidecar, appointment_id, request_id=request_id)
    seconds = time.monotonic() - started
    assert fault.wait_done(timeout=BEYOND_TIMEOUT + 10)
    assert answer.status_code == case.status, answer.text
    code = text = None
    if case.code is not None:
        code, text = issue(answer)
        assert code == case.code, text
        assert case.words is not None and case.words in text, text
    else:
        assert appointment_of(answer)["status"] == "booked"
    report = scanned(hapi, clinic)
    assert [(a.id, a.status) for a in report.live()] == [
        (appointment_id, "booked" if case.landed else "pending")
    ]
    if case.action.kind == "delay_request":
        assert fault.done[0].upstream_status in (409, 412), fault.done[0]
    if not case.landed:
        again = confirm(sidecar, appointment_id)
        assert again.status_code == 200, again.text
        assert [a.status for a in scanned(hapi, clinic).live()] == ["booked"]
    slots = clinic.slots()
    assert [s["status"] for s in slots] == ["busy"]
    record(
        fault=str(case.action),
        operation="confirm",
        upstream_status=fault.done[0].upstream_status,
        answer=answer.status_code,
        code=code,
        diagnostics=text,
        seconds=round(seconds, 2),
        upstream_calls=dict(proxy.counts(request_id=request_id)),
        scan=report.summary(),
    )


CANCEL_CASES = {
    "cut-after-send": LifecycleCase(faults.CUT_AFTER_SEND, 200, None, None, True),
    "5xx-after-commit": LifecycleCase(faults.status_after_forward(502), 200, None, None, True),
    "5xx-without-commit": LifecycleCase(faults.status(500), 200, None, None, False),
    "answer-delayed-past-timeout": LifecycleCase(
        faults.delay_response(BEYOND_TIMEOUT), 200, None, None, True
    ),
    "request-delayed-past-timeout": LifecycleCase(
        faults.delay_request(BEYOND_TIMEOUT), 200, None, None, False
    ),
}


@pytest.mark.parametrize("name", list(CANCEL_CASES))
def test_a_fault_on_a_cancellation(
    name: str, sidecar: Sidecar, hapi: HapiServer, proxy: FaultProxy, record: Any
) -> None:
    """``$cancel`` re-reads after a lost answer and sends the cancellation again if it did not
    land: the caller always gets 200, and the cancellation lands once (version-checked)."""
    case = CANCEL_CASES[name]
    clinic = fresh_clinic(hapi, bufferAfter=10)
    booked = book(sidecar, proposals(sidecar, clinic, monday_ahead())[0])
    assert booked.status_code == 201, booked.text
    appointment_id = appointment_of(booked)["id"]
    fault = proxy.inject(
        Fault(case.action, faults.transaction(operation="cancel", containing=appointment_id))
    )
    request_id = new_request_id()
    started = time.monotonic()
    answer = cancel(sidecar, appointment_id, request_id=request_id)
    seconds = time.monotonic() - started
    assert fault.wait_done(timeout=BEYOND_TIMEOUT + 10)
    assert answer.status_code == case.status, answer.text
    assert appointment_of(answer)["status"] == "cancelled"
    upstream_calls = proxy.counts(request_id=request_id)
    # Sent twice when the first did not land (the second lands; a late first is refused). Whether
    # the first landed is HAPI's answer to it, not the fault's kind alone: a forwarded first that
    # HAPI itself refused (a concurrent write on a loaded machine) is sent again, as it must be.
    first = fault.done[0].upstream_status
    first_landed = first is not None and 200 <= first < 300
    if case.landed:
        assert first is not None, fault.done[0]
    else:
        assert not first_landed, fault.done[0]
    assert upstream_calls["transaction cancel"] == (1 if first_landed else 2), (upstream_calls, first)
    if case.action.kind == "delay_request":
        assert fault.done[0].upstream_status in (409, 412), fault.done[0]
    report = scanned(hapi, clinic)
    assert report.live() == []
    assert [(a.id, a.status) for a in report.sidecar_appointments()] == [(appointment_id, "cancelled")]
    assert clinic.slots() == []
    record(
        fault=str(case.action),
        operation="cancel",
        upstream_status=fault.done[0].upstream_status,
        answer=answer.status_code,
        seconds=round(seconds, 2),
        upstream_calls=dict(upstream_calls),
        scan=report.summary(),
    )


# ---- HAPI unreachable for the settling too (the limits) ----------------------------------------


@pytest.mark.parametrize("landed", [True, False], ids=["committed", "not-sent"])
def test_hapi_gone_before_the_answer_is_503_may_or_may_not_then_a_retry_tells(
    landed: bool, sidecar: Sidecar, hapi: HapiServer, proxy: FaultProxy, record: Any
) -> None:
    """HAPI becomes unreachable with the booking transaction in flight, and stays so while the
    sidecar tries to settle it: the caller is told the booking may or may not have been stored
    and to retry with its identifier; once HAPI is back, the retry answers the truth."""
    clinic = fresh_clinic(hapi)
    mine = new_identifier()
    proposal = identified(proposals(sidecar, clinic, monday_ahead())[0], mine)
    action = faults.STOP_AFTER_FORWARD if landed else faults.STOP_BEFORE_SEND
    fault = proxy.inject(Fault(action, faults.transaction(operation="book", containing=clinic.prefix)))
    started = time.monotonic()
    answer = book(sidecar, proposal)
    seconds = time.monotonic() - started
    assert fault.wait_done(timeout=0)
    assert answer.status_code == 503, answer.text
    code, text = issue(answer)
    assert code == "transient"
    assert MAYBE_STORED in text and "Retry with the same Appointment identifier" in text, text
    assert len(scanned(hapi, clinic).with_identifier(CALLER_SYSTEM, mine)) == (1 if landed else 0)

    proxy.resume()
    retried = book(sidecar, proposal)
    assert retried.status_code == (200 if landed else 201), retried.text
    report = scanned(hapi, clinic)
    stored = report.with_identifier(CALLER_SYSTEM, mine)
    assert [a.id for a in stored] == [appointment_of(retried)["id"]]
    assert len(report.live()) == 1
    record(
        fault=str(action),
        answer=answer.status_code,
        code=code,
        diagnostics=text,
        seconds=round(seconds, 2),
        retry=retried.status_code,
        scan=report.summary(),
    )


def test_hapi_timing_out_until_the_budget_is_spent_is_504_may_or_may_not(
    sidecar: Sidecar, hapi: HapiServer, proxy: FaultProxy, record: Any
) -> None:
    """HAPI slow on every read, then silent: the booking transaction commits but its answer
    never comes, and neither does any answer to the fence. The operation's time budget
    (``BOOKING_DEADLINE_SECONDS + UPSTREAM_READ_TIMEOUT + 10 s`` = 17 s here) runs out while
    the sidecar is still trying to settle. The caller must be told the booking may or may not
    have been stored (it was), and a retry with its identifier must find it."""
    clinic = fresh_clinic(hapi)
    day = monday_ahead()
    first, second = proposals(sidecar, clinic, day)[:2]
    assert book(sidecar, first).status_code == 201  # the Schedule's lock exists from now on
    mine = new_identifier()
    proposal = identified(second, mine)
    slow_reads = proxy.inject(Fault(faults.delay_request(1.2), faults.reads(clinic.prefix), times=4))
    lost = proxy.inject(
        Fault(
            faults.delay_response(BEYOND_TIMEOUT),
            faults.transaction(operation="book", containing=clinic.prefix),
        )
    )
    fences = proxy.inject(
        Fault(faults.delay_request(BEYOND_TIMEOUT), faults.lock_transaction(clinic.prefix), times=6)
    )
    request_id = new_request_id()
    started = time.monotonic()
    answer = book(sidecar, proposal, request_id=request_id)
    seconds = time.monotonic() - started
    assert proxy.wait_idle(30)
    code, text = issue(answer)
    report = scanned(hapi, clinic)
    stored = report.with_identifier(CALLER_SYSTEM, mine)
    assert lost.done[0].upstream_status == 200  # the booking landed
    assert len(stored) == 1
    retried = book(sidecar, proposal)
    assert retried.status_code == 200, retried.text
    assert appointment_of(retried)["id"] == stored[0].id
    record(
        fault="reads delayed 1.2 s x4, answer to the booking lost, every fence timing out",
        answer=answer.status_code,
        code=code,
        diagnostics=text,
        seconds=round(seconds, 2),
        slow_reads=len(slow_reads.done),
        fences_sent=len(fences.done),
        upstream_calls=dict(proxy.counts(request_id=request_id)),
        retry=retried.status_code,
        scan=report.summary(),
    )
    # Before 590df27 the answer was a plain 504 "the operation ran out of time", as if nothing
    # had been stored (docs/reliability.md, "Findings").
    assert answer.status_code == 504, answer.text
    assert code == "timeout"
    assert MAYBE_STORED in text and "Retry with the same Appointment identifier" in text, text


# ---- a read failing after the write's outcome was settled --------------------------------------


def test_a_booking_found_landed_but_not_read_back_is_not_a_plain_504(
    sidecar: Sidecar, hapi: HapiServer, proxy: FaultProxy, record: Any
) -> None:
    """The answer to the booking is lost; the sidecar fences and finds the booking landed;
    then reading its Slots back (for the 201 body) times out. The caller must not get an
    answer that reads as "nothing happened"."""
    clinic = fresh_clinic(hapi)
    mine = new_identifier()
    proposal = identified(proposals(sidecar, clinic, monday_ahead())[0], mine)
    request_id = new_request_id()
    proxy.inject(Fault(faults.CUT_AFTER_SEND, faults.transaction(operation="book", containing=clinic.prefix)))
    read_back = proxy.inject(
        Fault(faults.delay_request(BEYOND_TIMEOUT), faults.reads("/Slot?_id=", request_id=request_id))
    )
    started = time.monotonic()
    answer = book(sidecar, proposal, request_id=request_id)
    seconds = time.monotonic() - started
    assert read_back.wait_done(timeout=BEYOND_TIMEOUT + 10)
    report = scanned(hapi, clinic)
    assert len(report.with_identifier(CALLER_SYSTEM, mine)) == 1  # it landed
    code, text = issue(answer) if answer.status_code != 201 else (None, None)
    record(
        fault="booking answer cut, then the Slot read-back timing out",
        answer=answer.status_code,
        code=code,
        diagnostics=text,
        seconds=round(seconds, 2),
        scan=report.summary(),
    )
    assert answer.status_code == 201 or (text is not None and MAYBE_STORED in text), answer.text


def test_a_cancellation_landed_but_not_read_back_is_not_a_plain_504(
    sidecar: Sidecar, hapi: HapiServer, proxy: FaultProxy, record: Any
) -> None:
    """The answer to the cancellation is lost (it landed); re-reading the Appointment to find
    out times out. The caller must not get an answer that reads as "nothing happened"."""
    clinic = fresh_clinic(hapi)
    booked = book(sidecar, proposals(sidecar, clinic, monday_ahead())[0])
    appointment_id = appointment_of(booked)["id"]
    request_id = new_request_id()
    proxy.inject(
        Fault(faults.CUT_AFTER_SEND, faults.transaction(operation="cancel", containing=appointment_id))
    )
    # The caller's permission read and the first attempt's read pass; the re-read is held.
    reread = proxy.inject(
        Fault(
            faults.delay_request(BEYOND_TIMEOUT),
            faults.reads(f"/Appointment/{appointment_id}", request_id=request_id),
            skip=2,
        )
    )
    started = time.monotonic()
    answer = cancel(sidecar, appointment_id, request_id=request_id)
    seconds = time.monotonic() - started
    assert reread.wait_done(timeout=BEYOND_TIMEOUT + 10)
    report = scanned(hapi, clinic)
    assert [a.status for a in report.sidecar_appointments()] == ["cancelled"]  # it landed
    code, text = issue(answer) if answer.status_code != 200 else (None, None)
    again = cancel(sidecar, appointment_id)
    record(
        fault="cancellation answer cut, then the re-read timing out",
        answer=answer.status_code,
        code=code,
        diagnostics=text,
        seconds=round(seconds, 2),
        cancel_again=again.status_code,
        scan=report.summary(),
    )
    assert answer.status_code == 200 or (text is not None and MAYBE_STORED in text), answer.text
