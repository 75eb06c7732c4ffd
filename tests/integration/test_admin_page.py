"""The calendar page (``GET /admin``) in a real browser: Debian's Chromium driven by Playwright,
against the real sidecar and HAPI (guard and authorization on).

The sample clinic is loaded under fresh ids; a visit and a hold are booked through the sidecar
and a block is written on HAPI with the front desk's token. The page must draw each at its local
time (the browser itself runs in Tokyo, so nothing can come from the browser's zone), block an
hour by dragging across the calendar -- after which ``$find`` no longer offers it -- and cancel
the visit through ``$cancel``. A second test draws a DST week. Screenshots go to
``build/test-logs/`` (``docs/admin-calendar.png`` is one of them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests
from playwright.sync_api import Browser, Page, sync_playwright

from scripts.sample_clinic import sample_resources
from tests.integration.clinic import load, new_prefix, search
from tests.integration.conftest import REPO, Sidecar
from tests.integration.trust import FRONT_DESK_TOKEN
from tests.unit import builders

NY = ZoneInfo("America/New_York")
FHIR_JSON = {"Content-Type": "application/fhir+json"}
CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = REPO / "build" / "test-logs"
LOADED_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def admin_sidecar(registered: str) -> Iterator[Sidecar]:
    """A sidecar whose holds live long enough to be looked at (the suite's others: 4 s)."""
    process = Sidecar(registered, workers=2, log_name="sidecar-admin", env={"HOLD_TTL_SECONDS": "900"})
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Never skipped: CI installs Debian's chromium (.ci/run); a missing browser is a failure.
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start; containers
        # often have a small /dev/shm.
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1500, "height": 1100}, timezone_id="Asia/Tokyo")
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield opened
    finally:
        context.close()
    assert not errors, errors


def sample_clinic(prefix: str) -> list[dict[str, Any]]:
    """``scripts/sample_clinic.py``'s resources, every id (and what names it) under ``prefix``."""
    text = json.dumps(sample_resources())
    for resource in sample_resources():
        rid = resource["id"]
        text = text.replace(f'"{rid}"', f'"{prefix}-{rid}"').replace(f'/{rid}"', f'/{prefix}-{rid}"')
    return list(json.loads(text))


def local(day: date, hhmm: str) -> str:
    hour, minute = map(int, hhmm.split(":"))
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=NY).isoformat()


def find(sidecar: Sidecar, service: str, day: date, *schedules: str) -> list[dict[str, Any]]:
    params = [
        ("start", local(day, "00:00")),
        ("end", local(day + timedelta(days=1), "00:00")),
        ("service-type-reference", f"HealthcareService/{service}"),
        *(("schedule", f"Schedule/{s}") for s in schedules),
        ("_count", "100"),
    ]
    response = requests.get(f"{sidecar.base_url}/Appointment/$find", params=params, timeout=60)
    assert response.status_code == 200, response.text
    return [e["resource"] for e in response.json().get("entry", []) if e["search"]["mode"] == "match"]


def offered(sidecar: Sidecar, service: str, day: date, schedule: str) -> set[str]:
    """The local starts (HH:MM, New York) ``$find`` offers on ``day``."""
    return {
        datetime.fromisoformat(p["start"]).astimezone(NY).strftime("%H:%M")
        for p in find(sidecar, service, day, schedule)
    }


def take(
    sidecar: Sidecar, operation: str, service: str, day: date, hhmm: str, patient: str, *schedules: str
) -> str:
    """``$book`` or ``$hold`` the proposal at ``hhmm`` (New York) for ``Patient/<patient>``;
    the Appointment's id."""
    wanted = datetime.fromisoformat(local(day, hhmm))
    proposal = next(
        p for p in find(sidecar, service, day, *schedules) if datetime.fromisoformat(p["start"]) == wanted
    )
    proposal["participant"].append(
        {"actor": {"reference": f"Patient/{patient}", "display": "Pat Doe"}, "status": "accepted"}
    )
    body = {"resourceType": "Parameters", "parameter": [{"name": "appointment", "resource": proposal}]}
    response = requests.post(
        f"{sidecar.base_url}/Appointment/${operation}", json=body, headers=FHIR_JSON, timeout=120
    )
    assert response.status_code == 201, response.text
    return str(response.json()["entry"][0]["resource"]["id"])


def open_page(page: Page, sidecar: Sidecar, week: date, *schedules: str) -> None:
    query = "&".join(f"schedule={s}" for s in schedules)
    page.goto(f"http://127.0.0.1:{sidecar.port}/admin?{query}&week={week.isoformat()}")
    # The tab's token so far (none, or a wrong one) is tried first: let that load finish.
    page.wait_for_function(
        "() => document.body.dataset.loaded || document.getElementById('status').className === 'error'"
    )
    previous = page.evaluate("() => document.body.dataset.loaded || null")
    page.fill("#token", FRONT_DESK_TOKEN)
    page.click("#token-form button[type=submit]")
    wait_loaded(page, previous)


def wait_loaded(page: Page, after: str | None = None) -> str:
    """Wait until the calendars are drawn (again, when ``after`` names the previous drawing)."""
    page.wait_for_function(
        "(previous) => document.body.dataset.loaded && document.body.dataset.loaded !== previous",
        arg=after,
        timeout=LOADED_TIMEOUT_MS,
    )
    return str(page.evaluate("() => document.body.dataset.loaded"))


DRAWN = """
([schedule, kind, start]) => {
  const section = document.querySelector(`section[data-schedule="${schedule}"]`);
  const event = [...section.querySelectorAll(`[data-kind="${kind}"]`)]
    .find((e) => e.dataset.start === start);
  if (!event) return null;
  const box = event.getBoundingClientRect();
  const middle = box.left + box.width / 2;
  const column = [...section.querySelectorAll('td.fc-timegrid-col[data-date]')].find((c) => {
    const b = c.getBoundingClientRect();
    return b.left <= middle && middle <= b.right;
  });
  const lanes = [...section.querySelectorAll('td.fc-timegrid-slot-lane[data-time]')];
  const distance = (lane) => Math.abs(lane.getBoundingClientRect().top - box.top);
  const lane = lanes.reduce((best, l) => (distance(l) < distance(best) ? l : best));
  const text = (selector) => event.querySelector(selector)?.textContent ?? '';
  return {
    date: column?.dataset.date, row: lane.dataset.time, off: box.top - lane.getBoundingClientRect().top,
    time: text('.fc-event-time'), title: text('.fc-event-title'), expires: event.dataset.expires ?? null,
  };
}
"""


def drawn(page: Page, schedule: str, kind: str, start: str) -> dict[str, Any]:
    """Where the browser drew an event: the day column and the grid row its top edge is on."""
    found = page.evaluate(DRAWN, [schedule, kind, start])
    assert found is not None, f"no {kind} drawn at {start} on Schedule/{schedule}"
    return dict(found)


def assert_drawn_at(page: Page, schedule: str, kind: str, day: date, hhmm: str, until: str) -> dict[str, Any]:
    found = drawn(page, schedule, kind, local(day, hhmm))
    assert found["date"] == day.isoformat(), found
    assert found["row"] == f"{hhmm}:00", found
    assert abs(found["off"]) <= 2, found  # the event's top edge is on that row's line
    assert found["time"] == f"{hhmm} - {until}", found
    return found


def lane_y(page: Page, schedule: str, hhmm: str, *, bottom: bool = False) -> float:
    box = page.locator(f'section[data-schedule="{schedule}"] td.fc-timegrid-slot-lane[data-time="{hhmm}:00"]')
    bounds = box.bounding_box()
    assert bounds is not None
    return bounds["y"] + (bounds["height"] - 3 if bottom else 3)


def column_x(page: Page, schedule: str, day: date) -> float:
    column = page.locator(
        f'section[data-schedule="{schedule}"] td.fc-timegrid-col[data-date="{day.isoformat()}"]'
    )
    bounds = column.bounding_box()
    assert bounds is not None
    return bounds["x"] + bounds["width"] / 2


def drag_block(page: Page, schedule: str, day: date, start: str, end: str, comment: str) -> None:
    """Drag down a day column from ``start`` to ``end`` (whole half hours), check what the dialog
    read from the selection, and block it; returns once the calendars are drawn again."""
    x = column_x(page, schedule, day)
    last_row = (datetime.fromisoformat(local(day, end)) - timedelta(minutes=30)).astimezone(NY)
    page.mouse.move(x, lane_y(page, schedule, start))
    page.mouse.down()
    page.mouse.move(x, lane_y(page, schedule, last_row.strftime("%H:%M"), bottom=True), steps=12)
    page.mouse.up()
    page.wait_for_selector("#slot-dialog[open]")
    assert page.input_value("#slot-date") == day.isoformat()
    assert (page.input_value("#slot-from"), page.input_value("#slot-to")) == (start, end)
    page.fill("#slot-comment", comment)
    shown = str(page.evaluate("() => document.body.dataset.loaded"))
    page.click("#slot-block")
    wait_loaded(page, shown)


def monday_weeks_ahead(weeks: int) -> date:
    today = datetime.now(NY).date()
    return today + timedelta(days=7 * weeks - today.weekday())


def test_the_calendar_shows_the_clinic_and_blocks_time_that_find_then_stops_offering(
    admin_sidecar: Sidecar, hapi: Any, page: Page
) -> None:
    p = new_prefix()
    alice, room, visit_type = f"{p}-dr-alice", f"{p}-room-1", f"{p}-office-visit"
    patient = f"{p}-pat"
    load(hapi.base_url, *sample_clinic(p), builders.patient(patient))
    monday = monday_weeks_ahead(3)
    tuesday, wednesday, thursday, friday = (monday + timedelta(days=n) for n in range(1, 5))
    visit = take(admin_sidecar, "book", visit_type, tuesday, "10:00", patient, alice, room)
    take(admin_sidecar, "hold", visit_type, wednesday, "11:00", patient, alice, room)
    block = builders.slot(alice, "busy-unavailable", local(thursday, "14:00"), local(thursday, "15:00"))
    written = requests.post(
        f"{hapi.base_url}/Slot",
        json=block | {"comment": "staff meeting"},
        headers={**FHIR_JSON, "Authorization": FRONT_DESK_TOKEN},
        timeout=30,
    )
    assert written.status_code == 201, written.text

    # A token HAPI does not know: the page says so (the sidecar passed it through).
    page.goto(f"http://127.0.0.1:{admin_sidecar.port}/admin?schedule={alice}&week={monday.isoformat()}")
    page.fill("#token", "Bearer not-a-token")
    page.click("#token-form button[type=submit]")
    page.wait_for_function("() => document.getElementById('status').textContent.includes('401')")

    open_page(page, admin_sidecar, monday, alice, room)
    zone = page.locator(f'section[data-schedule="{alice}"] .zone').inner_text()
    assert "America/New_York" in zone
    assert f"UTC{local(monday, '12:00')[-6:]}" in zone  # -05:00, or -04:00 in summer
    for schedule in (alice, room):  # booked on both: drawn on both
        found = assert_drawn_at(page, schedule, "visit", tuesday, "10:00", "10:30")
        assert "Pat Doe" in found["title"]
        hold = assert_drawn_at(page, schedule, "hold", wednesday, "11:00", "11:30")
        expires = datetime.fromisoformat(hold["expires"])
        assert expires.utcoffset() == expires.astimezone(NY).utcoffset()  # in the Schedule's zone
        assert expires.strftime("%H:%M:%S") in hold["title"]
        assert drawn(page, schedule, "buffer", local(tuesday, "09:55"))["date"] == tuesday.isoformat()
    assert "staff meeting" in assert_drawn_at(page, alice, "block", thursday, "14:00", "15:00")["title"]
    assert page.locator(f'section[data-schedule="{room}"] .fc-event[data-kind="block"]').count() == 0
    assert page.locator(f'section[data-schedule="{alice}"] .fc-bg-event[data-kind="opening"]').count() == 5
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "admin-calendar.png"), full_page=True)

    # Block Friday 13:00-14:00 by dragging across Dr. Alice's calendar.
    before = offered(admin_sidecar, visit_type, friday, alice)
    assert {"12:30", "13:00", "13:30", "14:00"} <= before
    drag_block(page, alice, friday, "13:00", "14:00", "team lunch")
    assert "team lunch" in assert_drawn_at(page, alice, "block", friday, "13:00", "14:00")["title"]
    after = offered(admin_sidecar, visit_type, friday, alice)
    # The hour and the visits whose 5-minute buffers would touch it are gone; the rest stays.
    assert after == before - {"12:30", "13:00", "13:30", "14:00"}
    (stored,) = [
        s
        for s in search(hapi.base_url, "Slot", schedule=f"Schedule/{alice}")
        if s.get("comment") == "team lunch"
    ]
    assert (stored["status"], stored["start"]) == ("busy-unavailable", local(friday, "13:00"))
    assert not (stored.get("meta") or {}).get("tag")  # the admin's own write, nothing of the sidecar's

    # Cancel the visit from the page: $cancel frees the time.
    assert "10:00" not in offered(admin_sidecar, visit_type, tuesday, alice)
    page.click(f'section[data-schedule="{alice}"] .fc-event[data-kind="visit"]')
    page.wait_for_selector("#event-dialog[open]")
    page.fill("#event-reason", "patient called")
    shown = str(page.evaluate("() => document.body.dataset.loaded"))
    page.click("#event-cancel")
    wait_loaded(page, shown)
    assert page.locator('.fc-event[data-kind="visit"]').count() == 0
    assert "10:00" in offered(admin_sidecar, visit_type, tuesday, alice)
    (cancelled,) = search(hapi.base_url, "Appointment", _id=visit)
    assert cancelled["status"] == "cancelled"


def dst_weekend() -> tuple[date, date]:
    """The next Saturday/Sunday in New York with the clocks changed between them (at least two
    days ahead, so Saturday 09:00 is still bookable)."""
    day = datetime.now(NY).date() + timedelta(days=2)
    while True:
        if day.weekday() == 6:
            saturday_noon = datetime(day.year, day.month, day.day, 12, tzinfo=NY) - timedelta(days=1)
            if saturday_noon.utcoffset() != datetime(day.year, day.month, day.day, 12, tzinfo=NY).utcoffset():
                return day - timedelta(days=1), day
        day += timedelta(days=1)


def test_a_dst_week_draws_nine_oclock_visits_at_nine_on_both_sides(
    admin_sidecar: Sidecar, hapi: Any, page: Page
) -> None:
    p = new_prefix()
    alice, service, patient = f"{p}-alice", f"{p}-visit", f"{p}-pat"
    load(
        hapi.base_url,
        builders.patient(patient),
        builders.practitioner(alice, "America/New_York"),
        builders.service(
            service,
            hours=[builders.hours("mon tue wed thu fri sat sun", "09:00", "17:00")],
            code=("http://example.org/visit-type", p),
            duration=30,
        ),
        builders.schedule(alice, f"Practitioner/{alice}", [service]),
    )
    saturday, sunday = dst_weekend()
    take(admin_sidecar, "book", service, saturday, "09:00", patient, alice)
    take(admin_sidecar, "book", service, sunday, "09:00", patient, alice)
    open_page(page, admin_sidecar, saturday - timedelta(days=5), alice)
    before = assert_drawn_at(page, alice, "visit", saturday, "09:00", "09:30")
    after = assert_drawn_at(page, alice, "visit", sunday, "09:00", "09:30")
    assert before["row"] == after["row"] == "09:00:00"
    offsets = {datetime.fromisoformat(local(d, "09:00")).utcoffset() for d in (saturday, sunday)}
    assert len(offsets) == 2  # really two sides of a change
    zone = page.locator(f'section[data-schedule="{alice}"] .zone').inner_text()
    assert re.search(r"UTC-0[45]:00, UTC-0[45]:00 from Sun", zone), zone
    # Selections on both sides of the change are read in the Schedule's wall-clock time.
    for day in (saturday, sunday):
        drag_block(page, alice, day, "11:00", "12:00", f"closed {day}")
        assert_drawn_at(page, alice, "block", day, "11:00", "12:00")
    blocks = search(hapi.base_url, "Slot", schedule=f"Schedule/{alice}", status="busy-unavailable")
    assert sorted(b["start"] for b in blocks) == [local(saturday, "11:00"), local(sunday, "11:00")]
    page.screenshot(path=str(SCREENSHOTS / "admin-calendar-dst.png"), full_page=True)
