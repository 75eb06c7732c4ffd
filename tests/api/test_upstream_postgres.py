"""What HAPI FHIR on PostgreSQL answers the losers of concurrent version-checked transactions,
and how the store reads each answer (docs/reliability.md, "HAPI on PostgreSQL").

``hapi_postgres_answers.json`` holds the exact bodies HAPI 8.8.0 sent in the races of
``tests/support/hapi_races.py`` (``python -m tests.support.hapi_races --json ...``); every one
of them came from a transaction that stored nothing. Each must make the sidecar re-read and
decide again (``ConcurrentChange``), never settle a lost answer; a genuine 5xx still does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import responses

from operations.errors import ConcurrentChange, OutcomeUnknown, ReferencedElsewhere
from plugin.config import Settings
from plugin.upstream import FhirUpstream, UpstreamClient
from plugin.upstream_errors import rolled_back_by_a_concurrent_write
from tests.api.conftest import BASE, outcome

OBSERVED = json.loads((Path(__file__).parent / "hapi_postgres_answers.json").read_text())
RACES = [o for o in OBSERVED if not o.get("delete_conflict")]
DELETE_CONFLICT = next(o for o in OBSERVED if o.get("delete_conflict"))
BOOKING = {
    "resourceType": "Bundle",
    "type": "transaction",
    "entry": [
        {
            "resource": {"resourceType": "Basic", "id": "fanoni-lock-s"},
            "request": {"method": "PUT", "url": "Basic/fanoni-lock-s", "ifMatch": 'W/"1"'},
        },
        {"resource": {"resourceType": "Slot"}, "request": {"method": "POST", "url": "Slot"}},
    ],
}
CANCEL = {
    "resourceType": "Bundle",
    "type": "transaction",
    "entry": [
        {
            "resource": {"resourceType": "Appointment", "id": "a", "status": "cancelled"},
            "request": {"method": "PUT", "url": "Appointment/a", "ifMatch": 'W/"1"'},
        },
        {"request": {"method": "DELETE", "url": "Slot/s"}},
    ],
}


@pytest.fixture
def store(settings: Settings) -> FhirUpstream:
    return UpstreamClient(settings).as_caller(None, "req-pg")


def test_the_observed_answers_cover_409_and_500() -> None:
    assert {o["status"] for o in RACES} == {409, 500}
    assert any("could not serialize access" in json.dumps(o["body"]) for o in RACES if o["status"] == 500)


@pytest.mark.parametrize("observed", RACES, ids=[o["observed"] for o in RACES])
@pytest.mark.parametrize("bundle", [BOOKING, CANCEL], ids=["booking", "cancel"])
def test_every_lost_race_on_postgres_is_a_concurrent_change(
    upstream: responses.RequestsMock, store: FhirUpstream, observed: dict[str, Any], bundle: dict[str, Any]
) -> None:
    upstream.post(BASE, status=observed["status"], json=observed["body"])
    with pytest.raises(ConcurrentChange) as caught:
        store.transaction(bundle)
    assert not isinstance(caught.value, ReferencedElsewhere)
    assert len(upstream.calls) == 1  # nothing to settle: the use case re-reads


def test_the_500s_are_told_apart_by_the_databases_reason_past_the_sql() -> None:
    """The reason comes after the SQL statement: beyond the 300 characters passed on to callers."""
    body = next(o["body"] for o in RACES if o["status"] == 500)
    diagnostics = body["issue"][0]["diagnostics"]
    assert diagnostics.index("could not serialize access") > 300
    assert rolled_back_by_a_concurrent_write(body)


def test_the_delete_with_reference_409_is_still_referenced_elsewhere(
    upstream: responses.RequestsMock, store: FhirUpstream
) -> None:
    upstream.post(BASE, status=409, json=DELETE_CONFLICT["body"])
    with pytest.raises(ReferencedElsewhere, match="Unable to delete Slot/"):
        store.transaction(CANCEL)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        # Not observed; what a genuine failure looks like: the outcome is unknown and is settled.
        (500, outcome("HAPI-0389: Failed to call access method: java.lang.NullPointerException")),
        (
            500,
            outcome(
                "HAPI-0389: Failed to call access method: org.springframework.transaction."
                "TransactionSystemException: Could not commit JPA transaction; An I/O error occurred "
                "while sending to the backend."
            ),
        ),
        (500, outcome("HAPI-2223: java.lang.IllegalStateException: Connection pool shut down")),
        (500, None),  # a servlet container's error page
        (502, None),  # a proxy
        # Only HAPI's own 500 is read: a gateway's 503 says nothing about the database.
        (503, next(o["body"] for o in RACES if o["status"] == 500)),
    ],
    ids=["npe", "commit io error", "pool", "html 500", "proxy 502", "503 with a database text"],
)
def test_a_genuine_5xx_stays_a_lost_answer(
    upstream: responses.RequestsMock, store: FhirUpstream, status: int, body: dict[str, Any] | None
) -> None:
    if body is None:
        upstream.post(BASE, status=status, body="<html><body>Internal Server Error</body></html>")
    else:
        upstream.post(BASE, status=status, json=body)
    with pytest.raises(OutcomeUnknown):
        store.transaction(BOOKING)
