"""Registration of the Slot ``end`` SearchParameter and the OperationDefinitions."""

from __future__ import annotations

import json
from typing import Any

import pytest
import responses

from plugin.config import Settings
from plugin.definitions import operation_definitions, slot_end_search_parameter
from plugin.registration import register
from tests.api.conftest import BASE, outcome

INSTALLED = [
    "SearchParameter/fanoni-slot-end",
    "OperationDefinition/book",
    "OperationDefinition/bulk-publish",
    "OperationDefinition/cancel",
    "OperationDefinition/confirm",
    "OperationDefinition/find",
    "OperationDefinition/hold",
    "OperationDefinition/reschedule",
    "OperationDefinition/schedule-find",
]


def stored(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource as the upstream gives it back: with server-maintained meta."""
    return {**resource, "meta": {"versionId": "3", "lastUpdated": "2026-11-01T00:00:00Z"}}


def mock_fresh_upstream(upstream: responses.RequestsMock) -> None:
    for reference in INSTALLED:
        upstream.get(f"{BASE}/{reference}", status=404, json=outcome("not found"))
        upstream.put(
            f"{BASE}/{reference}",
            status=201,
            json={"resourceType": reference.split("/")[0], "id": reference.split("/")[1]},
        )
    upstream.post(f"{BASE}/$reindex", json={"resourceType": "Parameters"})


def test_the_search_parameter_is_what_the_slot_query_needs() -> None:
    parameter = slot_end_search_parameter()
    assert parameter["id"] == "fanoni-slot-end"
    assert parameter["url"] == "https://fanoni.dev/fhir/SearchParameter/slot-end"
    assert (parameter["name"], parameter["code"], parameter["base"]) == ("end", "end", ["Slot"])
    assert (parameter["type"], parameter["expression"], parameter["status"]) == (
        "date",
        "Slot.end",
        "active",
    )


def test_fresh_upstream_gets_everything_and_a_slot_reindex(
    upstream: responses.RequestsMock, settings: Settings
) -> None:
    mock_fresh_upstream(upstream)
    report = register(settings)
    assert report.ok and report.installed == INSTALLED and report.reindex_requested
    puts = [c for c in upstream.calls if c.request.method == "PUT"]
    assert [str(c.request.url) for c in puts] == [f"{BASE}/{r}" for r in INSTALLED]
    assert json.loads(puts[0].request.body or b"") == slot_end_search_parameter()
    reindex = json.loads(upstream.calls[-1].request.body or b"")
    assert reindex["parameter"] == [{"name": "url", "valueString": "Slot?"}]
    for call in upstream.calls:
        assert call.request.headers["Authorization"] == "Bearer admin-token"


def test_registration_is_idempotent(upstream: responses.RequestsMock, settings: Settings) -> None:
    upstream.get(f"{BASE}/SearchParameter/fanoni-slot-end", json=stored(slot_end_search_parameter()))
    for definition_id, definition in operation_definitions().items():
        upstream.get(f"{BASE}/OperationDefinition/{definition_id}", json=stored(definition))
    report = register(settings)
    assert report.ok and report.unchanged == INSTALLED and not report.installed
    assert not report.reindex_requested
    assert all(c.request.method == "GET" for c in upstream.calls)


def test_a_changed_description_updates_without_reindexing(
    upstream: responses.RequestsMock, settings: Settings
) -> None:
    old = {**slot_end_search_parameter(), "description": "older wording"}
    upstream.get(f"{BASE}/SearchParameter/fanoni-slot-end", json=stored(old))
    upstream.put(f"{BASE}/SearchParameter/fanoni-slot-end", json=slot_end_search_parameter())
    for definition_id, definition in operation_definitions().items():
        upstream.get(f"{BASE}/OperationDefinition/{definition_id}", json=stored(definition))
    report = register(settings)
    assert report.installed == ["SearchParameter/fanoni-slot-end"]
    assert not report.reindex_requested


def test_a_refusal_is_reported_not_raised(upstream: responses.RequestsMock, settings: Settings) -> None:
    for reference in INSTALLED:
        upstream.get(f"{BASE}/{reference}", status=404, json=outcome("not found"))
        upstream.put(f"{BASE}/{reference}", status=403, json=outcome("insufficient scope"))
    report = register(settings)
    assert not report.ok
    assert [item.split(":")[0] for item in report.failed] == INSTALLED
    assert "insufficient scope" in report.failed[0]
    assert not report.reindex_requested


def test_a_concurrent_registration_is_reported_not_raised(
    upstream: responses.RequestsMock, settings: Settings
) -> None:
    mock_fresh_upstream(upstream)
    upstream.replace(
        responses.PUT, f"{BASE}/SearchParameter/fanoni-slot-end", status=412, json=outcome("version")
    )
    report = register(settings)
    assert report.failed == ["SearchParameter/fanoni-slot-end: version"]
    assert report.installed == INSTALLED[1:]


def test_an_unreachable_upstream_is_reported(upstream: responses.RequestsMock, settings: Settings) -> None:
    report = register(settings)  # nothing mocked: every call is refused
    assert len(report.failed) == len(INSTALLED)


def test_a_server_without_reindex_only_warns(upstream: responses.RequestsMock, settings: Settings) -> None:
    mock_fresh_upstream(upstream)
    upstream.replace(responses.POST, f"{BASE}/$reindex", status=400, json=outcome("unknown op"))
    report = register(settings)
    assert report.ok and not report.reindex_requested
    assert any("reindex" in warning for warning in report.warnings)


@pytest.mark.parametrize("reference", INSTALLED)
def test_summary_names_what_was_done(
    upstream: responses.RequestsMock, settings: Settings, reference: str
) -> None:
    mock_fresh_upstream(upstream)
    assert reference in register(settings).summary()


def test_registration_is_retried_until_the_upstream_takes_it() -> None:
    from plugin.config import Settings
    from plugin.registration import RegistrationReport, keep_registering

    answers = [
        RegistrationReport(failed=["SearchParameter/fanoni-slot-end: unreachable"]),
        RegistrationReport(failed=["SearchParameter/fanoni-slot-end: unreachable"]),
        RegistrationReport(installed=["SearchParameter/fanoni-slot-end"]),
    ]
    calls: list[Settings] = []
    slept: list[float] = []

    def once(settings: Settings) -> RegistrationReport:
        calls.append(settings)
        return answers[len(calls) - 1]

    report = keep_registering(
        Settings(fhir_base_url=BASE), attempts=5, interval_seconds=7, register_once=once, sleep=slept.append
    )
    assert report.ok
    assert len(calls) == 3
    assert slept == [7, 7, 7]  # each attempt waits first: the caller has just failed one


def test_registration_retries_give_up() -> None:
    from plugin.config import Settings
    from plugin.registration import RegistrationReport, keep_registering

    failing = RegistrationReport(failed=["SearchParameter/fanoni-slot-end: refused"])
    slept: list[float] = []
    report = keep_registering(
        Settings(fhir_base_url=BASE), attempts=3, register_once=lambda _: failing, sleep=slept.append
    )
    assert not report.ok
    assert len(slept) == 3
