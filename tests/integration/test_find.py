"""``$find`` through the real sidecar process against a real HAPI FHIR server."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import requests

from tests.integration.clinic import Clinic
from tests.integration.conftest import Sidecar
from tests.unit import builders

NY = ZoneInfo("America/New_York")
FHIR_JSON = {"Content-Type": "application/fhir+json"}


def monday_ahead(weeks: int = 3) -> date:
    """A Monday a few weeks ahead, so nothing is in the past whatever day the suite runs."""
    today = datetime.now(NY).date()
    return today + timedelta(days=7 * weeks - today.weekday())


def next_spring_forward() -> date:
    day = datetime.now(NY).date() + timedelta(days=1)
    while (
        datetime(day.year, day.month, day.day, 12, tzinfo=NY).utcoffset()
        == datetime(day.year, day.month, day.day, tzinfo=NY).utcoffset()
    ):
        day += timedelta(days=1)
    return day


def local(day: date, hhmm: str) -> str:
    hour, minute = map(int, hhmm.split(":"))
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=NY).isoformat()


def get_find(sidecar: Sidecar, params: list[tuple[str, str]]) -> requests.Response:
    return requests.get(f"{sidecar.base_url}/Appointment/$find", params=params, timeout=60)


def starts(response: requests.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [
        e["resource"]["start"][11:16]
        for e in response.json().get("entry", [])
        if e["search"]["mode"] == "match"
    ]


def test_single_schedule(sidecar: Sidecar, hapi: Any) -> None:
    clinic = Clinic(hapi.base_url).load()
    day = monday_ahead()
    response = get_find(sidecar, clinic.find_params(local(day, "00:00"), local(day, "12:00")))
    assert starts(response) == ["09:00", "10:00", "11:00"]
    bundle = response.json()
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "searchset"
    assert bundle["total"] == 3
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    assert response.headers["X-Upstream-Round-Trips"] == "3"
    assert clinic.slots() == []  # $find stores nothing


def test_joint_schedules_in_two_zones_with_three_round_trips(sidecar: Sidecar, hapi: Any) -> None:
    clinic = Clinic(hapi.base_url).load()
    day = monday_ahead()
    # The London room is open 09:00-17:00 London time: only 09:00-12:00 New York time overlaps.
    response = get_find(
        sidecar, clinic.find_params(local(day, "00:00"), local(day, "23:00"), clinic.alice, clinic.room)
    )
    assert starts(response) == ["09:00", "10:00", "11:00"]
    appointment = response.json()["entry"][0]["resource"]
    assert [p["actor"]["reference"] for p in appointment["participant"]] == [
        f"Practitioner/{clinic.alice}",
        f"Location/{clinic.room}",
    ]
    assert response.headers["X-Upstream-Round-Trips"] == "3"


def test_post_parameters_with_buffers(sidecar: Sidecar, hapi: Any) -> None:
    clinic = Clinic(hapi.base_url, bufferBefore=15, bufferAfter=15, alignmentInterval=30).load()
    day = monday_ahead()
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "start", "valueDateTime": local(day, "09:00")},
            {"name": "end", "valueDateTime": local(day, "11:00")},
            {
                "name": "service-type-reference",
                "valueReference": {"reference": f"HealthcareService/{clinic.service}"},
            },
            {"name": "schedule", "valueReference": {"reference": f"Schedule/{clinic.alice}"}},
        ],
    }
    response = requests.post(
        f"{sidecar.base_url}/Appointment/$find", json=body, headers=FHIR_JSON, timeout=60
    )
    assert starts(response) == ["09:30", "10:00", "10:30"]
    contained = response.json()["entry"][0]["resource"]["contained"]
    assert [(c["status"], c["start"][11:16], c["end"][11:16]) for c in contained] == [
        ("busy-unavailable", "09:15", "09:30"),
        ("busy", "09:30", "10:00"),
        ("busy-unavailable", "10:00", "10:15"),
    ]


def test_free_and_busy_overlays_and_a_long_block_from_before_the_range(sidecar: Sidecar, hapi: Any) -> None:
    clinic = Clinic(hapi.base_url)
    day = monday_ahead()
    # Longer than the 62-day look-back of the fallback query: only the `end` search finds it.
    vacation_start = datetime(day.year, day.month, day.day, tzinfo=NY) - timedelta(days=73)
    clinic.load(
        builders.slot(clinic.alice, "busy", local(day, "10:00"), local(day, "10:30")),
        builders.slot(clinic.alice, "free", local(day, "18:00"), local(day, "19:00")),
        builders.slot(
            clinic.alice,
            "busy-unavailable",
            vacation_start.isoformat(),
            local(day - timedelta(days=3), "00:00"),
            comment="a long leave",
        ),
    )
    response = get_find(sidecar, clinic.find_params(local(day, "00:00"), local(day, "23:00")))
    assert starts(response) == ["09:00", "11:00", "12:00", "13:00", "14:00", "15:00", "16:00", "18:00"]
    friday = day - timedelta(days=3)
    before = get_find(
        sidecar, clinic.find_params(local(friday - timedelta(days=4), "00:00"), local(friday, "00:00"))
    )
    assert starts(before) == []  # the leave, which began 10 weeks before this range, is seen


def test_dst_spring_forward_night(sidecar: Sidecar, hapi: Any) -> None:
    clinic = Clinic(hapi.base_url, alignmentInterval=30)
    sunday = next_spring_forward()
    clinic.resources[3] = builders.schedule(
        clinic.alice,
        f"Practitioner/{clinic.alice}",
        [clinic.service],
        blocks=[
            builders.params_block(
                service=clinic.service, availability=[builders.window("sun", "00:30", "06:30")]
            )
        ],
    )
    clinic.load()
    end = datetime(sunday.year, sunday.month, sunday.day, tzinfo=NY) + timedelta(days=1)
    response = get_find(sidecar, clinic.find_params(local(sunday, "00:00"), end.isoformat()))
    found = response.json()["entry"]
    assert len(found) == 10  # 00:30 EST .. 06:30 EDT is five real hours
    assert [e["resource"]["start"][11:] for e in found[2:4]] == ["01:30:00-05:00", "03:00:00-04:00"]


def test_schedule_find_returns_free_slots(sidecar: Sidecar, hapi: Any) -> None:
    clinic = Clinic(hapi.base_url).load()
    day = monday_ahead()
    response = requests.get(
        f"{sidecar.base_url}/Schedule/{clinic.alice}/$find",
        params={"start": local(day, "09:00"), "end": local(day, "11:00")},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    slots = [e["resource"] for e in response.json()["entry"]]
    assert [(s["resourceType"], s["status"], s["start"][11:16]) for s in slots] == [
        ("Slot", "free", "09:00"),
        ("Slot", "free", "10:00"),
    ]


def test_inactive_schedule_is_an_outcome_entry(sidecar: Sidecar, hapi: Any) -> None:
    clinic = Clinic(hapi.base_url)
    clinic.resources[3]["active"] = False
    clinic.load()
    day = monday_ahead()
    bundle = get_find(sidecar, clinic.find_params(local(day, "00:00"), local(day, "23:00"))).json()
    assert bundle["total"] == 0
    assert [e["search"]["mode"] for e in bundle["entry"]] == ["outcome"]


def _issue(response: requests.Response) -> dict[str, Any]:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    return dict(body["issue"][0])


def test_error_cases(sidecar: Sidecar, hapi: Any) -> None:
    clinic = Clinic(hapi.base_url)
    two_actors = builders.schedule(f"{clinic.prefix}-two", f"Practitioner/{clinic.alice}", [clinic.service])
    two_actors["actor"].append({"reference": f"Location/{clinic.room}"})
    no_tz = builders.practitioner(f"{clinic.prefix}-notz", None)
    no_tz_schedule = builders.schedule(
        f"{clinic.prefix}-notz", f"Practitioner/{clinic.prefix}-notz", [clinic.service]
    )
    other_service = builders.service(f"{clinic.prefix}-dental", duration=30)
    clinic.load(two_actors, no_tz, no_tz_schedule, other_service)
    day = monday_ahead()
    start, end = local(day, "00:00"), local(day, "23:00")
    ok = clinic.find_params(start, end)
    cases: list[tuple[str, list[tuple[str, str]], int, str, str | None]] = [
        ("missing start", ok[1:], 400, "required", "Parameters.start"),
        ("unparseable end", [ok[0], ("end", "next tuesday"), *ok[2:]], 400, "value", "Parameters.end"),
        ("start after end", clinic.find_params(end, start), 400, "invalid", None),
        (
            "range too long",
            clinic.find_params(start, local(day + timedelta(days=40), "00:00")),
            400,
            "value",
            None,
        ),
        ("_count out of range", [*ok, ("_count", "5000")], 400, "value", "Parameters._count"),
        (
            "unknown schedule",
            clinic.find_params(start, end, "nobody-here"),
            422,
            "not-found",
            "Parameters.schedule[0]",
        ),
        ("two actors", clinic.find_params(start, end, f"{clinic.prefix}-two"), 422, "processing", None),
        ("no time zone", clinic.find_params(start, end, f"{clinic.prefix}-notz"), 422, "processing", None),
        (
            "service not offered",
            [("service-type-reference", f"HealthcareService/{clinic.prefix}-dental"), *ok[:2], ok[3]],
            422,
            "business-rule",
            "Parameters.schedule[0]",
        ),
    ]
    for name, params, status, code, expression in cases:
        response = get_find(sidecar, params)
        assert response.status_code == status, (name, response.text)
        issue = _issue(response)
        assert issue["code"] == code, (name, issue)
        assert issue["diagnostics"], name
        if expression:
            assert expression in issue.get("expression", []), (name, issue)

    not_json = requests.post(
        f"{sidecar.base_url}/Appointment/$find", data=b"{not json", headers=FHIR_JSON, timeout=60
    )
    assert not_json.status_code == 400
    assert _issue(not_json)["code"] == "structure"
    missing = requests.get(
        f"{sidecar.base_url}/Schedule/{clinic.prefix}-nope/$find", params=ok[:2], timeout=60
    )
    assert missing.status_code == 404
    assert _issue(missing)["code"] == "not-found"
