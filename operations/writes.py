"""What the booking operations write, and how they recognise it afterwards: the transaction of a
booking (locks, Slots, Appointment), the tags that mark what the sidecar wrote, and the
transaction-response shapes the callers get (also when a stored booking is replayed).
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from operations.fhir_values import dig, format_instant, parse_instant, reference_id, transaction_bundle
from operations.locks import Locks, lock_entries
from operations.model import (
    FANONI_CODE_SYSTEM,
    HOLD_EXPIRES_URL,
    SERIES_SYSTEM,
    SERIES_URL,
    SLOT_CAPACITY_URL,
    Interval,
    Leg,
    SlotStatus,
)
from operations.proposal import BookingRequest
from operations.rendering import BUFFER_COMMENTS, VISIT, footprint
from operations.series import series_extension, series_id_of, series_tag
from operations.store import FhirStore, Resource

ENDED_STATUSES = frozenset({"cancelled", "entered-in-error", "noshow"})
HOLD_TAG = {"system": FANONI_CODE_SYSTEM, "code": "hold", "display": "Held by Fanoni $hold"}
BOOKING_REQUEST_SYSTEM = "https://fanoni.dev/fhir/booking-request"
"""Tag system of the sidecar-generated booking request id (the code), on the Appointment and on
every Slot written with it: how the sidecar recognises what it wrote. A tag, not an identifier:
callers' identifiers stay as they sent them, the upstream keeps tags across updates that omit
them (HAPI does), and the HAPI guard refuses anyone else introducing one."""
BOOKING_TAG = {"system": FANONI_CODE_SYSTEM, "code": "booking", "display": "Written by Fanoni $book/$hold"}
"""On every Appointment the sidecar writes: what the background work searches for."""


@dataclass(frozen=True)
class BookingResult:
    """What the plugin returns: 201 for a new booking, 200 for an idempotent replay."""

    status: int
    bundle: Resource
    expires: datetime | None = None
    attempts: int = 1
    """How many times the operation read and decided (1 + the retries after version conflicts)."""
    group: int = 1
    """How many bookings were decided and written together with it (itself included; group
    commit, ``operations/booking_group.py``)."""


def _written_slots(
    leg: Leg, visit: Interval, hold: bool, expires: datetime | None, marker: str
) -> list[Resource]:
    """The Slots a booking stores for one Schedule: the visit (``busy``, or ``busy-tentative``
    for a hold) and its buffers (``busy-unavailable``), stamped with the capacity, the booking
    request id and, for a hold, the expiry."""
    zone = leg.params.timezone
    extensions: list[Resource] = [{"url": SLOT_CAPACITY_URL, "valuePositiveInt": leg.params.slot_capacity}]
    if expires is not None:
        extensions.append({"url": HOLD_EXPIRES_URL, "valueInstant": format_instant(expires)})
    slots = []
    for role, part in footprint(leg, visit):
        slot: Resource = {
            "resourceType": "Slot",
            "meta": {"tag": [booking_request_tag(marker)]},
            "extension": list(extensions),
            "schedule": {"reference": f"Schedule/{leg.schedule.id}"},
            "status": SlotStatus.BUSY_UNAVAILABLE,
            "start": format_instant(part.start, zone),
            "end": format_instant(part.end, zone),
        }
        if role == VISIT:
            slot["status"] = SlotStatus.BUSY_TENTATIVE if hold else SlotStatus.BUSY
        else:
            slot["comment"] = BUFFER_COMMENTS[role]
        slots.append(slot)
    return slots


def booking_request_tag(marker: str) -> Resource:
    """The tag that marks what one booking request wrote."""
    return {"system": BOOKING_REQUEST_SYSTEM, "code": marker}


def booking_marker(resource: Resource) -> str | None:
    """The booking request id a stored Appointment or Slot carries, if the sidecar wrote it."""
    meta = resource.get("meta")
    for tag in (meta.get("tag") if isinstance(meta, dict) else None) or []:
        if isinstance(tag, dict) and tag.get("system") == BOOKING_REQUEST_SYSTEM:
            code = tag.get("code")
            return code if isinstance(code, str) and code else None
    return None


def booking_bundle(
    request: BookingRequest,
    legs: Sequence[Leg],
    locks: Locks,
    *,
    hold: bool,
    expires: datetime | None,
    marker: str,
    visits: Sequence[Interval] | None = None,
    series_id: str | None = None,
) -> Resource:
    """The one transaction: lock updates, then for each visit its Slots (visit + buffers) and its
    Appointment. ``visits`` defaults to the proposal's; with ``series_id`` each Appointment is an
    occurrence of that series (SPEC §7.4)."""
    visits = list(visits or [request.visit])
    entries = [*lock_entries(locks)]
    for index, visit in enumerate(visits):
        slot_entries = []
        for leg in legs:
            for slot in _written_slots(leg, visit, hold, expires, marker):
                slot_entries.append(
                    {
                        "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                        "resource": slot,
                        "request": {"method": "POST", "url": "Slot"},
                    }
                )
        appointment = _booked_appointment(request, legs, visit, slot_entries, hold, expires, marker)
        if series_id is not None:
            appointment["extension"] = [
                *appointment.get("extension", []),
                series_extension(series_id, index + 1, len(visits)),
            ]
            appointment["meta"]["tag"].append(series_tag(series_id))
        entries += [
            *slot_entries,
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": appointment,
                "request": {"method": "POST", "url": "Appointment"},
            },
        ]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _booked_appointment(
    request: BookingRequest,
    legs: Sequence[Leg],
    visit: Interval,
    slot_entries: Sequence[Resource],
    hold: bool,
    expires: datetime | None,
    marker: str,
) -> Resource:
    """The Appointment a booking stores for one visit: the proposal as the caller sent it, with
    the status, the times, the new Slots, the sidecar's tags and every schedule actor."""
    appointment = {
        k: v
        for k, v in copy.deepcopy(request.appointment).items()
        if k not in ("id", "meta", "contained", "slot", "text")
    }
    zone = legs[0].params.timezone
    appointment.update(
        {
            "resourceType": "Appointment",
            "status": "pending" if hold else "booked",
            "start": format_instant(visit.start, zone),
            "end": format_instant(visit.end, zone),
            "slot": [{"reference": e["fullUrl"]} for e in slot_entries],
            "meta": {"tag": [BOOKING_TAG, booking_request_tag(marker)]},
        }
    )
    participants = list(appointment.get("participant") or [])
    present = {dig(p, "actor", "reference") for p in participants}
    for leg in legs:
        if leg.schedule.actor.reference not in present:
            participants.append(
                {
                    "actor": {"reference": leg.schedule.actor.reference},
                    "required": "required",
                    "status": "needs-action",
                }
            )
    appointment["participant"] = participants
    extensions = [
        e
        for e in appointment.get("extension") or []
        if not (isinstance(e, dict) and e.get("url") in (HOLD_EXPIRES_URL, SERIES_URL))
    ]
    if expires is not None:
        extensions.append({"url": HOLD_EXPIRES_URL, "valueInstant": format_instant(expires)})
        appointment["meta"]["tag"].append(HOLD_TAG)
    if extensions:
        appointment["extension"] = extensions
    else:
        appointment.pop("extension", None)
    return appointment


def response_bundle(response: Resource) -> Resource:
    """The caller's view of a transaction-response: each Appointment followed by its Slots (in
    the order written); the lock updates, deletions and the Provenance are implementation
    details and left out."""
    entries = [e for e in response.get("entry") or [] if isinstance(e, dict)]
    appointments = [e for e in entries if (e.get("resource") or {}).get("resourceType") == "Appointment"]
    slots = [e for e in entries if (e.get("resource") or {}).get("resourceType") == "Slot"]
    by_id = {str(e["resource"].get("id")): e for e in slots}
    ordered: list[Resource] = []
    placed: set[str] = set()
    for entry in appointments:
        ordered.append(entry)
        for slot_id in slot_ids(entry["resource"]):
            if slot_id in by_id and slot_id not in placed:
                ordered.append(by_id[slot_id])
                placed.add(slot_id)
    ordered += [e for e in slots if str(e["resource"].get("id")) not in placed]
    return {"resourceType": "Bundle", "type": "transaction-response", "entry": ordered}


def slot_ids(appointment: Resource) -> list[str]:
    """The ids of the Slots an Appointment references (unreadable references skipped)."""
    return [sid for ref in appointment.get("slot") or [] if (sid := slot_reference_id(ref)) is not None]


def slots_written_with(store: FhirStore, appointment: Resource) -> list[Resource]:
    """The Slots ``appointment`` references that carry its own booking request tag: what the
    sidecar wrote with it, and nothing anyone else wrote (one search; none without a tag)."""
    marker = booking_marker(appointment)
    ids = slot_ids(appointment)
    if marker is None or not ids:
        return []
    return [s for s in store.search("Slot", [("_id", ",".join(ids))]) if booking_marker(s) == marker]


def replay_bundle(store: FhirStore, appointment: Resource) -> Resource:
    """The stored Appointment and its Slots as a transaction-response-shaped Bundle -- for an
    occurrence of a series, every occurrence, in order, each followed by its Slots."""
    series_id = series_id_of(appointment)
    appointments = [appointment]
    if series_id is not None:
        members = store.search("Appointment", [("_tag", f"{SERIES_SYSTEM}|{series_id}")])
        live = [a for a in members if a.get("status") not in ENDED_STATUSES]
        appointments = sorted(live or [appointment], key=lambda a: parse_instant(a.get("start")))
    ids = [i for a in appointments for i in slot_ids(a)]
    slots = store.search("Slot", [("_id", ",".join(ids))]) if ids else []
    by_id = {s.get("id"): s for s in slots}
    return _bundle_of([r for a in appointments for r in (a, *(by_id[i] for i in slot_ids(a) if i in by_id))])


def _bundle_of(ordered: Sequence[Resource]) -> Resource:
    return {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [
            {
                "fullUrl": f"{r['resourceType']}/{r.get('id')}",
                "resource": r,
                "response": {
                    "status": "200 OK",
                    "location": f"{r['resourceType']}/{r.get('id')}/_history/{(r.get('meta') or {}).get('versionId', '1')}",
                },
            }
            for r in ordered
        ],
    }


def hold_expiry(appointment: Resource) -> datetime | None:
    """The recorded expiry of a hold, if any (unreadable counts as none)."""
    for ext in appointment.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == HOLD_EXPIRES_URL:
            try:
                return parse_instant(ext.get("valueInstant") or ext.get("valueDateTime"))
            except ValueError:
                return None
    return None


def version_of(resource: Resource) -> str:
    return str((resource.get("meta") or {}).get("versionId", ""))


def versioned_put(resource: Resource, version: str) -> Resource:
    """A version-checked update of ``resource`` (sent without its server-managed ``meta``)."""
    url = f"{resource['resourceType']}/{resource['id']}"
    request: Resource = {"method": "PUT", "url": url}
    if version:
        request["ifMatch"] = f'W/"{version}"'
    body = {k: v for k, v in resource.items() if k != "meta"}
    return {"fullUrl": url, "resource": body, "request": request}


def release_bundle(
    appointment: Resource, deleting: Sequence[str], changes: Resource | None = None
) -> Resource:
    """``PUT`` the Appointment with ``changes`` (version-checked), ``DELETE`` the Slots ``deleting``.

    The deleted Slots must stop being referenced by it: the upstream keeps referential
    integrity (HAPI refuses to delete a referenced resource). References to Slots that are
    kept stay.
    """
    updated = {k: v for k, v in appointment.items() if k != "slot"} | (changes or {})
    kept = [r for r in appointment.get("slot") or [] if slot_reference_id(r) not in deleting]
    if kept:
        updated["slot"] = kept
    entries = [versioned_put(updated, version_of(appointment))]
    entries += [{"request": {"method": "DELETE", "url": f"Slot/{sid}"}} for sid in deleting]
    return transaction_bundle(entries)


def cancel_bundle(appointment: Resource, reason: Resource | None, deleting: Sequence[str]) -> Resource:
    """``release_bundle`` that also sets the Appointment ``cancelled`` (with ``reason``)."""
    changes: Resource = {"status": "cancelled"}
    if reason is not None:
        changes["cancelationReason"] = reason
    return release_bundle(appointment, deleting, changes)


def slot_reference_id(reference: Any) -> str | None:
    try:
        return reference_id(dig(reference, "reference"), "Slot")
    except ValueError:
        return None
