"""Structured logging: one JSON object per line, so a log pipeline can filter on request ids,
operations, durations and upstream round trips without parsing prose."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from flask import g, has_request_context

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is data.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
}
_OUR_LOGGERS = ("plugin", "operations")


class JsonFormatter(logging.Formatter):
    """Renders a record and its ``extra`` fields as one JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                data[key] = value
        if "request_id" not in data and has_request_context() and g.get("request_id"):
            # Lines logged by the use cases (operations/ knows no requests) name the request too.
            data["request_id"] = g.request_id
        if record.exc_info:
            data["traceback"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


class _SidecarHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler this module installed, so configuring twice adds nothing."""


def configure_logging(level: int) -> None:
    """Send the project's loggers to stderr as JSON lines at ``level``; idempotent.

    Only the project's own loggers are touched: gunicorn, werkzeug and the host application
    keep their own logging configuration.
    """
    for name in _OUR_LOGGERS:
        project_logger = logging.getLogger(name)
        project_logger.setLevel(level)
        if not any(isinstance(h, _SidecarHandler) for h in project_logger.handlers):
            handler = _SidecarHandler()
            handler.setFormatter(JsonFormatter())
            project_logger.addHandler(handler)
