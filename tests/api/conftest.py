"""Fixtures for the HTTP adapter's tests: a Flask test client and a mocked upstream.

Every upstream call goes through ``responses``; a call nobody mocked fails as a connection
error, so a test can never reach the network.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
import responses
from flask import Flask
from flask.testing import FlaskClient

from operations.ihe_parameters import IheCriteria
from plugin.app import create_app
from plugin.config import Settings

BASE = "http://hapi.test/fhir"
NOW = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
PLAIN_REQUEST = SimpleNamespace(ihe=IheCriteria())
"""What a test's stand-in ``FindRequest.from_parameters`` returns: no ITI-115 parameters, so the
route hands it to the (substituted) plain ``find`` use case."""


@pytest.fixture
def settings() -> Settings:
    # SLOT_END_SEARCH=on: route tests mock one Slot search; finding out whether the upstream's
    # Slot end index is complete (auto, the default) has tests of its own in test_upstream.py.
    return Settings(
        fhir_base_url=BASE,
        upstream_authorization="Bearer admin-token",
        hold_sweep_seconds=0,
        slot_end_search="on",
    )


@pytest.fixture
def app(settings: Settings) -> Flask:
    return create_app(settings, clock=lambda: NOW)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def upstream() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def bundle(resources: list[dict[str, Any]], next_url: str | None = None) -> dict[str, Any]:
    """A searchset Bundle as HAPI would send it."""
    links = [{"relation": "self", "url": f"{BASE}/whatever"}]
    if next_url:
        links.append({"relation": "next", "url": next_url})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }


def outcome(text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "diagnostics": text}],
    }
