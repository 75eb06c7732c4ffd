"""``fanoni-scheduling doctor`` against the real HAPI: every defect it knows is planted in one
clinic and reported, with its resource and expression; the sample clinic, with visits booked
through the sidecar, is reported clean.

Each clinic lives under a fresh id prefix and the doctor is limited to its Schedules
(``--schedule``), since the session's HAPI holds every other test's data too. Defects the guard
would refuse from anyone (time booked around the sidecar) are written with the guard key, as a
misbehaving integration holding it would.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from operations.model import HOLD_EXPIRES_URL, SERVICE_TYPE_REFERENCE_URL, SLOT_CAPACITY_URL
from operations.writes import HOLD_TAG, booking_request_tag
from plugin import cli
from plugin import doctor as doctor_command
from scripts.sample_clinic import sample_bundle
from tests.integration.clinic import load, new_prefix
from tests.integration.conftest import Sidecar
from tests.integration.processes import REPO
from tests.integration.test_find import local, monday_ahead
from tests.integration.trust import SIDECAR_TOKEN, patient_token
from tests.unit import builders

Resource = dict[str, Any]
FHIR_JSON = {"Content-Type": "application/fhir+json"}
VISIT_TYPES = "http://example.org/visit-type"  # the system of builders.service's type codes


class TTY(io.StringIO):
    """stderr as a terminal: the progress bar draws only on one."""

    def isatty(self) -> bool:
        return True


def doctor(
    fhir_base: str, *args: str, authorization: str | None = SIDECAR_TOKEN, stderr: io.StringIO | None = None
) -> tuple[int, str, str]:
    """``fanoni-scheduling doctor`` in this process, with the sidecar's environment."""
    environment = {"FHIR_BASE_URL": fhir_base, "HOLD_SWEEP_SECONDS": "60"}
    if authorization:
        environment["UPSTREAM_AUTHORIZATION"] = authorization
    out, err = io.StringIO(), stderr if stderr is not None else io.StringIO()
    parsed = cli.build_parser().parse_args(["doctor", *args])
    status = doctor_command.run(parsed, environ=environment, stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def findings_of(output: str) -> set[tuple[str, str, str]]:
    return {(f["code"], f["resource"], f["expression"]) for f in json.loads(output)["findings"]}


# ---- the sample clinic, clean -----------------------------------------------------------------


def relabelled(resources: list[Resource], prefix: str) -> list[Resource]:
    """The resources with every id, and every reference to one of them, under ``prefix``."""
    ids = {r["id"] for r in resources}

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            copied = {}
            for key, item in value.items():
                if key == "id" and item in ids:
                    copied[key] = f"{prefix}-{item}"
                elif key == "reference" and isinstance(item, str) and item.split("/")[-1] in ids:
                    kind, target = item.rsplit("/", 1)
                    copied[key] = f"{kind}/{prefix}-{target}"
                else:
                    copied[key] = walk(item)
            return copied
        if isinstance(value, list):
            return [walk(item) for item in value]
        return value

    return [walk(r) for r in resources]


def _book(sidecar: Sidecar, operation: str, params: list[tuple[str, str]]) -> Resource:
    found = requests.get(f"{sidecar.base_url}/Appointment/$find", params=params, timeout=60)
    assert found.status_code == 200, found.text
    proposal = found.json()["entry"][0]["resource"]
    body = {"resourceType": "Parameters", "parameter": [{"name": "appointment", "resource": proposal}]}
    response = requests.post(
        f"{sidecar.base_url}/Appointment/${operation}", json=body, headers=FHIR_JSON, timeout=60
    )
    assert response.status_code == 201, response.text
    return dict(response.json()["entry"][0]["resource"])


def test_the_sample_clinic_with_bookings_is_clean(sidecar: Sidecar, hapi: Any) -> None:
    p = new_prefix()
    load(hapi.base_url, *relabelled([e["resource"] for e in sample_bundle()["entry"]], p))
    day = monday_ahead()
    office = ("service-type-reference", f"HealthcareService/{p}-office-visit")
    # A joint visit (doctor and room, 5-minute buffers), a visit in Kolkata, and a hold.
    _book(
        sidecar,
        "book",
        [
            ("start", local(day, "09:00")),
            ("end", local(day, "12:00")),
            office,
            ("schedule", f"Schedule/{p}-dr-alice"),
            ("schedule", f"Schedule/{p}-room-1"),
        ],
    )
    _book(
        sidecar,
        "book",
        [
            ("start", local(day, "00:00")),
            ("end", local(day, "23:00")),
            office,
            ("schedule", f"Schedule/{p}-dr-ravi"),
        ],
    )
    _book(
        sidecar,
        "hold",
        [
            ("start", local(day, "13:00")),
            ("end", local(day, "15:00")),
            office,
            ("schedule", f"Schedule/{p}-dr-alice"),
        ],
    )
    schedules = ",".join(f"Schedule/{p}-{s}" for s in ("dr-alice", "dr-ravi", "room-1"))

    # A lapsed hold that the sweep has not cancelled yet is no problem within the grace.
    status, out, err = doctor(hapi.base_url, "--schedule", schedules, "--hold-grace", "3600")

    assert status == 0, out + err
    assert out.splitlines()[-1] == "No problems found."
    assert "Read 3 Schedules, 2 HealthcareServices, 3 actors" in out
    assert err == ""  # no progress bar where stderr is no terminal
    status, out, _ = doctor(hapi.base_url, "--json", "--schedule", schedules, "--hold-grace", "3600")
    report = json.loads(out)
    assert (status, report["findings"], report["exitStatus"]) == (0, [], 0)
    # What was checked: 3 visits of 3 Slots each (visit and buffers; the hold's may be swept).
    assert report["read"]["slots"] >= 9 and report["read"]["appointments"] == 3


# ---- every defect, planted ----------------------------------------------------------------------


def broken_clinic(fhir_base: str) -> tuple[str, list[str]]:
    """A clinic with each defect the doctor knows (and that HAPI lets one store); its prefix and
    Schedule ids."""
    p = new_prefix()
    day = monday_ahead()
    now = datetime.now(UTC)
    lapsed = (now - timedelta(hours=1)).isoformat()
    service = f"{p}-visit"
    coded = builders.schedule(f"{p}-coded", f"Practitioner/{p}-ann", [service])
    resources: list[Resource] = [
        builders.practitioner(f"{p}-ann", "America/New_York"),
        builders.practitioner(f"{p}-bob", "America/New_York"),
        builders.practitioner(f"{p}-cat", "America/New_York"),
        builders.practitioner(f"{p}-zed", None),  # no time zone
        builders.location(f"{p}-room", "America/New_York"),
        builders.service(
            service,
            hours=[builders.hours("mon tue wed thu fri", "09:00", "17:00")],
            duration=30,
            alignmentInterval=30,
        ),
        builders.service(
            f"{p}-nodur", hours=[builders.hours("mon tue wed thu fri", "09:00", "17:00")], bufferAfter=5
        ),
        builders.service(
            f"{p}-long", hours=[builders.hours("mon tue wed thu fri", "09:00", "17:00")], duration=600
        ),
        # Offered by no Schedule: only its type code names it (found by the service-type search).
        builders.service(f"{p}-derm", duration=20, code=(VISIT_TYPES, f"{p}-derm")),
        # Configuration defects.
        {
            **builders.schedule(f"{p}-two", f"Practitioner/{p}-ann", [service]),
            "actor": [{"reference": f"Practitioner/{p}-ann"}, {"reference": f"Location/{p}-room"}],
        },
        {**builders.schedule(f"{p}-none", f"Practitioner/{p}-ann", [service]), "actor": []},
        builders.schedule(f"{p}-zoneless", f"Practitioner/{p}-zed", [service]),
        builders.schedule(f"{p}-nodur", f"Practitioner/{p}-ann", [f"{p}-nodur"]),
        builders.schedule(
            f"{p}-unoffered",
            f"Practitioner/{p}-ann",
            [service],
            blocks=[builders.params_block(service=f"{p}-nodur", duration=20)],
        ),
        builders.schedule(f"{p}-long", f"Practitioner/{p}-ann", [f"{p}-long"]),
        builders.schedule(f"{p}-ghost", f"Practitioner/{p}-ann", [service, f"{p}-ghost"]),
        # Bob and the room are booked together, but Bob's grid is 20 minutes, the room's 30.
        builders.schedule(
            f"{p}-bob",
            f"Practitioner/{p}-bob",
            [service],
            blocks=[builders.params_block(service=service, alignmentInterval=20)],
        ),
        builders.schedule(f"{p}-room", f"Location/{p}-room", [service]),
        # Cat's schedule carries the booking defects.
        builders.schedule(f"{p}-cat", f"Practitioner/{p}-cat", [service]),
        # Codes without a reference: one of a service it does not offer, one of no service at all.
        {
            **coded,
            "serviceType": [
                *coded["serviceType"],
                {"coding": [{"system": VISIT_TYPES, "code": f"{p}-derm"}]},
                {"coding": [{"system": VISIT_TYPES, "code": f"{p}-nothing"}]},
            ],
        },
    ]

    def slot(sid: str, schedule: str, status: str, start: str, end: str, **extra: Any) -> Resource:
        return {
            **builders.slot(f"{p}-{schedule}", status, local(day, start), local(day, end), **extra),
            "id": f"{p}-{sid}",
        }

    def appointment(aid: str, status: str, actors: list[str], slots: list[str], **extra: Any) -> Resource:
        return {
            "resourceType": "Appointment",
            "id": f"{p}-{aid}",
            "status": status,
            "start": local(day, "10:00"),
            "end": local(day, "10:30"),
            "serviceType": [
                {
                    "extension": [
                        {
                            "url": SERVICE_TYPE_REFERENCE_URL,
                            "valueReference": {"reference": f"HealthcareService/{service}"},
                        }
                    ]
                }
            ],
            "participant": [{"actor": {"reference": a}, "status": "accepted"} for a in actors],
            "slot": [{"reference": f"Slot/{p}-{s}"} for s in slots],
            **extra,
        }

    stamped = {"extension": [{"url": SLOT_CAPACITY_URL, "valuePositiveInt": 1}]}
    hold_expired = {"extension": [{"url": HOLD_EXPIRES_URL, "valueInstant": lapsed}]}
    resources += [
        slot("bob-visit", "bob", "busy", "10:00", "10:30"),
        slot("room-visit", "room", "busy", "10:00", "10:30"),
        appointment(
            "together", "booked", [f"Practitioner/{p}-bob", f"Location/{p}-room"], ["bob-visit", "room-visit"]
        ),
        # Booked through the sidecar, then again around it, over the same time.
        slot(
            "by-sidecar", "cat", "busy", "10:00", "10:30", meta={"tag": [booking_request_tag(p)]}, **stamped
        ),
        slot("around", "cat", "busy", "10:15", "10:45"),
        appointment("first", "booked", [f"Practitioner/{p}-cat"], ["by-sidecar"]),
        appointment("second", "booked", [f"Practitioner/{p}-cat"], ["around"]),
        appointment("slotless", "booked", [f"Practitioner/{p}-cat"], []),
        slot("orphan", "cat", "busy", "12:00", "12:30"),
        slot("left-over", "cat", "busy", "13:00", "13:30"),
        appointment("cancelled", "cancelled", [f"Practitioner/{p}-cat"], ["left-over"]),
        # A hold nobody cancelled (written without the sidecar's booking request id, so no
        # sweep of the session's sidecars ever will).
        slot("held", "cat", "busy-tentative", "14:00", "14:30", **hold_expired),
        appointment(
            "stuck", "pending", [f"Practitioner/{p}-cat"], ["held"], meta={"tag": [HOLD_TAG]}, **hold_expired
        ),
        # An administrator's block for a visit type the Schedule does not offer: it blocks nothing.
        slot(
            "derm-block",
            "coded",
            "busy-unavailable",
            "15:00",
            "16:00",
            serviceType=[{"coding": [{"system": VISIT_TYPES, "code": f"{p}-derm"}]}],
        ),
    ]
    load(fhir_base, *resources)
    # Cat's last: the credentials test checks it alone.
    schedules = ["two", "none", "zoneless", "nodur", "unoffered", "long", "ghost", "bob", "room", "coded"]
    schedules.append("cat")
    return p, [f"{p}-{s}" for s in schedules]


@pytest.fixture(scope="module")
def broken(hapi: Any) -> tuple[str, list[str], subprocess.CompletedProcess[str]]:
    """The broken clinic, and one run of the real command on it (``python -m plugin doctor --json``)."""
    p, schedules = broken_clinic(hapi.base_url)
    result = subprocess.run(
        [sys.executable, "-m", "plugin", "doctor", "--json", "--schedule", ",".join(schedules)],
        cwd=REPO,
        env={**os.environ, "FHIR_BASE_URL": hapi.base_url, "UPSTREAM_AUTHORIZATION": SIDECAR_TOKEN},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return p, schedules, result


EXPECTED = [
    ("schedule-actor-count", "Schedule/{p}-two", "Schedule.actor[1]"),
    ("schedule-actor-count", "Schedule/{p}-none", "Schedule.actor"),
    ("timezone-missing", "Schedule/{p}-zoneless", "Schedule.actor[0]"),
    ("duration-missing", "HealthcareService/{p}-nodur", "HealthcareService.extension[0]"),
    ("parameters-service-not-offered", "Schedule/{p}-unoffered", "Schedule.extension[0]"),
    ("visit-longer-than-windows", "HealthcareService/{p}-long", "HealthcareService.extension[0]"),
    ("service-reference-unresolved", "Schedule/{p}-ghost", "Schedule.serviceType[1].extension[0]"),
    ("grid-mismatch", "Schedule/{p}-bob", "Schedule.extension[0]"),
    ("slots-over-capacity", "Slot/{p}-around", "Slot.start"),
    ("appointment-without-slots", "Appointment/{p}-slotless", "Appointment.slot"),
    ("slot-without-appointment", "Slot/{p}-orphan", "Slot"),
    ("slot-of-ended-appointment", "Slot/{p}-left-over", "Slot"),
    ("hold-stuck", "Appointment/{p}-stuck", "Appointment.extension[0]"),
    ("slot-service-type-unmatched", "Slot/{p}-derm-block", "Slot.serviceType[0]"),
    ("service-type-without-reference", "Schedule/{p}-coded", "Schedule.serviceType[1]"),
    ("service-type-without-reference", "Schedule/{p}-coded", "Schedule.serviceType[2]"),
]


@pytest.mark.parametrize("expected", EXPECTED, ids=[e[0] for e in EXPECTED])
def test_each_planted_defect_is_reported(
    broken: tuple[str, list[str], subprocess.CompletedProcess[str]], expected: tuple[str, str, str]
) -> None:
    p, _, result = broken
    code, resource, expression = expected
    assert result.returncode == 1, result.stdout + result.stderr
    assert (code, resource.format(p=p), expression) in findings_of(result.stdout)


def test_nothing_else_is_reported_and_the_schema_holds(
    broken: tuple[str, list[str], subprocess.CompletedProcess[str]],
) -> None:
    p, schedules, result = broken
    report = json.loads(result.stdout)
    assert findings_of(result.stdout) == {(c, r.format(p=p), e) for c, r, e in EXPECTED}
    assert report["schemaVersion"] == 1
    assert report["summary"] == {"errors": 13, "warnings": 3}
    assert report["exitStatus"] == 1
    assert report["read"]["schedules"] == len(schedules)
    for finding in report["findings"]:
        assert set(finding) == {"code", "severity", "resource", "expression", "message", "hint"}
        assert finding["message"] and finding["hint"]
    over = next(f for f in report["findings"] if f["code"] == "slots-over-capacity")
    assert f"Slot/{p}-around, Slot/{p}-by-sidecar" in over["message"]
    assert "10:15:00-05:00 to" in over["message"]  # the overlap, in the Schedule's time zone
    # The service the code means was found by its type on HAPI (no Schedule references it).
    meant = {
        f["expression"]: f["message"] for f in report["findings"] if f["resource"] == f"Schedule/{p}-coded"
    }
    assert f"it probably means HealthcareService/{p}-derm (whose type" in meant["Schedule.serviceType[1]"]
    assert "no HealthcareService has that type" in meant["Schedule.serviceType[2]"]
    # visit, nodur and long by id (ghost does not exist), derm by its type.
    assert report["read"]["healthcareServices"] == 4


def test_human_report_and_paging_in_small_pages_find_the_same(
    broken: tuple[str, list[str], subprocess.CompletedProcess[str]], hapi: Any
) -> None:
    p, schedules, result = broken
    # Pages of 2: every search of the run spans several pages; the bar is fed from them.
    terminal = TTY()
    status, out, _ = doctor(
        hapi.base_url, "--schedule", ",".join(schedules), "--page-size", "2", stderr=terminal
    )
    assert status == 1
    assert out.startswith(f"fanoni-scheduling doctor: {hapi.base_url} (with the sidecar's own credentials)")
    assert "\n13 ERRORS\n" in out and "\n3 WARNINGS\n" in out
    assert f"  Schedule/{p}-two\n    schedule-actor-count at Schedule.actor[1]\n" in out
    assert "      fix: give the Schedule exactly one actor" in out
    assert out.rstrip().endswith(
        "13 errors, 3 warnings: scheduling is wrong (codes explained in docs/doctor.md)."
    )
    for code, resource, expression in EXPECTED:
        assert f"    {code} at {expression}\n" in out and f"  {resource.format(p=p)}\n" in out
    assert "Slots" in terminal.getvalue() and "Appointments" in terminal.getvalue()

    status, as_json, _ = doctor(
        hapi.base_url, "--json", "--schedule", ",".join(schedules), "--page-size", "2"
    )
    assert findings_of(as_json) == findings_of(result.stdout)


def test_without_schedule_filter_every_schedule_is_read(
    broken: tuple[str, list[str], subprocess.CompletedProcess[str]], hapi: Any
) -> None:
    """The whole server, as an administrator runs it: the planted defects are among what it
    finds (the session's HAPI holds other tests' data too, so more may be found)."""
    _, schedules, result = broken
    status, out, _ = doctor(hapi.base_url, "--json", "--days", "30")
    report = json.loads(out)
    assert status == 1
    assert findings_of(result.stdout) <= findings_of(out)
    assert report["read"]["schedules"] >= len(schedules)


def test_credentials_that_may_not_read_slots_make_it_exit_2(
    broken: tuple[str, list[str], subprocess.CompletedProcess[str]], hapi: Any
) -> None:
    _, schedules, _ = broken
    # A patient app may read Schedules and services, not Slots: HAPI answers 403.
    status, out, err = doctor(
        hapi.base_url, "--schedule", schedules[-1], "--authorization", patient_token("nobody")
    )
    assert (status, out) == (2, "")
    assert "failed (403)" in err
    status, _, err = doctor(hapi.base_url, "--schedule", schedules[-1], "--authorization", "no-such-token")
    assert status == 2 and "failed (401)" in err
    # The front desk may read everything: the same findings as the sidecar's own credentials.
    status, out, _ = doctor(
        hapi.base_url,
        "--json",
        "--schedule",
        schedules[-1],
        "--authorization",
        "test-front-desk",
        authorization=None,
    )
    assert status == 1
    assert json.loads(out)["identity"] == "authorization"
    assert {c for c, _, _ in findings_of(out)} == {
        "slots-over-capacity",
        "appointment-without-slots",
        "slot-without-appointment",
        "slot-of-ended-appointment",
        "hold-stuck",
    }


def test_a_schedule_that_does_not_exist_is_a_usage_error(hapi: Any) -> None:
    status, out, err = doctor(hapi.base_url, "--schedule", f"Schedule/{new_prefix()}-nobody")
    assert status == 2 and out == ""
    assert "not found" in err
