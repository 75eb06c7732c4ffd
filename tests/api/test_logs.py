"""Log lines are JSON with structured context; lines the use cases log (retries, sweeps) name
the request they belong to although operations/ knows nothing of requests."""

from __future__ import annotations

import json
import logging

from flask import Flask, g

from plugin.logs import JsonFormatter


def record(name: str, **extra: object) -> logging.LogRecord:
    line = logging.getLogger(name).makeRecord(name, logging.INFO, __file__, 1, "re-reading", (), None)
    line.__dict__.update(extra)
    return line


def test_a_use_case_line_logged_during_a_request_names_it() -> None:
    with Flask(__name__).test_request_context():
        g.request_id = "req-42"
        data = json.loads(JsonFormatter().format(record("operations.retries", attempt=2)))
    assert (data["request_id"], data["attempt"], data["logger"]) == ("req-42", 2, "operations.retries")


def test_an_explicit_request_id_wins_and_background_lines_have_none() -> None:
    with Flask(__name__).test_request_context():
        g.request_id = "req-42"
        data = json.loads(JsonFormatter().format(record("plugin.app", request_id="other")))
    assert data["request_id"] == "other"
    assert "request_id" not in json.loads(JsonFormatter().format(record("operations.housekeeping")))
