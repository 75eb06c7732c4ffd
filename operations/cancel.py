"""Use case ``$cancel`` (SPEC §4): a booked or pending Appointment becomes ``cancelled`` and its
Slots are deleted in the same transaction. Freeing time takes no lock: it can never cause a
double booking (docs/consistency.md). Shared with ``$confirm``: ``operations/appointment_change.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from operations.appointment_change import LostWrite, change_appointment
from operations.errors import InvalidRequest, OutcomeUnknown, ReferencedElsewhere, Unprocessable
from operations.fhir_values import parse_instant, transaction_bundle
from operations.model import SERIES_SYSTEM
from operations.retries import Clock, RetryPolicy
from operations.series import series_id_of
from operations.store import FhirStore, Resource, Stores, as_stores
from operations.writes import BookingResult as OperationResult
from operations.writes import cancel_bundle, slot_ids


def cancellation_reason(params: Sequence[tuple[str, Any]]) -> Resource | None:
    """``cancelationReason`` as given: a CodeableConcept, or a string turned into its text."""
    for name, value in params:
        if name == "cancelationReason":
            if isinstance(value, dict):
                return value
            if isinstance(value, str) and value.strip():
                return {"text": value.strip()}
            raise InvalidRequest(
                "cancelationReason must be a CodeableConcept or a string",
                code="value",
                expression="Parameters.cancelationReason",
            )
    return None


def cancel(
    stores: Stores | FhirStore,
    appointment_id: str,
    *,
    reason: Resource | None,
    clock: Clock,
    policy: RetryPolicy | None = None,
    series: bool = False,
) -> OperationResult:
    """A ``booked`` or ``pending`` Appointment becomes ``cancelled``; every Slot it references is
    deleted in the same transaction, so the time is free again. 200 with the Appointment.

    A Slot that something else still references cannot be deleted: 409 at once, naming it.
    A lost answer is settled by re-reading: the cancellation is version-checked, so it lands
    at most once, and a cancelled Appointment is the answer whoever's write landed.
    """

    if series:
        return _cancel_series(as_stores(stores), appointment_id, reason=reason, clock=clock, policy=policy)

    def step(store: FhirStore, appointment: Resource, lost: LostWrite) -> OperationResult:
        status = appointment.get("status")
        if lost.error is not None and status == "cancelled":
            return OperationResult(200, appointment)
        if status not in ("booked", "pending"):
            raise Unprocessable(
                f"Appointment/{appointment_id} is {status!r}: only a booked or pending appointment can be cancelled",
                expression="Appointment.status",
            )
        try:
            response = store.transaction(cancel_bundle(appointment, reason, slot_ids(appointment)))
        except ReferencedElsewhere as exc:
            raise ReferencedElsewhere(
                f"Appointment/{appointment_id} was not cancelled: one of its Slots is still referenced "
                f"by another resource ({exc.diagnostics}). Remove that reference, then cancel again.",
                expression="Appointment.slot",
            ) from None
        except OutcomeUnknown as exc:
            raise lost.lose(exc, "cancellation") from exc
        cancelled = next(
            (
                e.get("resource")
                for e in response.get("entry") or []
                if (e.get("resource") or {}).get("resourceType") == "Appointment"
            ),
            None,
        )
        return OperationResult(200, cancelled or store.read("Appointment", appointment_id) or {})

    return change_appointment(stores, appointment_id, step, clock=clock, policy=policy, operation="$cancel")


def series_cancellation(params: Sequence[tuple[str, Any]]) -> bool:
    """``series`` as given: ``true`` or ``false`` (a boolean, or its text in a query string)."""
    for name, value in params:
        if name == "series":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in ("true", "false"):
                return value.strip().lower() == "true"
            raise InvalidRequest("series must be true or false", code="value", expression="Parameters.series")
    return False


def _cancel_series(
    stores: Stores,
    appointment_id: str,
    *,
    reason: Resource | None,
    clock: Clock,
    policy: RetryPolicy | None,
) -> OperationResult:
    """``series=true``: this occurrence and every later one of its series that is booked or
    pending, in one transaction (all or none). The later ones are those the caller's
    credentials can read. 200 with a Bundle of the cancelled Appointments, in order."""

    def step(store: FhirStore, appointment: Resource, lost: LostWrite) -> OperationResult:
        series_id = series_id_of(appointment)
        if series_id is None:
            raise Unprocessable(
                f"Appointment/{appointment_id} is not an occurrence of a series: cancel it without series=true",
                expression="Appointment.extension",
            )
        tag = ("_tag", f"{SERIES_SYSTEM}|{series_id}")
        members, visible = stores.together(
            lambda: store.search("Appointment", [tag]),
            lambda: stores.caller.search("Appointment", [tag]),
        )
        readable = {a.get("id") for a in visible}
        start = _start(appointment)
        later = sorted(
            (
                a
                for a in members
                if a.get("id") != appointment_id and a.get("id") in readable and _start(a) >= start
            ),
            key=_start,
        )
        status = appointment.get("status")
        if lost.error is not None and status == "cancelled":
            return OperationResult(200, _series_bundle([appointment, *later]))
        if status not in ("booked", "pending"):
            raise Unprocessable(
                f"Appointment/{appointment_id} is {status!r}: only a booked or pending appointment can be cancelled",
                expression="Appointment.status",
            )
        cancelling = [appointment, *(a for a in later if a.get("status") in ("booked", "pending"))]
        entries = [entry for a in cancelling for entry in cancel_bundle(a, reason, slot_ids(a))["entry"]]
        try:
            response = store.transaction(transaction_bundle(entries))
        except ReferencedElsewhere as exc:
            raise ReferencedElsewhere(
                f"The series was not cancelled: a Slot of one of its occurrences is still referenced "
                f"by another resource ({exc.diagnostics})",
                expression="Appointment.slot",
            ) from None
        except OutcomeUnknown as exc:
            raise lost.lose(exc, "cancellation") from exc
        cancelled = [
            e["resource"]
            for e in response.get("entry") or []
            if (e.get("resource") or {}).get("resourceType") == "Appointment"
        ]
        return OperationResult(200, _series_bundle(cancelled or cancelling))

    return change_appointment(stores, appointment_id, step, clock=clock, policy=policy, operation="$cancel")


def _start(appointment: Resource) -> datetime:
    try:
        return parse_instant(appointment.get("start"))
    except ValueError:
        return datetime.max.replace(tzinfo=UTC)


def _series_bundle(appointments: Sequence[Resource]) -> Resource:
    """The cancelled occurrences, in order, as a ``collection`` Bundle."""
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "total": len(appointments),
        "entry": [
            {"fullUrl": f"Appointment/{a.get('id')}", "resource": a} for a in sorted(appointments, key=_start)
        ],
    }
