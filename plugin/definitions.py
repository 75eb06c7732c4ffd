"""The conformance resources the sidecar ships (``plugin/resources/*.json``): served at
``OperationDefinition/<id>``, listed in ``/metadata`` and installed on the upstream."""

from __future__ import annotations

import json
from importlib.resources import files

from operations.store import Resource

SLOT_END_SEARCH_PARAMETER_ID = "fanoni-slot-end"


def _load(prefix: str) -> dict[str, Resource]:
    folder = files("plugin").joinpath("resources")
    found: dict[str, Resource] = {}
    for item in sorted(folder.iterdir(), key=lambda entry: entry.name):
        if item.name.startswith(prefix) and item.name.endswith(".json"):
            resource = json.loads(item.read_text(encoding="utf-8"))
            found[resource["id"]] = resource
    return found


def operation_definitions() -> dict[str, Resource]:
    """Every OperationDefinition shipped, by id (``find``, ``schedule-find``, ...).

    Adding an operation means adding its JSON file: ``/metadata`` and registration follow.
    """
    return _load("OperationDefinition-")


def slot_end_search_parameter() -> Resource:
    """The Slot ``end`` SearchParameter that registration installs (SPEC §5, long blocks)."""
    return _load("SearchParameter-")[SLOT_END_SEARCH_PARAMETER_ID]


APPOINTMENT_SUBSCRIPTION_ID = "fanoni-appointment-ended"
ENDED_CRITERIA = "Appointment?status=cancelled,noshow,entered-in-error"


def appointment_subscription(endpoint: str, secret: str) -> Resource:
    """The rest-hook Subscription that tells the sidecar about Appointments ended directly on
    the upstream (SPEC §5.1). The secret travels in the channel header: whoever may read
    Subscriptions on the upstream can read it, so it is a secret of its own, not ``GUARD_KEY``."""
    return {
        "resourceType": "Subscription",
        "id": APPOINTMENT_SUBSCRIPTION_ID,
        "status": "requested",
        "reason": "Fanoni Scheduling frees the time of Appointments cancelled, marked no-show or "
        "entered-in-error without $cancel",
        "criteria": ENDED_CRITERIA,
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "header": [f"Authorization: Bearer {secret}"],
        },
    }
