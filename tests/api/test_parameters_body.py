"""Whatever a client POSTs, reading it is a list of pairs or a 400: never anything else."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from operations.errors import InvalidRequest
from plugin.fhir_http import parameters_from_body

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["name", "valueString", "valueReference", "reference", "part", "x"]),
            children,
            max_size=3,
        )
    ),
    max_leaves=12,
)
parameter_lists = st.lists(
    st.dictionaries(
        st.sampled_from(["name", "valueString", "valueInteger", "valueReference", "resource"]),
        json_values,
        max_size=3,
    ),
    max_size=4,
)


def read(raw: bytes) -> list[tuple[str, str]] | None:
    try:
        pairs = parameters_from_body(raw)
    except InvalidRequest as exc:
        assert exc.status == 400 and exc.code in {"structure", "invalid", "required"}
        return None
    assert all(isinstance(n, str) and isinstance(v, str) for n, v in pairs)
    return pairs


@given(st.binary(max_size=64))
def test_arbitrary_bytes(raw: bytes) -> None:
    read(raw)


@given(json_values)
def test_arbitrary_json(value: object) -> None:
    read(json.dumps(value).encode())


@given(parameter_lists)
def test_arbitrary_parameters(parameters: list[dict[str, object]]) -> None:
    read(json.dumps({"resourceType": "Parameters", "parameter": parameters}).encode())
