"""How a request reaches the app's wiring: the per-app :class:`Sidecar` and the per-request
store. Kept apart from ``app.py`` so routes can use it without importing the factory."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from flask import current_app, g, request

from operations.store import Resource
from plugin.config import Settings
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


def sidecar() -> Sidecar:
    return cast(Sidecar, current_app.extensions[EXTENSION_KEY])


def request_store() -> FhirUpstream:
    """The store for this request, acting with the caller's ``Authorization`` (SPEC §6).

    Created on first use and kept on ``g`` so the request log can report its round trips.
    """
    store = cast(FhirUpstream | None, g.get("upstream"))
    if store is None:
        store = sidecar().upstream.for_request(request.headers.get("Authorization"), g.get("request_id"))
        g.upstream = store
    return store
