"""``$bulk-publish`` (SPEC §7.5): the SMART Scheduling Links manifest and its three NDJSON files.

Public by design: the caller's credentials are neither needed nor used. The sidecar reads the
Schedules an administrator tagged for publishing with its own credentials
(docs/security.md), and each process serves one computed publication for
``PUBLISH_MAX_AGE_SECONDS`` (``plugin/publications.py``).
"""

from __future__ import annotations

import json
import logging
import re
from datetime import timedelta
from typing import cast
from urllib.parse import quote

from flask import Blueprint, Flask, Response, current_app, g, request
from flask.sansio.blueprints import BlueprintSetupState

from operations import publish
from operations.errors import InvalidRequest, NotFound
from operations.publish_resources import ERROR_TYPE, OUTPUT_TYPES, manifest
from plugin.context import EXTENSION_KEY, request_stores, sidecar
from plugin.publications import Publications, Snapshot, etag

logger = logging.getLogger(__name__)

PUBLICATIONS_KEY = "fanoni-publications"
MANIFEST = "$bulk-publish"
FILES = {f"{kind}.ndjson": kind for kind in (*OUTPUT_TYPES, ERROR_TYPE)}
NDJSON = "application/fhir+ndjson"
_SNAPSHOT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")

publishing = Blueprint("publishing", __name__)
"""Under ``BASE_PATH``, beside the operations: ``[base]/$bulk-publish``."""


@publishing.record_once
def _install(setup: BlueprintSetupState) -> None:
    app = cast(Flask, setup.app)
    state = app.extensions[EXTENSION_KEY]
    app.extensions[PUBLICATIONS_KEY] = Publications(
        timedelta(seconds=state.settings.publish_max_age_seconds), state.clock
    )


@publishing.get(f"/{MANIFEST}")
def bulk_publish() -> Response:
    """The manifest: ``transactionTime``, ``request``, one ``output`` per file, ``error``."""
    g.operation = MANIFEST
    snapshot = _publications().current(_compute)
    base = _public_base()
    name = quote(snapshot.name, safe="")
    document = manifest(
        snapshot.publication,
        f"{base}/{MANIFEST}",
        lambda kind: f"{base}/{MANIFEST}/{kind}.ndjson?snapshot={name}",
    )
    body = json.dumps(document, ensure_ascii=False).encode()
    return _cacheable(Response(body, content_type="application/json"), snapshot, etag(body))


@publishing.get(f"/{MANIFEST}/<file_name>")
def bulk_publish_file(file_name: str) -> Response:
    """One NDJSON file: of the snapshot the manifest named when this process still has it,
    else of the current publication."""
    g.operation = f"{MANIFEST}/file"
    kind = FILES.get(file_name)
    if kind is None:
        raise NotFound(f"{MANIFEST} has no file {file_name!r}: it serves {', '.join(FILES)}")
    publications = _publications()
    wanted = request.args.get("snapshot")
    if wanted is not None and not _SNAPSHOT.fullmatch(wanted):
        raise InvalidRequest(
            f"snapshot must be a manifest's transactionTime such as 2026-03-02T14:00:00.000Z, not {wanted!r}",
            code="value",
        )
    snapshot = (publications.named(wanted) if wanted else None) or publications.current(_compute)
    body = snapshot.bodies.get(kind, b"")  # no error file: nothing was left out
    response = Response(body, content_type=NDJSON)
    return _cacheable(response, snapshot, snapshot.etags.get(kind) or etag(body))


def _compute() -> publish.Publication:
    state = sidecar()
    settings = state.settings
    link = settings.booking_link
    assert link is not None  # _publications() checked it
    stores = request_stores(MANIFEST, writes=False)
    publication = publish.publish(
        stores.service,
        publish.PublishRequest(
            now=state.clock(),
            days=settings.publish_days,
            link=link,
            identifier_system=f"{_public_base()}/Location",
            phone=settings.publish_booking_phone,
        ),
        together=stores.together,
    )
    if publication.problems:
        logger.warning(
            "$bulk-publish left %d Schedule(s) or service(s) out; the error file says why",
            len(publication.problems),
            extra={"request_id": g.get("request_id")},
        )
    return publication


def _cacheable(response: Response, snapshot: Snapshot, tag: str) -> Response:
    """``Cache-Control: max-age``, ``Age``, ``ETag`` and ``Last-Modified``; 304 when the
    consumer's copy (``If-None-Match``, ``If-Modified-Since``) is current."""
    publications = _publications()
    response.cache_control.max_age = int(publications.max_age.total_seconds())
    response.cache_control.public = True
    response.headers["Age"] = str(publications.age(snapshot))
    response.last_modified = snapshot.computed_at
    response.set_etag(tag)
    return cast(Response, response.make_conditional(request))


def _publications() -> Publications:
    """This process's publications; 404 when publishing is not configured."""
    if sidecar().settings.publish_booking_url_template is None:
        raise NotFound(
            "publishing is off: set PUBLISH_BOOKING_URL_TEMPLATE (docs/configuration.md) to publish "
            "the Schedules tagged for it as SMART Scheduling Links"
        )
    publications: Publications = current_app.extensions[PUBLICATIONS_KEY]
    return publications


def _public_base() -> str:
    """The sidecar's FHIR base as consumers reach it."""
    settings = sidecar().settings
    if settings.publish_base_url:
        return settings.publish_base_url
    return request.host_url.rstrip("/") + request.script_root + settings.base_path
