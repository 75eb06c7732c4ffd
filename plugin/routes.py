"""The HTTP endpoints: FHIR parameters in → use case → Bundle or OperationOutcome out.

Each route is a few lines; errors are raised (``SchedulingError``, ``UpstreamError``) and
rendered once by the handlers in ``app.py``. The use cases are reached through their module
(``find.find_appointments``) so tests can substitute them.
"""

from __future__ import annotations

import time
from datetime import UTC, timedelta
from email.utils import format_datetime
from typing import Any

from flask import Blueprint, Response, g, request

from operations import booking, booking_inputs, cancel, confirm, find, ihe_find, reschedule, stored_booking
from operations.errors import InvalidRequest, NotFound
from operations.fhir_values import as_list, is_fhir_id
from plugin import version
from plugin.context import request_stores, sidecar
from plugin.fhir_http import check_format, fhir_response, json_body, operation_outcome, operation_parameters
from plugin.fhir_structure import check_appointment
from plugin.upstream_errors import UpstreamError

READY_READ_TIMEOUT = 5.0
"""Seconds ``/readyz`` waits for the upstream's ``/metadata``; probes must not hang."""


fhir = Blueprint("fhir", __name__)
"""Everything under ``BASE_PATH``: mirrors the upstream's URLs."""

health = Blueprint("health", __name__)
"""``/livez`` and ``/readyz``, at the root whatever ``BASE_PATH`` is."""

fhir.before_request(check_format)


# ---- $find (SPEC §4) -------------------------------------------------------------------------


@fhir.route("/Appointment/$find", methods=["GET", "POST"])
def appointment_find() -> Response:
    g.operation = "Appointment/$find"
    return fhir_response(ihe_find.find_appointments(request_stores("find", writes=False), _find_request()))


@fhir.route("/Schedule/<schedule_id>/$find", methods=["GET", "POST"])
def schedule_find(schedule_id: str) -> Response:
    g.operation = "Schedule/$find"
    return fhir_response(find.find_slots(request_stores("find", writes=False), _find_request(schedule_id)))


def _find_request(schedule_id: str | None = None) -> find.FindRequest:
    state = sidecar()
    return find.FindRequest.from_parameters(
        operation_parameters(),
        now=state.clock(),
        max_range_days=state.settings.max_range_days,
        schedule_id=schedule_id,
        max_schedules=state.settings.max_schedules,
        max_series=state.settings.max_series,
    )


# ---- $book, $hold, $confirm, $cancel (SPEC §4, §5) --------------------------------------------


@fhir.post("/Appointment/$book")
def appointment_book() -> Response:
    g.operation = "Appointment/$book"
    return _book(hold=False)


@fhir.post("/Appointment/$hold")
def appointment_hold() -> Response:
    g.operation = "Appointment/$hold"
    return _book(hold=True)


def _book(*, hold: bool) -> Response:
    state = sidecar()
    inputs = booking_inputs.BookingInputs.from_body(
        json_body(request.get_data(cache=True)),
        max_schedules=state.settings.max_schedules,
        max_series=state.settings.max_series,
        check_structure=check_appointment,
    )
    stores = request_stores("hold" if hold else "book")
    if inputs.proposal is None:  # appointment-reference: a stored Appointment (IHE ITI-116/117)
        result = stored_booking.book_stored(stores, inputs, hold=hold, clock=_clock(), policy=_policy())
    else:
        result = booking.book(
            stores,
            inputs.proposal,
            hold=hold,
            hold_ttl=timedelta(seconds=state.settings.hold_ttl_seconds),
            clock=_clock(),
            policy=_policy(),
            grouping=state.booking_groups,
        )
    g.attempts, g.group = result.attempts, result.group
    headers: dict[str, str] = {"X-Fanoni-Attempts": str(result.attempts), "X-Fanoni-Group": str(result.group)}
    if result.expires is not None:
        headers["Expires"] = format_datetime(result.expires.astimezone(UTC), usegmt=True)
    first = (result.bundle.get("entry") or [{}])[0].get("resource") or {}
    if first.get("id"):
        headers["Location"] = (
            f"{request.url_root.rstrip('/')}{state.settings.base_path}/Appointment/{first['id']}"
        )
    return fhir_response(result.bundle, status=result.status, headers=headers)


def _booking_request() -> booking.BookingRequest:
    state = sidecar()
    return booking.BookingRequest.from_body(
        json_body(request.get_data(cache=True)),
        max_schedules=state.settings.max_schedules,
        max_series=state.settings.max_series,
        check_structure=check_appointment,
    )


@fhir.post("/Appointment/<appointment_id>/$reschedule")
def appointment_reschedule(appointment_id: str) -> Response:
    g.operation = "Appointment/$reschedule"
    appointment_id = _existing_id(appointment_id)
    result = reschedule.reschedule(
        request_stores("reschedule"), appointment_id, _booking_request(), clock=_clock(), policy=_policy()
    )
    g.attempts = result.attempts
    return fhir_response(result.bundle, status=result.status)


@fhir.post("/Appointment/<appointment_id>/$confirm")
def appointment_confirm(appointment_id: str) -> Response:
    g.operation = "Appointment/$confirm"
    json_body(request.get_data(cache=True), required=False)  # a body, if any, must be JSON
    result = confirm.confirm(
        request_stores("confirm"), _existing_id(appointment_id), clock=_clock(), policy=_policy()
    )
    return fhir_response(result.bundle, status=result.status)


@fhir.post("/Appointment/<appointment_id>/$cancel")
def appointment_cancel(appointment_id: str) -> Response:
    g.operation = "Appointment/$cancel"
    body = json_body(request.get_data(cache=True), required=False)
    reason = _cancelation_reason(body)
    result = cancel.cancel(
        request_stores("cancel"),
        _existing_id(appointment_id),
        reason=reason,
        clock=_clock(),
        policy=_policy(),
        series=cancel.series_cancellation(_named("series", body)),
    )
    return fhir_response(result.bundle, status=result.status)


def _existing_id(resource_id: str) -> str:
    """A syntactically impossible id names no resource: 404, without asking the upstream."""
    if not is_fhir_id(resource_id):
        raise NotFound(f"Appointment/{resource_id} does not exist", expression="Appointment")
    return resource_id


def _cancelation_reason(body: object) -> dict[str, Any] | None:
    """``cancelationReason`` from a Parameters body (valueCodeableConcept, valueString or
    valueCode), or from the query string; absent is fine."""
    return cancel.cancellation_reason(_named("cancelationReason", body))


def _named(name: str, body: object) -> list[tuple[str, Any]]:
    """The values of parameter ``name``: from the query string, then from a Parameters body
    (valueCodeableConcept, valueString, valueCode or valueBoolean)."""
    pairs: list[tuple[str, Any]] = [(n, value) for n, value in request.args.items(multi=True) if n == name]
    if body is not None:
        if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
            raise InvalidRequest("the request body must be a Parameters resource", code="structure")
        for item in as_list(body.get("parameter")):
            if isinstance(item, dict) and item.get("name") == name:
                value = next(
                    (
                        item[k]
                        for k in ("valueCodeableConcept", "valueString", "valueCode", "valueBoolean")
                        if k in item
                    ),
                    None,
                )
                pairs.append((name, value))
    return pairs


def _clock() -> booking.Clock:
    return booking.Clock(now=sidecar().clock, monotonic=time.monotonic, sleep=time.sleep)


def _policy() -> booking.RetryPolicy:
    return booking.RetryPolicy(deadline_seconds=sidecar().settings.booking_deadline_seconds)


# ---- discovery ---------------------------------------------------------------------------------


@fhir.get("/metadata")
def metadata() -> Response:
    g.operation = "metadata"
    return fhir_response(capability_statement(request.host_url.rstrip("/") + request.script_root))


def capability_statement(server_url: str) -> dict[str, Any]:
    """The sidecar's CapabilityStatement: the operations it serves, nothing else (resource
    reads and searches belong to the upstream)."""
    state = sidecar()
    operations_by_type: dict[str, list[dict[str, str]]] = {}
    system_operations: list[dict[str, str]] = []
    for definition in state.operation_definitions.values():
        listed = {"name": definition["code"], "definition": definition["url"]}
        if definition.get("system"):
            system_operations.append(listed)  # [base]/$bulk-publish
        for resource_type in definition.get("resource", []):
            operations_by_type.setdefault(resource_type, []).append(listed)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": state.started_at.isoformat(timespec="seconds"),
        "publisher": "Fanoni Scheduling",
        "kind": "instance",
        "software": {"name": "Fanoni Scheduling", "version": version()},
        "implementation": {
            "description": "Fanoni Scheduling sidecar: scheduling operations for a FHIR R4 server",
            "url": server_url + state.settings.base_path,
        },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "Only the scheduling operations are served here; every resource is read "
                    "from and written to the upstream FHIR server."
                ),
                "resource": [
                    {"type": resource_type, "operation": operations}
                    for resource_type, operations in sorted(operations_by_type.items())
                ],
                **({"operation": system_operations} if system_operations else {}),
            }
        ],
    }


@fhir.get("/OperationDefinition/<definition_id>")
def operation_definition(definition_id: str) -> Response:
    g.operation = "OperationDefinition/read"
    definition = sidecar().operation_definitions.get(definition_id)
    if definition is None:
        raise NotFound(f"OperationDefinition/{definition_id} is not known to this server")
    return fhir_response(definition)


# ---- health ------------------------------------------------------------------------------------


@health.get("/livez")
def livez() -> Response:
    """Alive means the process answers; it deliberately ignores the upstream, so an upstream
    outage does not make the orchestrator restart every sidecar."""
    return fhir_response(operation_outcome("informational", "alive", severity="information"))


@health.get("/readyz")
def readyz() -> Response:
    """Ready means the upstream's ``/metadata`` answers (with the configured credentials)."""
    g.operation = "readyz"
    state = sidecar()
    store = state.upstream.background(g.get("request_id"), "readiness")
    g.stores = [store]
    try:
        store.capabilities(read_timeout=min(state.settings.upstream_read_timeout, READY_READ_TIMEOUT))
    except UpstreamError as exc:
        return fhir_response(operation_outcome("transient", f"not ready: {exc.diagnostics}"), status=503)
    return fhir_response(
        operation_outcome("informational", "ready: the upstream FHIR server answers", severity="information")
    )
