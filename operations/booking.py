"""Use cases ``$book`` and ``$hold``: validate a proposal, re-check it, write it in one transaction.

Race freedom (docs/consistency.md): each booking transaction carries a version-checked
(``ifMatch``) update of a per-Schedule lock resource for every Schedule it touches, read
*before* the identifier look-up and the Slot search that decided the write. Two bookings that
both saw a time as free both hold the same lock version; the upstream lets only one of them
commit. The other gets 409/412, re-reads and decides again, until a deadline.

Every booking carries a sidecar-generated *booking request* id, as a ``meta.tag``, on its
Appointment and Slots. When the answer to the transaction is lost (timeout, connection cut), the
sidecar fences the lock version the transaction was checked against and looks the tag up: the
transaction then either has landed (201, as if nothing happened) or never will (the caller is
told nothing was stored). See docs/reliability.md.
"""

from __future__ import annotations

import hashlib
import random
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from operations.availability import schedule_windows
from operations.errors import (
    ConcurrentChange,
    Conflict,
    InvalidRequest,
    OutcomeUnknown,
    StoreFailure,
    Unprocessable,
)
from operations.fhir_values import dig, format_instant, parse_instant, reference_id
from operations.find import DEFAULT_MAX_SCHEDULES, Leg, decode_slots, load_legs, slot_search_span, widened
from operations.model import (
    FANONI_EXTENSION_BASE,
    HOLD_EXPIRES_URL,
    SLOT_CAPACITY_URL,
    Interval,
    Service,
    SlotStatus,
)
from operations.parameters import service_references
from operations.rendering import BUFFER_COMMENTS, VISIT, footprint
from operations.store import FhirReader, FhirStore, Resource, Stores, as_stores

LOCK_COUNTER_URL = FANONI_EXTENSION_BASE + "lock-counter"
FANONI_CODE_SYSTEM = "https://fanoni.dev/fhir/CodeSystem/fanoni"
ENDED_STATUSES = frozenset({"cancelled", "entered-in-error", "noshow"})
HOLD_TAG = {"system": FANONI_CODE_SYSTEM, "code": "hold", "display": "Held by Fanoni $hold"}
BOOKING_REQUEST_SYSTEM = "https://fanoni.dev/fhir/booking-request"
"""Tag system of the sidecar-generated booking request id (the code), on the Appointment and on
every Slot written with it: how the sidecar recognises what it wrote. A tag, not an identifier:
callers' identifiers stay as they sent them, the upstream keeps tags across updates that omit
them (HAPI does), and the HAPI guard refuses anyone else introducing one."""
BOOKING_TAG = {"system": FANONI_CODE_SYSTEM, "code": "booking", "display": "Written by Fanoni $book/$hold"}
"""On every Appointment the sidecar writes: what the background work searches for."""
MAX_PARTICIPANTS = 50


@dataclass(frozen=True)
class Clock:
    """Time as the use cases see it; the plugin passes real clocks, tests fake ones."""

    now: Callable[[], datetime]
    monotonic: Callable[[], float]
    sleep: Callable[[float], None]


@dataclass(frozen=True)
class RetryPolicy:
    """How long conflicting writers keep re-deciding before a 409 reaches the caller."""

    deadline_seconds: float = 20.0
    max_attempts: int = 60
    base_backoff_seconds: float = 0.02
    max_backoff_seconds: float = 0.5


@dataclass(frozen=True)
class BookingRequest:
    """A validated proposal: one visit interval, one service, one busy Slot per Schedule."""

    appointment: Resource
    service_id: str
    visit: Interval
    schedule_ids: tuple[str, ...]
    buffers: dict[str, tuple[timedelta, timedelta]]
    """Per schedule id: the buffer lengths the proposal carries (before, after)."""
    visit_paths: dict[str, str]
    """Per schedule id: the FHIRPath of its busy Slot in the proposal, for errors."""
    identifiers: tuple[tuple[str | None, str], ...]
    root: str

    @classmethod
    def from_body(cls, body: Any, *, max_schedules: int = DEFAULT_MAX_SCHEDULES) -> BookingRequest:
        """The ``appointment`` (alias ``appointment-resource``) of a Parameters body, or a bare
        Appointment. Raises ``InvalidRequest`` (400) naming the culprit's FHIRPath."""
        appointment, root = _appointment_from_body(body)
        return cls.from_appointment(appointment, root, max_schedules=max_schedules)

    @classmethod
    def from_appointment(
        cls, appointment: Resource, root: str, *, max_schedules: int = DEFAULT_MAX_SCHEDULES
    ) -> BookingRequest:
        for field in ("serviceType", "contained", "participant", "identifier", "extension", "slot"):
            if field in appointment and not isinstance(appointment[field], list):
                raise InvalidRequest(
                    f"Appointment.{field} must be a list", code="structure", expression=f"{root}.{field}"
                )
        if appointment.get("status") not in (None, "proposed"):
            raise InvalidRequest(
                f"The appointment must be a proposal (status 'proposed'), not {appointment.get('status')!r}",
                code="value",
                expression=f"{root}.status",
            )
        if appointment.get("slot"):
            raise InvalidRequest(
                "The proposal must not reference stored Slots: its Slots are contained and written by the operation",
                code="invalid",
                expression=f"{root}.slot",
            )
        concepts = appointment.get("serviceType") or []
        if not isinstance(concepts, list):
            raise InvalidRequest(
                "serviceType must be a list", code="structure", expression=f"{root}.serviceType"
            )
        refs = list(dict.fromkeys(service_references(concepts)))
        if len(refs) != 1:
            raise InvalidRequest(
                f"The proposal must name exactly one HealthcareService in serviceType, it names {len(refs)}",
                code="required" if not refs else "invalid",
                expression=f"{root}.serviceType",
            )
        try:
            service_id = reference_id(refs[0], "HealthcareService")
        except ValueError as exc:
            raise InvalidRequest(str(exc), code="value", expression=f"{root}.serviceType") from None

        contained = appointment.get("contained") or []
        if not isinstance(contained, list):
            raise InvalidRequest("contained must be a list", code="structure", expression=f"{root}.contained")
        visits: dict[str, tuple[Interval, str]] = {}
        buffer_slots: list[tuple[str, Interval, str]] = []
        for index, resource in enumerate(contained):
            path = f"{root}.contained[{index}]"
            if not isinstance(resource, dict) or resource.get("resourceType") != "Slot":
                continue
            schedule_id, interval = _contained_slot(resource, path)
            status = resource.get("status")
            if status == SlotStatus.BUSY:
                if schedule_id in visits:
                    raise InvalidRequest(
                        f"Two busy Slots for Schedule/{schedule_id}: one visit per schedule",
                        code="invalid",
                        expression=path,
                    )
                visits[schedule_id] = (interval, path)
            elif status == SlotStatus.BUSY_UNAVAILABLE:
                buffer_slots.append((schedule_id, interval, path))
            else:
                raise InvalidRequest(
                    f"A contained Slot of a proposal is 'busy' (the visit) or 'busy-unavailable' (a buffer), not {status!r}",
                    code="value",
                    expression=f"{path}.status",
                )
        if not visits:
            raise InvalidRequest(
                "The proposal has no contained busy Slot: pass the Appointment as $find returned it",
                code="required",
                expression=f"{root}.contained",
            )
        if len(visits) > max_schedules:
            raise InvalidRequest(
                f"At most {max_schedules} schedules may take part in one booking, this proposal names {len(visits)}",
                code="value",
                expression=f"{root}.contained",
            )
        participants = appointment.get("participant") or []
        if len(participants) > MAX_PARTICIPANTS:
            raise InvalidRequest(
                f"At most {MAX_PARTICIPANTS} participants, this proposal names {len(participants)}",
                code="value",
                expression=f"{root}.participant",
            )
        first_interval, _ = next(iter(visits.values()))
        for interval, path in visits.values():
            if interval != first_interval:
                raise InvalidRequest(
                    "The busy Slots of the proposal do not all have the same start and end",
                    code="invalid",
                    expression=path,
                )
        for field, value in (("start", first_interval.start), ("end", first_interval.end)):
            if field in appointment:
                try:
                    given = parse_instant(appointment[field])
                except ValueError as exc:
                    raise InvalidRequest(str(exc), code="value", expression=f"{root}.{field}") from None
                if given != value:
                    raise InvalidRequest(
                        f"Appointment.{field} does not match its contained busy Slots",
                        code="invalid",
                        expression=f"{root}.{field}",
                    )
        buffers: dict[str, list[timedelta]] = {sid: [timedelta(0), timedelta(0)] for sid in visits}
        for schedule_id, interval, path in buffer_slots:
            if schedule_id not in visits:
                raise InvalidRequest(
                    f"A buffer Slot names Schedule/{schedule_id}, which has no visit in this proposal",
                    code="invalid",
                    expression=f"{path}.schedule",
                )
            if interval.end == first_interval.start:
                side = 0
            elif interval.start == first_interval.end:
                side = 1
            else:
                raise InvalidRequest(
                    "A buffer Slot must end where the visit starts or start where it ends",
                    code="invalid",
                    expression=path,
                )
            if buffers[schedule_id][side]:
                raise InvalidRequest(
                    f"Two buffer Slots on the same side of the visit for Schedule/{schedule_id}",
                    code="invalid",
                    expression=path,
                )
            buffers[schedule_id][side] = interval.duration
        identifiers = []
        for index, identifier in enumerate(appointment.get("identifier") or []):
            if not isinstance(identifier, dict) or not isinstance(identifier.get("value"), str):
                raise InvalidRequest(
                    "An identifier needs a value",
                    code="value",
                    expression=f"{root}.identifier[{index}]",
                )
            identifiers.append((identifier.get("system"), identifier["value"]))
        return cls(
            appointment=appointment,
            service_id=service_id,
            visit=first_interval,
            schedule_ids=tuple(visits),
            visit_paths={sid: path for sid, (_, path) in visits.items()},
            buffers={sid: (b[0], b[1]) for sid, b in buffers.items()},
            identifiers=tuple(identifiers),
            root=root,
        )


def _appointment_from_body(body: Any) -> tuple[Resource, str]:
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a FHIR Parameters or Appointment resource", code="structure")
    if body.get("resourceType") == "Appointment":
        return body, "Appointment"
    if body.get("resourceType") != "Parameters":
        raise InvalidRequest(
            f"The body must be a Parameters or Appointment resource, not {body.get('resourceType')!r}",
            code="structure",
        )
    found = [
        p
        for p in body.get("parameter") or []
        if isinstance(p, dict) and p.get("name") in ("appointment", "appointment-resource")
    ]
    if not found:
        raise InvalidRequest(
            "The 'appointment' parameter (an Appointment resource) is required",
            code="required",
            expression="Parameters.appointment",
        )
    if len(found) > 1:
        raise InvalidRequest(
            "'appointment' may be given only once",
            code="value",
            expression="Parameters.appointment[1]",
        )
    resource = found[0].get("resource")
    if not isinstance(resource, dict) or resource.get("resourceType") != "Appointment":
        raise InvalidRequest(
            "The 'appointment' parameter must carry an Appointment resource",
            code="structure",
            expression="Parameters.appointment",
        )
    return resource, "Parameters.appointment"


def _contained_slot(resource: Resource, path: str) -> tuple[str, Interval]:
    try:
        schedule_id = reference_id(dig(resource, "schedule", "reference"), "Schedule")
    except ValueError as exc:
        raise InvalidRequest(str(exc), code="value", expression=f"{path}.schedule") from None
    times = []
    for field in ("start", "end"):
        if field not in resource:
            raise InvalidRequest(f"The Slot has no {field}", code="required", expression=f"{path}.{field}")
        try:
            times.append(parse_instant(resource[field]))
        except ValueError as exc:
            raise InvalidRequest(str(exc), code="value", expression=f"{path}.{field}") from None
    if times[0] >= times[1]:
        raise InvalidRequest("The Slot ends before it starts", code="invalid", expression=path)
    return schedule_id, Interval(times[0], times[1])


def check_against_parameters(request: BookingRequest, legs: Sequence[Leg]) -> None:
    """Duration and buffers of the proposal must be those the parameters say (422)."""
    for leg in legs:
        if request.visit.duration != leg.params.duration:
            raise Unprocessable(
                f"The visit lasts {request.visit.duration}, but the duration for Schedule/{leg.schedule.id} "
                f"is {leg.params.duration}",
                expression=f"{request.root}.contained",
            )
        before, after = request.buffers[leg.schedule.id]
        for label, given, wanted in (
            ("before", before, leg.params.buffer_before),
            ("after", after, leg.params.buffer_after),
        ):
            if given != wanted:
                raise Unprocessable(
                    f"The buffer {label} the visit on Schedule/{leg.schedule.id} is {given}, "
                    f"the parameters say {wanted}",
                    expression=f"{request.root}.contained",
                )


def decide(
    service: Service,
    legs: Sequence[Leg],
    slot_resources: Sequence[Resource],
    visit: Interval,
    now: datetime,
    root: str,
) -> None:
    """Is the visit (with each Schedule's buffers) bookable right now? Raises when not:
    422 when it lies outside availability or in the past, 409 when it is taken."""
    if visit.start < now:
        raise Unprocessable("The visit starts in the past", expression=f"{root}.start")
    slots = decode_slots(slot_resources)
    free_only = [s for s in slots if s.status == SlotStatus.FREE]
    for leg in legs:
        if not leg.schedule.active:
            raise Unprocessable(f"Schedule/{leg.schedule.id} is not active", expression=leg.expression)
        span = widened(visit, leg.params)
        if not _fits(schedule_windows(leg.schedule, service, leg.params, free_only, span, now), visit):
            raise Unprocessable(
                f"The time (with its buffers) lies outside the availability of Schedule/{leg.schedule.id}",
                expression=f"{root}.start",
            )
        if not _fits(schedule_windows(leg.schedule, service, leg.params, slots, span, now), visit):
            raise Conflict(
                f"The time (or its buffers) is already booked or held on Schedule/{leg.schedule.id}",
                expression=f"{root}.start",
            )


def _fits(windows: Sequence[Interval], visit: Interval) -> bool:
    return any(w.start <= visit.start and visit.end <= w.end for w in windows)


def lock_id(schedule_id: str) -> str:
    """The id of a Schedule's lock resource (a ``Basic``), within FHIR's 64-character limit."""
    candidate = f"fanoni-lock-{schedule_id}"
    if len(candidate) <= 64:
        return candidate
    return "fanoni-lock-" + hashlib.sha256(schedule_id.encode()).hexdigest()[:52]


def lock_resource(schedule_id: str, counter: int) -> Resource:
    return {
        "resourceType": "Basic",
        "id": lock_id(schedule_id),
        "code": {"coding": [{"system": FANONI_CODE_SYSTEM, "code": "schedule-lock"}]},
        "subject": {"reference": f"Schedule/{schedule_id}"},
        "extension": [{"url": LOCK_COUNTER_URL, "valueInteger": counter}],
    }


def _lock_counter(resource: Resource) -> int:
    for ext in resource.get("extension") or []:
        if (
            isinstance(ext, dict)
            and ext.get("url") == LOCK_COUNTER_URL
            and isinstance(ext.get("valueInteger"), int)
        ):
            return int(ext["valueInteger"])
    return 0


def read_locks(store: FhirStore, schedule_ids: Sequence[str]) -> dict[str, tuple[str, int]]:
    """``{schedule id: (version, counter)}``, creating missing locks first (one transaction).

    Creating a lock concurrently from two processes is harmless: both then read a version
    before their Slot search, which is all the protocol needs.
    """
    wanted = {lock_id(s): s for s in schedule_ids}
    found = _search_locks(store, wanted)
    missing = [s for s in schedule_ids if s not in found]
    if missing:
        entries = [
            {
                "fullUrl": f"Basic/{lock_id(s)}",
                "resource": lock_resource(s, 0),
                "request": {"method": "PUT", "url": f"Basic/{lock_id(s)}"},
            }
            for s in missing
        ]
        lost: OutcomeUnknown | None = None
        try:
            store.transaction({"resourceType": "Bundle", "type": "transaction", "entry": entries})
        except ConcurrentChange:
            pass  # another process created them just now
        except OutcomeUnknown as exc:
            lost = exc  # creating a lock is idempotent: whether it landed, the search tells
        found = _search_locks(store, wanted)
        if any(s not in found for s in schedule_ids):
            if lost is not None:
                lost.resolution = "Nothing was stored (checked): ask again."
                raise lost
            raise Conflict("Could not create the per-Schedule lock resources on the upstream")
    return found


def _search_locks(store: FhirStore, wanted: dict[str, str]) -> dict[str, tuple[str, int]]:
    found = {}
    for resource in store.search("Basic", [("_id", ",".join(wanted))]):
        schedule_id = wanted.get(str(resource.get("id")))
        version = (resource.get("meta") or {}).get("versionId")
        if schedule_id is not None and version is not None:
            found[schedule_id] = (str(version), _lock_counter(resource))
    return found


def lock_entries(locks: dict[str, tuple[str, int]]) -> list[Resource]:
    """Version-checked updates of the locks: the heart of race freedom."""
    return [
        {
            "fullUrl": f"Basic/{lock_id(schedule_id)}",
            "resource": lock_resource(schedule_id, counter + 1),
            "request": {
                "method": "PUT",
                "url": f"Basic/{lock_id(schedule_id)}",
                "ifMatch": f'W/"{version}"',
            },
        }
        for schedule_id, (version, counter) in locks.items()
    ]


@dataclass(frozen=True)
class BookingResult:
    """What the plugin returns: 201 for a new booking, 200 for an idempotent replay."""

    status: int
    bundle: Resource
    expires: datetime | None = None


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
    locks: dict[str, tuple[str, int]],
    *,
    hold: bool,
    expires: datetime | None,
    marker: str,
) -> Resource:
    """The one transaction: lock updates, the Slots (visit + buffers), the Appointment."""
    slot_entries = []
    for leg in legs:
        for slot in _written_slots(leg, request.visit, hold, expires, marker):
            slot_entries.append(
                {
                    "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                    "resource": slot,
                    "request": {"method": "POST", "url": "Slot"},
                }
            )
    appointment = {
        k: v for k, v in request.appointment.items() if k not in ("id", "meta", "contained", "slot", "text")
    }
    zone = legs[0].params.timezone
    appointment.update(
        {
            "resourceType": "Appointment",
            "status": "pending" if hold else "booked",
            "start": format_instant(request.visit.start, zone),
            "end": format_instant(request.visit.end, zone),
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
        if not (isinstance(e, dict) and e.get("url") == HOLD_EXPIRES_URL)
    ]
    if expires is not None:
        extensions.append({"url": HOLD_EXPIRES_URL, "valueInstant": format_instant(expires)})
        appointment["meta"]["tag"].append(HOLD_TAG)
    if extensions:
        appointment["extension"] = extensions
    entries = [
        *lock_entries(locks),
        *slot_entries,
        {
            "fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": appointment,
            "request": {"method": "POST", "url": "Appointment"},
        },
    ]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def response_bundle(response: Resource) -> Resource:
    """The caller's view of a transaction-response: the Appointment first, then its Slots; the
    lock updates and the Provenance are implementation details and left out."""
    entries = [e for e in response.get("entry") or [] if isinstance(e, dict)]
    appointments = [e for e in entries if (e.get("resource") or {}).get("resourceType") == "Appointment"]
    slots = [e for e in entries if (e.get("resource") or {}).get("resourceType") == "Slot"]
    return {"resourceType": "Bundle", "type": "transaction-response", "entry": [*appointments, *slots]}


def slot_ids(appointment: Resource) -> list[str]:
    """The ids of the Slots an Appointment references (unreadable references skipped)."""
    ids = []
    for ref in appointment.get("slot") or []:
        try:
            ids.append(reference_id(dig(ref, "reference"), "Slot"))
        except ValueError:
            continue
    return ids


def existing_booking(store: FhirStore, request: BookingRequest) -> BookingResult | None:
    """An Appointment already written for one of the caller's identifiers (idempotent retry)."""
    for system, value in request.identifiers:
        token = f"{system}|{value}" if system else value
        # A cancelled one (by $cancel or a lapsed hold) no longer answers for the identifier:
        # asking again books anew, which is what a client retrying after a lapse wants.
        found = [
            a
            for a in store.search("Appointment", [("identifier", token)])
            if a.get("status") not in ENDED_STATUSES
        ]
        if found:
            return BookingResult(200, replay_bundle(store, found[0]), hold_expiry(found[0]))
    return None


def replay_bundle(store: FhirStore, appointment: Resource) -> Resource:
    """The stored Appointment and its Slots as a transaction-response-shaped Bundle."""
    ids = slot_ids(appointment)
    slots = store.search("Slot", [("_id", ",".join(ids))]) if ids else []
    by_id = {s.get("id"): s for s in slots}
    return _bundle_of([appointment, *(by_id[i] for i in ids if i in by_id)])


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


def check_participants(reader: FhirReader, request: BookingRequest, legs: Sequence[Leg]) -> None:
    """Every participant the proposal names besides the schedule actors (the patient, a
    relative, ...) must be readable with the caller's credentials: a caller may book for what
    it may read (SPEC §5.1). One search per resource type, whatever the number of participants.

    An upstream 401/403 reaches the caller as such (raised by the store); a participant the
    search does not return is 422 ``not-found``.
    """
    actors = {leg.schedule.actor.reference for leg in legs}
    wanted: dict[str, dict[str, str]] = {}
    for index, participant in enumerate(request.appointment.get("participant") or []):
        path = f"{request.root}.participant[{index}].actor"
        if not isinstance(participant, dict):
            raise InvalidRequest("A participant must be an object", code="structure", expression=path)
        actor = participant.get("actor")
        if actor is None:
            continue
        reference = actor.get("reference") if isinstance(actor, dict) else None
        if reference is None and isinstance(actor, dict):
            continue  # an actor named by identifier or display only: nothing to read
        if not isinstance(reference, str) or reference in actors:
            if not isinstance(reference, str):
                raise InvalidRequest("actor.reference must be a string", code="value", expression=path)
            continue
        resource_type, _, resource_id = reference.partition("/")
        if not resource_type.isalpha() or not resource_type[:1].isupper() or not _FHIR_ID.match(resource_id):
            raise InvalidRequest(
                f"A participant must reference a resource on this server as Type/id, not {reference!r}",
                code="value",
                expression=f"{path}.reference",
            )
        wanted.setdefault(resource_type, {}).setdefault(resource_id, f"{path}.reference")
    for resource_type, ids in wanted.items():
        found = {str(r.get("id")) for r in reader.search(resource_type, [("_id", ",".join(ids))])}
        for resource_id, path in ids.items():
            if resource_id not in found:
                raise Unprocessable(
                    f"{resource_type}/{resource_id} does not exist, or the caller's credentials may not read it",
                    code="not-found",
                    expression=path,
                )


_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")

T = TypeVar("T")


def retrying(policy: RetryPolicy, clock: Clock, attempt: Callable[[], T]) -> T:
    """Run ``attempt`` until it stops raising ``ConcurrentChange`` or the deadline passes."""
    started = clock.monotonic()
    for tries in range(1, policy.max_attempts + 1):
        try:
            return attempt()
        except ConcurrentChange:
            elapsed = clock.monotonic() - started
            if elapsed >= policy.deadline_seconds or tries == policy.max_attempts:
                break
            backoff = min(policy.max_backoff_seconds, policy.base_backoff_seconds * (2 ** min(tries, 10)))
            clock.sleep(random.uniform(0, backoff))  # jitter, not security
    raise Conflict("Concurrent changes to the same schedules did not settle before the deadline; try again")


SETTLE_ATTEMPTS = 6
"""How often the sidecar tries to fence a lock after a lost answer before it gives up and
tells the caller the outcome is unknown (the upstream is down)."""


def fence(store: FhirStore, locks: dict[str, tuple[str, int]], clock: Clock) -> bool:
    """After a write's answer was lost: advance one lock past the version the write was checked
    against, so the write can no longer land if it has not already.

    Returns ``True`` when the fence landed (the lost write had not landed, and now never will),
    ``False`` when the lock had moved (the lost write, or another, landed first: look it up).
    Raises ``OutcomeUnknown`` when the upstream cannot be reached for it either.
    """
    schedule_id = min(locks)
    version, counter = locks[schedule_id]
    # counter + 2: content that differs from what the lost write stored (counter + 1), so the
    # upstream cannot treat the fence as a no-op update and skip its version check.
    entry = lock_entries({schedule_id: (version, counter + 1)})
    last: StoreFailure | None = None
    for tries in range(SETTLE_ATTEMPTS):
        try:
            store.transaction({"resourceType": "Bundle", "type": "transaction", "entry": entry})
            return True
        except ConcurrentChange:
            return False
        except StoreFailure as exc:
            if not exc.transient:
                raise
            last = exc
            clock.sleep(min(2.0, 0.1 * 2**tries))
    assert last is not None
    raise last if isinstance(last, OutcomeUnknown) else OutcomeUnknown(last)


def _landed_booking(store: FhirStore, marker: str) -> Resource | None:
    found = store.search("Appointment", [("_tag", f"{BOOKING_REQUEST_SYSTEM}|{marker}")])
    return found[0] if found else None


def settle_lost_booking(
    store: FhirStore, locks: dict[str, tuple[str, int]], marker: str, clock: Clock, lost: OutcomeUnknown
) -> Resource | None:
    """The stored Appointment when a booking whose answer was ``lost`` has landed; ``None`` when
    it has not and never will (the lock is fenced). Raises ``lost`` itself -- the outcome is
    unknown -- when neither can be established (the upstream stays unreachable, the operation's
    time runs out)."""
    try:
        if fence(store, locks, clock):
            return None
        return _landed_booking(store, marker)
    except StoreFailure:
        raise lost from None


def book(
    stores: Stores | FhirStore,
    request: BookingRequest,
    *,
    hold: bool,
    hold_ttl: timedelta,
    clock: Clock,
    policy: RetryPolicy | None = None,
    marker: str | None = None,
) -> BookingResult:
    """``$book`` (``hold=False``) or ``$hold``: 201 with the transaction-response, or a replay.

    ``marker`` is the booking request id (generated when not given): it travels on the
    Appointment and the Slots, so a booking whose answer was lost can be found.
    """
    stores = as_stores(stores)
    store = stores.service
    service, legs = load_legs(
        stores.caller,
        request.schedule_ids,
        request.service_id,
        expressions=[request.visit_paths[s] for s in request.schedule_ids],
        service_expression=f"{request.root}.serviceType",
    )
    check_against_parameters(request, legs)
    check_participants(stores.caller, request, legs)
    marker = marker or uuid.uuid4().hex

    def attempt() -> BookingResult:
        # Lock, then Slots, then the identifier look-up. A twin request (same identifier) that
        # committed before our Slot search is found by the look-up that follows it (its
        # Appointment and Slots landed together), so we answer with it instead of "taken"; one
        # that commits after our lock read fails our version check, and the next attempt finds it.
        locks = read_locks(store, request.schedule_ids)
        now = clock.now()
        span = slot_search_span(request.visit, legs)
        slot_resources = store.search_slots(request.schedule_ids, span.start, span.end)
        replay = existing_booking(store, request)
        if replay is not None:
            return replay
        decide(service, legs, slot_resources, request.visit, now, request.root)
        expires = now + hold_ttl if hold else None
        bundle = booking_bundle(request, legs, locks, hold=hold, expires=expires, marker=marker)
        try:
            response = store.transaction(bundle)
        except OutcomeUnknown as lost:
            landed = settle_lost_booking(store, locks, marker, clock, lost)
            if landed is None:
                lost.resolution = "Nothing was stored (checked): ask again."
                raise
            try:
                bundle = replay_bundle(store, landed)
            except StoreFailure:
                # It is stored: say so with what is already known (the Appointment, whose
                # ``slot`` names its Slots), not with an error that reads "nothing happened".
                bundle = _bundle_of([landed])
            return BookingResult(201, bundle, hold_expiry(landed))
        return BookingResult(201, response_bundle(response), expires)

    return retrying(policy or RetryPolicy(), clock, attempt)


__all__ = [
    "BOOKING_REQUEST_SYSTEM",
    "BOOKING_TAG",
    "BookingRequest",
    "BookingResult",
    "Clock",
    "RetryPolicy",
    "book",
    "booking_marker",
    "hold_expiry",
    "replay_bundle",
]
