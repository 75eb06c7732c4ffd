"""Searches asked as one page HAPI does not keep (``plugin/transport.py``, ``_one_page``),
against the real HAPI: what HAPI does with ``Cache-Control: no-store, max-results`` is what the
transport's rule relies on, so it is checked here, not only against mocks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import requests

from plugin.config import Settings
from plugin.upstream import UpstreamClient
from tests.integration.clinic import load, new_prefix
from tests.integration.trust import SERVICE_HEADERS, SIDECAR_TOKEN


def _schedule_with_slots(fhir_base: str, count: int) -> str:
    prefix = new_prefix()
    schedule_id = f"{prefix}-s"
    schedule = {"resourceType": "Schedule", "id": schedule_id, "active": True}
    slots = [
        {
            "resourceType": "Slot",
            "id": f"{prefix}-{n}",
            "schedule": {"reference": f"Schedule/{schedule_id}"},
            "status": "busy-unavailable",
            "start": f"2031-03-{1 + n // 96:02d}T{(n % 96) // 4:02d}:{(n % 4) * 15:02d}:00Z",
            "end": f"2031-03-{1 + n // 96:02d}T{(n % 96) // 4:02d}:{(n % 4) * 15 + 14:02d}:00Z",
        }
        for n in range(count)
    ]
    load(fhir_base, schedule, *slots)
    return schedule_id


def test_hapi_cuts_a_no_store_search_at_max_results_without_a_next_link(registered: str) -> None:
    """The behaviour the rule is built on: a full page and no next link (so a full page is
    searched again, paged); fewer matches than ``max-results`` is everything."""
    schedule = _schedule_with_slots(registered, 1005)
    headers = {"Accept": "application/fhir+json", **SERVICE_HEADERS, "Authorization": SIDECAR_TOKEN}
    query = {"schedule": f"Schedule/{schedule}", "_count": "1000"}
    page = requests.get(
        f"{registered}/Slot",
        params=query,
        headers={**headers, "Cache-Control": "no-cache, no-store, max-results=1000"},
        timeout=60,
    ).json()
    assert len(page["entry"]) == 1000
    assert [link["relation"] for link in page.get("link", [])] == ["self"]
    refused = requests.get(
        f"{registered}/Slot",
        params=query,
        headers={**headers, "Cache-Control": "no-store, max-results=1001"},
        timeout=60,
    )
    assert refused.status_code == 400 and "HAPI-1165" in refused.text


def test_the_store_reads_a_search_of_more_than_a_page_whole(registered: str) -> None:
    client = UpstreamClient(Settings(fhir_base_url=registered))
    large = _schedule_with_slots(registered, 1005)
    store = client.as_caller(SIDECAR_TOKEN, "paging-large")
    found = store.search("Slot", [("schedule", f"Schedule/{large}")])
    assert len({slot["id"] for slot in found}) == 1005
    assert store.round_trips == 3  # the full page not kept, then the paged search's two pages

    small = _schedule_with_slots(registered, 40)
    store = client.as_caller(SIDECAR_TOKEN, "paging-small")
    assert len(store.search("Slot", [("schedule", f"Schedule/{small}")])) == 40
    assert store.round_trips == 1
    assert not client.one_page.refused


def test_a_busy_day_asked_again_comes_in_halves_and_whole(registered: str) -> None:
    """1,150 Slots in a range and a block that began the day before: the first search fills a
    page and is read paged; asked again, it goes in two one-page halves by start -- the same
    Slots, none twice, the long block in the first half."""
    prefix = new_prefix()
    schedule_id = f"{prefix}-s"
    day = datetime(2031, 4, 7, tzinfo=UTC)
    slots = [
        {
            "resourceType": "Slot",
            "id": f"{prefix}-{n}",
            "schedule": {"reference": f"Schedule/{schedule_id}"},
            "status": "busy-unavailable",
            "start": (day + timedelta(minutes=n)).isoformat(),
            "end": (day + timedelta(minutes=n, seconds=50)).isoformat(),
        }
        for n in range(1150)
    ]
    block = {
        "resourceType": "Slot",
        "id": f"{prefix}-block",
        "schedule": {"reference": f"Schedule/{schedule_id}"},
        "status": "busy-unavailable",
        "start": (day - timedelta(days=1)).isoformat(),
        "end": (day + timedelta(hours=2)).isoformat(),
    }
    load(registered, {"resourceType": "Schedule", "id": schedule_id, "active": True}, *slots, block)
    client = UpstreamClient(Settings(fhir_base_url=registered, slot_end_search="on"))
    wanted = {str(s["id"]) for s in [*slots, block]}
    first = client.as_caller(SIDECAR_TOKEN, "busy-day-1")
    found = first.search_slots([schedule_id], day, day + timedelta(days=1))
    assert sorted(s["id"] for s in found) == sorted(wanted)
    assert first.round_trips == 3  # the full page, then the paged search's two pages
    again = client.as_caller(SIDECAR_TOKEN, "busy-day-2")
    found = again.search_slots([schedule_id], day, day + timedelta(days=1))
    assert sorted(s["id"] for s in found) == sorted(wanted)  # none twice, none missed
    assert again.round_trips == 2  # two halves, each one page
