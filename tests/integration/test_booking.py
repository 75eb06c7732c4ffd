"""Booking against real HAPI with many processes: the sidecar under gunicorn (4 workers) and a
second sidecar process, both writing to the same HAPI FHIR server."""

from __future__ import annotations

import copy
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import requests

from tests.integration.clinic import Clinic, search
from tests.integration.conftest import HOLD_SWEEP_SECONDS, HOLD_TTL_SECONDS, Sidecar
from tests.integration.test_find import get_find, local, monday_ahead, starts
from tests.reliability.scan import scan
from tests.unit import builders

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def proposals(
    sidecar: Sidecar, clinic: Clinic, start: str, end: str, *schedules: str
) -> list[dict[str, Any]]:
    response = get_find(sidecar, clinic.find_params(start, end, *schedules, count=100))
    assert response.status_code == 200, response.text
    return [e["resource"] for e in response.json().get("entry", []) if e["search"]["mode"] == "match"]


def post(sidecar: Sidecar, operation: str, proposal: dict[str, Any]) -> requests.Response:
    body = {"resourceType": "Parameters", "parameter": [{"name": "appointment", "resource": proposal}]}
    return requests.post(
        f"{sidecar.base_url}/Appointment/${operation}", json=body, headers=FHIR_JSON, timeout=120
    )


def test_book_writes_one_transaction_and_the_time_is_gone(sidecar: Sidecar, hapi: Any) -> None:
    clinic = Clinic(hapi.base_url, bufferAfter=10).load()
    day = monday_ahead()
    proposal = proposals(
        sidecar, clinic, local(day, "09:00"), local(day, "12:00"), clinic.alice, clinic.room
    )[0]
    response = post(sidecar, "book", proposal)
    assert response.status_code == 201, response.text
    bundle = response.json()
    assert bundle["type"] == "transaction-response"
    appointment = bundle["entry"][0]["resource"]
    assert appointment["resourceType"] == "Appointment"
    assert appointment["status"] == "booked"
    assert "contained" not in appointment
    assert len(appointment["slot"]) == 4  # visit + buffer after, for each of the two schedules
    stored = clinic.slots()
    assert sorted(s["status"] for s in stored) == ["busy", "busy", "busy-unavailable", "busy-unavailable"]
    assert {f"Slot/{s['id']}" for s in stored} == {r["reference"] for r in appointment["slot"]}
    assert "09:00" not in starts(
        get_find(sidecar, clinic.find_params(local(day, "09:00"), local(day, "12:00")))
    )


def test_twenty_concurrent_bookings_of_one_time_give_exactly_one(
    sidecar: Sidecar, second_sidecar: Sidecar, hapi: Any
) -> None:
    clinic = Clinic(hapi.base_url).load()
    day = monday_ahead()
    proposal = proposals(sidecar, clinic, local(day, "09:00"), local(day, "10:00"))[0]
    targets = [sidecar if i % 2 else second_sidecar for i in range(20)]
    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(lambda target: post(target, "book", proposal), targets))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 19, [r.text for r in responses if r.status_code not in (201, 409)]
    assert all(r.json()["issue"][0]["code"] == "conflict" for r in responses if r.status_code == 409)
    booked = [a for a in clinic.appointments() if a["status"] == "booked"]
    assert len(booked) == 1
    assert [s["status"] for s in clinic.slots()] == ["busy"]


def test_twenty_concurrent_bookings_of_different_times_all_succeed(
    sidecar: Sidecar, second_sidecar: Sidecar, hapi: Any
) -> None:
    clinic = Clinic(hapi.base_url, alignmentInterval=15, duration=15).load()
    day = monday_ahead()
    found = proposals(sidecar, clinic, local(day, "09:00"), local(day, "17:00"))
    assert len(found) >= 20
    chosen = found[:20]
    targets = [sidecar if i % 2 else second_sidecar for i in range(20)]
    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(
            pool.map(lambda pair: post(pair[0], "book", pair[1]), zip(targets, chosen, strict=True))
        )
    assert [r.status_code for r in responses] == [201] * 20, [
        r.text for r in responses if r.status_code != 201
    ]
    assert len(clinic.appointments()) == 20
    assert len(clinic.slots()) == 20


def test_hold_blocks_then_lapses_and_is_cleaned_up(sidecar: Sidecar, hapi: Any) -> None:
    clinic = Clinic(hapi.base_url).load()
    day = monday_ahead()
    window = (local(day, "09:00"), local(day, "10:00"))
    proposal = proposals(sidecar, clinic, *window)[0]
    held = post(sidecar, "hold", proposal)
    assert held.status_code == 201, held.text
    assert "Expires" in held.headers
    appointment = held.json()["entry"][0]["resource"]
    assert appointment["status"] == "pending"
    assert starts(get_find(sidecar, clinic.find_params(*window))) == []
    assert post(sidecar, "book", proposal).status_code == 409

    time.sleep(HOLD_TTL_SECONDS + 0.5)
    assert starts(get_find(sidecar, clinic.find_params(*window))) == ["09:00"]  # lapsed: blocks nothing
    confirm = requests.post(f"{sidecar.base_url}/Appointment/{appointment['id']}/$confirm", timeout=60)
    assert confirm.status_code == 422, confirm.text

    deadline = time.monotonic() + HOLD_SWEEP_SECONDS * 10
    while time.monotonic() < deadline:
        stored = requests.get(
            f"{hapi.base_url}/Appointment/{appointment['id']}",
            headers={"Cache-Control": "no-cache"},
            timeout=30,
        ).json()
        if stored["status"] == "cancelled" and not clinic.slots():
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"the lapsed hold was not cleaned up: {stored['status']}, {clinic.slots()}")
    assert post(sidecar, "book", proposal).status_code == 201


def test_hold_confirm_and_cancel(sidecar: Sidecar, hapi: Any) -> None:
    clinic = Clinic(hapi.base_url).load()
    day = monday_ahead()
    window = (local(day, "09:00"), local(day, "10:00"))
    held = post(sidecar, "hold", proposals(sidecar, clinic, *window)[0])
    appointment_id = held.json()["entry"][0]["resource"]["id"]
    confirmed = requests.post(f"{sidecar.base_url}/Appointment/{appointment_id}/$confirm", timeout=60)
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["entry"][0]["resource"]["status"] == "booked"
    assert [s["status"] for s in clinic.slots()] == ["busy"]

    reason = {
        "resourceType": "Parameters",
        "parameter": [{"name": "cancelationReason", "valueCodeableConcept": {"text": "patient request"}}],
    }
    cancelled = requests.post(
        f"{sidecar.base_url}/Appointment/{appointment_id}/$cancel", json=reason, headers=FHIR_JSON, timeout=60
    )
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["cancelationReason"] == {"text": "patient request"}
    assert clinic.slots() == []
    assert starts(get_find(sidecar, clinic.find_params(*window))) == ["09:00"]
    again = requests.post(f"{sidecar.base_url}/Appointment/{appointment_id}/$cancel", timeout=60)
    assert again.status_code == 422
    unknown = requests.post(f"{sidecar.base_url}/Appointment/{clinic.prefix}-none/$cancel", timeout=60)
    assert unknown.status_code == 404


def test_identifier_makes_a_retry_idempotent(sidecar: Sidecar, second_sidecar: Sidecar, hapi: Any) -> None:
    clinic = Clinic(hapi.base_url).load()
    day = monday_ahead()
    proposal = proposals(sidecar, clinic, local(day, "09:00"), local(day, "10:00"))[0]
    proposal["identifier"] = [{"system": "urn:example:booking-request", "value": clinic.prefix}]
    first = post(sidecar, "book", proposal)
    retry = post(second_sidecar, "book", proposal)
    assert (first.status_code, retry.status_code) == (201, 200), retry.text
    assert retry.json()["entry"][0]["resource"]["id"] == first.json()["entry"][0]["resource"]["id"]
    assert len(clinic.appointments()) == 1


def test_invalid_bookings_are_4xx_and_write_nothing(sidecar: Sidecar, hapi: Any) -> None:
    clinic = Clinic(hapi.base_url, bufferBefore=10)
    other = builders.schedule(f"{clinic.prefix}-other", f"Practitioner/{clinic.alice}", [])
    clinic.load(other)
    day = monday_ahead()
    good = proposals(sidecar, clinic, local(day, "09:00"), local(day, "12:00"))[0]

    def changed(**fields: Any) -> dict[str, Any]:
        return {**good, **fields}

    cases: list[tuple[str, Any, int]] = [
        ("not json", b"{", 400),
        ("not an appointment", {"resourceType": "Patient"}, 400),
        ("no contained slots", changed(contained=[]), 400),
        ("slot references", changed(slot=[{"reference": "Slot/abc"}]), 400),
        ("mismatched start", changed(start=local(day, "09:05")), 400),
        ("missing buffer", changed(contained=[c for c in good["contained"] if c["status"] == "busy"]), 422),
    ]

    def edited(change: Any, proposal: dict[str, Any] | None = None) -> dict[str, Any]:
        copied = copy.deepcopy(proposal or good)
        change(copied)
        return copied

    def later(value: str, minutes: int) -> str:
        return (datetime.fromisoformat(value) + timedelta(minutes=minutes)).isoformat()

    other_service = {
        "extension": [
            {**good["serviceType"][0]["extension"][0], "valueReference": {"reference": "HealthcareService/x"}}
        ]
    }
    cases += [
        ("two services", edited(lambda p: p["serviceType"].append(other_service)), 400),
        (
            "visit longer than the duration",
            edited(
                lambda p: [
                    p.update(end=later(p["end"], 15)),
                    p["contained"][1].update(end=later(p["end"], 0)),
                ]
            ),
            422,
        ),
        (
            "buffer longer than bufferBefore",
            edited(lambda p: p["contained"][0].update(start=later(p["contained"][0]["start"], -5))),
            422,
        ),
        (
            "schedule does not offer the service",
            edited(
                lambda p: [
                    c["schedule"].update(reference=f"Schedule/{clinic.prefix}-other") for c in p["contained"]
                ]
            ),
            422,
        ),
        (
            "unknown schedule",
            edited(
                lambda p: [
                    c["schedule"].update(reference=f"Schedule/{clinic.prefix}-nobody") for c in p["contained"]
                ]
            ),
            422,
        ),
    ]
    cases.append(
        (
            "participant the server does not know",
            edited(
                lambda p: p["participant"].append(
                    {"actor": {"reference": f"Patient/{clinic.prefix}-ghost"}, "status": "accepted"}
                )
            ),
            422,
        )
    )
    joint = proposals(sidecar, clinic, local(day, "09:00"), local(day, "12:00"), clinic.alice, clinic.room)[0]
    room_visit = next(
        i
        for i, c in enumerate(joint["contained"])
        if c["status"] == "busy" and clinic.room in c["schedule"]["reference"]
    )
    cases.append(
        (
            "busy Slots with different times",
            edited(
                lambda p: p["contained"][room_visit].update(end=later(p["contained"][room_visit]["end"], 15)),
                joint,
            ),
            400,
        )
    )
    past = {**good, "contained": [dict(c) for c in good["contained"]]}
    for item in [past, *past["contained"]]:
        for key in ("start", "end"):
            item[key] = item[key].replace(str(day.year), "2020", 1)
    cases.append(("in the past", past, 422))
    before = (len(clinic.slots()), len(clinic.appointments()))
    for name, body, status in cases:
        if isinstance(body, bytes):
            response = requests.post(
                f"{sidecar.base_url}/Appointment/$book", data=body, headers=FHIR_JSON, timeout=60
            )
        else:
            response = requests.post(
                f"{sidecar.base_url}/Appointment/$book", json=body, headers=FHIR_JSON, timeout=60
            )
        assert response.status_code == status, (name, response.text)
        assert response.json()["resourceType"] == "OperationOutcome", name
    assert (len(clinic.slots()), len(clinic.appointments())) == before == (0, 0)
    assert search(hapi.base_url, "Slot", schedule=f"Schedule/{clinic.prefix}-other") == []


def test_partly_overlapping_bookings_at_once_never_exceed_capacity(
    sidecar: Sidecar, second_sidecar: Sidecar, hapi: Any
) -> None:
    """The bucket-lock argument against real HAPI: 30-minute visits on a 5-minute grid with a
    5-minute buffer and capacity 2, so footprints overlap by anything from 5 to 30 minutes and
    straddle bucket boundaries every way. 24 clients at once through two processes, each on one
    of 12 neighbouring starts; afterwards an independent scan of HAPI: no instant holds more
    than two footprints, every 201 is stored, nothing is stored without one, every loser got
    409 because the time was taken (never the retry deadline, and no time refused is still
    free), and nobody a 5xx."""
    clinic = Clinic(hapi.base_url, alignmentInterval=5, bufferAfter=5, slotCapacity=2).load()
    day = monday_ahead()
    found = proposals(sidecar, clinic, local(day, "09:00"), local(day, "10:30"))[:12]
    assert len(found) == 12
    chosen = [found[(n * 5) % 12] for n in range(24)]  # every start twice, in a scattered order
    targets = [sidecar if n % 2 else second_sidecar for n in range(24)]
    with ThreadPoolExecutor(max_workers=24) as pool:
        answers = list(
            pool.map(lambda pair: post(pair[0], "book", pair[1]), zip(targets, chosen, strict=True))
        )
    assert {r.status_code for r in answers} <= {201, 409}, [r.text for r in answers if r.status_code >= 500]
    assert not [r.text for r in answers if r.status_code == 409 and "deadline" in r.text]
    assert all(int(r.headers["X-Fanoni-Attempts"]) >= 1 for r in answers if r.status_code == 201)
    created = {r.json()["entry"][0]["resource"]["id"] for r in answers if r.status_code == 201}
    report = scan(hapi.base_url, [clinic.alice])
    assert report.clean, "\n".join(report.problems)
    assert {a.id for a in report.live()} == created
    # No false 409: nothing is freed here, so a time still offered at the end was free all along.
    still_free = {p["start"] for p in proposals(sidecar, clinic, local(day, "09:00"), local(day, "10:30"))}
    refused = {proposal["start"] for proposal, r in zip(chosen, answers, strict=True) if r.status_code == 409}
    assert not refused & still_free, sorted(refused & still_free)
    assert len(created) >= 3


def test_a_group_class_opening_fills_every_place_once_each_booking_attributed_to_its_own_request(
    registered: str, second_sidecar: Sidecar, hapi: Any
) -> None:
    """Group commit against real HAPI: 24 clients want the 10 places of one time at once, 16 of
    them through one process with 16 request threads (so its bookings queue behind each other
    and are written in groups), 8 through another process (which races the groups through the
    version-checked locks). Exactly 10 land; the others are 409 because the time is full (never
    the retry deadline); the scan finds nothing over-booked; every 201 is stored, nothing else
    is; and each stored Appointment has exactly one Provenance, carrying the request id of the
    request that booked it -- not its group's."""
    clinic = Clinic(hapi.base_url, slotCapacity=10).load()
    day = monday_ahead()
    grouping = Sidecar(registered, workers=1, threads=16, log_name="sidecar-groups")
    try:
        proposal = proposals(grouping, clinic, local(day, "09:00"), local(day, "10:00"))[0]
        body = {"resourceType": "Parameters", "parameter": [{"name": "appointment", "resource": proposal}]}

        def book(n: int) -> requests.Response:
            target = grouping if n % 3 else second_sidecar
            return requests.post(
                f"{target.base_url}/Appointment/$book",
                json=body,
                headers={**FHIR_JSON, "X-Request-ID": f"group-class-{clinic.prefix}-{n}"},
                timeout=120,
            )

        with ThreadPoolExecutor(max_workers=24) as pool:
            answers = list(pool.map(book, range(24)))
    finally:
        grouping.stop()
    assert sorted(r.status_code for r in answers) == [201] * 10 + [409] * 14, [
        r.text for r in answers if r.status_code not in (201, 409)
    ]
    assert not [r.text for r in answers if r.status_code == 409 and "deadline" in r.text]
    groups = [int(r.headers["X-Fanoni-Group"]) for r in answers if r.status_code == 201]
    assert max(groups) > 1, f"no booking was written in a group: {groups}"
    created = {
        r.json()["entry"][0]["resource"]["id"]: r.headers["X-Request-ID"]
        for r in answers
        if r.status_code == 201
    }
    report = scan(hapi.base_url, [clinic.alice])
    assert report.clean, "\n".join(report.problems)
    assert {a.id for a in report.live()} == set(created)
    for appointment_id, request_id in created.items():
        provenances = search(hapi.base_url, "Provenance", target=f"Appointment/{appointment_id}")
        assert len(provenances) == 1, (appointment_id, provenances)
        [extension] = [e for e in provenances[0]["extension"] if e["url"].endswith("request-id")]
        assert extension["valueString"] == request_id
