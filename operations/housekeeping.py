"""Background work on what the sidecar wrote: lapsed holds are cancelled, and Appointments that
ended on the upstream without ``$cancel`` get their time freed (SPEC §4, §5.1).

Only what the sidecar made is touched: holds and Slots carrying its booking request tag. Each
change is one version-checked transaction, so every worker of every replica may run this at
once, and a hold confirmed a moment earlier is left alone.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from operations.errors import ConcurrentChange, OutcomeUnknown, ReferencedElsewhere
from operations.fhir_values import format_instant
from operations.retries import Clock, RetryPolicy, retrying
from operations.store import FhirStore, Resource
from operations.writes import (
    BOOKING_TAG,
    ENDED_STATUSES,
    HOLD_TAG,
    booking_marker,
    cancel_bundle,
    hold_expiry,
    release_bundle,
    slots_written_with,
)

logger = logging.getLogger(__name__)

SWEEP_PAGE_SIZE = 100
SWEEP_MAX_PAGES = 5
"""One sweep pass reads at most this many pages of held Appointments (oldest first)."""


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
    expires = hold_expiry(appointment)
    assert expires is not None
    ours = [str(s.get("id")) for s in slots_written_with(store, appointment) if _lapsed(s, now)]
    reason = {"text": f"hold expired at {format_instant(expires)}"}
    try:
        store.transaction(cancel_bundle(appointment, reason, ours))
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
            store.transaction(cancel_bundle(appointment, reason, []))
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
        try:
            freed += _release(store, appointment)
        except (ConcurrentChange, OutcomeUnknown):
            continue  # changed meanwhile, or no answer: the next pass re-reads it
    return freed


def _release(store: FhirStore, appointment: Resource) -> int:
    """Delete the Slots carrying ``appointment``'s booking request id and drop its references
    to them, version-checked on the Appointment as read. Returns how many were deleted."""
    ours = [str(s.get("id")) for s in slots_written_with(store, appointment)]
    if ours:
        store.transaction(release_bundle(appointment, ours))
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

    return retrying(policy or RetryPolicy(), clock, attempt, operation="hold sweep")
