"""Shared ``$find`` Slot searches (``plugin/shared_reads.py``) against the real HAPI: requests
that arrive while an identical search is in the air wait for it and share the next one, so each
sees what was stored before it arrived -- here a Slot stored while the first search's answer
was held back."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

from plugin.config import Settings
from plugin.transport import new_session
from plugin.upstream import FhirUpstream, UpstreamClient
from tests.integration.clinic import load, new_prefix
from tests.integration.trust import SIDECAR_TOKEN

WAIT = 30.0


def _slot(prefix: str, schedule_id: str, n: int, day: datetime) -> dict[str, Any]:
    return {
        "resourceType": "Slot",
        "id": f"{prefix}-{n}",
        "schedule": {"reference": f"Schedule/{schedule_id}"},
        "status": "busy",
        "start": (day + timedelta(hours=9, minutes=15 * n)).isoformat(),
        "end": (day + timedelta(hours=9, minutes=15 * n + 15)).isoformat(),
    }


def test_find_searches_at_once_share_one_sent_after_they_arrived(registered: str) -> None:
    prefix, day = new_prefix(), datetime(2031, 5, 5, tzinfo=UTC)
    schedule_id = f"{prefix}-s"
    load(
        registered,
        {"resourceType": "Schedule", "id": schedule_id, "active": True},
        *(_slot(prefix, schedule_id, n, day) for n in range(3)),
    )

    slot_searches = 0
    first_answered, release_first = threading.Event(), threading.Event()

    def session() -> requests.Session:
        made = new_session()
        send = made.request

        def request(method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
            nonlocal slot_searches
            response = send(method, url, *args, **kwargs)
            if method == "GET" and url.endswith("/Slot"):
                slot_searches += 1
                if slot_searches == 1:  # HAPI has answered the first search; hold its answer
                    first_answered.set()
                    assert release_first.wait(WAIT)
            return response

        made.request = request  # type: ignore[method-assign,assignment]
        return made

    client = UpstreamClient(Settings(fhir_base_url=registered, slot_end_search="on"), session_factory=session)

    def find_reads() -> set[str]:
        store = FhirUpstream(client, authorization=SIDECAR_TOKEN, shares_reads=True)
        return {str(s["id"]) for s in store.search_slots([schedule_id], day, day + timedelta(days=1))}

    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(find_reads)
        assert first_answered.wait(WAIT)
        load(registered, _slot(prefix, schedule_id, 3, day))  # a booking lands meanwhile
        later = [pool.submit(find_reads) for _ in range(3)]
        key = ("Slot", SIDECAR_TOKEN, (schedule_id,), day, day + timedelta(days=1))
        limit = time.monotonic() + WAIT
        while client.shared_reads.waiting(key) < 3:
            assert time.monotonic() < limit and first.running(), "the later searches did not wait"
            time.sleep(0.005)
        release_first.set()
        assert first.result(WAIT) == {f"{prefix}-{n}" for n in range(3)}
        for answer in later:
            assert answer.result(WAIT) == {f"{prefix}-{n}" for n in range(4)}, (
                "the Slot stored before they came"
            )
    assert slot_searches == 2, "the three later searches went out once"
    assert client.shared_reads.out() == 0
