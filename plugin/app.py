"""The Flask app factory: ``create_app(settings)``; for gunicorn, ``plugin.app:create_app()``.

Nothing happens at import time: settings, the upstream client and logging are set up when the
factory runs, so tests build as many independent apps as they like.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from operations.errors import ConcurrentChange, OutcomeUnknown, SchedulingError
from plugin.admin import admin
from plugin.booking_groups import BookingGroups
from plugin.caller_identity import verifier_from_settings
from plugin.config import Settings
from plugin.context import EXTENSION_KEY, Sidecar, round_trips
from plugin.definitions import operation_definitions
from plugin.fhir_http import fhir_response, operation_outcome
from plugin.holds import start_sweeper
from plugin.host_buckets import host_buckets
from plugin.logs import configure_logging
from plugin.metrics import install as install_metrics
from plugin.notifications import notifications
from plugin.parallel import Parallel
from plugin.publish_routes import publishing
from plugin.routes import fhir, health
from plugin.upstream import UpstreamClient
from plugin.upstream_errors import UpstreamError

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
"""Operation bodies are one Parameters resource or Appointment; anything bigger gets 413."""

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

# issue.code for the HTTP errors the framework raises itself (routing, body size, format).
_HTTP_ISSUE_CODES = {
    400: "structure",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    413: "too-costly",
    415: "not-supported",
}


def create_app(
    settings: Settings | None = None,
    *,
    upstream: UpstreamClient | None = None,
    clock: Callable[[], datetime] | None = None,
) -> Flask:
    """Build the sidecar. ``settings=None`` reads the environment (``Settings.from_env``).

    ``upstream`` and ``clock`` exist for tests; production uses one ``UpstreamClient`` per app,
    i.e. per gunicorn worker process.
    """
    settings = settings if settings is not None else Settings.from_env()
    configure_logging(settings.log_level_number)
    app = Flask("plugin")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    client = upstream if upstream is not None else UpstreamClient(settings)
    app.extensions[EXTENSION_KEY] = Sidecar(
        settings=settings,
        upstream=client,
        operation_definitions=operation_definitions(),
        started_at=datetime.now(UTC),
        clock=clock if clock is not None else (lambda: datetime.now(UTC)),
        verifier=verifier_from_settings(settings, client.session),
        parallel=Parallel(),
        booking_groups=(
            BookingGroups(settings.booking_group_max, host_buckets(settings))
            if settings.booking_group_max
            else None
        ),
    )
    app.register_blueprint(fhir, url_prefix=settings.base_path or None)
    app.register_blueprint(publishing, url_prefix=settings.base_path or None)
    app.register_blueprint(health)
    app.register_blueprint(notifications)
    app.register_blueprint(admin)
    _register_hold_sweeper(app)
    _register_request_log(app)
    _register_error_handlers(app)
    install_metrics(app)
    return app


def _register_hold_sweeper(app: Flask) -> None:
    """Start the lapsed-hold sweeper with the first request of each worker process (after any
    fork), not at import or app creation: no side effects until the app really serves."""
    state: Sidecar = app.extensions[EXTENSION_KEY]

    @app.before_request
    def ensure_sweeper() -> None:
        start_sweeper(state.upstream, state.settings.hold_sweep_seconds, state.clock)


def _register_request_log(app: Flask) -> None:
    @app.before_request
    def start_request() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        g.started = time.monotonic()

    @app.after_request
    def log_request(response: Response) -> Response:
        upstream_calls = round_trips()
        response.headers["X-Request-ID"] = g.get("request_id", "")
        response.headers["X-Upstream-Round-Trips"] = str(upstream_calls)
        # Probes hit /livez and /readyz every few seconds; a healthy answer is not news.
        quiet = request.blueprint == "health" and response.status_code < 400
        logger.log(
            logging.DEBUG if quiet else logging.INFO,
            "%s %s -> %s",
            request.method,
            request.path,
            response.status_code,
            extra={
                "request_id": g.get("request_id"),
                "method": request.method,
                "path": request.path,
                "operation": g.get("operation"),
                "status": response.status_code,
                "duration_ms": round((time.monotonic() - g.get("started", time.monotonic())) * 1000, 1),
                "upstream_round_trips": upstream_calls,
                **({"attempts": g.attempts} if "attempts" in g else {}),
            },
        )
        return response


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(SchedulingError)
    def scheduling_error(exc: SchedulingError) -> Response:
        return fhir_response(operation_outcome(exc.code, exc.diagnostics, exc.expression), exc.status)

    @app.errorhandler(ConcurrentChange)
    def concurrent_change(exc: ConcurrentChange) -> Response:
        # The use cases retry these themselves; one that escapes still means "taken meanwhile".
        return fhir_response(operation_outcome("conflict", str(exc)), 409)

    @app.errorhandler(OutcomeUnknown)
    def outcome_unknown(exc: OutcomeUnknown) -> Response:
        # A write whose answer was lost. The use case says what it established; when it could
        # not, the caller must know the write may have landed, and how to find it.
        cause = exc.cause
        status = cause.status if isinstance(cause, UpstreamError) else 504
        code = cause.code if isinstance(cause, UpstreamError) else "timeout"
        text = cause.diagnostics if isinstance(cause, UpstreamError) else str(cause)
        resolution = exc.resolution or (
            "The change may or may not have been stored; the scheduling service could not find out. "
            "Retry with the same Appointment identifier (a retry then answers with what was stored), "
            f"or quote request id {g.get('request_id', '')}."
        )
        logger.warning(
            "write with a lost answer: %s",
            resolution,
            extra={"request_id": g.get("request_id"), "upstream_diagnostics": text},
        )
        return fhir_response(operation_outcome(code, f"{text}. {resolution}"), status)

    @app.errorhandler(UpstreamError)
    def upstream_error(exc: UpstreamError) -> Response:
        logger.warning(
            "upstream error: %s",
            exc.diagnostics,
            extra={"request_id": g.get("request_id"), "upstream_status": exc.upstream_status},
        )
        return fhir_response(operation_outcome(exc.code, exc.diagnostics), exc.status, headers=exc.headers)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        headers = {}
        if status == 404:
            text = f"there is no endpoint {request.method} {request.path}"
        elif status == 405:
            allowed = next((v for k, v in exc.get_headers() if k == "Allow"), "")
            headers["Allow"] = allowed
            text = f"{request.method} is not allowed on {request.path} (allowed: {allowed})"
        else:
            text = exc.description or exc.name
        return fhir_response(
            operation_outcome(_HTTP_ISSUE_CODES.get(status, "exception"), text), status, headers
        )

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception) -> Response:
        # The traceback goes to the log only; the caller gets the request id to quote.
        request_id = g.get("request_id", "")
        logger.exception("unexpected error", extra={"request_id": request_id})
        return fhir_response(
            operation_outcome(
                "exception", f"internal error in the scheduling service (request id {request_id})"
            ),
            500,
        )
