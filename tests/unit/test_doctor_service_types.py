"""The doctor's checks of service-type codes on literal resources: Slots whose serviceType applies
to no service of their Schedule (SPEC §2.4), and Schedule serviceType concepts that name no
service (SPEC §2.3); and how the services those concepts may mean are searched for."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast

from operations.model import HOLD_EXPIRES_URL, SERVICE_TYPE_REFERENCE_URL
from plugin.doctor import diagnose
from plugin.doctor_config import check_configuration
from plugin.doctor_read import CHUNK, TOKEN_BUDGET, ClinicData, services_of_types
from plugin.doctor_service_types import check_service_types
from plugin.upstream import FhirUpstream
from scripts.sample_clinic import sample_resources
from tests.unit import builders
from tests.unit.test_doctor_bookings import configuration, slot
from tests.unit.test_doctor_config import NOW, WEEKDAYS, clinic_data

Resource = dict[str, Any]
VISIT_TYPES = "http://example.org/visit-type"  # the system of builders.service's codes
CHECKUP = {"system": VISIT_TYPES, "code": "checkup"}  # configuration()'s service "visit"
DERMATOLOGY = {"system": VISIT_TYPES, "code": "dermatology"}


def concept(*codings: Resource, service: str | None = None) -> Resource:
    found: Resource = {"coding": list(codings)} if codings else {"text": "described only"}
    if service is not None:
        found["extension"] = [
            {
                "url": SERVICE_TYPE_REFERENCE_URL,
                "valueReference": {"reference": f"HealthcareService/{service}"},
            }
        ]
    return found


def findings(clinic: ClinicData) -> list[tuple[str, str, str, str]]:
    _, config = check_configuration(clinic)
    return sorted((f.code, f.resource, f.expression, f.message) for f in check_service_types(clinic, config))


def on_slots(*slots: Resource, config: list[Resource] | None = None) -> list[tuple[str, str, str, str]]:
    return findings(clinic_data(*(config or configuration()), slots=list(slots)))


def codes(found: list[tuple[str, str, str, str]]) -> set[tuple[str, str, str]]:
    return {(c, r, e) for c, r, e, _ in found}


# ---- Slots whose serviceType matches no service of their Schedule ---------------------------------


def test_a_block_for_a_visit_type_the_schedule_does_not_offer_blocks_nothing() -> None:
    block = slot("derm-off", "12:00", "13:00", "busy-unavailable", serviceType=[concept(DERMATOLOGY)])
    assert on_slots(block) == [
        (
            "slot-service-type-unmatched",
            "Slot/derm-off",
            "Slot.serviceType[0]",
            "Slot/derm-off (busy-unavailable, 2027-03-08T12:00:00-05:00 to 2027-03-08T13:00:00-05:00) is "
            "for http://example.org/visit-type|dermatology, which no service of Schedule/ann has in its "
            "type (HealthcareService/visit: http://example.org/visit-type|checkup): it blocks nothing",
        )
    ]


def test_extra_hours_for_it_add_no_time_and_a_booking_for_it_takes_none() -> None:
    extra = slot("evening", "18:00", "19:00", "free", serviceType=[concept(DERMATOLOGY)])
    booked = slot("theirs", "10:00", "10:30", "busy", serviceType=[concept(DERMATOLOGY)])
    messages = {r: m for _, r, _, m in on_slots(extra, booked)}
    assert messages["Slot/evening"].endswith(": it adds no time for anyone")
    assert messages["Slot/theirs"].endswith(
        ": its time is taken for no service, and offered to the next patient"
    )


def test_a_slot_for_the_offered_type_or_for_every_service_is_fine() -> None:
    assert (
        on_slots(
            slot("lunch", "12:00", "13:00", "busy-unavailable", serviceType=[concept(CHECKUP)]),
            slot("extra", "18:00", "19:00", "free", serviceType=[concept(DERMATOLOGY), concept(CHECKUP)]),
            slot("all", "14:00", "15:00", "busy-unavailable"),
            slot("text", "15:00", "16:00", "busy-unavailable", serviceType=[concept()]),
        )
        == []
    )


def test_the_code_must_match_with_its_system() -> None:
    other_system = {"system": "http://snomed.info/sct", "code": "checkup"}
    no_system = {"code": "checkup"}
    found = on_slots(
        slot("snomed", "12:00", "13:00", "busy-unavailable", serviceType=[concept(other_system)]),
        slot("bare", "14:00", "15:00", "busy-unavailable", serviceType=[concept(no_system)]),
    )
    assert codes(found) == {
        ("slot-service-type-unmatched", "Slot/snomed", "Slot.serviceType[0]"),
        ("slot-service-type-unmatched", "Slot/bare", "Slot.serviceType[0]"),
    }
    assert "is for checkup, which" in next(m for _, r, _, m in found if r == "Slot/bare")


def test_a_service_type_reference_on_the_slot_counts_as_the_engine_counts_it() -> None:
    ours = slot("ours", "12:00", "13:00", "busy-unavailable", serviceType=[concept(service="visit")])
    theirs = slot("theirs", "14:00", "15:00", "busy-unavailable", serviceType=[concept(service="other")])
    assert on_slots(ours, theirs) == [
        (
            "slot-service-type-unmatched",
            "Slot/theirs",
            "Slot.serviceType[0]",
            "Slot/theirs (busy-unavailable, 2027-03-08T14:00:00-05:00 to 2027-03-08T15:00:00-05:00) is "
            "for HealthcareService/other, which no service of Schedule/ann has in its type "
            "(HealthcareService/visit: http://example.org/visit-type|checkup): it blocks nothing",
        )
    ]


def test_the_expression_points_at_the_concept_that_names_something() -> None:
    block = slot("b", "12:00", "13:00", "busy-unavailable", serviceType=[concept(), concept(DERMATOLOGY)])
    assert codes(on_slots(block)) == {("slot-service-type-unmatched", "Slot/b", "Slot.serviceType[1]")}


def test_a_slot_matching_any_one_of_the_services_applies() -> None:
    derm = builders.service("derm", hours=WEEKDAYS, duration=20, code=(VISIT_TYPES, "dermatology"))
    config = [*configuration(), derm]
    config[3] = builders.schedule("ann", "Practitioner/ann", ["visit", "derm"])
    block = slot("derm-off", "12:00", "13:00", "busy-unavailable", serviceType=[concept(DERMATOLOGY)])
    assert on_slots(block, config=config) == []
    # The room does not offer dermatology: the same block there blocks nothing.
    on_room = slot(
        "room-off", "12:00", "13:00", "busy-unavailable", schedule="room", serviceType=[concept(DERMATOLOGY)]
    )
    assert codes(on_slots(on_room, config=config)) == {
        ("slot-service-type-unmatched", "Slot/room-off", "Slot.serviceType[0]")
    }


def test_slots_the_engine_ignores_are_not_reported() -> None:
    lapsed: Resource = {"extension": [{"url": HOLD_EXPIRES_URL, "valueInstant": NOW.isoformat()}]}
    assert (
        on_slots(
            slot("error", "12:00", "13:00", "entered-in-error", serviceType=[concept(DERMATOLOGY)]),
            slot("lapsed", "14:00", "15:00", "busy-tentative", serviceType=[concept(DERMATOLOGY)], **lapsed),
            slot("timeless", "15:00", "15:00", "busy-unavailable", serviceType=[concept(DERMATOLOGY)]),
        )
        == []
    )
    live: Resource = {"extension": [{"url": HOLD_EXPIRES_URL, "valueInstant": "2027-03-08T10:00:00Z"}]}
    held = slot("held", "14:00", "15:00", "busy-tentative", serviceType=[concept(DERMATOLOGY)], **live)
    assert codes(on_slots(held)) == {("slot-service-type-unmatched", "Slot/held", "Slot.serviceType[0]")}


def test_schedules_whose_services_are_not_all_known_are_not_judged() -> None:
    block: Resource = {"serviceType": [concept(DERMATOLOGY)]}
    config = [*configuration(), builders.schedule("ghost", "Practitioner/ann", ["visit", "gone"])]
    config.append(builders.schedule("empty", "Practitioner/ann", []))
    assert (
        on_slots(
            slot("a", "12:00", "13:00", "busy-unavailable", schedule="ghost", **block),  # "gone" might match
            slot("b", "12:00", "13:00", "busy-unavailable", schedule="empty", **block),  # offers nothing
            slot("c", "12:00", "13:00", "busy-unavailable", schedule="elsewhere", **block),  # not read
            config=config,
        )
        == []
    )


# ---- Schedule serviceType concepts that name no service -----------------------------------------


def schedule_with(*extra: Resource, services: tuple[str, ...] = ("visit",)) -> Resource:
    schedule = builders.schedule("ann", "Practitioner/ann", list(services))
    schedule["serviceType"] += list(extra)
    return schedule


def on_schedule(
    schedule: Resource, *others: Resource, by_type: list[Resource] | None = None
) -> list[tuple[str, str, str, str]]:
    resources = [r for r in configuration() if r["resourceType"] != "Schedule"]
    clinic = clinic_data(*resources, schedule, *others)
    return findings(replace(clinic, services_by_type={r["id"]: r for r in by_type or []}))


def test_a_code_that_no_service_has_is_a_warning() -> None:
    found = on_schedule(schedule_with(concept(DERMATOLOGY)))
    assert found == [
        (
            "service-type-without-reference",
            "Schedule/ann",
            "Schedule.serviceType[1]",
            "Schedule/ann: serviceType[1] (http://example.org/visit-type|dermatology) has no "
            "service-type-reference, and no HealthcareService has that type: the Schedule looks as if "
            "it offers a visit type that $find cannot find",
        )
    ]
    clinic = clinic_data(*configuration()[:3], schedule_with(concept(DERMATOLOGY)))
    assert [f.severity for f in diagnose(clinic)] == ["warning"]


def test_a_code_of_a_service_it_does_not_offer_names_that_service() -> None:
    derm = builders.service("derm", hours=WEEKDAYS, duration=20, code=(VISIT_TYPES, "dermatology"))
    found = on_schedule(schedule_with(concept({"code": "x"}, DERMATOLOGY)), by_type=[derm])
    assert found == [
        (
            "service-type-without-reference",
            "Schedule/ann",
            "Schedule.serviceType[1]",
            "Schedule/ann: serviceType[1] (x, http://example.org/visit-type|dermatology) has no "
            "service-type-reference, so the Schedule does not offer it; it probably means "
            "HealthcareService/derm (whose type has that code): add the reference",
        )
    ]


def test_services_read_for_other_schedules_count_too() -> None:
    derm = builders.service("derm", hours=WEEKDAYS, duration=20, code=(VISIT_TYPES, "dermatology"))
    room = builders.schedule("room", "Location/room", ["derm"])
    found = on_schedule(schedule_with(concept(DERMATOLOGY)), derm, room)
    assert [m for _, _, _, m in found] == [
        "Schedule/ann: serviceType[1] (http://example.org/visit-type|dermatology) has no "
        "service-type-reference, so the Schedule does not offer it; it probably means "
        "HealthcareService/derm (whose type has that code): add the reference"
    ]


def test_a_code_that_describes_a_service_it_offers_is_fine() -> None:
    assert on_schedule(schedule_with(concept(CHECKUP))) == []
    # ... unless another service has that type too: that one is what it may mean.
    also = builders.service("walk-in", hours=WEEKDAYS, duration=15)  # the same checkup code
    found = on_schedule(schedule_with(concept(CHECKUP)), by_type=[also])
    assert "it probably means HealthcareService/walk-in (whose" in found[0][3]


def test_concepts_with_a_reference_or_without_codes_are_not_reported() -> None:
    broken_reference = {"coding": [DERMATOLOGY], "extension": [{"url": SERVICE_TYPE_REFERENCE_URL}]}
    assert on_schedule(schedule_with(concept(), broken_reference)) == []


def test_the_sample_clinic_has_no_service_type_findings() -> None:
    resources = sample_resources()
    assert findings(clinic_data(*resources)) == []


def test_the_report_counts_each_service_read_once() -> None:
    derm = builders.service("derm", code=(VISIT_TYPES, "dermatology"))
    clinic = clinic_data(*configuration())
    assert (
        replace(clinic, services_by_type={"derm": derm, "visit": clinic.services["visit"]}).services_read == 2
    )


# ---- searching the services the codes may mean --------------------------------------------------


class Searches:
    """A store that records its searches and answers each with ``answer``."""

    def __init__(self, answer: list[Resource]) -> None:
        self.calls: list[tuple[str, list[tuple[str, str]], Any]] = []
        self.answer = answer

    def search(
        self, resource_type: str, params: list[tuple[str, str]], *, headers: Any = None
    ) -> list[Resource]:
        self.calls.append((resource_type, params, headers))
        return self.answer


def search_for(
    *schedules: Resource, answer: list[Resource] | None = None
) -> tuple[Searches, dict[str, Resource]]:
    store = Searches(answer or [])
    return store, services_of_types(cast(FhirUpstream, store), schedules)


def test_every_code_goes_in_one_search_and_the_server_must_know_the_parameter() -> None:
    derm = builders.service("derm", code=(VISIT_TYPES, "dermatology"))
    schedules = [
        # A system without a code names no type (searched, it would bring every service of it).
        schedule_with(concept(DERMATOLOGY, {"code": "bare"}, {"system": "urn:only"})),
        schedule_with(concept({"system": "urn:x", "code": "a,b|c$d\\e"}), concept(DERMATOLOGY)),
    ]
    store, found = search_for(*schedules, answer=[derm])
    assert store.calls == [
        (
            "HealthcareService",
            [("service-type", "bare,http://example.org/visit-type|dermatology,urn:x|a\\,b\\|c\\$d\\\\e")],
            {"Prefer": "handling=strict"},
        )
    ]
    assert found == {"derm": derm}


def test_no_search_when_every_concept_names_its_service() -> None:
    store, found = search_for(builders.schedule("ann", "Practitioner/ann", ["visit"]))
    assert (store.calls, found) == ([], {})


def test_many_or_long_codes_take_more_searches_but_few() -> None:
    many = schedule_with(*(concept({"system": VISIT_TYPES, "code": f"c{i:03}"}) for i in range(CHUNK + 1)))
    store, _ = search_for(many)
    assert [len(params[0][1].split(",")) for _, params, _ in store.calls] == [CHUNK, 1]
    long_system = "urn:" + "x" * (TOKEN_BUDGET // 3)
    store, _ = search_for(
        schedule_with(*(concept({"system": long_system, "code": str(i)}) for i in range(5)))
    )
    assert [len(params[0][1].split(",")) for _, params, _ in store.calls] == [2, 2, 1]
    assert all(len(params[0][1]) <= TOKEN_BUDGET for _, params, _ in store.calls)
