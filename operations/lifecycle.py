"""Use cases ``$confirm``, ``$cancel`` and the expiry of holds (SPEC §4).

Each is one upstream transaction whose Appointment update is version-checked (``ifMatch``):
a hold being confirmed while the cleanup cancels it is settled by the upstream, never by
luck -- whichever commits second fails its version check, re-reads and decides again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from operations.booking import BookingResult as OperationResult
from operations.booking import Clock, RetryPolicy, hold_expiry, response_bundle, retrying, slot_ids
from operations.errors import ConcurrentChange, InvalidRequest, NotFound, Unprocessable
from operations.fhir_values import format_instant
from operations.model import HOLD_EXPIRES_URL, SlotStatus
from operations.store import FhirStore, Resource

logger = logging.getLogger(__name__)


def _version(resource: Resource) -> str:
    return str((resource.get("meta") or {}).get("versionId", ""))


def _put(resource: Resource, version: str) -> Resource:
    """A version-checked update of ``resource`` (sent without its server-managed ``meta``)."""
    url = f"{resource['resourceType']}/{resource['id']}"
    request: Resource = {"method": "PUT", "url": url}
    if version:
        request["ifMatch"] = f'W/"{version}"'
    body = {k: v for k, v in resource.items() if k != "meta"}
    return {"fullUrl": url, "resource": body, "request": request}


def _without_expiry(resource: Resource) -> Resource:
    """A copy of ``resource`` with its hold expiry removed (and no server-managed meta)."""
    copy = {k: v for k, v in resource.items() if k != "meta"}
    extensions = [
        e
        for e in resource.get("extension") or []
        if not (isinstance(e, dict) and e.get("url") == HOLD_EXPIRES_URL)
    ]
    if extensions:
        copy["extension"] = extensions
    else:
        copy.pop("extension", None)
    return copy


def _read_appointment(store: FhirStore, appointment_id: str) -> Resource:
    appointment = store.read("Appointment", appointment_id)
    if appointment is None:
        raise NotFound(f"Appointment/{appointment_id} does not exist", expression="Appointment")
    return appointment


def confirm(
    store: FhirStore, appointment_id: str, *, clock: Clock, policy: RetryPolicy | None = None
) -> OperationResult:
    """A ``pending`` (unexpired) or ``proposed`` Appointment becomes ``booked``; its held Slots
    become ``busy`` and lose their expiry, buffers included. 200 with the transaction-response."""

    def attempt() -> OperationResult:
        appointment = _read_appointment(store, appointment_id)
        status = appointment.get("status")
        if status not in ("pending", "proposed"):
            raise Unprocessable(
                f"Appointment/{appointment_id} is {status!r}: only a pending hold or a proposed "
                "appointment can be confirmed",
                expression="Appointment.status",
            )
        expires = hold_expiry(appointment)
        if status == "pending" and expires is not None and expires <= clock.now():
            raise Unprocessable(
                f"The hold on Appointment/{appointment_id} expired at {format_instant(expires)}",
                expression="Appointment.extension",
            )
        ids = slot_ids(appointment)
        slots = store.search("Slot", [("_id", ",".join(ids))]) if ids else []
        entries = [_put(_without_expiry(appointment) | {"status": "booked"}, _version(appointment))]
        for slot in slots:
            updated = _without_expiry(slot)
            if updated.get("status") == SlotStatus.BUSY_TENTATIVE:
                updated["status"] = SlotStatus.BUSY
            entries.append(_put(updated, _version(slot)))
        response = store.transaction({"resourceType": "Bundle", "type": "transaction", "entry": entries})
        return OperationResult(200, response_bundle(response))

    return retrying(policy or RetryPolicy(), clock, attempt)


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
    store: FhirStore,
    appointment_id: str,
    *,
    reason: Resource | None,
    clock: Clock,
    policy: RetryPolicy | None = None,
) -> OperationResult:
    """A ``booked`` or ``pending`` Appointment becomes ``cancelled``; every Slot it references is
    deleted in the same transaction, so the time is free again. 200 with the Appointment."""

    def attempt() -> OperationResult:
        appointment = _read_appointment(store, appointment_id)
        status = appointment.get("status")
        if status not in ("booked", "pending"):
            raise Unprocessable(
                f"Appointment/{appointment_id} is {status!r}: only a booked or pending appointment can be cancelled",
                expression="Appointment.status",
            )
        response = store.transaction(_cancel_bundle(appointment, reason))
        cancelled = next(
            (
                e.get("resource")
                for e in response.get("entry") or []
                if (e.get("resource") or {}).get("resourceType") == "Appointment"
            ),
            None,
        )
        return OperationResult(200, cancelled or store.read("Appointment", appointment_id) or {})

    return retrying(policy or RetryPolicy(), clock, attempt)


def _cancel_bundle(appointment: Resource, reason: Resource | None) -> Resource:
    # The Slots are deleted, so the Appointment must stop referencing them: the upstream
    # keeps referential integrity (HAPI refuses to delete a referenced resource).
    cancelled = {k: v for k, v in appointment.items() if k != "slot"} | {"status": "cancelled"}
    if reason is not None:
        cancelled["cancelationReason"] = reason
    entries = [_put(cancelled, _version(appointment))]
    entries += [{"request": {"method": "DELETE", "url": f"Slot/{sid}"}} for sid in slot_ids(appointment)]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def expire_holds(store: FhirStore, now: datetime, *, limit: int = 200) -> int:
    """Cancel lapsed holds and delete their Slots; returns how many this call cancelled.

    Safe to run from every worker at once: each cancellation is version-checked, so a hold is
    cancelled once, and a hold confirmed a moment earlier is left alone.
    """
    from operations.booking import HOLD_TAG

    done = 0
    candidates = store.search(
        "Appointment", [("status", "pending"), ("_tag", f"{HOLD_TAG['system']}|{HOLD_TAG['code']}")]
    )
    for appointment in candidates[:limit]:
        expires = hold_expiry(appointment)
        if expires is None or expires > now:
            continue
        reason = {"text": f"hold expired at {format_instant(expires)}"}
        try:
            store.transaction(_cancel_bundle(appointment, reason))
        except ConcurrentChange:
            logger.info("hold %s changed while expiring it; left alone", appointment.get("id"))
            continue
        done += 1
    return done
