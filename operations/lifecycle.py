"""Use cases ``$confirm`` and ``$cancel`` (SPEC §4); the background work on holds and ended
Appointments is in ``operations/housekeeping.py``.

Each is one upstream transaction whose Appointment update is version-checked (``ifMatch``):
a hold being confirmed while the clean-up cancels it is settled by the upstream, never by
luck -- whichever commits second fails its version check, re-reads and decides again.
``$confirm`` also takes the locks of the Schedules its Slots are on, and checks the hold's
expiry after reading them: a ``$book`` that saw the hold as lapsed and a ``$confirm`` that saw
it as live cannot both commit (docs/consistency.md).

The caller's credentials read the addressed Appointment (a caller may change what it may
read); every other read and every write uses the sidecar's own (``Stores``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from operations.errors import (
    ConcurrentChange,
    InvalidRequest,
    NotFound,
    OutcomeUnknown,
    ReferencedElsewhere,
    StoreFailure,
    Unprocessable,
)
from operations.fhir_values import dig, format_instant, parse_instant, reference_id, transaction_bundle
from operations.locks import NO_LOCKS, fence, lock_entries, read_locks
from operations.model import HOLD_EXPIRES_URL, Interval, SlotStatus
from operations.retries import Clock, RetryPolicy, retrying
from operations.store import FhirReader, FhirStore, Resource, Stores, as_stores
from operations.writes import BookingResult as OperationResult
from operations.writes import (
    cancel_bundle,
    hold_expiry,
    replay_bundle,
    response_bundle,
    slot_ids,
    version_of,
    versioned_put,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")


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


def _read_appointment(reader: FhirReader, appointment_id: str) -> Resource:
    appointment = reader.read("Appointment", appointment_id)
    if appointment is None:
        raise NotFound(f"Appointment/{appointment_id} does not exist", expression="Appointment")
    return appointment


def _footprints(slots: Sequence[Resource]) -> dict[str, list[Interval]]:
    """Per Schedule, the spans of these Slots: what a write changing them locks."""
    found: dict[str, list[Interval]] = {}
    for slot in slots:
        try:
            schedule_id = reference_id(dig(slot, "schedule", "reference"), "Schedule")
            span = Interval(parse_instant(slot["start"]), parse_instant(slot["end"]))
        except (KeyError, TypeError, ValueError):
            continue
        found.setdefault(schedule_id, []).append(span)
    return found


class _LostWrite:
    """The write of one operation whose answer was lost, if any. Once there is one, the
    operation's next attempt settles it, and any failure to reach the upstream on the way is
    answered as that write's unknown outcome -- never as a plain error that reads "nothing
    happened" (it may have)."""

    def __init__(self) -> None:
        self.error: OutcomeUnknown | None = None
        self.fenced = False
        """Whether the lock it was checked against has been fenced: it can no longer land."""

    def lose(self, error: OutcomeUnknown, what: str) -> ConcurrentChange:
        """Remember ``error``; the ``ConcurrentChange`` to raise so that the operation re-reads.
        A second lost answer in a row is raised as it is: the upstream is not answering."""
        if self.error is not None:
            raise error
        self.error = error
        return ConcurrentChange(f"the answer to the {what} was lost; re-reading")

    def guarding(self, step: Callable[[], T]) -> Callable[[], T]:
        """``step`` as an attempt that answers a failure after a lost write as its outcome."""

        def attempt() -> T:
            try:
                return step()
            except StoreFailure:
                if self.error is not None:
                    raise self.error from None
                raise

        return attempt


def confirm(
    stores: Stores | FhirStore, appointment_id: str, *, clock: Clock, policy: RetryPolicy | None = None
) -> OperationResult:
    """A ``pending`` (unexpired) or ``proposed`` Appointment becomes ``booked``; its held Slots
    become ``busy`` and lose their expiry, buffers included. 200 with the transaction-response."""
    stores = as_stores(stores)
    store = stores.service
    _read_appointment(stores.caller, appointment_id)  # permission: the caller may read it
    lost = _LostWrite()

    def attempt() -> OperationResult:
        appointment = _read_appointment(store, appointment_id)
        status = appointment.get("status")
        if lost.error is not None and status == "booked":
            return OperationResult(200, replay_bundle(store, appointment))  # the lost write landed
        if lost.error is not None and lost.fenced:
            lost.error.resolution = "Nothing was stored (checked): ask again."
            raise lost.error
        if status not in ("pending", "proposed"):
            raise Unprocessable(
                f"Appointment/{appointment_id} is {status!r}: only a pending hold or a proposed "
                "appointment can be confirmed",
                expression="Appointment.status",
            )
        ids = slot_ids(appointment)
        slots = store.search("Slot", [("_id", ",".join(ids))]) if ids else []
        locks = read_locks(store, _footprints(slots)) if slots else NO_LOCKS
        # "Now" after the lock read: a booking that took this time because it saw the hold as
        # lapsed has committed a newer lock version, and this transaction will fail on it.
        expires = hold_expiry(appointment)
        if status == "pending" and expires is not None and expires <= clock.now():
            raise Unprocessable(
                f"The hold on Appointment/{appointment_id} expired at {format_instant(expires)}",
                expression="Appointment.extension",
            )
        entries = [*lock_entries(locks)]
        entries.append(
            versioned_put(_without_expiry(appointment) | {"status": "booked"}, version_of(appointment))
        )
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

    return retrying(policy or RetryPolicy(), clock, lost.guarding(attempt), operation="$confirm")


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
    stores = as_stores(stores)
    store = stores.service
    _read_appointment(stores.caller, appointment_id)  # permission: the caller may read it
    lost = _LostWrite()

    def attempt() -> OperationResult:
        appointment = _read_appointment(store, appointment_id)
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

    return retrying(policy or RetryPolicy(), clock, lost.guarding(attempt), operation="$cancel")
