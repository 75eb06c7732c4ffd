"""``$find`` with the IHE ITI-115 parameters (SPEC §7.2), on a small clinic read like a calendar.

2026-12-07 is a Monday. Dr. Alice works 09:00-12:00 New York time, Dr. Bob 13:00-15:00, the
north room is open 10:00-17:00; check-ups last 30 minutes on an hourly grid. Alice also sees
patients at the north site through her PractitionerRole there (afternoons), Bob works for the
south organization, and a second check-up service (south) has the same visit type.

Tests marked "pools" in their docstring need the engine to read a group as "any one of" (the
pools branch): they fail until it merges.
"""

from __future__ import annotations

from typing import Any

import pytest

from operations.errors import InvalidConfiguration, InvalidRequest, Unprocessable
from operations.find_request import FindRequest
from operations.ihe_find import find_appointments, resolve
from operations.store import Stores
from tests.unit.builders import (
    LONG_AGO,
    hours,
    location,
    params_block,
    patient,
    practitioner,
    schedule,
    service,
    slot,
    window,
)
from tests.unit.fake_store import FakeFhirStore
from tests.unit.test_find_reads import Recording

NY = "America/New_York"
VISIT = "http://example.org/visit-type"
SPECIALTY = "http://snomed.info/sct"
CARDIOLOGY = f"{SPECIALTY}|394579002"


def own_hours(start: str, end: str) -> dict[str, Any]:
    return params_block(service="checkup", availability=[window("mon tue wed thu fri", start, end)])


def role(rid: str, practitioner_id: str) -> dict[str, Any]:
    return {
        "resourceType": "PractitionerRole",
        "id": rid,
        "practitioner": {"reference": f"Practitioner/{practitioner_id}"},
        "extension": practitioner(rid, NY)["extension"],
    }


def clinic(*extra: dict[str, Any]) -> FakeFhirStore:
    checkup = service(hours=[hours("mon tue wed thu fri", "09:00", "17:00")], duration=30) | {
        "specialty": [{"coding": [{"system": SPECIALTY, "code": "394579002"}]}],
        "providedBy": {"reference": "Organization/north"},
    }
    south = service("checkup-south", hours=[hours("mon tue wed thu fri", "09:00", "17:00")], duration=30) | {
        "providedBy": {"reference": "Organization/south"}
    }
    south["type"] = checkup["type"]
    return FakeFhirStore(
        practitioner("alice", NY),
        practitioner("bob", NY),
        practitioner("carol", NY),  # works here, but offers no check-up
        location("north", NY),
        role("alice-north", "alice"),
        patient("pat"),
        checkup,
        south,
        service("dermatology", code=(VISIT, "dermatology"), duration=30),
        schedule("alice", "Practitioner/alice", ["checkup"], blocks=[own_hours("09:00", "12:00")]),
        schedule(
            "bob", "Practitioner/bob", ["checkup", "checkup-south"], blocks=[own_hours("13:00", "15:00")]
        ),
        schedule("carol", "Practitioner/carol", ["dermatology"]),
        schedule("north", "Location/north", ["checkup"], blocks=[own_hours("10:00", "17:00")]),
        schedule("old-north", "Location/north", ["checkup"], active=False),
        *extra,
    )


def request(*params: tuple[str, str], service_id: str | None = "checkup", count: int = 100) -> FindRequest:
    given = [("start", "2026-12-07T00:00:00-05:00"), ("end", "2026-12-08T00:00:00-05:00")]
    if service_id is not None:
        given.append(("service-type-reference", f"HealthcareService/{service_id}"))
    given += [*params, ("_count", str(count))]
    return FindRequest.from_parameters(given, now=LONG_AGO, max_range_days=31)


def find(store: FakeFhirStore, *params: tuple[str, str], **kwargs: Any) -> dict[str, Any]:
    return find_appointments(Stores.single(store), request(*params, **kwargs))


def matches(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def starts(bundle: dict[str, Any]) -> list[str]:
    return [a["start"][11:16] for a in matches(bundle)]


def outcomes(bundle: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(code, expression, diagnostics) of every OperationOutcome entry."""
    return [
        (issue["code"], issue["expression"][0], issue["diagnostics"])
        for e in bundle.get("entry", [])
        if e["search"]["mode"] == "outcome"
        for issue in e["resource"]["issue"]
    ]


def groups(*params: tuple[str, str], store: FakeFhirStore | None = None, **kwargs: Any) -> Any:
    resolution = resolve(Stores.single(store or clinic()), request(*params, **kwargs))
    return resolution.request.groups, resolution.request.service_id


# ---- what the references stand for -----------------------------------------------------------


def test_a_practitioner_and_a_location_are_two_groups_that_must_both_be_free() -> None:
    assert groups(("practitioner", "Practitioner/bob"), ("location-reference", "Location/north")) == (
        (("bob",), ("north",)),
        "checkup",
    )


def test_a_practitioner_and_a_location_find_what_their_schedules_find() -> None:
    store = clinic()
    by_reference = find(store, ("practitioner", "Practitioner/bob"), ("location-reference", "Location/north"))
    by_schedule = find(store, ("schedule", "Schedule/bob"), ("schedule", "Schedule/north"))
    assert starts(by_reference) == starts(by_schedule) == ["13:00", "14:00"]
    assert [p["actor"]["reference"] for p in matches(by_reference)[0]["participant"]] == [
        "Practitioner/bob",
        "Location/north",
    ]
    assert by_reference["total"] == 2


def test_repeats_and_commas_are_one_pool_in_the_order_named() -> None:
    expected = ((("bob", "alice"),), "checkup")
    assert groups(("practitioner", "Practitioner/bob"), ("practitioner", "Practitioner/alice")) == expected
    assert groups(("practitioner", "Practitioner/bob,Practitioner/alice")) == expected


def test_a_practitioner_stands_for_its_own_schedules_then_its_roles() -> None:
    store = clinic(
        schedule(
            "alice-north", "PractitionerRole/alice-north", ["checkup"], blocks=[own_hours("14:00", "16:00")]
        )
    )
    assert groups(("practitioner", "Practitioner/alice"), store=store) == (
        (("alice", "alice-north"),),
        "checkup",
    )


def test_inactive_schedules_and_schedules_without_the_service_are_left_out() -> None:
    store = clinic(schedule("north-derm", "Location/north", ["dermatology"]))
    assert groups(("location-reference", "Location/north"), store=store) == ((("north",),), "checkup")


def test_schedule_groups_stay_beside_the_resolved_ones() -> None:
    assert groups(
        ("schedule", "Schedule/north"), ("practitioner", "Practitioner/bob,Practitioner/alice")
    ) == ((("north",), ("bob", "alice")), "checkup")


def test_a_schedule_named_outright_is_not_named_again_by_its_practitioner() -> None:
    assert groups(
        ("schedule", "Schedule/alice"), ("practitioner", "Practitioner/bob,Practitioner/alice")
    ) == (
        (("alice",), ("bob",)),
        "checkup",
    )
    assert groups(("schedule", "Schedule/alice"), ("practitioner", "Practitioner/alice")) == (
        (("alice",),),
        "checkup",
    )


def test_a_practitioner_alone_finds_their_hours() -> None:
    found = find(clinic(), ("practitioner", "Practitioner/alice"))
    assert starts(found) == ["09:00", "10:00", "11:00"]


def test_pools_a_repeated_practitioner_is_any_one_of() -> None:
    """pools: Alice is booked at 10:00, so 10:00 goes to Bob... who is not there; Alice's 09:00
    and 11:00 and Bob's 13:00 and 14:00 are all offered, each naming who is free."""
    store = clinic(slot("alice", "busy", "2026-12-07T10:00:00-05:00", "2026-12-07T10:30:00-05:00"))
    found = find(store, ("practitioner", "Practitioner/alice,Practitioner/bob"))
    assert starts(found) == ["09:00", "11:00", "13:00", "14:00"]
    who = [a["participant"][0]["actor"]["reference"] for a in matches(found)]
    assert who == ["Practitioner/alice", "Practitioner/alice", "Practitioner/bob", "Practitioner/bob"]


# ---- services: visit-type, specialty, organization --------------------------------------------


def test_visit_type_names_the_service_when_no_reference_does() -> None:
    found = find(
        clinic(),
        ("practitioner", "Practitioner/alice"),
        ("visit-type", f"{VISIT}|dermatology,{VISIT}|checkup"),
        service_id=None,
    )
    assert starts(found) == ["09:00", "10:00", "11:00"]
    reference = matches(found)[0]["serviceType"][0]["extension"][0]["valueReference"]["reference"]
    assert reference == "HealthcareService/checkup"


def test_a_visit_type_of_two_services_is_narrowed_by_who_offers_them() -> None:
    # checkup and checkup-south share the visit type; only the north room's schedule offers one
    assert groups(
        ("location-reference", "Location/north"), ("visit-type", f"{VISIT}|checkup"), service_id=None
    ) == (
        (("north",),),
        "checkup",
    )


def test_a_visit_type_that_leaves_two_services_is_400_naming_them() -> None:
    with pytest.raises(InvalidRequest) as refused:
        groups(("practitioner", "Practitioner/bob"), ("visit-type", f"{VISIT}|checkup"), service_id=None)
    assert refused.value.expression == ["Parameters.visit-type"]
    assert "HealthcareService/checkup, HealthcareService/checkup-south" in refused.value.diagnostics


def test_organization_picks_between_services_of_one_visit_type() -> None:
    assert groups(
        ("practitioner", "Practitioner/bob"),
        ("visit-type", f"{VISIT}|checkup"),
        ("organization", "Organization/south"),
        service_id=None,
    ) == ((("bob",),), "checkup-south")


def test_a_visit_type_no_service_has_is_422_not_found() -> None:
    with pytest.raises(Unprocessable) as refused:
        groups(("practitioner", "Practitioner/bob"), ("visit-type", f"{VISIT}|surgery"), service_id=None)
    assert (refused.value.code, refused.value.expression) == ("not-found", ["Parameters.visit-type"])


def test_a_specialty_the_service_lacks_leaves_an_empty_searchset_saying_why() -> None:
    found = find(clinic(), ("practitioner", "Practitioner/alice"), ("specialty", f"{SPECIALTY}|394582007"))
    assert found["total"] == 0 and starts(found) == []
    [(code, expression, text)] = outcomes(found)
    assert (code, expression) == ("business-rule", "Parameters.specialty")
    assert text.startswith("HealthcareService/checkup has no http://snomed.info/sct|394582007 in specialty")


def test_a_specialty_the_service_has_changes_nothing() -> None:
    found = find(clinic(), ("practitioner", "Practitioner/alice"), ("specialty", f"{CARDIOLOGY},|other"))
    assert starts(found) == ["09:00", "10:00", "11:00"]


def test_an_organization_that_does_not_provide_the_service_leaves_nothing() -> None:
    found = find(clinic(), ("practitioner", "Practitioner/alice"), ("organization", "Organization/south"))
    assert starts(found) == []
    assert [(c, e) for c, e, _ in outcomes(found)] == [("business-rule", "Parameters.organization")]


# ---- references to nothing --------------------------------------------------------------------


def test_a_practitioner_that_does_not_exist_is_422_at_its_parameter() -> None:
    with pytest.raises(Unprocessable) as refused:
        find(clinic(), ("practitioner", "Practitioner/alice"), ("practitioner", "Practitioner/nobody"))
    assert (refused.value.code, refused.value.expression) == ("not-found", ["Parameters.practitioner[1]"])


def test_a_practitioner_offering_nothing_is_left_out_with_a_warning() -> None:
    found = find(clinic(), ("practitioner", "Practitioner/carol,Practitioner/alice"))
    assert starts(found) == ["09:00", "10:00", "11:00"]
    [(code, expression, text)] = outcomes(found)
    assert (code, expression) == ("not-found", "Parameters.practitioner[0]")
    assert text == "Practitioner/carol has no active Schedule offering HealthcareService/checkup"


def test_when_no_one_offers_the_service_the_searchset_is_empty_and_says_why() -> None:
    found = find(clinic(), ("practitioner", "Practitioner/carol"), ("location-reference", "Location/north"))
    assert found == {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 0,
        "entry": [
            {
                "resource": {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {
                            "severity": "warning",
                            "code": "not-found",
                            "diagnostics": "Practitioner/carol has no active Schedule offering HealthcareService/checkup",
                            "expression": ["Parameters.practitioner[0]"],
                        }
                    ],
                },
                "search": {"mode": "outcome"},
            }
        ],
    }


def test_a_missing_service_is_422_as_without_the_ihe_parameters() -> None:
    with pytest.raises(Unprocessable) as refused:
        find(clinic(), ("practitioner", "Practitioner/alice"), service_id="nope")
    assert refused.value.expression == ["Parameters.service-type-reference"]


def test_an_error_about_a_resolved_schedule_points_at_the_practitioner() -> None:
    store = clinic(practitioner("dave", None), schedule("dave", "Practitioner/dave", ["checkup"]))
    with pytest.raises(InvalidConfiguration) as refused:
        find(store, ("practitioner", "Practitioner/alice"), ("practitioner", "Practitioner/dave"))
    assert refused.value.diagnostics.startswith("Schedule/dave: its actor Practitioner/dave has no timezone")
    assert refused.value.diagnostics.endswith("(for Parameters.practitioner[1])")
    assert refused.value.expression == ["Schedule.actor[0]"]  # the stored element at fault


def test_a_notice_about_a_resolved_schedule_points_at_its_location() -> None:
    store = clinic()
    store.resources["Schedule/north"]["planningHorizon"] = {"end": "2026-12-01T00:00:00Z"}
    found = find(store, ("location-reference", "Location/north"))
    assert [(c, e) for c, e, _ in outcomes(found)] == [("business-rule", "Parameters.location-reference[0]")]


def test_more_schedules_than_allowed_is_422() -> None:
    many = [schedule(f"north-{i}", "Location/north", ["checkup"]) for i in range(20)]
    with pytest.raises(Unprocessable, match="at most 20 may take part"):
        find(clinic(*many), ("location-reference", "Location/north"))


# ---- patients -------------------------------------------------------------------------------


def test_patients_join_every_proposal() -> None:
    found = find(clinic(), ("schedule", "Schedule/alice"), ("patient-reference", "Patient/pat"))
    assert starts(found) == ["09:00", "10:00", "11:00"]
    for appointment in matches(found):
        assert appointment["participant"][-1] == {
            "actor": {"reference": "Patient/pat"},
            "required": "required",
            "status": "needs-action",
        }


def test_a_patient_the_caller_cannot_read_is_422_at_its_parameter() -> None:
    with pytest.raises(Unprocessable) as refused:
        find(clinic(), ("schedule", "Schedule/alice"), ("patient-reference", "Patient/pat,Patient/else"))
    assert (refused.value.code, refused.value.expression) == (
        "not-found",
        ["Parameters.patient-reference[0]"],
    )


# ---- parameters the product does not support ------------------------------------------------


def test_preferences_are_ignored_with_a_warning_each() -> None:
    found = find(
        clinic(),
        ("schedule", "Schedule/alice"),
        ("reason", f"{SPECIALTY}|29857009"),
        ("timing", '{"repeat": {"dayOfWeek": ["mon"]}}'),
    )
    assert starts(found) == ["09:00", "10:00", "11:00"]
    assert [(c, e) for c, e, _ in outcomes(found)] == [
        ("not-supported", "Parameters.reason"),
        ("not-supported", "Parameters.timing"),
    ]


@pytest.mark.parametrize(
    ("params", "code", "expression"),
    [
        ([("location-string", "Boston")], "not-supported", "Parameters.location-string"),
        ([("patient-resource", "{}")], "not-supported", "Parameters.patient-resource"),
        ([("practitioner", "Location/north")], "value", "Parameters.practitioner[0]"),
        ([("practitioner", "Practitioner/alice,")], "value", "Parameters.practitioner[0]"),
        ([("location-reference", "north")], "value", "Parameters.location-reference[0]"),
        ([("organization", "Organization/a b")], "value", "Parameters.organization[0]"),
        ([("patient-reference", "Person/pat")], "value", "Parameters.patient-reference[0]"),
        ([("visit-type", "http://x|")], "value", "Parameters.visit-type[0]"),
        ([("specialty", "ok"), ("specialty", "a|b c")], "value", "Parameters.specialty[1]"),
    ],
)
def test_malformed_ihe_parameters_are_400(params: list[tuple[str, str]], code: str, expression: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        request(("schedule", "Schedule/alice"), *params)
    assert (refused.value.code, refused.value.expression) == (code, [expression])


def test_without_schedules_or_people_or_a_service_it_is_400_required() -> None:
    with pytest.raises(InvalidRequest, match="practitioner or location-reference") as no_one:
        request()
    assert no_one.value.code == "required"
    with pytest.raises(InvalidRequest, match="or visit-type") as no_service:
        request(("practitioner", "Practitioner/alice"), service_id=None)
    assert no_service.value.code == "required"


def test_schedule_find_takes_no_ihe_parameters() -> None:
    with pytest.raises(InvalidRequest) as refused:
        FindRequest.from_parameters(
            [
                ("start", "2026-12-07T00:00:00-05:00"),
                ("end", "2026-12-08T00:00:00-05:00"),
                ("practitioner", "Practitioner/alice"),
            ],
            now=LONG_AGO,
            max_range_days=31,
            schedule_id="alice",
        )
    assert (refused.value.code, refused.value.expression) == ("not-supported", ["Parameters.practitioner"])


def test_count_is_honoured_and_total_is_given() -> None:
    found = find(clinic(), ("location-reference", "Location/north"), count=2)
    assert starts(found) == ["10:00", "11:00"] and found["total"] == 2


# ---- round trips --------------------------------------------------------------------------------


def everyone(n: int) -> FakeFhirStore:
    extra: list[dict[str, Any]] = []
    for i in range(n):
        extra += [
            practitioner(f"p{i}", NY),
            location(f"room{i}", NY),
            schedule(f"p{i}", f"Practitioner/p{i}", ["checkup"]),
            schedule(f"room{i}", f"Location/room{i}", ["checkup"]),
        ]
    return clinic(*extra)


@pytest.mark.parametrize("n", [1, 6])
def test_two_round_trips_whatever_the_number_of_people_and_places(n: int) -> None:
    store, together = everyone(n), Recording()
    params = [
        *(("practitioner", f"Practitioner/p{i}") for i in range(n)),
        *(("location-reference", f"Location/room{i}") for i in range(n)),
        ("visit-type", f"{VISIT}|checkup"),
        ("organization", "Organization/north"),
        ("patient-reference", "Patient/pat"),
    ]
    find_appointments(
        Stores(caller=store, service=store, together=together), request(*params, service_id=None)
    )
    assert together.groups == [6, 3]  # the resolution; then the search (its configuration from memory)
    assert store.calls == [
        "search Schedule by actor",
        "search Schedule by actor:PractitionerRole.practitioner",
        "search HealthcareService",
        "search Practitioner",
        "search Location",
        "search Patient",
        "search_slots",
    ]


def test_patients_alone_cost_one_search_before_the_usual_three_reads() -> None:
    store, together = clinic(), Recording()
    stores = Stores(caller=store, service=store, together=together)
    find_appointments(stores, request(("schedule", "Schedule/alice"), ("patient-reference", "Patient/pat")))
    assert together.groups == [1, 3]
    assert store.calls == ["search Patient", "read_schedules", "read_service", "search_slots"]
