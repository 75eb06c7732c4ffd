"""How a request reaches the app's wiring: the per-app :class:`Sidecar` and the per-request
stores. Kept apart from ``app.py`` so routes can use it without importing the factory."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import cast

from flask import current_app, g, request

from operations.read_hints import ReadHints
from operations.store import Resource, Stores
from plugin.booking_groups import BookingGroups
from plugin.caller_identity import CallerVerifier
from plugin.config import Settings
from plugin.parallel import Parallel
from plugin.provenance import Attribution
from plugin.upstream import FhirUpstream, UpstreamClient

EXTENSION_KEY = "fanoni"


@dataclass(frozen=True)
class Sidecar:
    """Everything a route needs besides the request: built once by ``create_app``."""

    settings: Settings
    upstream: UpstreamClient
    operation_definitions: Mapping[str, Resource]
    started_at: datetime
    clock: Callable[[], datetime]
    """"Now" for the use cases; tests replace it to make times deterministic."""
    verifier: CallerVerifier
    """Checks callers' JWTs against ``CALLER_JWKS_URL`` for the Provenance."""
    parallel: Parallel
    """Runs a request's independent upstream reads at the same time."""
    booking_groups: BookingGroups | None = None
    """Group commit of this process's bookings of one time (their buckets); ``None``: off
    (``BOOKING_GROUP_MAX=0``)."""
    read_hints: ReadHints = field(default_factory=ReadHints)
    """What this process's ``$find`` requests learned about Schedules, to size the next one's
    Slot search (``operations/read_hints.py``): never decides anything."""


def sidecar() -> Sidecar:
    return cast(Sidecar, current_app.extensions[EXTENSION_KEY])


def request_stores(operation: str, *, writes: bool = True) -> Stores:
    """The two stores of this request (SPEC §5.1): the caller's ``Authorization`` for the
    permission reads, the sidecar's own identity for deciding reads and writes, attributed to
    ``operation`` and the caller (identified only when the operation ``writes``).

    Both share the request's time budget and are kept on ``g`` so the request log can report
    their round trips.
    """
    state = sidecar()
    deadline = g.started + state.settings.operation_budget_seconds
    authorization = request.headers.get("Authorization")
    request_id = g.get("request_id")
    caller_store = state.upstream.as_caller(authorization, request_id, deadline=deadline)
    caller = state.verifier.identify(authorization) if writes else None
    attribution = Attribution(operation, request_id, state.settings.service_name, caller)
    # An operation that writes nothing may share its Slot searches with identical ones sent
    # after it arrived (plugin/shared_reads.py); deciding reads never are.
    service_store = state.upstream.as_service(attribution, deadline=deadline, shares_reads=not writes)
    g.stores = [*g.get("stores", []), caller_store, service_store]
    return Stores(caller=caller_store, service=service_store, together=state.parallel, hints=state.read_hints)


def round_trips() -> int:
    """Upstream calls made for this request so far, by every store it used."""
    return sum(store.round_trips for store in cast(list[FhirUpstream], g.get("stores", [])))
