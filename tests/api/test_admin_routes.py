"""The calendar page's endpoints against a mocked upstream: every call made with the
administrator's own Authorization (never the sidecar's credentials or guard key), what the week
view computes and classifies, the only two Slot statuses ever written, and clear 4xx answers."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import requests
import responses
from flask import Flask
from flask.testing import FlaskClient

from operations.model import HOLD_EXPIRES_URL
from plugin.config import Settings
from plugin.transport import SERVICE_KEY_HEADER
from tests.api.conftest import BASE, bundle, outcome
from tests.unit import builders

ADMIN = "Bearer clinic-admin"
SIDECAR = "Bearer sidecar-own-token"
WEEK = "2026-11-09"  # a Monday after NOW (2026-11-02)


@pytest.fixture
def settings() -> Settings:
    return Settings(
        fhir_base_url=BASE,
        upstream_authorization=SIDECAR,
        guard_key="api-test-guard-key-0123456789",
        hold_sweep_seconds=0,
        slot_end_search="on",
    )


def hold_extension(at: str) -> list[dict[str, Any]]:
    return [{"url": HOLD_EXPIRES_URL, "valueInstant": at}]


CLINIC = [
    builders.practitioner("alice", "America/New_York"),
    builders.service(
        hours=[builders.hours("mon tue wed thu fri", "09:00", "17:00")],
        duration=30,
        bufferBefore=5,
        bufferAfter=5,
        alignmentInterval=30,
    ),
    builders.schedule("alice", "Practitioner/alice", ["checkup"]),
]
VISIT_SLOT = builders.slot("alice", "busy", "2026-11-10T10:00:00-05:00", "2026-11-10T10:30:00-05:00", id="v1")
SLOTS = [
    VISIT_SLOT,
    builders.slot(
        "alice",
        "busy-unavailable",
        "2026-11-10T10:30:00-05:00",
        "2026-11-10T10:35:00-05:00",
        id="b1",
        comment="buffer after appointment",
    ),
    builders.slot(
        "alice",
        "busy-unavailable",
        "2026-11-11T14:00:00-05:00",
        "2026-11-11T15:00:00-05:00",
        id="blk",
        comment="staff meeting",
        meta={"versionId": "2"},
    ),
    builders.slot("alice", "free", "2026-11-14T09:00:00-05:00", "2026-11-14T11:00:00-05:00", id="sat"),
    builders.slot(
        "alice",
        "busy-tentative",
        "2026-11-12T11:00:00-05:00",
        "2026-11-12T11:30:00-05:00",
        id="h1",
        extension=hold_extension("2026-11-02T08:10:00Z"),
    ),
    builders.slot(
        "alice",
        "busy-tentative",
        "2026-11-12T13:00:00-05:00",
        "2026-11-12T13:30:00-05:00",
        id="h2",
        extension=hold_extension("2026-11-02T07:59:00Z"),
    ),
]
PARTICIPANTS = [
    {"actor": {"reference": "Practitioner/alice"}},
    {"actor": {"reference": "Patient/pat", "display": "Pat Doe"}},
]
APPOINTMENTS = [
    {
        "resourceType": "Appointment",
        "id": "visit",
        "status": "booked",
        "start": "2026-11-10T15:00:00Z",
        "end": "2026-11-10T15:30:00Z",
        "serviceType": [{"text": "Checkup"}],
        "slot": [{"reference": "Slot/v1"}],
        "participant": PARTICIPANTS,
    },
    {
        "resourceType": "Appointment",
        "id": "live-hold",
        "status": "pending",
        "serviceType": [{"coding": [{"code": "checkup", "display": "Check-up"}]}],
        "start": "2026-11-12T16:00:00Z",
        "end": "2026-11-12T16:30:00Z",
        "extension": hold_extension("2026-11-02T08:10:00Z"),
        "slot": [{"reference": "Slot/h1"}],
        "participant": PARTICIPANTS,
    },
    {
        "resourceType": "Appointment",
        "id": "lapsed-hold",
        "status": "pending",
        "start": "2026-11-12T18:00:00Z",
        "end": "2026-11-12T18:30:00Z",
        "extension": hold_extension("2026-11-02T07:59:00Z"),
        "slot": [{"reference": "Slot/h2"}],
        "participant": PARTICIPANTS,
    },
]


class Upstream:
    """The clinic on a mocked HAPI that records every call's identity headers."""

    def __init__(self, mock: responses.RequestsMock, *, slots: list[dict[str, Any]] | None = None) -> None:
        self.calls: list[requests.PreparedRequest] = []
        self.transactions: list[dict[str, Any]] = []
        schedule_bundle = bundle([CLINIC[2]])
        schedule_bundle["entry"].append({"resource": CLINIC[0], "search": {"mode": "include"}})
        self._add(mock, "Schedule", schedule_bundle)
        self._add(mock, "HealthcareService", bundle([CLINIC[1]]))
        self._add(mock, "Slot", bundle(SLOTS if slots is None else slots))
        self._add(mock, "Appointment", bundle(APPOINTMENTS))
        mock.add_callback(responses.POST, BASE, callback=self.transaction)
        for slot in SLOTS:
            mock.add_callback(responses.GET, f"{BASE}/Slot/{slot['id']}", callback=self._record(200, slot))
        mock.add_callback(
            responses.GET, f"{BASE}/HealthcareService/checkup", callback=self._record(200, CLINIC[1])
        )

    def _record(self, status: int, body: dict[str, Any]) -> Any:
        def callback(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
            self.calls.append(request)
            return status, {"Content-Type": "application/fhir+json"}, json.dumps(body)

        return callback

    def _add(self, mock: responses.RequestsMock, kind: str, body: dict[str, Any]) -> None:
        mock.add_callback(
            responses.GET, re.compile(rf"{re.escape(BASE)}/{kind}(\?.*)?$"), callback=self._record(200, body)
        )

    def transaction(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        self.calls.append(request)
        sent = json.loads(request.body or b"{}")
        self.transactions.append(sent)
        entries = [
            {
                "resource": {**e["resource"], "id": "new", "meta": {"versionId": "1"}},
                "response": {"status": "201"},
            }
            if "resource" in e
            else {"response": {"status": "204"}}
            for e in sent["entry"]
        ]
        body = {"resourceType": "Bundle", "type": "transaction-response", "entry": entries}
        return 200, {"Content-Type": "application/fhir+json"}, json.dumps(body)

    def assert_only_admin_credentials(self) -> None:
        assert self.calls
        for call in self.calls:
            assert call.headers.get("Authorization") == ADMIN, call.url
            assert SERVICE_KEY_HEADER not in call.headers, call.url


@pytest.fixture
def hapi(upstream: responses.RequestsMock) -> Upstream:
    return Upstream(upstream)


def week(client: FlaskClient, *query: tuple[str, str], token: str | None = ADMIN) -> Any:
    headers = {"Authorization": token} if token else {}
    return client.get("/admin/api/week", query_string=list(query), headers=headers)


def only_schedule(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.get_data(as_text=True)
    (schedule,) = response.get_json()["schedules"]
    return dict(schedule)


def test_the_week_is_read_with_the_admins_token_and_nothing_of_the_sidecars(
    client: FlaskClient, hapi: Upstream
) -> None:
    response = week(client, ("schedule", "alice"), ("start", WEEK))
    only_schedule(response)
    hapi.assert_only_admin_credentials()
    assert response.headers["Cache-Control"] == "no-store"
    assert response.mimetype == "application/json"


def test_the_week_is_drawn_in_the_schedules_zone_with_each_kind_classified(
    client: FlaskClient, hapi: Upstream
) -> None:
    schedule = only_schedule(week(client, ("schedule", "Schedule/alice"), ("start", WEEK)))
    assert schedule["timeZone"] == "America/New_York"
    assert schedule["offsets"] == ["-05:00"]
    assert schedule["start"] == "2026-11-09T00:00:00-05:00"
    assert schedule["end"] == "2026-11-16T00:00:00-05:00"
    kinds = [(e["kind"], e["start"], e["end"]) for e in schedule["events"]]
    assert kinds == [
        ("visit", "2026-11-10T10:00:00-05:00", "2026-11-10T10:30:00-05:00"),
        ("buffer", "2026-11-10T10:30:00-05:00", "2026-11-10T10:35:00-05:00"),
        ("block", "2026-11-11T14:00:00-05:00", "2026-11-11T15:00:00-05:00"),
        ("hold", "2026-11-12T11:00:00-05:00", "2026-11-12T11:30:00-05:00"),
        ("availability", "2026-11-14T09:00:00-05:00", "2026-11-14T11:00:00-05:00"),
    ]  # the lapsed hold and its Slot are gone; the visit's own Slot is drawn as the visit
    visit, _buffer, block, hold, _free = schedule["events"]
    assert visit["appointment"] == "Appointment/visit"
    assert visit["patients"] == ["Pat Doe"]
    assert visit["service"] == "Checkup"
    assert block["comment"] == "staff meeting"
    assert block["slot"] == "Slot/blk"
    assert hold["expires"] == "2026-11-02T03:10:00-05:00"
    assert hold["service"] == "Check-up"


def test_opening_hours_and_free_time_follow_the_rules_of_find(client: FlaskClient, hapi: Upstream) -> None:
    (service,) = only_schedule(week(client, ("schedule", "alice"), ("start", WEEK)))["services"]
    assert service["id"] == "checkup"
    assert service["duration"] == 30
    assert service["opening"][0] == {"start": "2026-11-09T09:00:00-05:00", "end": "2026-11-09T17:00:00-05:00"}
    assert len(service["opening"]) == 5  # Monday to Friday
    free = {(f["start"][:16], f["end"][11:16]) for f in service["free"]}
    # 5-minute buffers: the first start on the 30-minute grid is 09:30, the last ends 16:30.
    assert ("2026-11-09T09:30", "16:30") in free
    # Wednesday: the block 14:00-15:00 plus buffers takes 13:30-15:30 off the grid.
    assert ("2026-11-11T09:30", "13:30") in free
    assert ("2026-11-11T15:30", "16:30") in free
    # Saturday: closed, but the one-time availability 09:00-11:00 opens 09:30-10:30.
    assert ("2026-11-14T09:30", "10:30") in free
    # Thursday: the live hold 11:00-11:30 is taken; the lapsed one at 13:00 is free again.
    thursday = sorted(f for f in free if f[0].startswith("2026-11-12"))
    assert thursday == [("2026-11-12T09:30", "10:30"), ("2026-11-12T12:00", "16:30")]
    assert service["freeStarts"] == sum(
        1 for day in service["free"] for _ in range(_half_hours(day["start"], day["end"]))
    )


def _half_hours(start: str, end: str) -> int:
    minutes = (int(end[11:13]) * 60 + int(end[14:16])) - (int(start[11:13]) * 60 + int(start[14:16]))
    return minutes // 30


def test_a_dst_week_keeps_the_wall_clock(client: FlaskClient, upstream: responses.RequestsMock) -> None:
    every_day = builders.service(
        hours=[builders.hours("mon tue wed thu fri sat sun", "09:00", "17:00")], duration=30
    )
    CLINIC[1], saved = every_day, CLINIC[1]
    try:
        Upstream(upstream, slots=[])
        schedule = only_schedule(week(client, ("schedule", "alice"), ("start", "2027-03-08")))
    finally:
        CLINIC[1] = saved
    assert schedule["offsets"] == ["-04:00", "-05:00"]
    (service,) = schedule["services"]
    starts = [o["start"] for o in service["opening"]]
    assert starts[5:] == ["2027-03-13T09:00:00-05:00", "2027-03-14T09:00:00-04:00"]


def test_upstream_refusals_of_the_admins_token_are_passed_through(
    client: FlaskClient, upstream: responses.RequestsMock
) -> None:
    upstream.get(re.compile(rf"{re.escape(BASE)}/Schedule.*"), json=outcome("who are you"), status=401)
    response = week(client, ("schedule", "alice"), ("start", WEEK), token="Bearer nobody")
    assert response.status_code == 401
    assert response.get_json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(
    ("query", "expression"),
    [
        ([("start", WEEK)], "schedule"),
        ([("schedule", "alice")], "start"),
        ([("schedule", "alice"), ("start", "next monday")], "start"),
        ([("schedule", "alice"), ("start", WEEK), ("days", "15")], "days"),
        ([("schedule", "alice"), ("start", WEEK), ("days", "x")], "days"),
        ([("schedule", "Patient/x"), ("start", WEEK)], "schedule[0]"),
        ([("schedule", ",".join(f"s{i}" for i in range(11))), ("start", WEEK)], "schedule"),
    ],
)
def test_bad_week_requests_get_400_with_the_field(
    client: FlaskClient, hapi: Upstream, query: list[tuple[str, str]], expression: str
) -> None:
    response = week(client, *query)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json()["issue"][0]["expression"] == [expression]


def test_an_unreadable_schedule_is_422(client: FlaskClient, hapi: Upstream) -> None:
    response = week(client, ("schedule", "alice"), ("schedule", "bob"), ("start", WEEK))
    assert response.status_code == 422
    assert "Schedule/bob" in response.get_json()["issue"][0]["diagnostics"]


def post_slot(client: FlaskClient, **body: Any) -> Any:
    return client.post("/admin/api/slots", json=body, headers={"Authorization": ADMIN})


def test_a_block_is_written_as_the_admin_in_the_schedules_zone(client: FlaskClient, hapi: Upstream) -> None:
    response = post_slot(
        client,
        kind="block",
        schedule="alice",
        start="2026-11-11T19:00:00Z",
        end="2026-11-11T20:00:00Z",
        comment="training",
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    assert response.get_json()["id"] == "new"  # the Slot as stored
    (sent,) = hapi.transactions
    assert [e["request"] for e in sent["entry"]] == [{"method": "POST", "url": "Slot"}]  # no Provenance
    slot = sent["entry"][0]["resource"]
    assert slot == {
        "resourceType": "Slot",
        "schedule": {"reference": "Schedule/alice"},
        "status": "busy-unavailable",
        "start": "2026-11-11T14:00:00-05:00",
        "end": "2026-11-11T15:00:00-05:00",
        "comment": "training",
    }
    hapi.assert_only_admin_credentials()


def test_availability_may_name_a_service_the_schedule_offers(client: FlaskClient, hapi: Upstream) -> None:
    response = post_slot(
        client,
        kind="availability",
        schedule="alice",
        start="2026-11-14T09:00:00-05:00",
        end="2026-11-14T12:00:00-05:00",
        service="HealthcareService/checkup",
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    slot = hapi.transactions[0]["entry"][0]["resource"]
    assert slot["status"] == "free"
    assert slot["comment"] == "added on the calendar page"
    refs = [e["valueReference"]["reference"] for e in slot["serviceType"][0]["extension"]]
    assert refs == ["HealthcareService/checkup"]
    hapi.assert_only_admin_credentials()


@pytest.mark.parametrize(
    ("body", "expression"),
    [
        ({"kind": "busy"}, "kind"),
        ({"kind": "visit"}, "kind"),
        ({"schedule": "a/b"}, "schedule"),
        ({"start": "2026-11-11T19:00:00"}, "start"),
        ({"end": "2026-11-11T18:00:00Z"}, "end"),
        ({"end": "2027-01-11T18:00:00Z"}, "end"),
        ({"comment": "buffer after appointment"}, "comment"),
        ({"comment": "x" * 501}, "comment"),
        ({"comment": 7}, "comment"),
        ({"kind": "block", "service": "checkup"}, "service"),
    ],
)
def test_bad_slot_writes_get_400_and_reach_nobody(
    client: FlaskClient, hapi: Upstream, body: dict[str, Any], expression: str
) -> None:
    good = {
        "kind": "block",
        "schedule": "alice",
        "start": "2026-11-11T19:00:00Z",
        "end": "2026-11-11T20:00:00Z",
    }
    response = post_slot(client, **(good | body))
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json()["issue"][0]["expression"] == [expression]
    assert not hapi.transactions


def test_a_body_that_is_not_json_is_400(client: FlaskClient, hapi: Upstream) -> None:
    response = client.post("/admin/api/slots", data="nope", headers={"Authorization": ADMIN})
    assert response.status_code == 400
    assert response.get_json()["issue"][0]["code"] == "structure"


def test_availability_for_a_service_not_offered_is_422(client: FlaskClient, hapi: Upstream) -> None:
    response = post_slot(
        client,
        kind="availability",
        schedule="alice",
        start="2026-11-14T09:00:00-05:00",
        end="2026-11-14T12:00:00-05:00",
        service="surgery",
    )
    assert response.status_code == 422
    assert not hapi.transactions


def test_a_block_is_removed_version_checked(client: FlaskClient, hapi: Upstream) -> None:
    response = client.delete("/admin/api/slots/blk", headers={"Authorization": ADMIN})
    assert response.status_code == 200, response.get_data(as_text=True)
    (sent,) = hapi.transactions
    assert sent["entry"] == [{"request": {"method": "DELETE", "url": "Slot/blk", "ifMatch": 'W/"2"'}}]
    hapi.assert_only_admin_credentials()


@pytest.mark.parametrize("slot_id", ["v1", "b1", "h1"])
def test_visit_buffer_and_hold_slots_are_not_removed_here(
    client: FlaskClient, hapi: Upstream, slot_id: str
) -> None:
    response = client.delete(f"/admin/api/slots/{slot_id}", headers={"Authorization": ADMIN})
    assert response.status_code == 422
    assert "cancel its visit" in response.get_json()["issue"][0]["diagnostics"]
    assert not hapi.transactions


def test_the_page_is_served_with_a_strict_policy(client: FlaskClient, app: Flask) -> None:
    response = client.get("/admin")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert 'data-fhir-base="/fhir"' in html
    assert "/admin/assets/fullcalendar-core.js" in html
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert response.headers["X-Frame-Options"] == "DENY"


def test_only_listed_assets_are_served(client: FlaskClient) -> None:
    assert client.get("/admin/assets/page.js").status_code == 200
    assert client.get("/admin/assets/calendar.css").mimetype == "text/css"
    for name in ("package.json", "..%2Fadmin.py", "index.html"):
        response = client.get(f"/admin/assets/{name}")
        assert response.status_code == 404, name
        assert response.get_json()["resourceType"] == "OperationOutcome"


def test_the_schedule_picker_lists_what_the_token_may_read(client: FlaskClient, hapi: Upstream) -> None:
    response = client.get("/admin/api/schedules", headers={"Authorization": ADMIN})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["schedules"] == [
        {"id": "alice", "actor": "Practitioner/alice", "display": "Practitioner/alice", "active": True}
    ]
    hapi.assert_only_admin_credentials()
