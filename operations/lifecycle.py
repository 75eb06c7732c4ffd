"""Use cases ``$confirm``, ``$cancel``, the expiry of holds, and following Appointments that
ended on the upstream without ``$cancel`` (SPEC §4, §5.1).

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
from datetime import datetime, timedelta
from typing import Any, TypeVar

from operations.booking import (
    BOOKING_TAG,
    ENDED_STATUSES,
    HOLD_TAG,
    Clock,
    RetryPolicy,
    booking_marker,
    fence,
    hold_expiry,
    lock_entries,
    read_locks,
    replay_bundle,
    response_bundle,
    retrying,
    slot_ids,
)
from operations.booking import BookingResult as OperationResult
from operations.errors import (
    ConcurrentChange,
    InvalidRequest,
    NotFound,
    OutcomeUnknown,
    ReferencedElsewhere,
    StoreFailure,
    Unprocessable,
)
from operations.fhir_values import dig, format_instant, reference_id
from operations.model import HOLD_EXPIRES_URL, SlotStatus
from operations.store import FhirReader, FhirStore, Resource, Stores, as_stores

logger = logging.getLogger(__name__)
T = TypeVar("T")

SWEEP_PAGE_SIZE = 100
SWEEP_MAX_PAGES = 5
"""One sweep pass reads at most this many pages of held Appointments (oldest first)."""


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


def _read_appointment(reader: FhirReader, appointment_id: str) -> Resource:
    appointment = reader.read("Appointment", appointment_id)
    if appointment is None:
        raise NotFound(f"Appointment/{appointment_id} does not exist", expression="Appointment")
    return appointment


def _schedule_ids(slots: Sequence[Resource]) -> list[str]:
    found = set()
    for slot in slots:
        try:
            found.add(reference_id(dig(slot, "schedule", "reference"), "Schedule"))
        except ValueError:
            continue
    return sorted(found)


def _bundle(entries: list[Resource]) -> Resource:
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


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
        locks = read_locks(store, _schedule_ids(slots)) if slots else {}
        # "Now" after the lock read: a booking that took this time because it saw the hold as
        # lapsed has committed a newer lock version, and this transaction will fail on it.
        expires = hold_expiry(appointment)
        if status == "pending" and expires is not None and expires <= clock.now():
            raise Unprocessable(
                f"The hold on Appointment/{appointment_id} expired at {format_instant(expires)}",
                expression="Appointment.extension",
            )
        entries = [*lock_entries(locks)]
        entries.append(_put(_without_expiry(appointment) | {"status": "booked"}, _version(appointment)))
        for slot in slots:
            updated = _without_expiry(slot)
            if updated.get("status") == SlotStatus.BUSY_TENTATIVE:
                updated["status"] = SlotStatus.BUSY
            entries.append(_put(updated, _version(slot)))
        try:
            response = store.transaction(_bundle(entries))
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

    return retrying(policy or RetryPolicy(), clock, lost.guarding(attempt))


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
            response = store.transaction(_cancel_bundle(appointment, reason, slot_ids(appointment)))
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

    return retrying(policy or RetryPolicy(), clock, lost.guarding(attempt))


def _cancel_bundle(appointment: Resource, reason: Resource | None, deleting: Sequence[str]) -> Resource:
    """``PUT`` the Appointment as cancelled (version-checked), ``DELETE`` the Slots ``deleting``.

    The deleted Slots must stop being referenced by it: the upstream keeps referential
    integrity (HAPI refuses to delete a referenced resource). References to Slots that are
    kept stay.
    """
    cancelled = {k: v for k, v in appointment.items() if k != "slot"} | {"status": "cancelled"}
    kept = [r for r in appointment.get("slot") or [] if _slot_ref_id(r) not in deleting]
    if kept:
        cancelled["slot"] = kept
    if reason is not None:
        cancelled["cancelationReason"] = reason
    entries = [_put(cancelled, _version(appointment))]
    entries += [{"request": {"method": "DELETE", "url": f"Slot/{sid}"}} for sid in deleting]
    return _bundle(entries)


def _slot_ref_id(reference: Any) -> str | None:
    try:
        return reference_id(dig(reference, "reference"), "Slot")
    except ValueError:
        return None


def _lapsed(resource: Resource, now: datetime) -> bool:
    expires = hold_expiry(resource)
    return expires is not None and expires <= now


def expire_holds(
    store: FhirStore, now: datetime, *, page_size: int = SWEEP_PAGE_SIZE, max_pages: int = SWEEP_MAX_PAGES
) -> int:
    """Cancel lapsed holds the sidecar wrote and delete the Slots written with them; returns
    how many this call cancelled.

    Only what the sidecar made (SPEC §5.1): a candidate must be a ``pending`` Appointment with
    the hold tag, a lapsed expiry and a booking request id; of the Slots it references, only
    those carrying the same booking request id and a lapsed expiry of their own are deleted
    (such a Slot blocks nothing, whoever wrote it). So a forged "hold" cannot make the sidecar
    delete time someone else booked.

    Reads in bounded pages, oldest first: at most ``max_pages`` searches of ``page_size``. Safe to
    run from every worker at once: each cancellation is version-checked, so a hold is cancelled
    once, and a hold confirmed a moment earlier is left alone.
    """
    done = 0
    query = [
        ("status", "pending"),
        ("_tag", f"{HOLD_TAG['system']}|{HOLD_TAG['code']}"),
        ("_sort", "_lastUpdated"),
    ]
    for _ in range(max_pages):
        page = store.search("Appointment", query, limit=page_size)
        lapsed = [a for a in page if _lapsed(a, now) and booking_marker(a)]
        for appointment in lapsed:
            done += _expire_one(store, appointment, now)
        if len(page) < page_size or not lapsed:
            break
    return done


def _expire_one(store: FhirStore, appointment: Resource, now: datetime) -> int:
    marker = booking_marker(appointment)
    expires = hold_expiry(appointment)
    assert marker is not None and expires is not None
    ids = slot_ids(appointment)
    slots = store.search("Slot", [("_id", ",".join(ids))]) if ids else []
    ours = [str(s.get("id")) for s in slots if booking_marker(s) == marker and _lapsed(s, now)]
    reason = {"text": f"hold expired at {format_instant(expires)}"}
    try:
        store.transaction(_cancel_bundle(appointment, reason, ours))
    except ConcurrentChange:
        logger.info(
            "hold changed while expiring it; left alone", extra={"appointment": appointment.get("id")}
        )
        return 0
    except ReferencedElsewhere as exc:
        # Its Slots are lapsed (they block nothing); something else points at them. Cancel the
        # hold and keep them, rather than retrying the same refused delete every pass.
        logger.warning(
            "lapsed hold's Slots are referenced elsewhere; cancelling the hold and keeping them",
            extra={"appointment": appointment.get("id"), "upstream_diagnostics": exc.diagnostics},
        )
        try:
            store.transaction(_cancel_bundle(appointment, reason, []))
        except ConcurrentChange:
            return 0
    except OutcomeUnknown:
        logger.warning(
            "hold expiry's answer was lost; the next pass re-reads",
            extra={"appointment": appointment.get("id")},
        )
        return 0
    return 1


RECONCILE_WINDOW = timedelta(hours=24)
RECONCILE_LIMIT = 500


def release_missed(store: FhirStore, now: datetime, *, window: timedelta = RECONCILE_WINDOW) -> int:
    """The safety net under the webhook: Appointments that ended on the upstream in the last
    ``window`` and still reference Slots the sidecar wrote get them deleted. Returns how many
    Slots were deleted.

    A notification can be lost -- HAPI gives up after a minute of failed deliveries, e.g. while
    every sidecar is down -- and the sweep (each worker, every ``HOLD_SWEEP_SECONDS``; the last
    day on its first pass, the last 15 minutes after) catches what the webhook missed. One search, newest first, at most ``RECONCILE_LIMIT`` Appointments;
    those already released reference none of the sidecar's Slots and cost nothing more.
    """
    ended = store.search(
        "Appointment",
        [
            ("status", ",".join(sorted(ENDED_STATUSES))),
            ("_tag", f"{BOOKING_TAG['system']}|{BOOKING_TAG['code']}"),
            ("_lastUpdated", f"ge{format_instant(now - window)}"),
            ("_sort", "-_lastUpdated"),
        ],
        limit=RECONCILE_LIMIT,
    )
    freed = 0
    for appointment in ended:
        if booking_marker(appointment) is None or not slot_ids(appointment):
            continue
        try:
            freed += _release(store, appointment)
        except (ConcurrentChange, OutcomeUnknown):
            continue  # changed meanwhile, or no answer: the next pass re-reads it
    return freed


def _release(store: FhirStore, appointment: Resource) -> int:
    """Delete the Slots carrying ``appointment``'s booking request id and drop its references
    to them, version-checked on the Appointment as read. Returns how many were deleted."""
    marker = booking_marker(appointment)
    ids = slot_ids(appointment)
    if marker is None or not ids:
        return 0
    slots = store.search("Slot", [("_id", ",".join(ids))])
    ours = [str(s.get("id")) for s in slots if booking_marker(s) == marker]
    if not ours:
        return 0
    kept = [r for r in appointment.get("slot") or [] if _slot_ref_id(r) not in ours]
    updated = {k: v for k, v in appointment.items() if k != "slot"}
    if kept:
        updated["slot"] = kept
    entries = [_put(updated, _version(appointment))]
    entries += [{"request": {"method": "DELETE", "url": f"Slot/{sid}"}} for sid in ours]
    store.transaction(_bundle(entries))
    return len(ours)


def release_ended(
    store: FhirStore, appointment_id: str, *, clock: Clock, policy: RetryPolicy | None = None
) -> int:
    """An Appointment set to ``cancelled``, ``noshow`` or ``entered-in-error`` directly on the
    upstream (not through ``$cancel``) frees its time: delete the Slots the sidecar wrote for
    it. Returns how many Slots were deleted (0: nothing to do).

    Driven by the subscription webhook, with the sidecar's credentials and re-reading the
    Appointment (the notification's body is not trusted). Only Slots carrying the
    Appointment's own booking request id are deleted. Idempotent and safe when several
    replicas handle the same notification: the Appointment update (its references to the
    deleted Slots removed) is version-checked, and a second run finds nothing left to do.
    """

    def attempt() -> int:
        appointment = store.read("Appointment", appointment_id)
        if appointment is None or appointment.get("status") not in ENDED_STATUSES:
            return 0
        try:
            return _release(store, appointment)
        except OutcomeUnknown as exc:
            raise ConcurrentChange("the answer was lost; re-reading") from exc

    return retrying(policy or RetryPolicy(), clock, attempt)
