"""The doctor's configuration checks on literal resources: each problem found with the resource
and expression it names, all problems of one run found together, and a clean clinic clean."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from operations.model import Interval
from plugin.doctor_config import check_configuration
from plugin.doctor_read import ClinicData
from scripts.sample_clinic import sample_resources
from tests.unit import builders

Resource = dict[str, Any]
NOW = datetime(2027, 3, 1, 12, tzinfo=UTC)


def clinic_data(
    *resources: Resource,
    slots: list[Resource] | None = None,
    appointments: list[Resource] | None = None,
    hold_grace: timedelta = timedelta(seconds=60),
) -> ClinicData:
    """What the doctor would have read: the configuration among ``resources``, and Slots and
    Appointments as given."""
    actor_types = ("Practitioner", "PractitionerRole", "Location", "Device")
    return ClinicData(
        schedules=[r for r in resources if r["resourceType"] == "Schedule"],
        actors={f"{r['resourceType']}/{r['id']}": r for r in resources if r["resourceType"] in actor_types},
        services={r["id"]: r for r in resources if r["resourceType"] == "HealthcareService"},
        slots=list(slots or []),
        appointments=list(appointments or []),
        window=Interval(NOW - timedelta(days=1), NOW + timedelta(days=60)),
        now=NOW,
        hold_grace=hold_grace,
    )


def found(*resources: Resource) -> set[tuple[str, str, str]]:
    findings, _ = check_configuration(clinic_data(*resources))
    return {(f.code, f.resource, f.expression) for f in findings}


def messages(*resources: Resource) -> list[str]:
    return [f.message for f in check_configuration(clinic_data(*resources))[0]]


WEEKDAYS = [builders.hours("mon tue wed thu fri", "09:00", "17:00")]


def base() -> list[Resource]:
    return [
        builders.practitioner("ann", "America/New_York"),
        builders.location("room", "Europe/London"),
        builders.service("visit", hours=WEEKDAYS, duration=30),
    ]


def test_the_sample_clinic_is_clean() -> None:
    assert found(*sample_resources()) == set()


def test_a_clean_clinic_resolves_every_offered_service() -> None:
    _, config = check_configuration(
        clinic_data(*base(), builders.schedule("ann", "Practitioner/ann", ["visit"]))
    )
    assert set(config.resolved) == {("ann", "visit")}
    assert config.resolved[("ann", "visit")].duration == timedelta(minutes=30)


def test_two_actors_are_reported_and_the_schedule_is_still_checked() -> None:
    schedule = builders.schedule(
        "two", "Practitioner/ann", ["visit"], blocks=[builders.params_block(service="other", duration=20)]
    )
    schedule["actor"].append({"reference": "Location/room"})
    assert found(*base(), schedule) == {
        ("schedule-actor-count", "Schedule/two", "Schedule.actor[1]"),
        ("parameters-service-not-offered", "Schedule/two", "Schedule.extension[0]"),
    }


def test_no_actor() -> None:
    schedule = {**builders.schedule("none", "Practitioner/ann", ["visit"]), "actor": []}
    assert found(*base(), schedule) == {("schedule-actor-count", "Schedule/none", "Schedule.actor")}
    assert messages(*base(), schedule) == ["Schedule/none has 0 actors; a Schedule must have exactly one"]


def test_an_actor_that_does_not_exist_is_reported_once() -> None:
    schedule = builders.schedule("ghost", "Practitioner/nobody", ["visit"])
    assert found(*base(), schedule) == {("actor-missing", "Schedule/ghost", "Schedule.actor[0]")}


def test_an_actor_without_time_zone() -> None:
    resources = [
        *base(),
        builders.practitioner("zed", None),
        builders.schedule("zed", "Practitioner/zed", ["visit"]),
    ]
    assert found(*resources) == {("timezone-missing", "Schedule/zed", "Schedule.actor[0]")}
    assert "Practitioner/zed has no timezone extension" in messages(*resources)[0]


def test_a_time_zone_in_the_parameters_is_enough() -> None:
    service = builders.service("visit", hours=WEEKDAYS, duration=30, timezone="Europe/Paris")
    resources = [
        builders.practitioner("zed", None),
        service,
        builders.schedule("zed", "Practitioner/zed", ["visit"]),
    ]
    assert found(*resources) == set()


def test_a_bad_time_zone_code_on_the_actor_points_at_the_actor() -> None:
    resources = [
        builders.practitioner("ann", "Mars/Olympus_Mons"),
        builders.service("visit", hours=WEEKDAYS, duration=30),
        builders.schedule("ann", "Practitioner/ann", ["visit"]),
    ]
    assert found(*resources) == {("configuration-invalid", "Practitioner/ann", "Practitioner.extension[0]")}


def test_an_unreadable_service_is_reported_with_the_engines_expression() -> None:
    service = builders.service("visit", hours=WEEKDAYS, duration={"value": 30, "unit": "s"})
    resources = [
        builders.practitioner("ann", "UTC"),
        service,
        builders.schedule("ann", "Practitioner/ann", ["visit"]),
    ]
    assert found(*resources) == {
        ("configuration-invalid", "HealthcareService/visit", "HealthcareService.extension[0].extension[0]")
    }
    assert "unit 's'" in messages(*resources)[0]


def test_an_unreadable_schedule_block() -> None:
    schedule = builders.schedule(
        "ann", "Practitioner/ann", ["visit"], blocks=[builders.params_block(service="visit", duration=-5)]
    )
    assert found(*base(), schedule) == {
        ("configuration-invalid", "Schedule/ann", "Schedule.extension[0].extension[1]")
    }


def test_a_service_without_duration_anywhere() -> None:
    service = builders.service("nodur", hours=WEEKDAYS, bufferAfter=5)
    with_block = builders.schedule(
        "ann", "Practitioner/ann", ["nodur"], blocks=[builders.params_block(service="nodur", duration=20)]
    )
    without = builders.schedule("room", "Location/room", ["nodur"])
    resources = [*base(), service, with_block, without]
    assert found(*resources) == {
        ("duration-missing", "HealthcareService/nodur", "HealthcareService.extension[0]")
    }
    assert "on Schedule/room for it" in messages(*resources)[0]  # the Schedule with a block is fine


def test_a_service_without_any_parameters_points_at_where_they_belong() -> None:
    bare = builders.service("bare", hours=WEEKDAYS)
    resources = [*base(), bare, builders.schedule("ann", "Practitioner/ann", ["bare"])]
    assert found(*resources) == {
        ("duration-missing", "HealthcareService/bare", "HealthcareService.extension")
    }


def test_service_type_references_that_match_nothing() -> None:
    schedule = builders.schedule("ann", "Practitioner/ann", ["visit", "gone"])
    schedule["serviceType"].append(
        {
            "extension": [
                {
                    "url": "https://medplum.com/fhir/service-type-reference",
                    "valueReference": {"reference": "Practitioner/ann"},
                }
            ]
        }
    )
    assert found(*base(), schedule) == {
        ("service-reference-unresolved", "Schedule/ann", "Schedule.serviceType[1].extension[0]"),
        ("service-reference-unresolved", "Schedule/ann", "Schedule.serviceType[2].extension[0]"),
    }


def test_a_visit_longer_than_the_service_hours() -> None:
    service = builders.service(
        "long", hours=[builders.hours("mon", "09:00", "10:00")], duration=45, bufferBefore=10, bufferAfter=10
    )
    resources = [*base(), service, builders.schedule("ann", "Practitioner/ann", ["long"])]
    assert found(*resources) == {
        ("visit-longer-than-windows", "HealthcareService/long", "HealthcareService.extension[0]")
    }
    assert messages(*resources) == [
        "HealthcareService/long needs 65 min (buffers and duration) but the longest availability window "
        "is 60 min: nothing can be offered on Schedule/ann"
    ]


def test_a_schedule_availability_too_short_points_at_the_schedule_block() -> None:
    block = builders.params_block(
        service="visit", availability=[builders.window("mon tue", "09:00", "09:20")]
    )
    resources = [*base(), builders.schedule("ann", "Practitioner/ann", ["visit"], blocks=[block])]
    assert found(*resources) == {("visit-longer-than-windows", "Schedule/ann", "Schedule.extension[0]")}


def test_windows_that_touch_count_as_one_and_always_available_is_fine() -> None:
    touching = builders.service(
        "visit",
        hours=[builders.hours("mon", "09:00", "10:00"), builders.hours("mon", "10:00", "11:00")],
        duration=90,
    )
    overnight = builders.service("night", hours=[builders.hours("fri", "22:00", "06:00")], duration=480)
    always = builders.service("always", duration=600)
    resources = [
        builders.practitioner("ann", "America/New_York"),
        touching,
        overnight,
        always,
        builders.schedule("ann", "Practitioner/ann", ["visit", "night", "always"]),
    ]
    assert found(*resources) == set()


def test_free_slot_only_schedules_are_a_choice() -> None:
    block = builders.params_block(service="visit", availability=[])
    resources = [*base(), builders.schedule("ann", "Practitioner/ann", ["visit"], blocks=[block])]
    assert found(*resources) == set()


def test_one_run_reports_every_problem_not_the_first() -> None:
    resources = [
        *base(),
        builders.practitioner("zed", None),
        builders.schedule("zed", "Practitioner/zed", ["visit"]),
        builders.schedule("ghost", "Practitioner/ann", ["visit", "gone"]),
        builders.service("nodur", hours=WEEKDAYS),
        builders.schedule("nodur", "Location/room", ["nodur"]),
    ]
    two = copy.deepcopy(builders.schedule("two", "Practitioner/ann", ["visit"]))
    two["actor"].append({"reference": "Location/room"})
    assert {code for code, _, _ in found(*resources, two)} == {
        "timezone-missing",
        "service-reference-unresolved",
        "duration-missing",
        "schedule-actor-count",
    }
