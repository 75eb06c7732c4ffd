"""An incoming Appointment's structure checked against FHIR R4 (fhirclient's models): the
element at fault named, the proposal ``$find`` returns accepted as it is."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operations.errors import InvalidRequest
from plugin.fhir_structure import check_appointment
from tests.api.test_fuzz_routes import json_values, proposal

ROOT = "Parameters.appointment-resource"


def test_a_proposal_as_find_returns_it_passes() -> None:
    check_appointment(proposal(), ROOT)


def test_missing_required_elements_are_left_to_the_use_case() -> None:
    check_appointment({"resourceType": "Appointment"}, ROOT)  # no status, no participant
    check_appointment({"resourceType": "Appointment", "contained": [{"resourceType": "Slot"}]}, ROOT)


@pytest.mark.parametrize(
    ("change", "code", "expression", "text"),
    [
        ({"start": 5}, "structure", "start", "only takes string"),
        ({"start": "yesterday"}, "value", "start", "does not match expected format"),
        ({"comment": 7}, "structure", "comment", "expecting str"),
        ({"participant": {"status": "x"}}, "structure", "participant", "must be a list"),
        ({"serviceType": {"text": "x"}}, "structure", "serviceType", "must be a list"),
        ({"participant": [{"actor": "Patient/1"}]}, "structure", "participant[0].actor", "Reference only"),
        ({"participant": [None]}, "structure", "participant", "wrong JSON type"),
        ({"identifier": [{"value": 5}]}, "structure", "identifier[0].value", "expecting str"),
        ({"colour": "blue"}, "structure", "colour", "not an element of a FHIR R4 Appointment"),
        (
            {"participant": [{"actor": {"reference": "Patient/1", "kind": 1}}]},
            "structure",
            "participant[0].actor.kind",
            "not an element of a FHIR R4 Reference",
        ),
        (
            {"participant": [{"status": "accepted", "role": 1}]},
            "structure",
            "participant[0].role",
            "not an element of a FHIR R4 Appointment.participant",
        ),
    ],
)
def test_the_element_at_fault_is_named(change: dict[str, Any], code: str, expression: str, text: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_appointment(proposal() | change, ROOT)
    assert (refused.value.code, refused.value.expression) == (code, [f"{ROOT}.{expression}"])
    assert text in refused.value.diagnostics


def test_faults_inside_contained_slots_are_named_there() -> None:
    damaged = proposal()
    damaged["contained"][1]["start"] = 3
    with pytest.raises(InvalidRequest) as refused:
        check_appointment(damaged, ROOT)
    assert refused.value.expression == [f"{ROOT}.contained[1].start"]
    damaged = proposal()
    damaged["contained"][0]["colour"] = "red"
    with pytest.raises(InvalidRequest, match="not an element of a FHIR R4 Slot"):
        check_appointment(damaged, ROOT)


@settings(max_examples=300, deadline=None)
@given(
    key=st.sampled_from(
        ["start", "participant", "contained", "serviceType", "identifier", "comment", "slot", "meta", "x"]
    ),
    value=json_values,
)
def test_whatever_the_json_it_passes_or_is_a_400(key: str, value: object) -> None:
    try:
        check_appointment(proposal() | {key: value}, ROOT)
    except InvalidRequest as refused:
        assert refused.status == 400 and refused.code in {"structure", "value"}
        assert refused.expression[0].startswith(ROOT)
