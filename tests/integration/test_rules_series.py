"""Booking rules, reschedule and series against real HAPI (SPEC §7.1, §7.3, §7.4), with many
processes: a daily limit under concurrent bookings, a reschedule racing bookings for its new
time, a weekly series booked and cancelled from its second occurrence."""

from __future__ import annotations

import copy
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from tests.integration.clinic import Clinic
from tests.integration.conftest import Sidecar
from tests.integration.test_booking import FHIR_JSON, post, proposals
from tests.integration.test_find import local, monday_ahead
from tests.reliability.scan import scan

WEEKLY_4 = {"repeat": {"frequency": 1, "period": 1, "periodUnit": "wk", "count": 4}}


def on_day(appointments: list[dict[str, Any]], day: str) -> list[dict[str, Any]]:
    return [a for a in appointments if a["start"].startswith(day) and a["status"] in ("booked", "pending")]


def test_a_daily_limit_holds_under_concurrent_bookings(
    sidecar: Sidecar, second_sidecar: Sidecar, hapi: Any
) -> None:
    clinic = Clinic(hapi.base_url, duration=15, alignmentInterval=15, bookingLimit=[(3, "d")]).load()
    day = monday_ahead()
    chosen = proposals(sidecar, clinic, local(day, "09:00"), local(day, "17:00"))[::2][:12]
    assert len(chosen) == 12  # distinct, non-overlapping times: no shared bucket lock
    targets = [sidecar if i % 2 else second_sidecar for i in range(12)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        responses = list(
            pool.map(lambda pair: post(pair[0], "book", pair[1]), zip(targets, chosen, strict=True))
        )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] * 3 + [422] * 9, [r.text for r in responses]
    refused = [r.json()["issue"][0] for r in responses if r.status_code == 422]
    assert all(i["code"] == "business-rule" and "bookingLimit" in i["diagnostics"] for i in refused)
    assert len(on_day(clinic.appointments(), day.isoformat())) == 3
    report = scan(hapi.base_url, [clinic.alice])
    assert report.clean, "\n".join(report.problems)
    assert proposals(sidecar, clinic, local(day, "09:00"), local(day, "17:00")) == []


def reschedule(sidecar: Sidecar, appointment_id: str, proposal: dict[str, Any]) -> requests.Response:
    body = {"resourceType": "Parameters", "parameter": [{"name": "appointment", "resource": proposal}]}
    return requests.post(
        f"{sidecar.base_url}/Appointment/{appointment_id}/$reschedule",
        json=body,
        headers=FHIR_JSON,
        timeout=120,
    )


def find_ignoring(
    sidecar: Sidecar, clinic: Clinic, start: str, end: str, appointment_id: str
) -> list[dict[str, Any]]:
    params = [
        *clinic.find_params(start, end, count=100),
        ("ignore-appointment", f"Appointment/{appointment_id}"),
    ]
    response = requests.get(f"{sidecar.base_url}/Appointment/$find", params=params, timeout=60)
    assert response.status_code == 200, response.text
    return [e["resource"] for e in response.json().get("entry", []) if e["search"]["mode"] == "match"]


def test_reschedule_moves_the_same_appointment_and_frees_the_old_time(sidecar: Sidecar, hapi: Any) -> None:
    clinic = Clinic(hapi.base_url, duration=30, alignmentInterval=30, bufferAfter=10).load()
    day = monday_ahead()
    first = proposals(sidecar, clinic, local(day, "09:00"), local(day, "12:00"))[0]
    booked = post(sidecar, "book", first | {"identifier": [{"system": "urn:test", "value": clinic.prefix}]})
    assert booked.status_code == 201, booked.text
    original = booked.json()["entry"][0]["resource"]
    # Its own time counts as free: 09:30 overlaps its buffer, yet is offered with ignore-appointment.
    target = next(
        p
        for p in find_ignoring(sidecar, clinic, local(day, "09:00"), local(day, "12:00"), original["id"])
        if p["start"] == local(day, "09:30")
    )
    response = reschedule(sidecar, original["id"], target)
    assert response.status_code == 200, response.text
    moved = response.json()["entry"][0]["resource"]
    assert (moved["id"], moved["status"], moved["start"]) == (original["id"], "booked", local(day, "09:30"))
    assert moved["identifier"] == original["identifier"]
    stored = clinic.slots()
    assert sorted(s["start"] for s in stored) == sorted([local(day, "09:30"), local(day, "10:00")])
    assert {f"Slot/{s['id']}" for s in stored} == {r["reference"] for r in moved["slot"]}
    report = scan(hapi.base_url, [clinic.alice])
    assert report.clean, "\n".join(report.problems)
    # 09:00 would end where the moved visit starts but its buffer would overlap it; 10:00 lies in
    # the moved visit's buffer. What is left of the morning:
    offered = [
        p["start"][11:16] for p in proposals(sidecar, clinic, local(day, "09:00"), local(day, "12:00"))
    ]
    assert offered == ["10:30", "11:00", "11:30"]


def test_a_reschedule_and_bookings_racing_for_the_new_time_one_wins(
    sidecar: Sidecar, second_sidecar: Sidecar, hapi: Any
) -> None:
    clinic = Clinic(hapi.base_url, duration=30, alignmentInterval=30).load()
    day = monday_ahead()
    found = proposals(sidecar, clinic, local(day, "09:00"), local(day, "12:00"))
    original = post(sidecar, "book", found[0]).json()["entry"][0]["resource"]
    new_time = next(p for p in found if p["start"] == local(day, "11:00"))
    target = next(
        p
        for p in find_ignoring(sidecar, clinic, local(day, "09:00"), local(day, "12:00"), original["id"])
        if p["start"] == local(day, "11:00")
    )
    calls = [lambda: reschedule(sidecar, original["id"], copy.deepcopy(target))] + [
        (lambda s=s: post(s, "book", copy.deepcopy(new_time)))
        for s in (second_sidecar, sidecar, second_sidecar)
    ]
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        responses = list(pool.map(lambda call: call(), calls))
    won = [r for r in responses if r.status_code in (200, 201)]
    assert len(won) == 1, [(r.status_code, r.text[:200]) for r in responses]
    assert all(r.status_code == 409 for r in responses if r not in won), [r.text for r in responses]
    appointment = requests.get(
        f"{hapi.base_url}/Appointment/{original['id']}", headers={"Cache-Control": "no-cache"}, timeout=30
    ).json()
    if responses[0] in won:  # the reschedule won: it moved, 09:00 is free
        assert appointment["start"] == local(day, "11:00")
    else:  # a booking won: the original booking is untouched, Slots and all
        assert (appointment["start"], appointment["slot"], appointment["status"]) == (
            original["start"],
            original["slot"],
            "booked",
        )
    live = on_day(clinic.appointments(), day.isoformat())
    assert sorted(a["start"] for a in live) == sorted(
        [local(day, "11:00")] + ([] if responses[0] in won else [local(day, "09:00")])
    )
    report = scan(hapi.base_url, [clinic.alice])
    assert report.clean, "\n".join(report.problems)


def test_a_weekly_series_is_found_booked_and_cancelled_from_its_second_occurrence(
    sidecar: Sidecar, hapi: Any
) -> None:
    clinic = Clinic(hapi.base_url, duration=30, alignmentInterval=60).load()
    day = monday_ahead()
    body = {
        "resourceType": "Parameters",
        "parameter": [
            *(
                {"name": n, "valueString": v}
                for n, v in clinic.find_params(local(day, "09:00"), local(day, "12:00"))
            ),
            {"name": "recurrence", "valueTiming": WEEKLY_4},
        ],
    }
    found = requests.post(f"{sidecar.base_url}/Appointment/$find", json=body, headers=FHIR_JSON, timeout=60)
    assert found.status_code == 200, found.text
    first = found.json()["entry"][0]["resource"]
    booking = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "appointment", "resource": first},
            {"name": "recurrence", "valueTiming": WEEKLY_4},
        ],
    }
    response = requests.post(
        f"{sidecar.base_url}/Appointment/$book", json=booking, headers=FHIR_JSON, timeout=60
    )
    assert response.status_code == 201, response.text
    entries = response.json()["entry"]
    assert [e["resource"]["resourceType"] for e in entries] == ["Appointment", "Slot"] * 4
    booked = [e["resource"] for e in entries[::2]]
    assert [a["start"][11:16] for a in booked] == ["09:00"] * 4
    assert len(clinic.appointments()) == 4
    # Asking again for the series' first start: its later occurrences are taken, so it is gone.
    again = requests.post(f"{sidecar.base_url}/Appointment/$find", json=body, headers=FHIR_JSON, timeout=60)
    assert first["start"] not in [e["resource"]["start"] for e in again.json().get("entry", [])]
    cancelled = requests.post(
        f"{sidecar.base_url}/Appointment/{booked[1]['id']}/$cancel",
        json={"resourceType": "Parameters", "parameter": [{"name": "series", "valueBoolean": True}]},
        headers=FHIR_JSON,
        timeout=60,
    )
    assert cancelled.status_code == 200, cancelled.text
    assert [e["resource"]["status"] for e in cancelled.json()["entry"]] == ["cancelled"] * 3
    statuses = sorted((a["start"], a["status"]) for a in clinic.appointments())
    assert [s for _, s in statuses] == ["booked", "cancelled", "cancelled", "cancelled"]
    assert [s["start"] for s in clinic.slots()] == [booked[0]["start"]]


def test_rule_and_series_errors_are_4xx_and_write_nothing(sidecar: Sidecar, hapi: Any) -> None:
    clinic = Clinic(hapi.base_url, minimumNotice={"value": 100, "unit": "d"}).load()
    day = monday_ahead()
    assert proposals(sidecar, clinic, local(day, "09:00"), local(day, "12:00")) == []
    bad = requests.get(
        f"{sidecar.base_url}/Appointment/$find",
        params=[
            *clinic.find_params(local(day, "09:00"), local(day, "12:00")),
            ("recurrence", json.dumps({"repeat": {"count": 2}})),
        ],
        timeout=30,
    )
    assert bad.status_code == 400 and bad.json()["issue"][0]["expression"] == [
        "Parameters.recurrence.repeat.period"
    ]
    far = monday_ahead(weeks=20)
    proposal = proposals(sidecar, clinic, local(far, "09:00"), local(far, "12:00"))[0]
    missing = reschedule(sidecar, "no-such-appointment", proposal)
    assert missing.status_code == 404, missing.text
    assert clinic.appointments() == []
