"""``$book`` and ``$hold`` with the IHE ITI-116/117 inputs (SPEC §7.2): ``appointment-resource``,
``appointment-reference`` (a stored Appointment: booking it is ``$confirm``), ``patient-reference``
and ``comment``. Dr. Alice's Monday 2026-12-07 as in test_booking.py; now is 2026-12-01."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from operations.booking import book
from operations.booking_inputs import BookingInputs
from operations.errors import InvalidRequest, Unprocessable
from operations.store import Stores
from operations.stored_booking import book_stored
from tests.unit.builders import patient
from tests.unit.fake_store import FakeFhirStore
from tests.unit.test_booking import TTL, FakeClock, at, clinic, do_book, of_type
from tests.unit.test_find_reads import Recording

APPOINTMENT_REFERENCE = "Parameters.appointment-reference"


def parameters(*items: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(items)}


def resource(proposal: dict[str, Any], name: str = "appointment-resource") -> dict[str, Any]:
    return {"name": name, "resource": proposal}


def reference(appointment_id: str, as_string: bool = False) -> dict[str, Any]:
    value = f"Appointment/{appointment_id}"
    if as_string:
        return {"name": "appointment-reference", "valueString": value}
    return {"name": "appointment-reference", "valueReference": {"reference": value}}


def patient_ref(patient_id: str) -> dict[str, Any]:
    return {"name": "patient-reference", "valueReference": {"reference": f"Patient/{patient_id}"}}


def comment(text: Any) -> dict[str, Any]:
    return {"name": "comment", "valueString": text}


def run(
    store: FakeFhirStore, body: dict[str, Any], *, hold: bool = False, clock: FakeClock | None = None
) -> Any:
    inputs = BookingInputs.from_body(body)
    when = (clock or FakeClock()).clock()
    if inputs.proposal is None:
        return book_stored(store, inputs, hold=hold, clock=when)
    return book(store, inputs.proposal, hold=hold, hold_ttl=TTL, clock=when)


def with_patient() -> FakeFhirStore:
    store = clinic()
    store.add(patient("pat"))
    return store


def stored(store: FakeFhirStore, appointment_id: str) -> dict[str, Any]:
    return store.resources[f"Appointment/{appointment_id}"]


# ---- a proposal, with a patient and a comment ---------------------------------------------------


def test_appointment_resource_books_like_appointment_and_errors_name_it() -> None:
    store = with_patient()
    assert run(store, parameters(resource(at(store, "09:15")))).status == 201
    late = at(store, "10:15") | {"start": "2026-12-07T10:00:00-05:00"}
    with pytest.raises(InvalidRequest) as refused:
        run(store, parameters(resource(late)))
    assert refused.value.expression == ["Parameters.appointment-resource.start"]


def test_patient_and_comment_are_written_on_the_booked_appointment() -> None:
    store = with_patient()
    result = run(
        store, parameters(resource(at(store, "09:15")), patient_ref("pat"), comment("Bring the X-rays"))
    )
    appointment = result.bundle["entry"][0]["resource"]
    assert appointment["comment"] == "Bring the X-rays"
    assert {"actor": {"reference": "Patient/pat"}, "required": "required", "status": "needs-action"} in (
        appointment["participant"]
    )
    assert [p["actor"]["reference"] for p in appointment["participant"]] == [
        "Practitioner/alice",
        "Patient/pat",
    ]


def test_a_patient_already_in_the_proposal_is_not_added_twice() -> None:
    store = with_patient()
    proposal = at(store, "09:15")
    proposal["participant"].append({"actor": {"reference": "Patient/pat"}, "status": "accepted"})
    appointment = run(store, parameters(resource(proposal), patient_ref("pat"))).bundle["entry"][0][
        "resource"
    ]
    assert [p["actor"]["reference"] for p in appointment["participant"]] == [
        "Practitioner/alice",
        "Patient/pat",
    ]


def test_a_patient_the_caller_cannot_read_is_422_at_its_parameter_and_nothing_is_written() -> None:
    store = with_patient()
    body = parameters(resource(at(store, "09:15")), patient_ref("pat"), patient_ref("ghost"))
    with pytest.raises(Unprocessable) as refused:
        run(store, body)
    assert (refused.value.code, refused.value.expression) == (
        "not-found",
        ["Parameters.patient-reference[1]"],
    )
    assert store.transactions == []


BESIDE_A_PROPOSAL = [
    ([comment(7)], "value", ["Parameters.comment"]),
    ([comment("  ")], "value", ["Parameters.comment"]),
    ([comment("a"), comment("b")], "value", ["Parameters.comment[1]"]),
    (
        [{"name": "patient-reference", "valueString": "Person/pat"}],
        "value",
        ["Parameters.patient-reference[0]"],
    ),
    (
        [{"name": "patient-resource", "resource": {"resourceType": "Patient"}}],
        "not-supported",
        ["Parameters.patient-resource"],
    ),
]
ALONE = [
    ([reference("a1"), reference("a2")], "value", ["Parameters.appointment-reference[1]"]),
    (
        [{"name": "appointment-reference", "valueReference": {"reference": "Slot/a1"}}],
        "value",
        [APPOINTMENT_REFERENCE],
    ),
    (
        [{"name": "appointment-reference", "valueReference": {"display": "mine"}}],
        "value",
        [APPOINTMENT_REFERENCE],
    ),
    (
        [reference("a1"), {"name": "recurrence", "valueTiming": {}}],
        "invalid",
        [APPOINTMENT_REFERENCE, "Parameters.recurrence"],
    ),
]


@pytest.mark.parametrize(
    ("items", "code", "expression", "proposal"),
    [(*case, True) for case in BESIDE_A_PROPOSAL] + [(*case, False) for case in ALONE],
)
def test_malformed_inputs_are_400(
    items: list[dict[str, Any]], code: str, expression: list[str], proposal: bool
) -> None:
    store = with_patient()
    body = parameters(resource(at(store, "09:15")), *items) if proposal else parameters(*items)
    with pytest.raises(InvalidRequest) as refused:
        run(store, body)
    assert (refused.value.code, refused.value.expression) == (code, expression)
    assert store.transactions == []


def test_a_proposal_and_a_reference_together_are_400() -> None:
    store = with_patient()
    with pytest.raises(InvalidRequest) as refused:
        run(store, parameters(resource(at(store, "09:15"), "appointment"), reference("a1")))
    assert (refused.value.code, refused.value.expression) == (
        "invalid",
        [APPOINTMENT_REFERENCE, "Parameters.appointment"],
    )


def test_the_structure_check_sees_the_appointment_as_sent() -> None:
    seen: list[tuple[dict[str, Any], str]] = []
    store = with_patient()
    body = parameters(resource(at(store, "09:15")), patient_ref("pat"), comment("hello"))
    BookingInputs.from_body(body, check_structure=lambda appointment, root: seen.append((appointment, root)))
    [(appointment, root)] = seen
    assert root == "Parameters.appointment-resource" and "comment" not in appointment


# ---- a stored Appointment: appointment-reference --------------------------------------------------


def held(store: FakeFhirStore, clock: FakeClock | None = None) -> str:
    result = do_book(store, at(store, "09:15"), hold=True, clock=clock)
    return str(result.bundle["entry"][0]["resource"]["id"])


@pytest.mark.parametrize("as_string", [False, True])
def test_book_of_a_held_appointment_confirms_it_with_the_patient_and_comment(as_string: bool) -> None:
    store = with_patient()
    hold_id = held(store)
    result = run(store, parameters(reference(hold_id, as_string), patient_ref("pat"), comment("Fasting")))
    assert result.status == 200
    appointment = stored(store, hold_id)
    assert (appointment["status"], appointment["comment"]) == ("booked", "Fasting")
    assert appointment["participant"][-1]["actor"] == {"reference": "Patient/pat"}
    assert [s["status"] for s in of_type(store, "Slot")].count("busy") == 1
    assert result.bundle["entry"][0]["resource"]["id"] == hold_id


def test_book_of_a_stored_proposal_books_it() -> None:
    store = with_patient()
    store.add({"resourceType": "Appointment", "id": "asked", "status": "proposed", "participant": []})
    assert run(store, parameters(reference("asked"))).status == 200
    assert stored(store, "asked")["status"] == "booked"


@pytest.mark.parametrize("status", ["booked", "cancelled", "noshow"])
def test_book_of_an_appointment_in_another_status_is_422_at_the_reference(status: str) -> None:
    store = with_patient()
    store.add({"resourceType": "Appointment", "id": "a1", "status": status, "participant": []})
    with pytest.raises(Unprocessable) as refused:
        run(store, parameters(reference("a1")))
    assert (refused.value.code, refused.value.expression) == ("business-rule", [APPOINTMENT_REFERENCE])
    assert store.transactions == []


def test_an_unknown_appointment_is_422_not_found_not_404() -> None:
    with pytest.raises(Unprocessable) as refused:
        run(with_patient(), parameters(reference("nowhere")))
    assert (refused.value.status, refused.value.code, refused.value.expression) == (
        422,
        "not-found",
        [APPOINTMENT_REFERENCE],
    )


def test_book_of_a_lapsed_hold_is_422_and_changes_nothing() -> None:
    store, clock = with_patient(), FakeClock()
    hold_id = held(store, clock)
    clock.current += TTL + timedelta(seconds=1)
    with pytest.raises(Unprocessable, match="expired") as refused:
        run(store, parameters(reference(hold_id), comment("late")), clock=clock)
    assert refused.value.expression == [APPOINTMENT_REFERENCE]
    assert stored(store, hold_id)["status"] == "pending" and "comment" not in stored(store, hold_id)


def test_a_patient_the_caller_cannot_read_stops_the_confirmation() -> None:
    store = with_patient()
    hold_id = held(store)
    before = len(store.transactions)
    with pytest.raises(Unprocessable) as refused:
        run(store, parameters(reference(hold_id), patient_ref("ghost")))
    assert refused.value.expression == ["Parameters.patient-reference[0]"]
    assert len(store.transactions) == before


def test_the_patient_is_read_with_the_callers_read_of_the_appointment() -> None:
    store = with_patient()
    hold_id = held(store)
    together = Recording()
    inputs = BookingInputs.from_body(parameters(reference(hold_id), patient_ref("pat")))
    store.calls.clear()
    book_stored(
        Stores(caller=store, service=store, together=together), inputs, hold=False, clock=FakeClock().clock()
    )
    assert together.groups[0] == 2
    assert store.calls[:2] == ["read Appointment", "search Patient"]


def test_hold_of_a_live_hold_answers_it_as_it_stands() -> None:
    store = with_patient()
    hold_id = held(store)
    before = len(store.transactions)
    result = run(store, parameters(reference(hold_id)), hold=True)
    assert result.status == 200 and result.expires is not None
    assert [e["resource"]["resourceType"] for e in result.bundle["entry"]] == [
        "Appointment",
        "Slot",
        "Slot",
        "Slot",
    ]
    assert len(store.transactions) == before


@pytest.mark.parametrize(
    ("status", "text"),
    [("proposed", "stored proposal"), ("booked", "only a live hold"), ("cancelled", "only a live hold")],
)
def test_hold_of_anything_but_a_live_hold_is_422(status: str, text: str) -> None:
    store = with_patient()
    store.add({"resourceType": "Appointment", "id": "a1", "status": status, "participant": []})
    with pytest.raises(Unprocessable, match=text) as refused:
        run(store, parameters(reference("a1")), hold=True)
    assert refused.value.expression == [APPOINTMENT_REFERENCE]


def test_hold_of_a_lapsed_hold_is_422() -> None:
    store, clock = with_patient(), FakeClock()
    hold_id = held(store, clock)
    clock.current += TTL + timedelta(seconds=1)
    with pytest.raises(Unprocessable, match="expired"):
        run(store, parameters(reference(hold_id)), hold=True, clock=clock)


def test_hold_of_a_stored_appointment_takes_no_additions() -> None:
    store = with_patient()
    hold_id = held(store)
    with pytest.raises(InvalidRequest) as refused:
        run(store, parameters(reference(hold_id), comment("x")), hold=True)
    assert refused.value.expression == ["Parameters.comment"]
