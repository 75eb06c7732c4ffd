"""The sample clinic `make run` loads: three practitioners -- Dr. Alice and Dr. Bea in New York
(the same services: a pool, SPEC 7.2), Dr. Ravi in Kolkata -- two exam rooms, and two services
with different durations and buffers; the long consultation has booking rules (a day's notice,
at most 4 a day). Also importable (``sample_bundle()``)."""

from __future__ import annotations

import json
import sys
from typing import Any

SP = "https://medplum.com/fhir/StructureDefinition/SchedulingParameters"
REF = "https://medplum.com/fhir/service-type-reference"
TZ = "http://hl7.org/fhir/StructureDefinition/timezone"
VISIT_TYPES = "http://example.org/fhir/CodeSystem/visit-type"


def _minutes(n: int) -> dict[str, Any]:
    return {"value": n, "unit": "min"}


def _actor(resource_type: str, rid: str, name: str, tz: str) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": resource_type,
        "id": rid,
        "extension": [{"url": TZ, "valueCode": tz}],
    }
    if resource_type == "Practitioner":
        family, given = name.split(" ", 1)[1], name.split(" ", 1)[0]
        resource["name"] = [{"family": family, "given": [given], "prefix": ["Dr."]}]
    else:
        resource["name"] = name
    return resource


def _service(sid: str, name: str, *subs: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "HealthcareService",
        "id": sid,
        "active": True,
        "name": name,
        "type": [{"coding": [{"system": VISIT_TYPES, "code": sid, "display": name}]}],
        "availableTime": [
            {
                "daysOfWeek": ["mon", "tue", "wed", "thu", "fri"],
                "availableStartTime": "09:00:00",
                "availableEndTime": "17:00:00",
            }
        ],
        "extension": [{"url": SP, "extension": list(subs)}],
    }


def _schedule(sid: str, actor: str, services: list[str], *blocks: dict[str, Any]) -> dict[str, Any]:
    schedule: dict[str, Any] = {
        "resourceType": "Schedule",
        "id": sid,
        "active": True,
        "actor": [{"reference": actor}],
        "serviceType": [
            {
                "coding": [{"system": VISIT_TYPES, "code": s}],
                "extension": [{"url": REF, "valueReference": {"reference": f"HealthcareService/{s}"}}],
            }
            for s in services
        ],
    }
    if blocks:
        schedule["extension"] = list(blocks)
    return schedule


def sample_resources() -> list[dict[str, Any]]:
    return [
        _actor("Practitioner", "dr-alice", "Alice Smith", "America/New_York"),
        _actor("Practitioner", "dr-ravi", "Ravi Iyer", "Asia/Kolkata"),
        _actor("Practitioner", "dr-bea", "Bea Okafor", "America/New_York"),
        _actor("Location", "room-1", "Exam room 1", "America/New_York"),
        _actor("Location", "room-2", "Exam room 2", "America/New_York"),
        _service(
            "office-visit",
            "Office visit",
            {"url": "duration", "valueDuration": _minutes(30)},
            {"url": "bufferBefore", "valueDuration": _minutes(5)},
            {"url": "bufferAfter", "valueDuration": _minutes(5)},
            {"url": "alignmentInterval", "valueDuration": _minutes(30)},
        ),
        _service(
            "long-consult",
            "Long consultation",
            {"url": "duration", "valueDuration": _minutes(60)},
            {"url": "bufferAfter", "valueDuration": _minutes(15)},
            {"url": "alignmentInterval", "valueDuration": _minutes(30)},
            # Booking rules (SPEC 7.1): a day's notice, at most 4 long consultations a day.
            {"url": "minimumNotice", "valueDuration": {"value": 24, "unit": "h"}},
            {
                "url": "bookingLimit",
                "valueTiming": {"repeat": {"frequency": 4, "period": 1, "periodUnit": "d"}},
            },
        ),
        _schedule("dr-alice", "Practitioner/dr-alice", ["office-visit", "long-consult"]),
        _schedule(
            "dr-ravi",
            "Practitioner/dr-ravi",
            ["office-visit"],
            {
                "url": SP,
                "extension": [
                    {"url": "service", "valueReference": {"reference": "HealthcareService/office-visit"}},
                    {
                        "url": "availability",
                        "extension": [
                            {
                                "url": "availableTime",
                                "extension": [
                                    *(
                                        {"url": "daysOfWeek", "valueCode": d}
                                        for d in ("mon", "tue", "wed", "thu", "fri", "sat")
                                    ),
                                    {"url": "availableStartTime", "valueTime": "10:00:00"},
                                    {"url": "availableEndTime", "valueTime": "18:00:00"},
                                ],
                            }
                        ],
                    },
                ],
            },
        ),
        _schedule("room-1", "Location/room-1", ["office-visit", "long-consult"]),
        # Pools (SPEC 7.2): Dr. Bea offers what Dr. Alice offers, room 2 what room 1 offers.
        _schedule("dr-bea", "Practitioner/dr-bea", ["office-visit", "long-consult"]),
        _schedule("room-2", "Location/room-2", ["office-visit", "long-consult"]),
    ]


# SMART Scheduling Links (SPEC 7.5): Dr. Alice's Schedule is tagged for `$bulk-publish`, which
# publishes it at the Location her PractitionerRole names, with the address and phone it requires.
PUBLISH_TAG = {"system": "https://fanoni.dev/fhir/CodeSystem/fanoni", "code": "publish"}
PUBLISHED_SCHEDULES = ("dr-alice",)


def published(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``resources`` with the published Schedules tagged, plus the clinic and Dr. Alice's role there."""
    clinic = {
        "resourceType": "Location",
        "id": "main-street",
        "status": "active",
        "name": "Fanoni Sample Clinic, Main Street",
        "extension": [{"url": TZ, "valueCode": "America/New_York"}],
        "telecom": [
            {"system": "phone", "value": "+1-413-555-0100"},
            {"system": "url", "value": "https://clinic.example.org"},
        ],
        "address": {"line": ["173 Elm St"], "city": "Pittsfield", "state": "MA", "postalCode": "01201"},
    }
    role = {
        "resourceType": "PractitionerRole",
        "id": "dr-alice-main-street",
        "active": True,
        "practitioner": {"reference": "Practitioner/dr-alice"},
        "location": [{"reference": "Location/main-street"}],
    }
    tagged = [
        {**r, "meta": {"tag": [PUBLISH_TAG]}}
        if r["resourceType"] == "Schedule" and r["id"] in PUBLISHED_SCHEDULES
        else r
        for r in resources
    ]
    return [*tagged, clinic, role]


def sample_bundle() -> dict[str, Any]:
    """A transaction Bundle that PUTs the sample clinic (safe to load again)."""
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
            for r in published(sample_resources())
        ],
    }


if __name__ == "__main__":
    json.dump(sample_bundle(), sys.stdout, indent=2)
