"""FHIR over HTTP, the Flask side: operation parameters in, FHIR JSON responses out.

Turning the query string or a ``Parameters`` body into ``(name, value)`` pairs happens here, once,
so each use case in ``operations/`` sees the same shape whichever way the caller sent it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping

import orjson
from flask import Response, request
from werkzeug.exceptions import NotAcceptable

from operations.errors import InvalidRequest
from operations.store import Resource

FHIR_JSON_UTF8 = "application/fhir+json; charset=utf-8"

# FHIR's general parameters (R4 §3.1.0.1.10) apply to any interaction, not to the operation.
_GENERAL_PARAMETERS = frozenset({"_format", "_pretty"})
_JSON_FORMATS = frozenset({"json", "application/json", "application/fhir+json"})
_RESOURCE_PARAMETERS = frozenset({"patient-resource"})
"""IHE ITI-115 parameters that carry a resource: passed on as JSON text, so the use case can
answer them by name (docs/ihe.md) rather than for their shape."""


def fhir_response(
    resource: Resource, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A FHIR JSON response (``application/fhir+json``)."""
    return Response(
        json_bytes(resource), status=status, headers=dict(headers or {}), content_type=FHIR_JSON_UTF8
    )


def json_bytes(resource: Resource) -> bytes:
    """``resource`` as compact UTF-8 JSON.

    orjson, because a ``$find`` answer is large and its encoding was the biggest part of the
    sidecar's own time: 100 proposals of 10 Schedules (1,000 contained Slots, 335 KB) take
    0.2 ms against 2.7 ms with ``json.dumps`` (docs/performance.md). What orjson refuses
    (integers beyond 64 bits) goes through ``json`` as before.
    """
    try:
        return orjson.dumps(resource)
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode()


def operation_outcome(
    code: str,
    diagnostics: str,
    expression: Iterable[str] = (),
    *,
    severity: str = "error",
) -> Resource:
    """An OperationOutcome with one issue."""
    issue: Resource = {"severity": severity, "code": code, "diagnostics": diagnostics}
    expressions = list(expression)
    if expressions:
        issue["expression"] = expressions
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def check_format() -> None:
    """Only JSON is spoken; ``_format=xml`` gets a clear 406 rather than JSON it did not ask for."""
    for value in request.args.getlist("_format"):
        # An unencoded '+' in a query string arrives as a space.
        if value.strip().lower().replace(" ", "+") not in _JSON_FORMATS:
            raise NotAcceptable(f"only JSON is supported (_format={value!r})")


def operation_parameters() -> list[tuple[str, str]]:
    """The operation's parameters as ``(name, value-as-string)`` pairs, in the order given.

    GET: the query string. POST: the ``Parameters`` body, then any query-string parameters
    (so ``POST ...$find?_count=5`` with a body works as a client would expect).
    """
    query = [
        (name, value) for name, value in request.args.items(multi=True) if name not in _GENERAL_PARAMETERS
    ]
    if request.method in ("GET", "HEAD"):
        return query
    return parameters_from_body(request.get_data(cache=True)) + query


def json_body(raw: bytes, *, required: bool = True) -> object:
    """The request body as JSON; 400 ``structure`` when it is missing (and required) or not JSON."""
    if not raw.strip():
        if not required:
            return None
        raise InvalidRequest(
            "the request body is empty: POST a FHIR resource as application/fhir+json", code="structure"
        )
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidRequest(
            "the request body is not valid JSON: POST a FHIR resource as application/fhir+json",
            code="structure",
        ) from None


def parameters_from_body(raw: bytes) -> list[tuple[str, str]]:
    """A ``Parameters`` resource in JSON → ``(name, value)`` pairs; 400 ``structure``/``invalid``
    with an expression such as ``Parameters.schedule[1]`` when it cannot be read."""
    if not raw.strip():
        raise InvalidRequest(
            "the request body is empty: POST a FHIR Parameters resource (or use GET with query parameters)",
            code="structure",
        )
    body = json_body(raw)
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        found = body.get("resourceType") if isinstance(body, dict) else None
        what = f"a {found}" if isinstance(found, str) else "not a FHIR resource"
        raise InvalidRequest(
            f"the request body must be a Parameters resource, but it is {what}",
            code="structure",
        )
    items = body.get("parameter", [])
    if not isinstance(items, list):
        raise InvalidRequest(
            "Parameters.parameter must be a list",
            code="structure",
            expression="Parameters.parameter",
        )
    pairs: list[tuple[str, str]] = []
    seen: Counter[str] = Counter()
    for position, item in enumerate(items):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(item, dict) or not isinstance(name, str) or not name:
            raise InvalidRequest(
                "every parameter needs a name",
                code="structure",
                expression=f"Parameters.parameter[{position}]",
            )
        expression = f"Parameters.{name}[{seen[name]}]"
        seen[name] += 1
        pairs.append((name, _parameter_value(item, name, expression)))
    return pairs


def _parameter_value(item: Resource, name: str, expression: str) -> str:
    if name in _RESOURCE_PARAMETERS and isinstance(item.get("resource"), dict):
        return json.dumps(item["resource"])
    if "resource" in item or "part" in item:
        raise InvalidRequest(
            f"parameter {name!r} takes a value, not a resource or parts",
            code="invalid",
            expression=expression,
        )
    keys = [key for key in item if key.startswith("value")]
    if len(keys) > 1:
        raise InvalidRequest(
            f"parameter {name!r} has several values ({', '.join(keys)})",
            code="structure",
            expression=expression,
        )
    if not keys or item[keys[0]] is None:
        raise InvalidRequest(f"parameter {name!r} has no value", code="required", expression=expression)
    key, value = keys[0], item[keys[0]]
    if key == "valueReference":
        reference = value.get("reference") if isinstance(value, dict) else None
        if not isinstance(reference, str) or not reference:
            raise InvalidRequest(
                f"parameter {name!r}: valueReference needs a 'reference' such as Schedule/<id>",
                code="required",
                expression=expression,
            )
        return reference
    if key in ("valueTiming", "valueIdentifier") and isinstance(value, dict):
        return json.dumps(value)  # a Timing (``recurrence``), an Identifier: parsed by the use case
    if isinstance(value, bool):  # before int: bool is an int in Python
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, str):
        return value
    raise InvalidRequest(
        f"parameter {name!r}: {key} is not accepted here; give a primitive value "
        "(valueDateTime, valueString, valueInteger, ...) or a valueReference",
        code="invalid",
        expression=expression,
    )
