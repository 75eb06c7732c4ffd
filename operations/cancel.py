"""Use case ``$cancel`` (SPEC §4): a booked or pending Appointment becomes ``cancelled`` and its
Slots are deleted in the same transaction. Freeing time takes no lock: it can never cause a
double booking (docs/consistency.md). Shared with ``$confirm``: ``operations/appointment_change.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from operations.appointment_change import LostWrite, change_appointment
from operations.errors import InvalidRequest, OutcomeUnknown, ReferencedElsewhere, Unprocessable
from operations.retries import Clock, RetryPolicy
from operations.store import FhirStore, Resource, Stores
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
) -> OperationResult:
    """A ``booked`` or ``pending`` Appointment becomes ``cancelled``; every Slot it references is
    deleted in the same transaction, so the time is free again. 200 with the Appointment.

    A Slot that something else still references cannot be deleted: 409 at once, naming it.
    A lost answer is settled by re-reading: the cancellation is version-checked, so it lands
    at most once, and a cancelled Appointment is the answer whoever's write landed.
    """

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
