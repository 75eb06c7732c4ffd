"""Compute-only benchmark of ``$bulk-publish`` (SPEC §7.5): FHIR JSON dicts in, the three NDJSON
files out, no I/O.

Workload: 50 Schedules tagged for publishing, each a Location actor (spread over 5 time zones)
offering two services (30-minute visits with 10-minute buffers, 60-minute visits with a daily
limit of 6; 15-minute grid; Mon-Fri 08:00-18:00), 200 busy Slots per Schedule over the next
two weeks (``random.Random(seed)``). Timed: ``publish`` over ``PUBLISH_DAYS`` days, then the
files rendered as NDJSON, as one ``$bulk-publish`` computes them.

    python bench/publish.py [--runs N] [--days D] [--seed S]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from operations.booking_link import BookingLinkTemplate
from operations.fhir_values import parse_instant
from operations.publish import PUBLISH_TAG, PublishRequest, publish
from operations.publish_resources import files, ndjson

Resource = dict[str, Any]
SP = "https://medplum.com/fhir/StructureDefinition/SchedulingParameters"
REF = "https://medplum.com/fhir/service-type-reference"
TZ = "http://hl7.org/fhir/StructureDefinition/timezone"
ZONES = ["America/New_York", "Europe/London", "Asia/Kolkata", "Australia/Sydney", "UTC"]
SCHEDULES = 50
NOW = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)


class Store:
    """Hands out the stored dicts: the reads cost nothing, only the engine is timed."""

    def __init__(self, resources: list[Resource]) -> None:
        self.by_type: dict[str, list[Resource]] = {}
        for resource in resources:
            self.by_type.setdefault(resource["resourceType"], []).append(resource)

    def search_including(self, resource_type: str, params: Any) -> tuple[list[Resource], list[Resource]]:
        return self.by_type.get(resource_type, []), self.by_type.get("Location", [])

    def search(self, resource_type: str, params: Any, **_: Any) -> list[Resource]:
        return self.by_type.get(resource_type, [])

    def search_slots(self, ids: Sequence[str], start: datetime, end: datetime) -> list[Resource]:
        wanted = {f"Schedule/{i}" for i in ids}
        return [
            s
            for s in self.by_type.get("Slot", [])
            if s["schedule"]["reference"] in wanted
            and parse_instant(s["start"]) < end
            and parse_instant(s["end"]) > start
        ]


def clinic(seed: int) -> list[Resource]:
    rng = random.Random(seed)
    hours = [
        {
            "daysOfWeek": ["mon", "tue", "wed", "thu", "fri"],
            "availableStartTime": "08:00:00",
            "availableEndTime": "18:00:00",
        }
    ]

    def service(sid: str, *subs: Resource) -> Resource:
        return {
            "resourceType": "HealthcareService",
            "id": sid,
            "active": True,
            "name": sid,
            "type": [{"coding": [{"system": "http://example.org/visit-type", "code": sid}]}],
            "availableTime": hours,
            "extension": [
                {
                    "url": SP,
                    "extension": [
                        {"url": "alignmentInterval", "valueDuration": {"value": 15, "unit": "min"}},
                        *subs,
                    ],
                }
            ],
        }

    resources: list[Resource] = [
        service(
            "short",
            {"url": "duration", "valueDuration": {"value": 30, "unit": "min"}},
            {"url": "bufferBefore", "valueDuration": {"value": 10, "unit": "min"}},
            {"url": "bufferAfter", "valueDuration": {"value": 10, "unit": "min"}},
        ),
        service(
            "long",
            {"url": "duration", "valueDuration": {"value": 60, "unit": "min"}},
            {
                "url": "bookingLimit",
                "valueTiming": {"repeat": {"frequency": 6, "period": 1, "periodUnit": "d"}},
            },
        ),
    ]
    for n in range(SCHEDULES):
        sid = f"room-{n}"
        resources.append(
            {
                "resourceType": "Location",
                "id": sid,
                "name": f"Room {n}",
                "extension": [{"url": TZ, "valueCode": ZONES[n % len(ZONES)]}],
                "telecom": [{"system": "phone", "value": "+1 413 555 0100"}],
                "address": {
                    "line": [f"{n} Main St"],
                    "city": "Pittsfield",
                    "state": "MA",
                    "postalCode": "01201",
                },
            }
        )
        resources.append(
            {
                "resourceType": "Schedule",
                "id": sid,
                "meta": {"tag": [PUBLISH_TAG]},
                "actor": [{"reference": f"Location/{sid}"}],
                "serviceType": [
                    {"extension": [{"url": REF, "valueReference": {"reference": f"HealthcareService/{s}"}}]}
                    for s in ("short", "long")
                ],
            }
        )
        for k in range(200):
            start = NOW + timedelta(minutes=15 * rng.randrange(0, 14 * 96))
            resources.append(
                {
                    "resourceType": "Slot",
                    "id": f"{sid}-{k}",
                    "schedule": {"reference": f"Schedule/{sid}"},
                    "status": "busy",
                    "start": start.isoformat(),
                    "end": (start + timedelta(minutes=rng.choice([15, 30, 60]))).isoformat(),
                }
            )
    return resources


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    store = Store(clinic(args.seed))
    request = PublishRequest(
        now=NOW,
        days=args.days,
        link=BookingLinkTemplate.parse("https://portal.example.org/book?schedule={schedule}&start={start}"),
        identifier_system="https://fhir.example.org/fhir/Location",
    )
    timings, sizes = [], {}
    for _ in range(args.runs):
        started = time.perf_counter()
        publication = publish(store, request)  # type: ignore[arg-type]  # only the reads it makes
        sizes = {kind: ndjson(items) for kind, items in files(publication).items()}
        timings.append(time.perf_counter() - started)
    print(
        f"{SCHEDULES} schedules x 2 services, {args.days} days: {len(publication.slots)} Slots, "
        f"Slot.ndjson {len(sizes['Slot']) / 1e6:.1f} MB; median {statistics.median(timings):.2f} s "
        f"(min {min(timings):.2f} s) over {args.runs} runs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
