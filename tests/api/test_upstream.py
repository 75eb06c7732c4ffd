"""The store over FHIR REST (``plugin/upstream.py``) against a mocked upstream."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from http.client import RemoteDisconnected
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
import responses
from flask import Flask, g
from responses import matchers
from urllib3.exceptions import ProtocolError

from operations.errors import ConcurrentChange, OutcomeUnknown
from operations.store import FhirStore
from plugin.config import Settings
from plugin.context import request_stores
from plugin.parallel import Parallel
from plugin.slot_index import SLOT_END_CACHE_SECONDS, SLOT_END_NOT_READY_RECHECK_SECONDS
from plugin.upstream import FhirUpstream, UpstreamClient
from plugin.upstream_errors import (
    UpstreamAccessDenied,
    UpstreamBadResponse,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from tests.api.conftest import BASE, bundle, outcome

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
END = datetime(2026, 12, 8, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client(settings: Settings, clock: Clock) -> UpstreamClient:
    return UpstreamClient(settings, clock=clock)


@pytest.fixture
def auto(settings: Settings, clock: Clock) -> UpstreamClient:
    """``SLOT_END_SEARCH=auto``: the client finds out about Slot ``end`` itself."""
    return UpstreamClient(Settings(fhir_base_url=BASE, slot_end_search="auto"), clock=clock)


@pytest.fixture
def store(client: UpstreamClient) -> FhirUpstream:
    return client.as_caller("Bearer caller-token", "req-42")


def test_it_is_the_store_the_use_cases_expect(client: UpstreamClient) -> None:
    store: FhirStore = client.as_caller(None)  # checked by mypy against the protocol
    assert store is not None


def query(call: responses.Call) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(str(call.request.url)).query)


def slot(n: int, schedule: str = "a") -> dict[str, object]:
    return {"resourceType": "Slot", "id": f"s{n}", "schedule": {"reference": f"Schedule/{schedule}"}}


# ---- the SchedulingStore reads ---------------------------------------------------------------


def test_read_schedules_is_one_search_with_actors_included(
    upstream: responses.RequestsMock, store: FhirUpstream
) -> None:
    practitioner = {"resourceType": "Practitioner", "id": "p1"}
    location = {"resourceType": "Location", "id": "room"}
    upstream.get(
        f"{BASE}/Schedule",
        json={
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [
                {"resource": {"resourceType": "Schedule", "id": "b"}, "search": {"mode": "match"}},
                {"resource": {"resourceType": "Schedule", "id": "a"}, "search": {"mode": "match"}},
                {"resource": practitioner, "search": {"mode": "include"}},
                {"resource": location, "search": {"mode": "include"}},
                {"resource": outcome("warning"), "search": {"mode": "outcome"}},
            ],
        },
    )
    schedules, actors = store.read_schedules(["a", "b", "a", "missing"])
    assert [s["id"] for s in schedules] == ["a", "b"]  # in the order asked, missing ones absent
    assert actors == {"Practitioner/p1": practitioner, "Location/room": location}
    assert len(upstream.calls) == 1 and store.round_trips == 1
    assert query(upstream.calls[0]) == [
        ("_id", "a,b,missing"),
        ("_include", "Schedule:actor"),
        ("_count", "1000"),
    ]
    # One page HAPI need not store for paging, of up to 1,000 matches.
    assert upstream.calls[0].request.headers["Cache-Control"] == "no-cache, no-store, max-results=1000"


def test_search_returns_matches_only(upstream: responses.RequestsMock, store: FhirUpstream) -> None:
    upstream.get(
        f"{BASE}/Appointment",
        json={
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [
                {"resource": {"resourceType": "Appointment", "id": "1"}, "search": {"mode": "match"}},
                {"resource": {"resourceType": "Slot", "id": "s"}, "search": {"mode": "include"}},
                {"resource": {"resourceType": "Appointment", "id": "2"}},  # no mode given
                {"resource": {"resourceType": "Slot", "id": "t"}},
                {"resource": outcome("too many"), "search": {"mode": "outcome"}},
            ],
        },
    )
    found = store.search("Appointment", [("identifier", "urn:x|1"), ("_include", "Appointment:slot")])
    assert [r["id"] for r in found] == ["1", "2"]


def test_ids_that_cannot_exist_are_not_sent(upstream: responses.RequestsMock, store: FhirUpstream) -> None:
    assert store.read_schedules(["a,b", "x/../y", ""]) == ([], {})
    assert store.search_slots(["bad id"], START, END) == []
    assert store.read_service("../Patient/1") is None
    assert store.round_trips == 0


def test_every_call_carries_the_callers_credentials_and_no_cache(
    upstream: responses.RequestsMock, store: FhirUpstream, settings: Settings
) -> None:
    upstream.get(f"{BASE}/HealthcareService/svc", json={"resourceType": "HealthcareService"})
    store.read_service("svc")
    sent = upstream.calls[0].request
    assert sent.headers["Authorization"] == "Bearer caller-token"
    assert sent.headers["Cache-Control"] == "no-cache"
    assert sent.headers["Accept"] == "application/fhir+json"
    assert sent.headers["X-Request-ID"] == "req-42"
    assert sent.req_kwargs["timeout"] == settings.upstream_timeout  # type: ignore[attr-defined]


def test_the_debug_line_of_a_call_says_what_the_replay_must_send_again(
    upstream: responses.RequestsMock, store: FhirUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    """bench/replay.py sends the sidecar's reads again from these lines: URL, identity, Prefer."""
    upstream.get(f"{BASE}/HealthcareService/svc", json={"resourceType": "HealthcareService"})
    upstream.get(f"{BASE}/Slot", json=bundle([]))
    with caplog.at_level(logging.DEBUG, logger="plugin.upstream"):
        store.read_service("svc")
        store.search_slots(["a"], START, END)
    lines = [r for r in caplog.records if r.getMessage() == "upstream call"]
    assert [(r.upstream_method, r.as_service, r.upstream_prefer) for r in lines] == [  # type: ignore[attr-defined]
        ("GET", False, None),
        ("GET", False, "handling=strict"),
    ]
    assert lines[1].upstream_url.startswith(f"{BASE}/Slot?schedule=Schedule%2Fa")  # type: ignore[attr-defined]


@pytest.mark.parametrize("status", [404, 410])
def test_missing_service_is_none(upstream: responses.RequestsMock, store: FhirUpstream, status: int) -> None:
    upstream.get(f"{BASE}/HealthcareService/gone", status=status, json=outcome("gone"))
    assert store.read_service("gone") is None


def test_anonymous_callers_stay_anonymous_even_with_a_netrc(
    upstream: responses.RequestsMock,
    client: UpstreamClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine hapi.test login admin password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    upstream.get(f"{BASE}/HealthcareService/svc", json={"resourceType": "HealthcareService"})
    client.as_caller(None).read_service("svc")
    assert "Authorization" not in upstream.calls[0].request.headers


def test_cookies_from_one_caller_never_reach_another(
    upstream: responses.RequestsMock, client: UpstreamClient
) -> None:
    upstream.get(
        f"{BASE}/HealthcareService/svc",
        json={"resourceType": "HealthcareService"},
        headers={"Set-Cookie": "JSESSIONID=alice; Path=/"},
    )
    client.as_caller("Bearer alice").read_service("svc")
    client.as_caller("Bearer bob").read_service("svc")
    assert "Cookie" not in upstream.calls[1].request.headers


def test_one_session_per_process(client: UpstreamClient, monkeypatch: pytest.MonkeyPatch) -> None:
    first = client.session()
    assert client.session() is first
    monkeypatch.setattr("os.getpid", lambda: 999_999)  # as in a forked gunicorn worker
    assert client.session() is not first


# ---- paging ----------------------------------------------------------------------------------


def test_search_follows_next_links_to_the_end_without_a_1000_slot_limit(
    upstream: responses.RequestsMock, store: FhirUpstream
) -> None:
    pages = [
        [slot(n) for n in range(1000)],
        [slot(n) for n in range(1000, 2000)],
        [slot(n) for n in range(2000, 2005)],
    ]
    page2 = f"{BASE}?_getpages=abc&_getpagesoffset=1000&_count=1000&_bundletype=searchset"
    page3 = f"{BASE}?_getpages=abc&_getpagesoffset=2000&_count=1000&_bundletype=searchset"
    upstream.get(f"{BASE}/Slot", json=bundle(pages[0], next_url=page2))
    upstream.get(
        BASE,
        json=bundle(pages[1], next_url=page3),
        match=[matchers.query_param_matcher({"_getpagesoffset": "1000"}, strict_match=False)],
    )
    upstream.get(
        BASE,
        json=bundle(pages[2]),
        match=[matchers.query_param_matcher({"_getpagesoffset": "2000"}, strict_match=False)],
    )
    slots = store.search_slots(["a"], START, END)
    assert [s["id"] for s in slots] == [f"s{n}" for n in range(2005)]
    assert store.round_trips == 3
    assert [call.request.url for call in upstream.calls][1:] == [page2, page3]
    # Asked as one page not kept; a server that pages it anyway is followed.
    assert [call.request.headers["Cache-Control"] for call in upstream.calls] == [
        "no-cache, no-store, max-results=1000",
        "no-cache",
        "no-cache",
    ]
    for call in upstream.calls:  # every page, not just the first, is uncached and authorised
        assert call.request.headers["Authorization"] == "Bearer caller-token"


def test_next_link_with_the_public_host_is_rebased_onto_the_configured_base(
    upstream: responses.RequestsMock, store: FhirUpstream
) -> None:
    upstream.get(
        f"{BASE}/Slot",
        json=bundle([slot(1)], next_url="https://fhir.example.org/fhir?_getpages=abc"),
    )
    upstream.get(BASE, json=bundle([slot(2)]))
    assert [s["id"] for s in store.search("Slot", [])] == ["s1", "s2"]
    assert upstream.calls[1].request.url == f"{BASE}?_getpages=abc"


def test_next_link_elsewhere_is_refused_without_sending_credentials(
    upstream: responses.RequestsMock, store: FhirUpstream
) -> None:
    upstream.get(f"{BASE}/Slot", json=bundle([slot(1)], next_url="https://evil.example/x?p=2"))
    with pytest.raises(UpstreamBadResponse):
        store.search("Slot", [])
    assert len(upstream.calls) == 1


def test_paging_loop_is_an_error(upstream: responses.RequestsMock, store: FhirUpstream) -> None:
    loop = f"{BASE}?_getpages=same"
    upstream.get(f"{BASE}/Slot", json=bundle([slot(1)], next_url=loop))
    upstream.get(BASE, json=bundle([slot(2)], next_url=loop))
    with pytest.raises(UpstreamBadResponse, match="loop"):
        store.search("Slot", [])


# ---- the Slot query and the end search parameter ---------------------------------------------


class SlotServer:
    """HAPI as far as Slot searches go: counts (``_summary=count``), with or without ``end``."""

    def __init__(self, total: int = 5, indexed: int | None = 5, slots: int = 1) -> None:
        self.total = total
        self.indexed = indexed
        """Slots found by ``end`` (None: the parameter is unknown, 400)."""
        self.slots = slots

    def __call__(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        params = parse_qsl(urlsplit(str(request.url)).query)
        has_end = any(name == "end" for name, _ in params)
        if has_end and self.indexed is None:
            text = 'HAPI-1223: Unknown search parameter "end" for resource type "Slot"'
            return 400, {}, json.dumps(outcome(text))
        if ("_summary", "count") in params:
            total = self.indexed if has_end else self.total
            return 200, {}, json.dumps({"resourceType": "Bundle", "type": "searchset", "total": total})
        return 200, {}, json.dumps(bundle([slot(n) for n in range(1, self.slots + 1)]))


def test_slot_query_uses_end_once_every_slot_is_indexed_and_remembers_it(
    upstream: responses.RequestsMock, auto: UpstreamClient, clock: Clock
) -> None:
    upstream.add_callback(responses.GET, f"{BASE}/Slot", callback=SlotServer())
    store = auto.as_caller(None)
    assert [s["id"] for s in store.search_slots(["a", "b"], START, END)] == ["s1"]
    counts = [query(call) for call in upstream.calls[:3]]
    assert counts == [
        [("_summary", "count")],
        [("end", "ge1000-01-01"), ("_summary", "count")],
        [("_summary", "count")],
    ]
    assert query(upstream.calls[3]) == [
        ("schedule", "Schedule/a,Schedule/b"),
        ("start", "lt2026-12-08T09:00:00Z"),
        ("end", "gt2026-12-01T08:59:59Z"),
        ("_count", "1000"),
    ]
    assert all(call.request.headers["Prefer"] == "handling=strict" for call in upstream.calls)
    assert store.round_trips == 4
    assert auto.slot_end_supported() is True and auto.slot_end_index_ready() is True

    again = auto.as_caller(None)
    again.search_slots(["a"], START, END)
    assert again.round_trips == 1  # known: no counting
    clock.now += SLOT_END_CACHE_SECONDS + 1
    assert auto.slot_end_index_ready() is None  # counted again after the cache lapses


def test_while_the_upstream_is_still_indexing_end_no_decision_uses_it(
    upstream: responses.RequestsMock, auto: UpstreamClient, clock: Clock
) -> None:
    """The first reindex after registration: Slots stored before the SearchParameter are not
    found by ``end`` yet, so the look-back query is used until the counts agree."""
    server = SlotServer(total=5, indexed=3)
    upstream.add_callback(responses.GET, f"{BASE}/Slot", callback=server)
    store = auto.as_caller(None)
    store.search_slots(["a"], START, END)
    assert ("start", "ge2026-09-30T09:00:00Z") in query(upstream.calls[-1])  # 62 days of look-back
    assert not any(name == "end" for name, _ in query(upstream.calls[-1]))
    assert auto.slot_end_index_ready() is False

    clock.now += SLOT_END_NOT_READY_RECHECK_SECONDS + 1
    server.indexed = 5  # the reindex job finished
    later = auto.as_caller(None)
    later.search_slots(["a"], START, END)
    assert ("end", "gt2026-12-01T08:59:59Z") in query(upstream.calls[-1])
    assert later.round_trips == 4


def test_slot_query_falls_back_when_the_upstream_does_not_know_end(
    upstream: responses.RequestsMock, auto: UpstreamClient, clock: Clock
) -> None:
    upstream.add_callback(responses.GET, f"{BASE}/Slot", callback=SlotServer(indexed=None, slots=2))
    store = auto.as_caller(None)
    assert len(store.search_slots(["a"], START, END)) == 2
    assert store.round_trips == 3  # count, refused end count, look-back query
    assert query(upstream.calls[-1]) == [
        ("schedule", "Schedule/a"),
        ("start", "lt2026-12-08T09:00:00Z"),
        ("start", "ge2026-09-30T09:00:00Z"),  # 62 days of look-back
        ("_count", "1000"),
    ]
    assert auto.slot_end_supported() is False

    again = auto.as_caller(None)
    again.search_slots(["a"], START, END)
    assert again.round_trips == 1  # the answer is cached: no second probe

    clock.now += SLOT_END_CACHE_SECONDS + 1
    later = auto.as_caller(None)
    later.search_slots(["a"], START, END)
    assert later.round_trips == 3  # probed again, refused again, fell back


def test_slot_end_search_on_trusts_the_index_and_never_falls_back(
    upstream: responses.RequestsMock, settings: Settings
) -> None:
    forced = Settings(fhir_base_url=settings.fhir_base_url, slot_end_search="on")
    upstream.add_callback(responses.GET, f"{BASE}/Slot", callback=SlotServer(indexed=None))
    with pytest.raises(UpstreamRejected) as caught:
        UpstreamClient(forced).as_caller(None).search_slots(["a"], START, END)
    assert caught.value.status == 502 and caught.value.upstream_status == 400
    assert len(upstream.calls) == 1  # no counting: the operator vouched for the index


def test_slot_end_search_off_uses_the_look_back(upstream: responses.RequestsMock, settings: Settings) -> None:
    off = Settings(fhir_base_url=settings.fhir_base_url, slot_end_search="off", slot_lookback_days=7)
    upstream.get(f"{BASE}/Slot", json=bundle([]))
    UpstreamClient(off).as_caller(None).search_slots(["a"], START, END)
    assert ("start", "ge2026-11-24T09:00:00Z") in query(upstream.calls[0])
    assert not any(name == "end" for name, _ in query(upstream.calls[0]))


def test_search_bounds_round_outward(upstream: responses.RequestsMock, store: FhirUpstream) -> None:
    upstream.get(f"{BASE}/Slot", json=bundle([]))
    store.search_slots(
        ["a"],
        START + timedelta(microseconds=500),
        END.astimezone(UTC) + timedelta(microseconds=1),
    )
    assert ("start", "lt2026-12-08T09:00:01Z") in query(upstream.calls[0])
    assert ("end", "gt2026-12-01T08:59:59Z") in query(upstream.calls[0])


# ---- failures --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "error", "status", "code"),
    [
        (requests.ConnectionError("refused"), UpstreamUnavailable, 503, "transient"),
        (requests.ConnectTimeout("slow"), UpstreamTimeout, 504, "timeout"),
        (requests.ReadTimeout("slow"), UpstreamTimeout, 504, "timeout"),
    ],
)
def test_transport_failures(
    upstream: responses.RequestsMock,
    store: FhirUpstream,
    failure: Exception,
    error: type[Exception],
    status: int,
    code: str,
) -> None:
    upstream.get(f"{BASE}/HealthcareService/svc", body=failure)
    with pytest.raises(error) as caught:
        store.read_service("svc")
    assert (caught.value.status, caught.value.code) == (status, code)  # type: ignore[attr-defined]
    assert store.round_trips == 1


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (500, outcome("boom"), UpstreamBadResponse),
        (502, None, UpstreamBadResponse),
        (200, None, UpstreamBadResponse),  # not JSON
        (200, {"resourceType": "Patient", "id": "svc"}, UpstreamBadResponse),  # wrong type
        (302, None, UpstreamBadResponse),  # redirects are not followed
        (429, outcome("slow down"), UpstreamUnavailable),
        (422, outcome("nope"), UpstreamRejected),
    ],
)
def test_unusable_answers(
    upstream: responses.RequestsMock,
    store: FhirUpstream,
    status: int,
    body: dict[str, object] | None,
    error: type[Exception],
) -> None:
    if body is None:
        upstream.get(
            f"{BASE}/HealthcareService/svc",
            status=status,
            body="<html>oops</html>",
            headers={"Location": "http://elsewhere/"},
        )
    else:
        upstream.get(f"{BASE}/HealthcareService/svc", status=status, json=body)
    with pytest.raises(error):
        store.read_service("svc")
    assert len(upstream.calls) == 1


@pytest.mark.parametrize(("status", "code"), [(401, "security"), (403, "forbidden")])
def test_access_refusals_keep_their_status(
    upstream: responses.RequestsMock, store: FhirUpstream, status: int, code: str
) -> None:
    upstream.get(
        f"{BASE}/HealthcareService/svc",
        status=status,
        json=outcome("HAPI-0333: Access denied by rule"),
        headers={"WWW-Authenticate": 'Bearer realm="hapi"'},
    )
    with pytest.raises(UpstreamAccessDenied) as caught:
        store.read_service("svc")
    assert (caught.value.status, caught.value.code) == (status, code)
    assert "Access denied by rule" in caught.value.diagnostics
    assert caught.value.headers == {"WWW-Authenticate": 'Bearer realm="hapi"'}


# ---- writes the booking operations will use --------------------------------------------------


def test_transaction_posts_the_bundle_and_reports_conflicts(
    upstream: responses.RequestsMock, store: FhirUpstream
) -> None:
    request = {"resourceType": "Bundle", "type": "transaction", "entry": []}
    upstream.post(BASE, json={"resourceType": "Bundle", "type": "transaction-response"})
    assert store.transaction(request)["type"] == "transaction-response"
    sent = upstream.calls[0].request
    assert sent.headers["Content-Type"].startswith("application/fhir+json")
    assert sent.headers["Authorization"] == "Bearer caller-token"
    assert sent.headers["Prefer"] == "return=representation"

    upstream.replace(responses.POST, BASE, status=412, json=outcome("version conflict"))
    with pytest.raises(ConcurrentChange, match="version conflict"):
        store.transaction(request)


def test_a_refused_transaction_is_422_with_the_servers_reason(upstream: responses.RequestsMock) -> None:
    from operations.errors import Unprocessable
    from plugin.config import Settings
    from plugin.upstream import UpstreamClient

    upstream.post(BASE, status=400, json=outcome("HAPI-1094: Resource Patient/ghost not found"))
    store = UpstreamClient(Settings(fhir_base_url=BASE)).as_caller(None)
    with pytest.raises(Unprocessable, match="Patient/ghost not found") as caught:
        store.transaction({"resourceType": "Bundle", "type": "transaction", "entry": []})
    assert caught.value.status == 422
    assert caught.value.code == "processing"


def test_actors_a_server_did_not_include_are_fetched_per_type(
    upstream: responses.RequestsMock, store: FhirUpstream
) -> None:
    schedules = [
        {"resourceType": "Schedule", "id": "a", "actor": [{"reference": "Practitioner/p1"}]},
        {"resourceType": "Schedule", "id": "b", "actor": [{"reference": "Practitioner/p2"}]},
        {"resourceType": "Schedule", "id": "c", "actor": [{"reference": "Location/room"}]},
    ]
    upstream.get(
        f"{BASE}/Schedule",
        json={"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": s} for s in schedules]},
    )
    practitioners = [
        {"resourceType": "Practitioner", "id": "p1"},
        {"resourceType": "Practitioner", "id": "p2"},
    ]
    upstream.get(
        f"{BASE}/Practitioner",
        json={
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": p} for p in practitioners],
        },
    )
    upstream.get(
        f"{BASE}/Location",
        json={
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": {"resourceType": "Location", "id": "room"}}],
        },
    )
    found, actors = store.read_schedules(["a", "b", "c"])
    assert [s["id"] for s in found] == ["a", "b", "c"]
    assert set(actors) == {"Practitioner/p1", "Practitioner/p2", "Location/room"}
    assert store.round_trips == 3  # one per actor type, not one per actor
    assert ("_id", "p1,p2") in query(upstream.calls[1])


def dropped() -> requests.ConnectionError:
    """What requests raises when HAPI closed a kept-alive connection the pool then reused."""
    reason = RemoteDisconnected("Remote end closed connection without response")
    return requests.ConnectionError(ProtocolError("Connection aborted.", reason))


def test_a_read_on_a_connection_the_upstream_just_closed_is_sent_again(
    upstream: responses.RequestsMock, store: FhirUpstream
) -> None:
    upstream.get(f"{BASE}/HealthcareService/svc", body=dropped())
    upstream.get(f"{BASE}/HealthcareService/svc", json={"resourceType": "HealthcareService", "id": "svc"})
    assert store.read_service("svc") == {"resourceType": "HealthcareService", "id": "svc"}
    assert len(upstream.calls) == 2


def test_a_read_dropped_twice_and_a_write_dropped_once_are_not_sent_again(
    upstream: responses.RequestsMock, client: UpstreamClient
) -> None:
    upstream.get(f"{BASE}/HealthcareService/svc", body=dropped())
    upstream.get(f"{BASE}/HealthcareService/svc", body=dropped())
    with pytest.raises(UpstreamUnavailable):
        client.as_caller(None).read_service("svc")
    assert len(upstream.calls) == 2
    upstream.post(BASE, body=dropped())
    with pytest.raises(OutcomeUnknown):  # a transaction may have landed: settled, never resent
        client.as_caller(None).transaction({"resourceType": "Bundle", "type": "transaction", "entry": []})
    assert len(upstream.calls) == 3


def _slots_page(ids: Sequence[str], next_url: str | None = None) -> dict[str, Any]:
    page: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": {"resourceType": "Slot", "id": i}, "search": {"mode": "match"}} for i in ids],
    }
    if next_url:
        page["link"] = [{"relation": "next", "url": next_url}]
    return page


def test_a_full_page_without_a_next_link_is_searched_again_page_by_page(
    upstream: responses.RequestsMock, store: FhirUpstream
) -> None:
    """HAPI stops a ``no-store`` search at ``max-results`` matches and gives no next link: a page
    that full may have been cut, so the search is sent again the usual way, paged."""
    ids = [f"s{n}" for n in range(1500)]
    second_page = f"{BASE}?_getpages=abc&_getpagesoffset=1000"
    upstream.get(f"{BASE}/Slot", json=_slots_page(ids[:1000]))
    upstream.get(f"{BASE}/Slot", json=_slots_page(ids[:1000], next_url=second_page))
    upstream.get(second_page, json=_slots_page(ids[1000:]))
    found = store.search("Slot", [("schedule", "Schedule/a")])
    assert [r["id"] for r in found] == ids
    headers = [c.request.headers["Cache-Control"] for c in upstream.calls]
    assert headers == ["no-cache, no-store, max-results=1000", "no-cache", "no-cache"]
    assert all(("_total", "accurate") not in query(c) for c in upstream.calls)


def test_a_page_of_fewer_matches_than_the_limit_is_the_whole_result(
    upstream: responses.RequestsMock, store: FhirUpstream
) -> None:
    upstream.get(f"{BASE}/Slot", json=_slots_page([f"s{n}" for n in range(999)]))
    assert len(store.search("Slot", [("schedule", "Schedule/a")])) == 999
    assert len(upstream.calls) == 1


def test_a_search_for_the_first_few_is_paged_as_asked(
    upstream: responses.RequestsMock, store: FhirUpstream
) -> None:
    """A listing that wants the first 50 asks for pages of 50: it is not a search for every match."""
    upstream.get(f"{BASE}/Schedule", json={"resourceType": "Bundle", "type": "searchset"})
    store.search("Schedule", [("_sort", "_id")], limit=50)
    assert upstream.calls[0].request.headers["Cache-Control"] == "no-cache"
    assert ("_count", "50") in query(upstream.calls[0])


def test_an_upstream_refusing_max_results_is_searched_page_by_page_from_then_on(
    upstream: responses.RequestsMock, store: FhirUpstream, client: UpstreamClient
) -> None:
    """An administrator may set HAPI's ``no-store`` limit below 1,000 (HAPI-1165): the search is
    sent again paged, and the process stops asking for one page."""
    refused = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "processing",
                "diagnostics": "HAPI-1165: Cache-Control header max-results value must not exceed 500",
            }
        ],
    }
    upstream.get(f"{BASE}/Slot", json=refused, status=400)
    upstream.get(f"{BASE}/Slot", json=_slots_page(["s1"]))
    upstream.get(f"{BASE}/Basic", json={"resourceType": "Bundle", "type": "searchset"})
    assert [r["id"] for r in store.search("Slot", [("schedule", "Schedule/a")])] == ["s1"]
    store.search("Basic", [("_id", "lock-1")])
    headers = [c.request.headers["Cache-Control"] for c in upstream.calls]
    assert headers == ["no-cache, no-store, max-results=1000", "no-cache", "no-cache"]
    assert client.one_page.refused


def test_a_search_that_filled_a_page_is_asked_paged_straight_away_for_a_while(
    upstream: responses.RequestsMock, client: UpstreamClient, clock: Clock
) -> None:
    """The day's ``$find`` of a busy Schedule, asked again and again: once it has filled a page,
    its first answer would only be thrown away again, so for ten minutes it goes paged at once."""
    ids = [f"s{n}" for n in range(1200)]
    second_page = f"{BASE}?_getpages=abc&_getpagesoffset=1000"

    def answers(times: int) -> None:
        for _ in range(times):
            upstream.get(f"{BASE}/Slot", json=_slots_page(ids[:1000], next_url=second_page))
            upstream.get(second_page, json=_slots_page(ids[1000:]))

    def sent(store: FhirUpstream) -> list[str]:
        assert len(store.search("Slot", [("schedule", "Schedule/a")])) == 1200
        return [c.request.headers["Cache-Control"] for c in upstream.calls[-store.round_trips :]]

    upstream.get(f"{BASE}/Slot", json=_slots_page(ids[:1000]))  # the first ask: cut
    answers(1)
    assert sent(client.as_caller(None)) == ["no-cache, no-store, max-results=1000", "no-cache", "no-cache"]
    answers(1)
    assert sent(client.as_caller(None)) == ["no-cache", "no-cache"]  # paged at once
    other = client.as_caller(None)  # another search still goes as one page
    upstream.get(f"{BASE}/Slot", json=_slots_page(["x"]))
    assert len(other.search("Slot", [("schedule", "Schedule/b")])) == 1
    assert upstream.calls[-1].request.headers["Cache-Control"] == "no-cache, no-store, max-results=1000"
    clock.now += 601
    upstream.get(f"{BASE}/Slot", json=_slots_page(ids[:1000]))
    answers(1)
    assert sent(client.as_caller(None))[0] == "no-cache, no-store, max-results=1000"  # asked again


def test_a_slot_search_that_filled_a_page_is_asked_in_halves_by_start(
    upstream: responses.RequestsMock, store: FhirUpstream, client: UpstreamClient
) -> None:
    """The day of a busy Schedule, asked again: two one-page searches, split by the Slots'
    start (the first keeps whatever began before the range), rather than HAPI's stored pages."""
    ids = [f"s{n}" for n in range(1500)]
    second_page = f"{BASE}?_getpages=abc&_getpagesoffset=1000"
    upstream.get(f"{BASE}/Slot", json=_slots_page(ids[:1000]))  # cut: the search filled a page
    upstream.get(f"{BASE}/Slot", json=_slots_page(ids[:1000], next_url=second_page))
    upstream.get(second_page, json=_slots_page(ids[1000:]))
    assert len(store.search_slots(["a"], START, END)) == 1500
    middle = "2026-12-04T21:00:00Z"  # halfway between START and END
    # The halves are read at the same time: each answer goes to its own query.
    before = matchers.query_param_matcher({"start": "lt" + middle}, strict_match=False)
    after = matchers.query_param_matcher(
        {"start": ["lt2026-12-08T09:00:00Z", "ge" + middle]}, strict_match=False
    )
    upstream.get(f"{BASE}/Slot", json=_slots_page(ids[:700]), match=[before])
    upstream.get(f"{BASE}/Slot", json=_slots_page(ids[700:]), match=[after])
    again = client.as_caller("Bearer caller-token", "req-43")
    assert sorted(s["id"] for s in again.search_slots(["a"], START, END)) == sorted(ids)
    assert again.round_trips == 2
    halves = sorted((query(c) for c in upstream.calls[-2:]), key=len)
    assert halves[0] == [
        ("schedule", "Schedule/a"),
        ("start", "lt" + middle),
        ("end", "gt2026-12-01T08:59:59Z"),
        ("_count", "1000"),
    ]
    assert halves[1] == [
        ("schedule", "Schedule/a"),
        ("start", "lt2026-12-08T09:00:00Z"),
        ("start", "ge" + middle),
        ("end", "gt2026-12-01T08:59:59Z"),
        ("_count", "1000"),
    ]
    assert all(
        c.request.headers["Cache-Control"] == "no-cache, no-store, max-results=1000"
        for c in upstream.calls[-2:]
    )


def test_split_slot_searches_on_a_full_read_pool_still_finish(
    upstream: responses.RequestsMock, client: UpstreamClient
) -> None:
    """``$find`` runs its Slot search on the read pool; a split search then waits there for its
    pieces. The pieces have a pool of their own, so searches holding every read thread while
    they wait still finish (on one shared pool each would wait for a thread another holds)."""
    full = [
        ("schedule", "Schedule/a"),
        ("start", "lt2026-12-08T09:00:00Z"),
        ("end", "gt2026-12-01T08:59:59Z"),
        ("_count", "1000"),
    ]
    client.one_page.filled(("Slot", tuple(full)))  # the next search of that range is split
    upstream.get(f"{BASE}/Slot", json=_slots_page(["s1"]))
    read_pool = Parallel(2)
    searches = [lambda: client.as_caller(None).search_slots(["a"], START, END) for _ in range(2)]
    finished = threading.Event()

    def run() -> None:
        read_pool(*searches)
        finished.set()

    threading.Thread(target=run, daemon=True).start()
    assert finished.wait(5), "split Slot searches waited for threads their own waiting held"
    assert len(upstream.calls) == 4  # two searches, two halves each


def test_a_slot_search_is_not_split_when_the_upstream_refuses_one_page_searches(
    upstream: responses.RequestsMock, store: FhirUpstream, client: UpstreamClient
) -> None:
    """Halves only pay as pages HAPI does not keep: paged, they would be more pages."""
    client.one_page.filled(("Slot", ()))  # something filled once; then HAPI refused max-results
    client.one_page.refuse()
    upstream.get(f"{BASE}/Slot", json=_slots_page(["s1"]))
    store.search_slots(["a"], START, END)
    client.one_page.filled(("Slot", tuple(query(upstream.calls[0]))))
    upstream.get(f"{BASE}/Slot", json=_slots_page(["s1"]))
    again = client.as_caller(None)
    assert [s["id"] for s in again.search_slots(["a"], START, END)] == ["s1"]
    assert again.round_trips == 1
    assert upstream.calls[-1].request.headers["Cache-Control"] == "no-cache"


def test_another_400_to_a_one_page_search_is_the_callers_answer(
    upstream: responses.RequestsMock, store: FhirUpstream
) -> None:
    upstream.get(
        f"{BASE}/Slot",
        json={"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid"}]},
        status=400,
    )
    with pytest.raises(UpstreamRejected):
        store.search("Slot", [("schedule", "Schedule/a")])
    assert len(upstream.calls) == 1


def test_an_answer_orjson_refuses_is_still_read_when_it_is_json(
    upstream: responses.RequestsMock, store: FhirUpstream
) -> None:
    """Answers are parsed with orjson, which reads UTF-8 only; a UTF-16 one (with its byte order
    mark) goes to requests' parser, as every answer did before."""
    body = json.dumps({"resourceType": "HealthcareService", "id": "s"}).encode("utf-16")
    upstream.get(f"{BASE}/HealthcareService/s", body=body, content_type="application/fhir+json")
    assert store.read("HealthcareService", "s") == {"resourceType": "HealthcareService", "id": "s"}


def test_only_operations_that_write_nothing_share_their_slot_searches(app: Flask) -> None:
    """``$find`` may share a Slot search sent after it arrived (plugin/shared_reads.py); a
    booking's deciding search is always its own."""
    with app.test_request_context("/Appointment/$find"):
        g.started = time.monotonic()
        find_stores = request_stores("find", writes=False)
        book_stores = request_stores("book")
    assert isinstance(find_stores.service, FhirUpstream) and find_stores.service.shares_reads
    assert isinstance(book_stores.service, FhirUpstream) and not book_stores.service.shares_reads
    assert isinstance(find_stores.caller, FhirUpstream) and not find_stores.caller.shares_reads
