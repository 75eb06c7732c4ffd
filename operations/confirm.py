"""Use case ``$confirm`` (SPEC §4): a live hold (or a stored proposal) becomes a booking.

It takes the locks of the buckets its Slots cover and checks the hold's expiry after reading
them: a ``$book`` that saw the hold as lapsed and a ``$confirm`` that saw it as live cannot
both commit (docs/consistency.md). Shared with ``$cancel``: ``operations/appointment_change.py``.
"""

from __future__ import annotations

from operations.appointment_change import LostWrite, change_appointment
from operations.booking_lookup import NOTHING_STORED
from operations.decision import slot_footprints
from operations.errors import OutcomeUnknown, Unprocessable
from operations.fhir_values import format_instant, transaction_bundle
from operations.locks import NO_LOCKS, fence, lock_entries, read_locks
from operations.model import HOLD_EXPIRES_URL, SlotStatus
from operations.participants import patient_checks
from operations.proposal import Additions
from operations.retries import Clock, RetryPolicy
from operations.store import FhirStore, Resource, Stores, as_stores
from operations.writes import BookingResult as OperationResult
from operations.writes import (
    hold_expiry,
    replay_bundle,
    response_bundle,
    slot_ids,
    version_of,
    versioned_put,
)


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


def confirm(
    stores: Stores | FhirStore,
    appointment_id: str,
    *,
    clock: Clock,
    policy: RetryPolicy | None = None,
    additions: Additions | None = None,
) -> OperationResult:
    """A ``pending`` (unexpired) or ``proposed`` Appointment becomes ``booked``; its held Slots
    become ``busy`` and lose their expiry, buffers included. 200 with the transaction-response.

    ``additions`` (``$book`` of a stored Appointment, IHE ITI-117) are written with it: the
    comment, and the patients as participants -- each readable with the caller's credentials,
    checked together with the caller's read of the Appointment."""
    stores = as_stores(stores)
    changes = additions or Additions()

    def step(store: FhirStore, appointment: Resource, lost: LostWrite) -> OperationResult:
        status = appointment.get("status")
        if lost.error is not None and status == "booked":
            return OperationResult(200, replay_bundle(store, appointment))  # the lost write landed
        if lost.error is not None and lost.fenced:
            lost.error.resolution = NOTHING_STORED
            raise lost.error
        if status not in ("pending", "proposed"):
            raise Unprocessable(
                f"Appointment/{appointment_id} is {status!r}: only a pending hold or a proposed "
                "appointment can be confirmed",
                expression="Appointment.status",
            )
        ids = slot_ids(appointment)
        slots = store.search("Slot", [("_id", ",".join(ids))]) if ids else []
        locks = read_locks(store, slot_footprints(slots)) if slots else NO_LOCKS
        # "Now" after the lock read: a booking that took this time because it saw the hold as
        # lapsed has committed a newer lock version, and this transaction will fail on it.
        expires = hold_expiry(appointment)
        if status == "pending" and expires is not None and expires <= clock.now():
            raise Unprocessable(
                f"The hold on Appointment/{appointment_id} expired at {format_instant(expires)}",
                expression="Appointment.extension",
            )
        entries = [*lock_entries(locks)]
        booked = changes.apply(_without_expiry(appointment)) | {"status": "booked"}
        entries.append(versioned_put(booked, version_of(appointment)))
        for slot in slots:
            updated = _without_expiry(slot)
            if updated.get("status") == SlotStatus.BUSY_TENTATIVE:
                updated["status"] = SlotStatus.BUSY
            entries.append(versioned_put(updated, version_of(slot)))
        try:
            response = store.transaction(transaction_bundle(entries))
        except OutcomeUnknown as exc:
            retry = lost.lose(exc, "confirmation")
            # Fence the lock it was checked against, then re-read: booked means it landed,
            # otherwise it never will. Without Slots there is no lock: the next attempt sends
            # the same version-checked update again, which lands at most once.
            if locks:
                fence(store, locks, clock)  # a failure here is answered as ``exc`` (guarding)
                lost.fenced = True
            raise retry from exc
        return OperationResult(200, response_bundle(response))

    return change_appointment(
        stores,
        appointment_id,
        step,
        clock=clock,
        policy=policy,
        operation="$confirm",
        permission_reads=patient_checks(stores.caller, changes),
    )
