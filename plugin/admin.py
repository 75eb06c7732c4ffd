"""The calendar page for administrators: ``GET /admin``, its assets and its JSON endpoints.

The page is a static shell; everything it shows comes from ``/admin/api/...`` with the
administrator's own ``Authorization`` (typed on the page, kept in the browser tab's
``sessionStorage``), which the endpoints pass through to the upstream for every read and for
the block/availability writes. The sidecar's own credentials are never used here, so the page
grants nothing a token does not already have (docs/admin.md). Visits are cancelled by the page
through the operation itself, ``POST [base]/Appointment/<id>/$cancel``.

Third-party code (FullCalendar, Luxon) is fetched by ``npm ci`` into ``admin_ui/node_modules``
at build time and served from there: only the files listed in ``VENDOR`` are reachable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, g, render_template, request, send_file

from operations.errors import NotFound
from plugin.admin_slots import SlotRequest, remove_slot, write_slot
from plugin.admin_week import WeekRequest, actor_display, read_week
from plugin.context import sidecar
from plugin.fhir_http import fhir_response, json_body, operation_outcome
from plugin.upstream import FhirUpstream

UI = Path(__file__).resolve().parent / "admin_ui"
NODE_MODULES = UI / "node_modules"
VENDOR = {
    # Load order matters: the plugins register themselves on the core's global.
    "luxon.js": "luxon/build/global/luxon.min.js",
    "fullcalendar-core.js": "@fullcalendar/core/index.global.min.js",
    "fullcalendar-daygrid.js": "@fullcalendar/daygrid/index.global.min.js",
    "fullcalendar-timegrid.js": "@fullcalendar/timegrid/index.global.min.js",
    "fullcalendar-interaction.js": "@fullcalendar/interaction/index.global.min.js",
    "fullcalendar-luxon3.js": "@fullcalendar/luxon3/index.global.min.js",
}
"""What the page loads from ``node_modules`` (name in the URL -> path under it)."""
OWN = frozenset({"calendar.js", "api.js", "dialogs.js", "page.js", "calendar.css"})
"""The page's own files in ``admin_ui/page/``."""
MAX_SCHEDULES_LISTED = 500

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
    # FullCalendar injects its stylesheet as a <style> element.
    "style-src 'self' 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

admin = Blueprint("admin", __name__, template_folder="admin_ui/page")


@admin.after_request
def _page_headers(response: Response) -> Response:
    # The page holds a token in its tab: no foreign scripts, no framing (a framed "cancel"
    # button could be clicked for the admin), and no token-bearing answer cached anywhere.
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    if request.path.startswith("/admin/api/"):
        response.headers["Cache-Control"] = "no-store"
    return response


@admin.get("/admin")
def page() -> str:
    g.operation = "admin/page"
    return render_template(
        "index.html",
        base_path=sidecar().settings.base_path,
        vendor=list(VENDOR),
        assets_missing=not all((NODE_MODULES / path).is_file() for path in VENDOR.values()),
    )


@admin.get("/admin/assets/<name>")
def asset(name: str) -> Response:
    if name in OWN:
        path = UI / "page" / name
    elif name in VENDOR:
        path = NODE_MODULES / VENDOR[name]
        if not path.is_file():
            raise NotFound(
                f"{name} is not installed: run `make admin-ui` (npm ci in plugin/admin_ui) and restart",
                expression="asset",
            )
    else:
        raise NotFound(f"there is no asset {name!r}", expression="asset")
    mimetype = "text/css" if name.endswith(".css") else "text/javascript"
    response = send_file(path, mimetype=mimetype, conditional=True)
    response.headers["Cache-Control"] = "no-cache"
    return response


def _json(body: dict[str, Any]) -> Response:
    """The page's own JSON (not FHIR resources; errors stay OperationOutcomes)."""
    return Response(json.dumps(body, ensure_ascii=False), content_type="application/json; charset=utf-8")


def _admin_store() -> FhirUpstream:
    """The administrator's store: their ``Authorization`` as sent, nothing of the sidecar's."""
    state = sidecar()
    store = state.upstream.as_caller(
        request.headers.get("Authorization"),
        g.get("request_id"),
        deadline=g.started + state.settings.operation_budget_seconds,
    )
    g.stores = [*g.get("stores", []), store]
    return store


@admin.get("/admin/api/schedules")
def schedules() -> Response:
    """The Schedules the token may read, with their actors' names: the page's picker."""
    g.operation = "admin/schedules"
    store = _admin_store()
    found = store.search("Schedule", [("_sort", "_id"), ("_elements", "id")], limit=MAX_SCHEDULES_LISTED)
    ids = [str(s.get("id")) for s in found if s.get("id")]
    listed = []
    for chunk in (ids[i : i + 100] for i in range(0, len(ids), 100)):
        resources, actors = store.read_schedules(chunk)
        for resource in resources:
            actor_ref = str(((resource.get("actor") or [{}])[0] or {}).get("reference") or "")
            listed.append(
                {
                    "id": resource.get("id"),
                    "actor": actor_ref,
                    "display": actor_display(actors.get(actor_ref)) or actor_ref or resource.get("id"),
                    "active": resource.get("active", True) is not False,
                }
            )
    return _json({"schedules": listed, "truncated": len(ids) >= MAX_SCHEDULES_LISTED})


@admin.get("/admin/api/week")
def week() -> Response:
    """What the calendars draw: ``?schedule=a&schedule=b&start=YYYY-MM-DD&days=7``."""
    g.operation = "admin/week"
    state = sidecar()
    week_request = WeekRequest.from_query(list(request.args.items(multi=True)))
    return _json(read_week(_admin_store(), week_request, state.clock(), state.parallel))


@admin.post("/admin/api/slots")
def create_slot() -> Response:
    """Block time or add availability, as the administrator (``admin_slots.SlotRequest``)."""
    g.operation = "admin/slot-create"
    slot_request = SlotRequest.from_body(
        json_body(request.get_data(cache=True)), max_days=sidecar().settings.max_range_days
    )
    return fhir_response(write_slot(_admin_store(), slot_request), status=201)


@admin.delete("/admin/api/slots/<slot_id>")
def delete_slot(slot_id: str) -> Response:
    """Remove a block or added availability (never a visit's or a buffer's Slot)."""
    g.operation = "admin/slot-delete"
    remove_slot(_admin_store(), slot_id)
    return fhir_response(
        operation_outcome("informational", f"Slot/{slot_id} removed", severity="information")
    )
