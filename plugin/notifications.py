"""The subscription webhook: Appointments ended directly on the upstream free their time
(SPEC §5.1, "changes made directly on the upstream are followed").

Registration installs a rest-hook Subscription for Appointments that become ``cancelled``,
``noshow`` or ``entered-in-error``, delivered to ``NOTIFICATION_URL`` (this endpoint) with
``Authorization: Bearer NOTIFICATION_SECRET``. A notification only says *which* Appointment to
look at: the sidecar re-reads it with its own credentials and deletes the Slots it wrote for it
(``operations.housekeeping.release_ended``). Any request without the secret gets 401 and changes
nothing. With several replicas, whichever receives a notification handles it; handling the
same one twice is harmless.
"""

from __future__ import annotations

import hmac
import json
import logging
import time

from flask import Blueprint, Response, g, request

from operations import housekeeping
from operations.booking import Clock, RetryPolicy
from operations.fhir_values import is_fhir_id
from plugin.context import sidecar
from plugin.fhir_http import fhir_response, operation_outcome
from plugin.metrics import record_notification

logger = logging.getLogger(__name__)

NOTIFICATION_PATH = "/fanoni/notifications"
"""Where the webhook listens, whatever ``BASE_PATH`` is: it is not a FHIR endpoint."""

notifications = Blueprint("notifications", __name__)


@notifications.route(NOTIFICATION_PATH, methods=["POST", "PUT"], defaults={"subpath": ""})
@notifications.route(f"{NOTIFICATION_PATH}/<path:subpath>", methods=["POST", "PUT"])
def notification(subpath: str) -> Response:
    """A rest-hook delivery: ``PUT {endpoint}/Appointment/<id>`` with the Appointment (HAPI, on
    update), ``POST {endpoint}/Appointment`` (on create), or a POST with no body (a ping)."""
    g.operation = "notification"
    state = sidecar()
    if not _authenticated(state.settings.notification_secret):
        record_notification("unauthorized")
        return fhir_response(
            operation_outcome("security", "a valid notification secret is required"),
            401,
            headers={"WWW-Authenticate": 'Bearer realm="fanoni-notifications"'},
        )
    appointment_id = _appointment_id(subpath, request.get_data(cache=True))
    if appointment_id is None:
        record_notification("ignored")
        return _informational("nothing to do: the notification names no Appointment")
    store = state.upstream.background(g.get("request_id"), "release-ended-appointment")
    g.stores = [store]
    clock = Clock(now=state.clock, monotonic=time.monotonic, sleep=time.sleep)
    policy = RetryPolicy(deadline_seconds=state.settings.booking_deadline_seconds)
    try:
        freed = housekeeping.release_ended(store, appointment_id, clock=clock, policy=policy)
    except Exception:
        record_notification("failed")  # answered by the app's error handlers; HAPI delivers again
        raise
    record_notification("released" if freed else "unchanged")
    if freed:
        logger.info(
            "freed the time of an Appointment ended on the upstream",
            extra={"request_id": g.get("request_id"), "appointment": appointment_id, "slots_deleted": freed},
        )
    return _informational(f"Appointment/{appointment_id}: {freed} Slot(s) deleted")


def _authenticated(secret: str | None) -> bool:
    if not secret:
        return False  # notifications are not configured: nobody may call this
    given = request.headers.get("Authorization", "")
    expected = f"Bearer {secret}"
    return hmac.compare_digest(given.encode(), expected.encode())


def _appointment_id(subpath: str, raw: bytes) -> str | None:
    """The Appointment's id from the body (preferred) or the path ``Appointment/<id>``."""
    if raw.strip():
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            body = None
        if isinstance(body, dict) and body.get("resourceType") == "Appointment":
            resource_id = body.get("id")
            if is_fhir_id(resource_id):
                return resource_id
    parts = [p for p in subpath.split("/") if p]
    if len(parts) >= 2 and parts[0] == "Appointment" and is_fhir_id(parts[1]):
        return parts[1]
    return None


def _informational(text: str) -> Response:
    return fhir_response(operation_outcome("informational", text, severity="information"))
