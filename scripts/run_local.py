"""`make run`: HAPI FHIR on :8080, the sidecar on :8090, the sample clinic, a working $find URL.

HAPI runs with the guard (keyed by a guard key generated for this run), subscriptions and the
forwarding interceptor on; the sidecar registers the Subscription to its webhook. So a direct
``POST Slot`` with ``status: busy`` on HAPI is refused, an Appointment cancelled with a plain
``PUT`` frees its time, and the operations answer at HAPI's base too.

Runs until Ctrl-C, then stops everything it started. Ports: HAPI_PORT (8080), SIDECAR_PORT (8090).
GUARD_KEY and NOTIFICATION_SECRET are generated unless set.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.sample_clinic import sample_bundle  # noqa: E402

HAPI_PORT = int(os.environ.get("HAPI_PORT", "8080"))
SIDECAR_PORT = int(os.environ.get("SIDECAR_PORT", "8090"))
FHIR_BASE = f"http://localhost:{HAPI_PORT}/fhir"
SIDECAR_BASE = f"http://localhost:{SIDECAR_PORT}/fhir"


def hapi(command: str, *args: str) -> None:
    subprocess.run([str(ROOT / "scripts" / "hapi.sh"), command, str(HAPI_PORT), *args], check=True)


def wait_for(url: str, seconds: float, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the sidecar exited with status {process.returncode}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} did not answer within {seconds:.0f} s")


def find_url() -> str:
    zone = ZoneInfo("America/New_York")
    day = datetime.now(zone).date() + timedelta(days=1)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    start = datetime(day.year, day.month, day.day, tzinfo=zone)
    query = urlencode(
        [
            ("start", start.isoformat()),
            ("end", (start + timedelta(days=1)).isoformat()),
            ("service-type-reference", "HealthcareService/office-visit"),
            ("schedule", "Schedule/dr-alice"),
            ("schedule", "Schedule/room-1"),
            ("_count", "5"),
        ],
        safe=":/",
    )
    return f"{SIDECAR_BASE}/Appointment/$find?{query}"


def main() -> int:
    guard_key = os.environ.get("GUARD_KEY") or secrets.token_urlsafe(24)
    env = {
        **os.environ,
        "FHIR_BASE_URL": FHIR_BASE,
        "GUARD_KEY": guard_key,
        "NOTIFICATION_URL": f"http://localhost:{SIDECAR_PORT}/fanoni/notifications",
        "NOTIFICATION_SECRET": os.environ.get("NOTIFICATION_SECRET") or secrets.token_urlsafe(24),
        # $bulk-publish (SMART Scheduling Links): the sample has no booking portal, so the deep
        # links point at an example one.
        "PUBLISH_BOOKING_URL_TEMPLATE": os.environ.get("PUBLISH_BOOKING_URL_TEMPLATE")
        or "https://portal.example.org/book?schedule={schedule}&service={service}&start={start}",
    }
    print(f"Starting HAPI FHIR on {FHIR_BASE} (first start builds it with Maven) ...", flush=True)
    hapi("start", f"--hapi.fanoni_guard_key={guard_key}", f"--hapi.fanoni_sidecar_url={SIDECAR_BASE}")
    sidecar: subprocess.Popen[bytes] | None = None
    try:
        response = requests.post(
            FHIR_BASE,
            json=sample_bundle(),
            headers={"Content-Type": "application/fhir+json", "X-Fanoni-Service-Key": guard_key},
            timeout=120,
        )
        response.raise_for_status()
        print("Loaded the sample clinic: Dr. Alice and Dr. Bea (New York), Dr. Ravi (Kolkata),")
        print("  Exam rooms 1 and 2,")
        print("  services office-visit (30 min, 5 min buffers) and long-consult (60 min, 15 min after;")
        print("  booking rules: a day's notice, at most 4 a day).")
        subprocess.run([sys.executable, "-m", "plugin", "register"], env=env, check=False)
        sidecar = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "plugin",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(SIDECAR_PORT),
                "--no-register",
            ],
            env=env,
        )
        wait_for(f"http://localhost:{SIDECAR_PORT}/readyz", 60, sidecar)
        url = find_url()
        first = requests.get(url, timeout=60).json()
        print()
        print(f"Sidecar: {SIDECAR_BASE}   HAPI: {FHIR_BASE} (forwards the operations to the sidecar)")
        print(f"Try:  curl -s '{url}'")
        print(f"      ({first.get('total', 0)} proposals for Dr. Alice and Exam room 1 on the next weekday)")
        at_hapi = url.replace(SIDECAR_BASE, FHIR_BASE)
        forwarded = requests.get(at_hapi, timeout=60).json()
        print(f"      the same at HAPI's base: curl -s '{at_hapi}'")
        print(f"      ({forwarded.get('total', 0)} proposals; {FHIR_BASE}/metadata lists the operations)")
        print(f"Published (SMART Scheduling Links, Dr. Alice): curl -s '{SIDECAR_BASE}/$bulk-publish'")
        print(f"Metrics: curl -s http://localhost:{SIDECAR_PORT}/metrics")
        print(
            f"Calendar: http://localhost:{SIDECAR_PORT}/admin?schedule=dr-alice&schedule=room-1&schedule=dr-ravi"
            " (no token needed on this HAPI: leave Authorization empty)"
        )
        print("Guard: a Slot with status busy POSTed to HAPI directly is refused (403); book with $book.")
        print("Ctrl-C stops everything.", flush=True)
        sidecar.wait()
        print(f"the sidecar exited with status {sidecar.returncode}", file=sys.stderr)
    except KeyboardInterrupt:
        print("\nStopping ...", flush=True)
    finally:
        if sidecar is not None and sidecar.poll() is None:
            sidecar.terminate()
            try:
                sidecar.wait(timeout=30)
            except subprocess.TimeoutExpired:
                sidecar.kill()
        hapi("stop")
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops everything too, like Ctrl-C
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    sys.exit(main())
