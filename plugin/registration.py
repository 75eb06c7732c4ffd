"""Registration on the upstream: the Slot ``end`` SearchParameter, the OperationDefinitions and
the Subscription that tells the sidecar about Appointments ended directly on the upstream.

Runs with the sidecar's own credentials (there is no caller). Idempotent: a
resource already stored with the same content is left alone, so restarts neither bump versions
nor trigger reindexing. A refusal is logged and reported, never fatal: without the
SearchParameter the sidecar still works, through the start look-back (``SLOT_LOOKBACK_DAYS``).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from operations.errors import ConcurrentChange
from operations.store import Resource
from plugin.config import Settings
from plugin.definitions import appointment_subscription, operation_definitions, slot_end_search_parameter
from plugin.upstream import FhirUpstream, UpstreamClient
from plugin.upstream_errors import UpstreamError

logger = logging.getLogger(__name__)


# Fields whose change alters what the upstream indexes; only they justify a reindex.
_INDEXING_FIELDS = ("code", "base", "type", "expression", "status")
# Fields the server maintains itself; ignored when deciding whether an update is needed.
_SERVER_FIELDS = frozenset({"meta", "text"})


@dataclass
class RegistrationReport:
    """What registration did, resource by resource (``"SearchParameter/fanoni-slot-end"``)."""

    installed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    """``"Type/id: reason"`` for every resource the upstream refused or could not take."""
    reindex_requested: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        parts = [
            f"installed: {', '.join(self.installed) or 'none'}",
            f"unchanged: {', '.join(self.unchanged) or 'none'}",
        ]
        if self.reindex_requested:
            parts.append("Slot reindex requested")
        parts.extend(f"failed: {item}" for item in self.failed)
        parts.extend(f"warning: {item}" for item in self.warnings)
        return "; ".join(parts)


def register(settings: Settings, *, client: UpstreamClient | None = None) -> RegistrationReport:
    """Create or update (PUT, fixed ids) the Slot ``end`` SearchParameter and every shipped
    OperationDefinition on the upstream; ask it to reindex Slots when the SearchParameter is new
    or changed, because a new search parameter only covers resources indexed after it."""
    client = client if client is not None else UpstreamClient(settings)
    store = client.background(f"register-{uuid.uuid4().hex[:12]}", "registration")
    report = RegistrationReport()
    search_parameter_changed = _install(store, slot_end_search_parameter(), report)
    for definition in operation_definitions().values():
        _install(store, definition, report)
    if settings.notification_url and settings.notification_secret:
        _install(
            store, appointment_subscription(settings.notification_url, settings.notification_secret), report
        )
    else:
        report.warnings.append(
            "NOTIFICATION_URL is not set: no Subscription, so an Appointment cancelled directly on the "
            "upstream (not through $cancel) keeps its Slots"
        )
    if search_parameter_changed:
        _reindex_slots(store, report)
    log = logger.info if report.ok else logger.warning
    log("registration on the upstream: %s", report.summary())
    return report


def keep_registering(
    settings: Settings,
    *,
    attempts: int = 40,
    interval_seconds: float = 15.0,
    register_once: Callable[[Settings], RegistrationReport] = register,
    sleep: Callable[[float], None] = time.sleep,
) -> RegistrationReport:
    """Retry a failed registration until it succeeds or ``attempts`` run out (10 minutes).

    ``serve`` runs this in the background when registration at start failed: a sidecar often
    starts before its FHIR server is up, and without the Slot ``end`` SearchParameter the
    look-back query misses blocks longer than ``SLOT_LOOKBACK_DAYS``.
    """
    # The first attempt waits too: the caller has just failed one, and gunicorn forks its
    # workers right after start; no upstream call should be under way while it does.
    report = RegistrationReport()
    for _ in range(attempts):
        sleep(interval_seconds)
        report = register_once(settings)
        if report.ok:
            break
    if not report.ok:
        logger.error("registration on the upstream gave up after %d attempts: %s", attempts, report.summary())
    return report


def _install(store: FhirUpstream, resource: Resource, report: RegistrationReport) -> bool:
    """PUT ``resource`` unless the stored copy already matches; True when an indexing field
    changed (or the resource is new)."""
    reference = f"{resource['resourceType']}/{resource['id']}"
    try:
        current = store.read(resource["resourceType"], resource["id"])
        if current is not None and _same(current, resource):
            report.unchanged.append(reference)
            return False
        store.update(resource)
    except (UpstreamError, ConcurrentChange) as exc:
        # ConcurrentChange: another replica registering at the same moment.
        reason = exc.diagnostics if isinstance(exc, UpstreamError) else str(exc)
        logger.warning("upstream refused %s: %s", reference, reason)
        report.failed.append(f"{reference}: {reason}")
        return False
    report.installed.append(reference)
    return current is None or any(current.get(f) != resource.get(f) for f in _INDEXING_FIELDS)


def _reindex_slots(store: FhirUpstream, report: RegistrationReport) -> None:
    # HAPI's $reindex; other servers may index on their own or not know the operation, which
    # is worth a warning (existing Slots may be invisible to end= searches) but no failure.
    parameters = {
        "resourceType": "Parameters",
        "parameter": [{"name": "url", "valueString": "Slot?"}],
    }
    try:
        # A batch job on HAPI: it asks to be started asynchronously.
        store.operation("$reindex", parameters, headers={"Prefer": "respond-async"})
    except UpstreamError as exc:
        message = (
            f"Slot $reindex refused ({exc.diagnostics}); Slots stored before the SearchParameter "
            "existed are not found by end= searches until the server reindexes them"
        )
        logger.warning(message)
        report.warnings.append(message)
        return
    report.reindex_requested = True


def _content(resource: Resource) -> Resource:
    return {k: v for k, v in resource.items() if k not in _SERVER_FIELDS}


def _same(stored: Resource, wanted: Resource) -> bool:
    """Whether the stored copy already says what ``wanted`` says. A Subscription's status is
    the server's to change (``requested`` becomes ``active``); only a stopped one (``error``,
    ``off``) is asked again."""
    if wanted.get("resourceType") == "Subscription":
        if stored.get("status") in ("error", "off"):
            return False
        return _content(stored) | {"status": None} == _content(wanted) | {"status": None}
    return _content(stored) == _content(wanted)
