"""``$bulk-publish`` on the fake store (SPEC §7.5): which Schedules are published where, one free
Slot per start per service, every booking rule applied, the deep link, and the SMART Scheduling
Links rules (``tests/support/smart_links.py``) on everything published.

The clinic: Dr. Alice (New York) works at Main Street Clinic (her PractitionerRole says so) on
Mondays and Tuesdays 09:00-11:00; check-ups last 30 minutes, consultations 60, both on the hourly
grid. "Now" is Sunday 6 December 2026, noon, unless a test says otherwise.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from operations.booking_link import BookingLinkTemplate
from operations.model import SLOT_CAPACITY_URL
from operations.publish import PUBLISH_TAG, Publication, PublishRequest, publish
from operations.publish_resources import files, manifest, ndjson
from operations.store import Stores
from scripts.sample_clinic import published as with_publishing
from scripts.sample_clinic import sample_resources
from tests.support.smart_links import check_publication
from tests.unit.builders import hours, location, practitioner, schedule, service, slot
from tests.unit.fake_store import FakeFhirStore, Waves

Resource = dict[str, Any]
NEW_YORK = ZoneInfo("America/New_York")
SUNDAY_NOON = datetime(2026, 12, 6, 12, 0, tzinfo=NEW_YORK)
TEMPLATE = "https://portal.example.org/book?schedule={schedule}&service={service}&start={start}"
BASE = "https://fhir.example.org/fhir"


def clinic_location(lid: str = "main", **changes: Any) -> Resource:
    resource = location(lid, "America/New_York")
    resource["name"] = "Main Street Clinic"
    resource["telecom"] = [
        {"system": "phone", "value": "+1 413 555 0100"},
        {"system": "email", "value": "a@b.org"},
    ]
    resource["address"] = {"line": ["1 Main St"], "city": "Pittsfield", "state": "MA", "postalCode": "01201"}
    resource.update(changes)
    return resource


def role(rid: str, practitioner_id: str, *location_ids: str, active: bool = True) -> Resource:
    return {
        "resourceType": "PractitionerRole",
        "id": rid,
        "active": active,
        "practitioner": {"reference": f"Practitioner/{practitioner_id}"},
        "location": [{"reference": f"Location/{lid}"} for lid in location_ids],
    }


def tagged(resource: Resource) -> Resource:
    resource = copy.deepcopy(resource)
    resource.setdefault("meta", {})["tag"] = [PUBLISH_TAG]
    return resource


def clinic(*extra: Resource, **block: Any) -> FakeFhirStore:
    """Dr. Alice at Main Street, both services; ``block`` goes on the check-up service."""
    return FakeFhirStore(
        clinic_location(),
        practitioner("alice", "America/New_York"),
        role("alice-main", "alice", "main"),
        service("checkup", hours=[hours("mon tue", "09:00", "11:00")], duration=30, **block),
        service(
            "consult",
            hours=[hours("mon tue", "09:00", "11:00")],
            code=("http://example.org/visit-type", "consult"),
            duration=60,
        ),
        tagged(schedule("alice", "Practitioner/alice", ["checkup", "consult"])),
        *extra,
    )


def published(
    store: FakeFhirStore,
    now: datetime = SUNDAY_NOON,
    days: int = 2,
    template: str = TEMPLATE,
    together: Callable[..., list[Any]] | None = None,
) -> Publication:
    request = PublishRequest(
        now=now, days=days, link=BookingLinkTemplate.parse(template), identifier_system=f"{BASE}/Location"
    )
    stores = Stores.single(store)
    return publish(stores.service, request, together=together or stores.together)


def checked(publication: Publication) -> tuple[Resource, dict[str, list[Resource]]]:
    """The manifest, and the files as a consumer gets them, after every SMART rule."""
    served = {
        f"{BASE}/$bulk-publish/{kind}.ndjson": ndjson(items) for kind, items in files(publication).items()
    }
    document = manifest(
        publication, f"{BASE}/$bulk-publish", lambda kind: f"{BASE}/$bulk-publish/{kind}.ndjson"
    )

    def fetch(url: str) -> tuple[int, str, bytes]:
        return (200, "application/fhir+ndjson", served[url]) if url in served else (404, "", b"")

    return document, check_publication(document, fetch)


def calendar(publication: Publication) -> list[tuple[str, str, str]]:
    """Each Slot as (schedule, local start, service), in file order."""
    return [
        (
            s["schedule"]["reference"].removeprefix("Schedule/"),
            s["start"][5:16].replace("T", " "),
            s["serviceType"][0]["extension"][0]["valueReference"]["reference"].removeprefix(
                "HealthcareService/"
            ),
        )
        for s in publication.slots
    ]


# ---- shape -------------------------------------------------------------------------------------


def test_the_manifest_lists_a_file_of_each_type_and_every_rule_holds() -> None:
    document, found = checked(published(clinic()))
    assert document["transactionTime"] == "2026-12-06T17:00:00.000Z"
    assert document["request"] == f"{BASE}/$bulk-publish"
    assert [(o["type"], o["url"]) for o in document["output"]] == [
        (kind, f"{BASE}/$bulk-publish/{kind}.ndjson") for kind in ("Location", "Schedule", "Slot")
    ]
    assert document["error"] == []
    assert [len(found[k]) for k in ("Location", "Schedule", "Slot", "OperationOutcome")] == [1, 1, 8, 0]


def test_the_schedule_is_published_at_the_location_of_its_practitioners_role() -> None:
    publication = published(clinic())
    [alice] = publication.schedules
    assert alice["actor"] == [{"reference": "Location/main"}]
    assert [c["extension"][0]["valueReference"]["reference"] for c in alice["serviceType"]] == [
        "HealthcareService/checkup",
        "HealthcareService/consult",
    ]
    assert alice["serviceType"][0]["coding"] == [
        {"system": "http://example.org/visit-type", "code": "checkup"}
    ]
    [main] = publication.locations
    # Only what the specification names; the e-mail is no SMART contact point; an identifier is made.
    assert main == {
        "resourceType": "Location",
        "id": "main",
        "identifier": [{"system": f"{BASE}/Location", "value": "main"}],
        "name": "Main Street Clinic",
        "telecom": [{"system": "phone", "value": "+1 413 555 0100"}],
        "address": {"line": ["1 Main St"], "city": "Pittsfield", "state": "MA", "postalCode": "01201"},
    }


def test_one_slot_per_start_per_service_with_its_service_type() -> None:
    publication = published(clinic())
    assert calendar(publication) == [
        ("alice", "12-07 09:00", "checkup"),
        ("alice", "12-07 09:00", "consult"),
        ("alice", "12-07 10:00", "checkup"),
        ("alice", "12-07 10:00", "consult"),
        ("alice", "12-08 09:00", "checkup"),
        ("alice", "12-08 09:00", "consult"),
        ("alice", "12-08 10:00", "checkup"),
        ("alice", "12-08 10:00", "consult"),
    ]
    first = publication.slots[0]
    assert (first["status"], first["start"], first["end"]) == (
        "free",
        "2026-12-07T09:00:00-05:00",
        "2026-12-07T09:30:00-05:00",
    )


def test_slot_ids_are_stable_across_publications() -> None:
    earlier = {s["id"]: s["start"] for s in published(clinic()).slots}
    later = {
        s["id"]: s["start"]
        for s in published(clinic(), now=SUNDAY_NOON + timedelta(hours=21, minutes=30)).slots
    }
    assert len(later) == 6  # Monday 09:00 has started
    assert later.items() <= earlier.items()


def test_only_the_next_days_are_published() -> None:
    assert {start[:5] for _, start, _ in calendar(published(clinic(), days=1))} == {"12-07"}


# ---- the deep link -----------------------------------------------------------------------------


def test_the_deep_link_is_built_from_the_template_with_every_value_encoded() -> None:
    store = FakeFhirStore(
        clinic_location("pune"),
        practitioner("ravi", "Asia/Kolkata"),
        role("ravi-pune", "ravi", "pune"),
        service("checkup", hours=[hours("mon", "09:00", "10:00")], duration=30),
        tagged(schedule("ravi", "Practitioner/ravi", ["checkup"])),
    )
    publication = published(store, days=1, template=TEMPLATE + "&end={end}&ref={slot}")
    [first] = publication.slots
    assert first["extension"] == [
        {
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/booking-deep-link",
            "valueUrl": "https://portal.example.org/book?schedule=ravi&service=checkup"
            "&start=2026-12-07T09%3A00%3A00%2B05%3A30&end=2026-12-07T09%3A30%3A00%2B05%3A30"
            f"&ref={first['id']}",
        }
    ]


# ---- the rules of $find apply ------------------------------------------------------------------


def test_a_day_whose_booking_limit_is_reached_publishes_nothing() -> None:
    booked = slot("alice", "busy", "2026-12-07T14:00:00Z", "2026-12-07T14:30:00Z", id="booked")
    publication = published(clinic(booked, bookingLimit=[(1, "d")]))
    # Monday's one check-up is booked: no check-up that day; the consultation has no limit, but
    # 09:00 is taken by the booking.
    assert calendar(publication) == [
        ("alice", "12-07 10:00", "consult"),
        ("alice", "12-08 09:00", "checkup"),
        ("alice", "12-08 09:00", "consult"),
        ("alice", "12-08 10:00", "checkup"),
        ("alice", "12-08 10:00", "consult"),
    ]


def test_minimum_notice_is_respected() -> None:
    monday_morning = datetime(2026, 12, 7, 8, 15, tzinfo=NEW_YORK)
    publication = published(clinic(minimumNotice=60), now=monday_morning, days=1)
    assert calendar(publication) == [
        ("alice", "12-07 09:00", "consult"),  # the consultation needs no notice
        ("alice", "12-07 10:00", "checkup"),
        ("alice", "12-07 10:00", "consult"),
    ]


def test_booking_window_and_planning_horizon_cut_the_days() -> None:
    store = clinic(bookingWindow={"value": 1, "unit": "d"})
    publication = published(store, now=datetime(2026, 12, 7, 9, 30, tzinfo=NEW_YORK))
    assert ("alice", "12-08 09:00", "checkup") in calendar(publication)
    assert ("alice", "12-08 10:00", "checkup") not in calendar(publication)
    store.resources["Schedule/alice"]["planningHorizon"] = {"end": "2026-12-08T00:00:00-05:00"}
    assert calendar(published(store)) == [
        ("alice", "12-07 09:00", "checkup"),
        ("alice", "12-07 09:00", "consult"),
        ("alice", "12-07 10:00", "checkup"),
        ("alice", "12-07 10:00", "consult"),
    ]


def test_buffers_and_busy_time_are_respected() -> None:
    blocked = slot("alice", "busy-unavailable", "2026-12-07T15:40:00Z", "2026-12-07T16:00:00Z")
    publication = published(clinic(blocked, bufferAfter=15), days=1)
    # 10:00 check-up + 15 min buffer reaches 10:45, into the 10:40 block; the consultation has no buffer
    # but 10:00-11:00 meets the block too.
    assert calendar(publication) == [("alice", "12-07 09:00", "checkup"), ("alice", "12-07 09:00", "consult")]


def test_a_group_visit_says_how_many_places_are_left() -> None:
    one_booked = slot(
        "alice",
        "busy",
        "2026-12-07T14:00:00Z",
        "2026-12-07T14:30:00Z",
        extension=[{"url": SLOT_CAPACITY_URL, "valuePositiveInt": 3}],
        serviceType=[{"coding": [{"system": "http://example.org/visit-type", "code": "checkup"}]}],
    )
    publication = published(clinic(one_booked, slotCapacity=3), days=1)
    places = {
        (s["start"][11:16], s["serviceType"][0]["coding"][0]["code"]): [
            e.get("valueInteger") for e in s["extension"] if e["url"].endswith("/slot-capacity")
        ]
        for s in publication.slots
    }
    assert places == {
        ("09:00", "checkup"): [2],
        ("10:00", "checkup"): [3],
        ("09:00", "consult"): [],  # the check-up's Slot names its service: the consultation is free
        ("10:00", "consult"): [],
    }
    checked(publication)


# ---- what is not published ---------------------------------------------------------------------


def test_untagged_inactive_and_inactive_service_are_not_published() -> None:
    store = clinic(
        schedule("bob", "Location/main", ["checkup"]),
        tagged(schedule("carol", "Location/main", ["checkup"], active=False)),
        service("retired", active=False, duration=30),
        tagged(schedule("dave", "Location/main", ["retired", "checkup"])),
    )
    publication = published(store)
    assert [s["id"] for s in publication.schedules] == ["alice", "dave"]
    assert [
        c["extension"][0]["valueReference"]["reference"] for c in publication.schedules[1]["serviceType"]
    ] == ["HealthcareService/checkup"]
    assert publication.problems == []


def test_a_schedule_that_cannot_be_published_is_left_out_and_the_error_file_says_why() -> None:
    store = clinic(
        practitioner("bob", "America/New_York"),
        role("bob-main", "bob", "main"),
        role("bob-north", "bob", "north"),
        clinic_location("north"),
        tagged(schedule("bob", "Practitioner/bob", ["checkup"])),
        clinic_location("shed", address={"line": ["Back yard"], "city": "Pittsfield"}),
        tagged(schedule("shed", "Location/shed", ["checkup"])),
        tagged(schedule("lost", "Location/main", ["gone"])),
    )
    document, found = checked(published(store))
    assert [s["id"] for s in found["Schedule"]] == ["alice"]
    assert [o["type"] for o in document["error"]] == ["OperationOutcome"]
    assert [o["issue"][0]["diagnostics"] for o in found["OperationOutcome"]] == [
        "Schedule/bob is not published: its actor Practitioner/bob has several Locations "
        "(Location/main, Location/north): publish a Schedule whose actor is one Location, "
        "or a PractitionerRole with one location",
        "Schedule/lost with HealthcareService/gone is not published: HealthcareService/gone does not exist",
        "Schedule/lost is not published: it offers no active HealthcareService that can be published",
        "Schedule/shed is not published: Location/shed lacks what SMART Scheduling Links requires: "
        "address.state, address.postalCode",
    ]


def test_a_location_actor_is_published_itself_and_keeps_its_identifiers() -> None:
    room = clinic_location("room", identifier=[{"system": "https://clinic.example.org/sites", "value": "7"}])
    store = clinic(room, tagged(schedule("room", "Location/room", ["consult"])))
    _, found = checked(published(store))
    assert [(s["id"], s["actor"][0]["reference"]) for s in found["Schedule"]] == [
        ("alice", "Location/main"),
        ("room", "Location/room"),
    ]
    assert found["Location"][1]["identifier"] == [
        {"system": "https://clinic.example.org/sites", "value": "7"}
    ]


def test_the_sample_clinic_publishes_dr_alice_at_main_street() -> None:
    _, found = checked(published(FakeFhirStore(*with_publishing(sample_resources())), days=14))
    [alice] = found["Schedule"]
    assert (alice["id"], alice["actor"]) == ("dr-alice", [{"reference": "Location/main-street"}])
    assert [c["text"] for c in alice["serviceType"]] == ["Office visit", "Long consultation"]
    assert {s["serviceType"][0]["text"] for s in found["Slot"]} == {"Office visit", "Long consultation"}


# ---- reads -------------------------------------------------------------------------------------


def many(count: int, **block: Any) -> FakeFhirStore:
    store = clinic(**block)
    for n in range(count):
        store.add(practitioner(f"p{n}", "America/New_York"))
        store.add(role(f"r{n}", f"p{n}", "main"))
        store.add(tagged(schedule(f"p{n}", f"Practitioner/p{n}", ["checkup"])))
    return store


def test_two_rounds_of_reads_whatever_the_number_of_schedules() -> None:
    for count in (1, 120):
        store = many(count)
        waves = Waves(store)
        publication = published(store, together=waves)
        assert len(publication.schedules) == count + 1
        assert waves.count == 2
        # 121 schedules need 3 Slot searches and 3 role searches of at most 50 ids, all in round 2.
        assert waves.groups[0][0] == "search HealthcareService"


def test_a_booking_limit_reads_the_rest_of_its_week_in_a_third_round() -> None:
    store = many(60, bookingLimit=[(20, "wk")])
    waves = Waves(store)
    published(store, together=waves)
    assert waves.count == 3
    # Its week began on Monday 30 November and ends on Sunday 13 December: the Slots before and
    # after the range, for 61 schedules in searches of at most 50.
    assert waves.groups[-1] == ["search_slots"] * 4
