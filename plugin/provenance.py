"""Every write is attributable (SPEC §5.1): the Provenance each sidecar transaction carries.

The sidecar's service store adds it to every transaction Bundle it posts, so no use case can
forget it. It names the operation, the request id, the sidecar as the author and the caller --
by the verified subject of its JWT when the token verifies against the configured JWKS, and
as "unverified" otherwise (an unverified claim is never recorded as an identity).

The Provenance targets the Appointments the transaction writes (or, for a transaction without
one, the lock resources): never a Slot, because a Provenance pointing at a Slot would stop the
upstream from ever deleting that Slot (referential integrity), and cancellations must.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from operations.model import FANONI_EXTENSION_BASE
from operations.store import Resource

OPERATION_SYSTEM = "https://fanoni.dev/fhir/CodeSystem/operation"
SERVICE_IDENTIFIER_SYSTEM = "https://fanoni.dev/fhir/service"
REQUEST_ID_URL = FANONI_EXTENSION_BASE + "request-id"
CALLER_VERIFICATION_URL = FANONI_EXTENSION_BASE + "caller-verification"
PARTICIPANT_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
JWT_SUBJECT_SYSTEM = "urn:ietf:params:oauth:jwt-subject"
"""Identifier system for a caller's subject when its issuer is unknown."""


class CallerLike(Protocol):
    """What the Provenance needs to know of the caller (``plugin.caller_identity.Caller``)."""

    @property
    def verified(self) -> bool: ...

    @property
    def subject(self) -> str | None: ...

    @property
    def issuer(self) -> str | None: ...

    @property
    def client_id(self) -> str | None: ...

    @property
    def reason(self) -> str: ...


@dataclass(frozen=True)
class Attribution:
    """Who does a write and why: the operation, the request, the sidecar, the caller."""

    operation: str
    """The operation's code: ``book``, ``hold``, ``confirm``, ``cancel``, ``hold-expiry``, ..."""
    request_id: str | None
    service_name: str
    caller: CallerLike | None = None
    """``None`` for background work done on nobody's behalf."""


def _participant(code: str) -> Resource:
    return {"coding": [{"system": PARTICIPANT_TYPE_SYSTEM, "code": code}]}


def _caller_agent(caller: CallerLike) -> Resource:
    if caller.verified and caller.subject:
        who: Resource = {
            "identifier": {"system": caller.issuer or JWT_SUBJECT_SYSTEM, "value": caller.subject},
            "display": caller.subject + (f" (client {caller.client_id})" if caller.client_id else ""),
        }
        verification = "verified"
    else:
        who = {"display": f"unverified caller ({caller.reason})"}
        verification = "unverified"
    return {
        "extension": [{"url": CALLER_VERIFICATION_URL, "valueCode": verification}],
        "type": _participant("enterer"),
        "who": who,
    }


def _targets(bundle: Resource) -> list[Resource]:
    """References to what the transaction writes: its Appointments, else its other
    non-Slot resources (the locks)."""
    written = []
    for entry in bundle.get("entry") or []:
        request = entry.get("request") or {}
        resource = entry.get("resource")
        if request.get("method") not in ("POST", "PUT") or not isinstance(resource, dict):
            continue
        resource_type = resource.get("resourceType")
        if resource_type in ("Slot", "Provenance"):
            continue
        reference = entry.get("fullUrl") or request.get("url")
        if isinstance(reference, str):
            written.append((resource_type, reference))
    appointments = [ref for kind, ref in written if kind == "Appointment"]
    chosen = appointments or [ref for _, ref in written]
    return [{"reference": ref} for ref in chosen]


def carries_provenance(bundle: Resource) -> bool:
    """Whether a transaction already writes a Provenance (each booking of a group carries its
    own, naming its own caller)."""
    return any(
        isinstance(entry, dict) and (entry.get("resource") or {}).get("resourceType") == "Provenance"
        for entry in bundle.get("entry") or []
    )


def with_provenance(
    bundle: Resource, attribution: Attribution, *, recorded: datetime | None = None
) -> Resource:
    """``bundle`` with a Provenance entry added (a new Bundle; the original is not changed).
    A transaction that writes nothing a Provenance may target is returned as it is."""
    targets = _targets(bundle)
    if not targets:
        return bundle
    agents = [
        {
            "type": _participant("author"),
            "who": {
                "identifier": {"system": SERVICE_IDENTIFIER_SYSTEM, "value": attribution.service_name},
                "display": f"Fanoni Scheduling ({attribution.service_name})",
            },
        }
    ]
    if attribution.caller is not None:
        agents.append(_caller_agent(attribution.caller))
    provenance: Resource = {
        "resourceType": "Provenance",
        "target": targets,
        "recorded": (recorded or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="milliseconds"),
        "activity": {"coding": [{"system": OPERATION_SYSTEM, "code": attribution.operation}]},
        "agent": agents,
    }
    if attribution.request_id:
        provenance["extension"] = [{"url": REQUEST_ID_URL, "valueString": attribution.request_id}]
    entry = {
        "fullUrl": f"urn:uuid:{uuid.uuid4()}",
        "resource": provenance,
        "request": {"method": "POST", "url": "Provenance"},
    }
    return {**bundle, "entry": [*(bundle.get("entry") or []), entry]}
