"""The calendar page's writes: a block (``busy-unavailable`` Slot), one-time availability (a
``free`` Slot), and removing either.

They are the administrator's own writes, made with their ``Authorization`` and nothing of the
sidecar's (no service key, no Provenance): exactly what they could do with ``curl`` on the
upstream, so the upstream's access rules and the HAPI guard decide (docs/security.md). Only
these two statuses are ever written here; visits and holds change through ``$cancel``, and
buffers go with the visit they belong to.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from operations.errors import InvalidRequest, NotFound, Unprocessable
from operations.fhir_values import as_list, dig, format_instant, is_fhir_id, parse_instant, transaction_bundle
from operations.model import SlotStatus
from operations.parameters import parse_schedule, parse_service, parse_slot
from operations.rendering import service_type_concept
from operations.store import Resource
from plugin.upstream import FhirUpstream

MAX_COMMENT = 500
WRITABLE = {"block": SlotStatus.BUSY_UNAVAILABLE, "availability": SlotStatus.FREE}
DEFAULT_COMMENTS = {"block": "blocked on the calendar page", "availability": "added on the calendar page"}


@dataclass(frozen=True)
class SlotRequest:
    """A checked request to write one block or one piece of availability."""

    kind: str
    schedule_id: str
    start: datetime
    end: datetime
    comment: str
    service_id: str | None

    @classmethod
    def from_body(cls, body: object, *, max_days: int) -> SlotRequest:
        """``{"kind": "block"|"availability", "schedule": id, "start", "end", "comment"?,
        "service"?}``; 400 with the field as expression when something is off."""
        if not isinstance(body, dict):
            raise InvalidRequest("the body must be a JSON object", code="structure")
        kind = body.get("kind")
        if kind not in WRITABLE:
            raise InvalidRequest(
                "kind must be 'block' (busy-unavailable) or 'availability' (free)",
                code="value",
                expression="kind",
            )
        schedule_id = str(body.get("schedule") or "").removeprefix("Schedule/")
        if not is_fhir_id(schedule_id):
            raise InvalidRequest("schedule must be a Schedule id", code="required", expression="schedule")
        start, end = (_instant(body, name) for name in ("start", "end"))
        if end <= start:
            raise InvalidRequest("start must be before end", code="invalid", expression="end")
        if end - start > timedelta(days=max_days):
            raise InvalidRequest(f"at most {max_days} days at once", code="value", expression="end")
        comment = body.get("comment")
        if comment is not None and not isinstance(comment, str):
            raise InvalidRequest("comment must be text", code="value", expression="comment")
        comment = (comment or "").strip()
        if len(comment) > MAX_COMMENT:
            raise InvalidRequest(
                f"comment: at most {MAX_COMMENT} characters", code="value", expression="comment"
            )
        if comment in ("buffer before appointment", "buffer after appointment"):
            # Those comments mark a booking's buffers: a block must not pass for one.
            raise InvalidRequest("that comment is reserved for buffers", code="value", expression="comment")
        service = body.get("service")
        service_id = str(service).removeprefix("HealthcareService/") if service else None
        if service_id is not None and (kind != "availability" or not is_fhir_id(service_id)):
            raise InvalidRequest(
                "service: a HealthcareService id, for availability only", code="value", expression="service"
            )
        return cls(kind, schedule_id, start, end, comment or DEFAULT_COMMENTS[kind], service_id)


def _instant(body: dict[str, Any], name: str) -> datetime:
    try:
        return parse_instant(body.get(name))
    except ValueError as exc:
        raise InvalidRequest(f"{name}: {exc}", code="value", expression=name) from None


def write_slot(store: FhirUpstream, request: SlotRequest) -> Resource:
    """Check the Schedule (and service) with the administrator's reads, then POST the Slot as
    them; the stored Slot comes back. Written in the Schedule's zone, as staff read it."""
    resources, actors = store.read_schedules([request.schedule_id])
    if not resources:
        raise Unprocessable(
            f"Schedule/{request.schedule_id} does not exist (or your token may not read it)",
            code="not-found",
            expression="schedule",
        )
    schedule = parse_schedule(resources[0], actors)
    slot: Resource = {
        "resourceType": "Slot",
        "schedule": {"reference": f"Schedule/{schedule.id}"},
        "status": WRITABLE[request.kind],
        "start": format_instant(request.start, schedule.actor.timezone),
        "end": format_instant(request.end, schedule.actor.timezone),
        "comment": request.comment,
    }
    if request.service_id is not None:
        if request.service_id not in schedule.offered_service_ids:
            raise Unprocessable(
                f"Schedule/{schedule.id} does not offer HealthcareService/{request.service_id}",
                expression="service",
            )
        service = store.read_service(request.service_id)
        if service is None:
            raise Unprocessable(
                f"HealthcareService/{request.service_id} does not exist",
                code="not-found",
                expression="service",
            )
        slot["serviceType"] = [service_type_concept(parse_service(service))]
    response = store.transaction(
        transaction_bundle([{"resource": slot, "request": {"method": "POST", "url": "Slot"}}])
    )
    entries = as_list(response.get("entry"))
    stored = dig(entries[0], "resource") if entries else None
    return stored if isinstance(stored, dict) else slot


def remove_slot(store: FhirUpstream, slot_id: str) -> None:
    """Delete a block or a piece of availability, version-checked against what was read.

    Anything else is refused here (422) before the upstream sees it: a visit is cancelled with
    ``$cancel``, a buffer goes with its visit, and a hold lapses or is cancelled.
    """
    resource = store.read("Slot", slot_id) if is_fhir_id(slot_id) else None
    if resource is None:
        raise NotFound(f"Slot/{slot_id} does not exist", expression="Slot")
    overlay = parse_slot(resource)
    removable = overlay is not None and (
        overlay.status == SlotStatus.FREE
        or (overlay.status == SlotStatus.BUSY_UNAVAILABLE and not overlay.is_buffer)
    )
    if not removable:
        raise Unprocessable(
            f"Slot/{slot_id} is not a block or added availability (status {resource.get('status')!r}"
            f"{', a buffer' if overlay is not None and overlay.is_buffer else ''}): cancel its visit instead",
            code="business-rule",
            expression="Slot.status",
        )
    request: Resource = {"method": "DELETE", "url": f"Slot/{slot_id}"}
    version = dig(resource, "meta", "versionId")
    if isinstance(version, str):
        request["ifMatch"] = f'W/"{version}"'
    store.transaction(transaction_bundle([{"request": request}]))
