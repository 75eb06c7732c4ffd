"""What the sidecar answers is the JSON of what the use case returned, whatever that holds:
orjson writes it (fast), and what orjson refuses still gets written."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from plugin.fhir_http import fhir_response, json_bytes

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: beyond 64 bits orjson refuses, json writes them
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_any_json_value_is_written_and_read_back_unchanged(value: Any) -> None:
    assert json.loads(json_bytes({"resourceType": "Basic", "value": value})) == {
        "resourceType": "Basic",
        "value": value,
    }


def test_integers_beyond_64_bits_are_written_exactly() -> None:
    assert json.loads(json_bytes({"n": 2**70, "m": -(2**64)})) == {"n": 2**70, "m": -(2**64)}


def test_text_is_utf8_not_escaped_and_compact() -> None:
    body = json_bytes({"resourceType": "Practitioner", "name": [{"text": "Zoë Ångström 山田"}]})
    assert "Zoë Ångström 山田".encode() in body
    assert (
        body
        == b'{"resourceType":"Practitioner","name":[{"text":"Zo\xc3\xab \xc3\x85ngstr\xc3\xb6m \xe5\xb1\xb1\xe7\x94\xb0"}]}'
    )


def test_a_fhir_response_carries_it_as_fhir_json() -> None:
    response = fhir_response({"resourceType": "Bundle", "total": 2**65}, 201, {"ETag": 'W/"1"'})
    assert response.status_code == 201
    assert response.content_type == "application/fhir+json; charset=utf-8"
    assert response.headers["ETag"] == 'W/"1"'
    assert json.loads(response.get_data()) == {"resourceType": "Bundle", "total": 2**65}
