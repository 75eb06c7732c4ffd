"""SchedulingParameters: inheritance field by field, and one precise error per malformed case."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from operations.errors import InvalidConfiguration, InvalidRequest
from operations.find import FindRequest
from operations.model import SCHEDULING_PARAMETERS_URL
from operations.parameters import parse_schedule, parse_service, parse_slot, resolve_parameters
from tests.unit.builders import hours, params_block, practitioner, schedule, service, window

ACTORS = {"Practitioner/alice": practitioner("alice", "America/New_York")}


def resolved(service_resource: dict[str, Any], *blocks: dict[str, Any]) -> Any:
    sched = schedule("alice", "Practitioner/alice", ["checkup"], blocks=list(blocks))
    return resolve_parameters(parse_schedule(sched, ACTORS), parse_service(service_resource))


class TestInheritance:
    def test_defaults(self) -> None:
        params = resolved(service(duration=30))
        assert params.duration == timedelta(minutes=30)
        assert params.buffer_before == params.buffer_after == timedelta(0)
        assert params.alignment_interval == timedelta(minutes=60)
        assert params.alignment_offset == timedelta(0)
        assert params.alignment_timezone is None
        assert params.timezone == ZoneInfo("America/New_York")
        assert params.slot_capacity == 1
        assert params.availability is None

    def test_field_by_field(self) -> None:
        svc = service(duration=30, bufferBefore=5, bufferAfter=5, alignmentInterval=15)
        params = resolved(
            svc, params_block(service="checkup", duration=45, bufferAfter=0, timezone="Europe/Paris")
        )
        assert params.duration == timedelta(minutes=45)  # schedule
        assert params.buffer_before == timedelta(minutes=5)  # service
        assert params.buffer_after == timedelta(0)  # schedule's explicit zero wins
        assert params.alignment_interval == timedelta(minutes=15)  # service
        assert params.timezone == ZoneInfo("Europe/Paris")  # schedule beats the actor

    def test_block_for_another_service_does_not_apply(self) -> None:
        params = resolved(service(duration=30), params_block(service="dental", duration=90))
        assert params.duration == timedelta(minutes=30)

    def test_units(self) -> None:
        for unit, expected in (("min", 90), ("h", 90 * 60), ("d", 90 * 1440), ("wk", 90 * 10080)):
            params = resolved(service(duration={"value": 90, "unit": unit}))
            assert params.duration == timedelta(minutes=expected)

    def test_negative_offset_modulo_interval(self) -> None:
        params = resolved(service(duration=30, alignmentInterval=15, alignmentOffset=-20))
        assert params.alignment_offset == timedelta(minutes=10)

    def test_service_hours_native_and_schedule_availability_nested(self) -> None:
        svc = service(duration=30, hours=[hours("mon wed", "09:00", "17:00")])
        assert resolved(svc).availability[0].weekdays == frozenset({0, 2})
        params = resolved(svc, params_block(service="checkup", availability=[window("sat", all_day=True)]))
        assert params.availability[0].weekdays == frozenset({5})
        assert params.availability[0].start == params.availability[0].end == time(0)


def _hs_with(*subs: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "HealthcareService",
        "id": "checkup",
        "extension": [{"url": SCHEDULING_PARAMETERS_URL, "extension": list(subs)}],
    }


DURATION = {"url": "duration", "valueDuration": {"value": 30, "unit": "min"}}

SERVICE_ERRORS = [
    (
        "unit not allowed",
        _hs_with({"url": "duration", "valueDuration": {"value": 30, "unit": "s"}}),
        "HealthcareService.extension[0].extension[0]",
    ),
    (
        "no value",
        _hs_with({"url": "duration", "valueDuration": {"unit": "min"}}),
        "HealthcareService.extension[0].extension[0]",
    ),
    ("given twice", _hs_with(DURATION, DURATION), "HealthcareService.extension[0].extension[1]"),
    (
        "service on a HealthcareService",
        _hs_with(DURATION, {"url": "service", "valueReference": {"reference": "HealthcareService/x"}}),
        "HealthcareService.extension[0].extension[1]",
    ),
    (
        "availability on a HealthcareService",
        _hs_with(DURATION, {"url": "availability", "extension": []}),
        "HealthcareService.extension[0].extension[1]",
    ),
    (
        "bad time zone",
        _hs_with(DURATION, {"url": "alignmentTimezone", "valueCode": "Mars/Olympus"}),
        "HealthcareService.extension[0].extension[1]",
    ),
    (
        "capacity not positive",
        _hs_with(DURATION, {"url": "slotCapacity", "valuePositiveInt": 0}),
        "HealthcareService.extension[0].extension[1]",
    ),
    (
        "two blocks",
        {**_hs_with(DURATION), "extension": [_hs_with(DURATION)["extension"][0]] * 2},
        "HealthcareService.extension[1]",
    ),
    (
        "start without end",
        {
            "resourceType": "HealthcareService",
            "id": "x",
            "availableTime": [{"availableStartTime": "09:00:00"}],
        },
        "HealthcareService.availableTime[0].availableStartTime",
    ),
    (
        "bad day code",
        {
            "resourceType": "HealthcareService",
            "id": "x",
            "availableTime": [{"daysOfWeek": ["mon", "funday"], "allDay": True}],
        },
        "HealthcareService.availableTime[0].daysOfWeek[1]",
    ),
]


@pytest.mark.parametrize(
    ("case", "resource", "expression"), SERVICE_ERRORS, ids=[c[0] for c in SERVICE_ERRORS]
)
def test_service_configuration_errors(case: str, resource: dict[str, Any], expression: str) -> None:
    with pytest.raises(InvalidConfiguration) as caught:
        parse_service(resource)
    assert caught.value.status == 422
    assert caught.value.expression == [expression], case


def test_schedule_configuration_errors() -> None:
    two_actors = schedule("alice", "Practitioner/alice", ["checkup"])
    two_actors["actor"].append({"reference": "Location/room"})
    with pytest.raises(InvalidConfiguration, match="exactly one actor"):
        parse_schedule(two_actors, ACTORS)

    no_service = schedule("alice", "Practitioner/alice", ["checkup"], blocks=[params_block(duration=30)])
    with pytest.raises(InvalidConfiguration, match="needs 'service'") as caught:
        parse_schedule(no_service, ACTORS)
    assert caught.value.expression == ["Schedule.extension[0]"]

    twice = schedule(
        "alice",
        "Practitioner/alice",
        ["checkup"],
        blocks=[params_block(service="checkup", duration=30), params_block(service="checkup", duration=45)],
    )
    with pytest.raises(InvalidConfiguration, match="two SchedulingParameters") as caught:
        parse_schedule(twice, ACTORS)
    assert caught.value.expression == ["Schedule.extension[1]"]

    end_only = schedule(
        "alice",
        "Practitioner/alice",
        ["checkup"],
        blocks=[params_block(service="checkup", availability=[window("mon", end="17:00")])],
    )
    with pytest.raises(InvalidConfiguration, match="without availableStartTime") as caught:
        parse_schedule(end_only, ACTORS)
    assert caught.value.expression == ["Schedule.extension[0].extension[1].extension[0].extension[1]"]


def test_missing_duration_is_a_configuration_error() -> None:
    with pytest.raises(InvalidConfiguration, match="No duration"):
        resolved(service())


def test_slots_that_cannot_matter_are_skipped() -> None:
    base = {"resourceType": "Slot", "schedule": {"reference": "Schedule/a"}, "status": "busy"}
    assert parse_slot({**base, "start": "2026-12-07T09:00:00Z"}) is None  # no end
    assert parse_slot({**base, "start": "2026-12-07T09:00:00Z", "end": "2026-12-07T08:00:00Z"}) is None
    assert (
        parse_slot(
            {**base, "status": "weird", "start": "2026-12-07T09:00:00Z", "end": "2026-12-07T10:00:00Z"}
        )
        is None
    )
    parsed = parse_slot({**base, "start": "2026-12-07T09:00:00Z", "end": "2026-12-07T10:00:00Z"})
    assert parsed is not None
    assert parsed.service_codings is None


NOW = datetime(2026, 11, 25, tzinfo=UTC)
OK = [
    ("start", "2026-12-07T00:00:00-05:00"),
    ("end", "2026-12-08T00:00:00-05:00"),
    ("service-type-reference", "HealthcareService/checkup"),
    ("schedule", "Schedule/alice"),
]

REQUEST_ERRORS = [
    ("no start", [p for p in OK if p[0] != "start"], "required", "Parameters.start"),
    ("date only", [("start", "2026-12-07"), *OK[1:]], "value", "Parameters.start"),
    ("no offset", [("start", "2026-12-07T00:00:00"), *OK[1:]], "value", "Parameters.start"),
    ("garbage", [("start", "tomorrow"), *OK[1:]], "value", "Parameters.start"),
    ("start after end", [("start", "2026-12-09T00:00:00Z"), *OK[1:]], "invalid", "Parameters.start"),
    ("range too long", [OK[0], ("end", "2027-02-01T00:00:00Z"), *OK[2:]], "value", "Parameters.end"),
    (
        "no service",
        [p for p in OK if p[0] != "service-type-reference"],
        "required",
        "Parameters.service-type-reference",
    ),
    (
        "service of wrong type",
        [*OK[:2], ("service-type-reference", "Practitioner/x"), OK[3]],
        "value",
        "Parameters.service-type-reference",
    ),
    ("no schedule", OK[:3], "required", "Parameters.schedule"),
    ("bad schedule", [*OK, ("schedule", "Schedule/")], "value", "Parameters.schedule[1]"),
    ("count zero", [*OK, ("_count", "0")], "value", "Parameters._count"),
    ("count too big", [*OK, ("_count", "1001")], "value", "Parameters._count"),
    ("count text", [*OK, ("_count", "ten")], "value", "Parameters._count"),
    ("end twice", [*OK, ("end", "2026-12-09T00:00:00Z")], "value", "Parameters.end[1]"),
]


@pytest.mark.parametrize(
    ("case", "params", "code", "expression"), REQUEST_ERRORS, ids=[c[0] for c in REQUEST_ERRORS]
)
def test_request_errors(case: str, params: list[tuple[str, str]], code: str, expression: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        FindRequest.from_parameters(params, now=NOW, max_range_days=31)
    assert caught.value.status == 400
    assert caught.value.code == code, case
    assert expression in caught.value.expression, case


def test_request_tolerates_a_plus_decoded_as_space_and_comma_lists() -> None:
    request = FindRequest.from_parameters(
        [("start", "2026-12-07T00:00:00 01:00"), *OK[1:], ("schedule", "Schedule/room,Schedule/alice")],
        now=NOW,
        max_range_days=31,
    )
    assert request.start == datetime(2026, 12, 6, 23, 0, tzinfo=UTC)
    assert request.schedule_ids == ("alice", "room")
    assert request.count == 20
