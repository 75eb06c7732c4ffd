"""Where a request's time goes inside the sidecar: pyinstrument on the sidecar run in-process
(``create_app`` and Flask's test client, so the profiler sees the request thread) for one
``$find`` and one ``$book`` against the real HAPI. Writes ``profile-find.html`` /
``profile-book.html`` (interactive) and ``.txt`` (the call tree) to the output directory.

And for the booking rules (issue 8): :data:`RULES_CALLS` ``$find`` calls of 10 Schedules x 31
days over 1,000 busy Slots with every rule on (``profile-find-rules-on``) and the same calls
without (``profile-find-rules-off``), the services and Slots of ``bench/find_rules.py``; several
calls in one profile, so that a few milliseconds' difference is not one preempted sample.

The reads a request sends at the same time run in worker threads; the request thread shows
them as time spent waiting for them.
"""

from __future__ import annotations

import json
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

from pyinstrument import Profiler

from bench import clinic as bench_clinic
from bench import find_rules
from bench.servers import sidecar_identity
from plugin.app import create_app
from plugin.config import Settings

INTERVAL = 0.0005
"""Sampling interval (seconds)."""
RULES_CALLS = 5


def run(fhir_base: str, out_dir: Path) -> dict[str, Any]:
    settings = Settings.from_env(
        {
            "FHIR_BASE_URL": fhir_base,
            **sidecar_identity(),
            "SLOT_END_SEARCH": "on",
            "HOLD_SWEEP_SECONDS": "0",
            "LOG_LEVEL": "WARNING",
        }
    )
    app = create_app(settings)
    client = app.test_client()
    clinic = bench_clinic.BenchClinic(fhir_base, "profile")
    service = clinic.service("visit", duration=30, grid=15)
    ids = clinic.schedules("doc", 2, [service])
    start = bench_clinic.first_day()
    bench_clinic.load(fhir_base, bench_clinic.busy_slots(ids, start, 7, 100, random.Random(7)))
    clinic.create_locks(ids, start, start + timedelta(days=8))
    params = bench_clinic.find_params(service, ids, start, 7, 100)
    path = settings.base_path or ""

    def find() -> Any:
        response = client.get(f"{path}/Appointment/$find", query_string=params)
        if response.status_code != 200:
            raise RuntimeError(
                f"$find answered {response.status_code}: {response.get_data(as_text=True)[:300]}"
            )
        return response.get_json()

    def book(proposal: dict[str, Any]) -> None:
        body = {"resourceType": "Parameters", "parameter": [{"name": "appointment", "resource": proposal}]}
        response = client.post(
            f"{path}/Appointment/$book", data=json.dumps(body), content_type="application/fhir+json"
        )
        if response.status_code != 201:
            raise RuntimeError(
                f"$book answered {response.status_code}: {response.get_data(as_text=True)[:300]}"
            )

    proposals = [e["resource"] for e in find()["entry"] if e["search"]["mode"] == "match"]
    book(proposals[0])  # warm: connection pool, first-call caches
    rules_params = _rules_clinic(fhir_base)

    def find_rules_side(side: str) -> None:
        for _ in range(RULES_CALLS):
            response = client.get(f"{path}/Appointment/$find", query_string=rules_params[side])
            if response.status_code != 200:
                raise RuntimeError(f"$find answered {response.status_code}")

    for side in ("off", "on"):  # warm
        find_rules_side(side)
    written: dict[str, Any] = {}
    for name, action in (
        ("find", find),
        ("book", lambda: book(proposals[-1])),
        ("find-rules-off", lambda: find_rules_side("off")),
        ("find-rules-on", lambda: find_rules_side("on")),
    ):
        profiler = Profiler(interval=INTERVAL)
        profiler.start()
        action()
        profiler.stop()
        html, text = out_dir / f"profile-{name}.html", out_dir / f"profile-{name}.txt"
        html.write_text(profiler.output_html())
        text.write_text(profiler.output_text(unicode=False, color=False, show_all=False))
        session = profiler.last_session
        written[name] = {
            "html": str(html),
            "text": str(text),
            "duration_ms": round((session.duration if session else 0.0) * 1000, 1),
        }
    return written


def _rules_clinic(fhir_base: str) -> dict[str, list[tuple[str, str]]]:
    """``bench/find_rules.py``'s clinic, 1,000 busy Slots: the ``$find`` of each side, its range
    from a local midnight."""
    clinic = bench_clinic.BenchClinic(fhir_base, "profile-rules")
    services = {
        "off": clinic.service("plain", duration=30, grid=15),
        "on": clinic.service("ruled", duration=30, grid=15, rules=find_rules.RULES),
    }
    ids = clinic.schedules("doc", 10, list(services.values()))
    start = bench_clinic.first_day()
    slots = bench_clinic.busy_slots(ids, start, find_rules.SPREAD_DAYS, 1000, random.Random(8))
    bench_clinic.load(fhir_base, slots)
    return {
        side: bench_clinic.find_params(service, ids, start, 31, find_rules.COUNT)
        for side, service in services.items()
    }
