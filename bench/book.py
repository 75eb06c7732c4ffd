"""End-to-end benchmark of ``$book``: the sidecar against the same transactions sent straight to HAPI.

Setup (not timed): HAPI FHIR is started with ``start_hapi()`` (unless ``--fhir-base`` names a
running server), ``fanoni-scheduling register`` is run against it, and one sidecar process is
started (``python -m plugin serve --workers 2 --no-register``, gunicorn 2 workers x 4 threads,
``HOLD_SWEEP_SECONDS=0``, ``LOG_LEVEL=DEBUG`` so its log carries every upstream call with its
duration). A clinic is loaded: one service (15-minute visits on a 15-minute grid, no buffers,
every day 06:00-22:00 New York time) and fresh Schedules for every run, each with its lock
resource already created (steady state: a Schedule's very first booking would cost 2 more round
trips). Proposals of distinct times come from ``Appointment/$find``.

Timed, for each of three modes, once through the sidecar and once straight to HAPI:

* ``sequential``: N bookings on one Schedule, one client thread;
* ``C schedules``: N bookings with C client threads, each thread on its own Schedule (no lock
  contention);
* ``1 schedule``: N bookings of distinct times with C client threads on one Schedule (they
  contend on its lock; losers re-read and retry, as the sidecar does).

The sidecar run is ``POST Appointment/$book`` per proposal. The raw HAPI run is what the sidecar's
last two steps send for it: the lock search (``Basic?_id=fanoni-lock-<schedule>``, no-cache) and
one transaction with the version-checked ``PUT`` of the lock, the ``POST`` of the Slot and the
``POST`` of the Appointment (``Prefer: return=representation``); a 409/412 re-reads and retries
with the sidecar's backoff. The sidecar additionally reads the Schedule with its actor, the
HealthcareService and the Slots.

    python bench/book.py [--bookings N] [--concurrency C] [--fhir-base URL]
    python -m bench.book [--bookings N] [--concurrency C] [--fhir-base URL]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import signal
import statistics
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any
from zoneinfo import ZoneInfo

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests

from operations.locks import LOCK_COUNTER_URL, lock_id, lock_resource
from operations.model import SLOT_CAPACITY_URL
from operations.retries import RetryPolicy
from tests.integration.clinic import load, search
from tests.integration.hapi_server import HapiServer, start_hapi
from tests.integration.processes import REPO, SidecarProcess, free_port, register
from tests.integration.trust import SERVICE_HEADERS, hapi_args, sidecar_env
from tests.unit import builders

Resource = dict[str, Any]

LOG_DIR = REPO / "build" / "bench"
ZONE_NAME = "America/New_York"
ZONE = ZoneInfo(ZONE_NAME)
DAY_START, DAY_END = "06:00", "22:00"
VISITS_PER_DAY = 64  # 16 hours of 15-minute visits
WARM_UP = 20
FHIR_JSON = "application/fhir+json"
SIDECAR_WORKERS = 2
SIDECAR_THREADS = 4  # gunicorn's default for `serve`
CONFLICT_STATUSES = (409, 412)


# --------------------------------------------------------------------------------------------
# Processes


def register_upstream(fhir_base: str) -> None:
    """``fanoni-scheduling register``: the Slot ``end`` SearchParameter and the OperationDefinitions."""
    result = register(fhir_base)
    if result.returncode != 0:
        raise RuntimeError(f"register failed (exit {result.returncode}): {result.stdout}{result.stderr}")


# --------------------------------------------------------------------------------------------
# The clinic


@dataclass
class Clinic:
    """One service; Schedules are added per run with ``schedules()``."""

    fhir_base: str
    prefix: str = field(default_factory=lambda: "b" + uuid.uuid4().hex[:10])

    @property
    def service(self) -> str:
        return f"{self.prefix}-visit"

    def load_service(self) -> None:
        load(
            self.fhir_base,
            builders.service(
                self.service,
                hours=[builders.hours("mon tue wed thu fri sat sun", DAY_START, DAY_END)],
                code=("http://example.org/visit-type", self.prefix),
                duration=15,
                alignmentInterval=15,
            ),
        )

    def schedules(self, label: str, count: int) -> list[str]:
        """``count`` fresh Schedules (one Practitioner each), their lock resources created."""
        ids = [f"{self.prefix}-{label}-{n}" for n in range(count)]
        resources: list[Resource] = []
        for sid in ids:
            resources += [
                builders.practitioner(sid, ZONE_NAME),
                builders.schedule(sid, f"Practitioner/{sid}", [self.service]),
                lock_resource(sid, 0),
            ]
        load(self.fhir_base, *resources)
        return ids


def first_day() -> datetime:
    """Midnight (New York) the day after tomorrow: nothing proposed lies in the past."""
    today = datetime.now(ZONE).date() + timedelta(days=2)
    return datetime(today.year, today.month, today.day, tzinfo=ZONE)


def proposals(
    session: requests.Session, sidecar: str, service: str, schedule: str, count: int
) -> list[Resource]:
    """``count`` proposals of distinct times on one Schedule, from ``Appointment/$find``."""
    start = first_day()
    days = min(31, math.ceil(count / VISITS_PER_DAY) + 1)
    params = [
        ("start", start.isoformat()),
        ("end", (start + timedelta(days=days)).isoformat()),
        ("service-type-reference", f"HealthcareService/{service}"),
        ("schedule", f"Schedule/{schedule}"),
        ("_count", str(count)),
    ]
    response = session.get(f"{sidecar}/Appointment/$find", params=params, timeout=120)
    if response.status_code != 200:
        raise RuntimeError(f"$find answered {response.status_code}: {response.text[:500]}")
    found = [e["resource"] for e in response.json().get("entry", []) if e["search"]["mode"] == "match"]
    if len(found) < count or len({p["start"] for p in found}) != len(found):
        raise RuntimeError(f"$find gave {len(found)} distinct proposals on {schedule}, {count} wanted")
    return found[:count]


# --------------------------------------------------------------------------------------------
# One booking, either way


@dataclass(frozen=True)
class Outcome:
    status: int
    seconds: float
    round_trips: int
    attempts: int
    error: str = ""


def book_via_sidecar(session: requests.Session, sidecar: str, proposal: Resource, request_id: str) -> Outcome:
    body = {"resourceType": "Parameters", "parameter": [{"name": "appointment", "resource": proposal}]}
    began = time.perf_counter()
    response = session.post(
        f"{sidecar}/Appointment/$book",
        data=json.dumps(body),
        headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON, "X-Request-ID": request_id},
        timeout=120,
    )
    seconds = time.perf_counter() - began
    round_trips = int(response.headers.get("X-Upstream-Round-Trips", "0"))
    # load_legs reads the Schedules and the service once; each attempt is lock, Slots, transaction
    attempts = max(1, (round_trips - 2) // 3)
    error = "" if response.status_code == 201 else response.text[:300]
    return Outcome(response.status_code, seconds, round_trips, attempts, error)


def visit_slot(proposal: Resource) -> Resource:
    slots = [r for r in proposal.get("contained", []) if r.get("resourceType") == "Slot"]
    return next(s for s in slots if s.get("status") == "busy")


def schedule_of(proposal: Resource) -> str:
    return str(visit_slot(proposal)["schedule"]["reference"]).split("/", 1)[1]


def raw_bundle(proposal: Resource, lock_version: str, lock_counter: int) -> Resource:
    """The transaction ``$book`` sends for this proposal: lock PUT (ifMatch), Slot, Appointment."""
    visit = visit_slot(proposal)
    schedule = schedule_of(proposal)
    slot_url = f"urn:uuid:{uuid.uuid4()}"
    slot = {
        "resourceType": "Slot",
        "schedule": {"reference": f"Schedule/{schedule}"},
        "extension": [{"url": SLOT_CAPACITY_URL, "valuePositiveInt": 1}],
        "status": "busy",
        "start": visit["start"],
        "end": visit["end"],
    }
    appointment = {k: v for k, v in proposal.items() if k not in ("id", "meta", "contained", "slot", "text")}
    appointment.update({"status": "booked", "slot": [{"reference": slot_url}]})
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"Basic/{lock_id(schedule)}",
                "resource": lock_resource(schedule, lock_counter + 1),
                "request": {
                    "method": "PUT",
                    "url": f"Basic/{lock_id(schedule)}",
                    "ifMatch": f'W/"{lock_version}"',
                },
            },
            {"fullUrl": slot_url, "resource": slot, "request": {"method": "POST", "url": "Slot"}},
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": appointment,
                "request": {"method": "POST", "url": "Appointment"},
            },
        ],
    }


def read_lock(session: requests.Session, fhir_base: str, schedule: str) -> tuple[str, int]:
    """The lock's current version and counter, read as the sidecar reads it."""
    response = session.get(
        f"{fhir_base}/Basic",
        params={"_id": lock_id(schedule)},
        headers={"Accept": FHIR_JSON, "Cache-Control": "no-cache"},
        timeout=60,
    )
    response.raise_for_status()
    for entry in response.json().get("entry", []):
        resource = entry.get("resource") or {}
        if resource.get("id") == lock_id(schedule):
            counter = next(
                (
                    e.get("valueInteger", 0)
                    for e in resource.get("extension", [])
                    if e.get("url") == LOCK_COUNTER_URL
                ),
                0,
            )
            return str(resource["meta"]["versionId"]), int(counter)
    raise RuntimeError(f"no lock resource for Schedule/{schedule}")


def book_raw(session: requests.Session, fhir_base: str, proposal: Resource, request_id: str) -> Outcome:
    """Read the lock, post the transaction; on a version conflict re-read and retry (the sidecar's
    backoff and deadline)."""
    policy = RetryPolicy()
    schedule = schedule_of(proposal)
    round_trips = 0
    began = time.perf_counter()
    for tries in range(1, policy.max_attempts + 1):
        version, counter = read_lock(session, fhir_base, schedule)
        response = session.post(
            fhir_base,
            data=json.dumps(raw_bundle(proposal, version, counter)),
            headers={
                "Content-Type": f"{FHIR_JSON}; charset=utf-8",
                "Accept": FHIR_JSON,
                "Prefer": "return=representation",
                "X-Request-ID": request_id,
                **SERVICE_HEADERS,  # the raw side writes booked Slots as the sidecar would
            },
            timeout=120,
        )
        round_trips += 2
        if response.status_code not in CONFLICT_STATUSES:
            status = 201 if response.status_code == 200 else response.status_code
            error = "" if status == 201 else response.text[:300]
            return Outcome(status, time.perf_counter() - began, round_trips, tries, error)
        if time.perf_counter() - began >= policy.deadline_seconds:
            break
        backoff = min(policy.max_backoff_seconds, policy.base_backoff_seconds * (2 ** min(tries, 10)))
        time.sleep(random.uniform(0, backoff))  # jitter, not security
    return Outcome(409, time.perf_counter() - began, round_trips, tries, "did not settle")


# --------------------------------------------------------------------------------------------
# Runs

Action = Callable[[requests.Session, Resource, str], Outcome]


@dataclass
class Result:
    label: str
    outcomes: list[Outcome]
    wall: float

    @property
    def ok(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == 201]

    @property
    def rate(self) -> float:
        return len(self.ok) / self.wall if self.wall > 0 else 0.0

    def latency_ms(self, q: float) -> float:
        return percentile([o.seconds * 1000 for o in self.ok], q)

    def round_trips(self) -> Counter[int]:
        return Counter(o.round_trips for o in self.ok)

    def failures(self) -> Counter[int]:
        return Counter(o.status for o in self.outcomes if o.status != 201)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))]


def run(label: str, lanes: Sequence[Sequence[Resource]], action: Action, stop: threading.Event) -> Result:
    """One client thread per lane, each booking its lane's proposals in order; wall time of all."""
    outcomes: list[Outcome] = []
    guard = threading.Lock()

    def worker(lane_number: int, lane: Sequence[Resource]) -> None:
        with requests.Session() as session:
            for n, proposal in enumerate(lane):
                if stop.is_set():
                    return
                outcome = action(session, proposal, f"bench-{label}-{lane_number}-{n}")
                with guard:
                    outcomes.append(outcome)

    pool = ThreadPoolExecutor(max_workers=len(lanes), thread_name_prefix=f"bench-{label}")
    began = time.perf_counter()
    try:
        futures = [pool.submit(worker, i, lane) for i, lane in enumerate(lanes)]
        for future in futures:
            future.result()
    except BaseException:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    wall = time.perf_counter() - began
    pool.shutdown(wait=True)
    return Result(label, outcomes, wall)


def split(items: Sequence[Resource], lanes: int) -> list[list[Resource]]:
    return [list(items[i::lanes]) for i in range(lanes)]


@dataclass(frozen=True)
class Mode:
    key: str
    title: str
    schedules: int
    threads: int


def modes(concurrency: int) -> list[Mode]:
    return [
        Mode("seq", "sequential, 1 schedule", 1, 1),
        Mode("dist", f"C={concurrency}, {concurrency} schedules", concurrency, concurrency),
        Mode("same", f"C={concurrency}, 1 schedule", 1, concurrency),
    ]


def lanes_for(
    mode: Mode, bookings: int, per_schedule: Callable[[str, int], list[Resource]], schedules: list[str]
) -> list[list[Resource]]:
    """The proposals each client thread books: its own Schedule when there are as many Schedules as
    threads, else distinct times of the one Schedule dealt out round-robin."""
    if mode.schedules == mode.threads:
        counts = [bookings // mode.threads + (i < bookings % mode.threads) for i in range(mode.threads)]
        return [per_schedule(s, c) for s, c in zip(schedules, counts, strict=True) if c]
    return split(per_schedule(schedules[0], bookings), mode.threads)


# --------------------------------------------------------------------------------------------
# Where the sidecar's time goes: its DEBUG log has one line per upstream call


CATEGORIES = ("Schedule+actor", "HealthcareService", "lock read", "Slot search", "transaction")


def categorise(method: str, url: str, fhir_base: str) -> str:
    path = url[len(fhir_base) :].lstrip("/") if url.startswith(fhir_base) else url
    if method == "POST" and path in ("", "?"):
        return "transaction"
    for prefix, name in (
        ("Schedule", "Schedule+actor"),
        ("HealthcareService", "HealthcareService"),
        ("Basic", "lock read"),
        ("Slot", "Slot search"),
    ):
        if path.startswith(prefix):
            return name
    return "other"


@dataclass
class Breakdown:
    """Per ``$book`` (medians over requests): server time, and upstream time by kind of call."""

    requests: int
    server_ms: float
    upstream_ms: float
    by_category: dict[str, float]


def breakdown(log_path: Path, fhir_base: str, label: str) -> Breakdown | None:
    prefix = f"bench-{label}-"
    server: dict[str, float] = {}
    calls: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    with log_path.open(errors="replace") as lines:
        for line in lines:
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            request_id = str(record.get("request_id") or "")
            if not request_id.startswith(prefix):
                continue
            if record.get("message") == "upstream call":
                kind = categorise(
                    str(record.get("upstream_method")), str(record.get("upstream_url")), fhir_base
                )
                calls[request_id][kind] += float(record.get("duration_ms", 0.0))
            elif "upstream_round_trips" in record and record.get("status") == 201:
                server[request_id] = float(record.get("duration_ms", 0.0))
    if not server:
        return None
    ids = list(server)
    return Breakdown(
        requests=len(ids),
        server_ms=statistics.median(server[i] for i in ids),
        upstream_ms=statistics.median(sum(calls[i].values()) for i in ids),
        by_category={c: statistics.median(calls[i].get(c, 0.0) for i in ids) for c in CATEGORIES},
    )


# --------------------------------------------------------------------------------------------


def _terminate_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def servers(fhir_base: str | None) -> Iterator[tuple[str, SidecarProcess, float]]:
    """HAPI (unless given) and one sidecar process; both stopped on the way out, whatever happens."""
    with contextlib.ExitStack() as stack:
        began = time.perf_counter()
        if fhir_base is None:
            hapi: HapiServer = start_hapi(extra_args=hapi_args())
            stack.callback(hapi.stop)
            fhir_base = hapi.base_url
        hapi_seconds = time.perf_counter() - began
        register_upstream(fhir_base)
        port = free_port()
        sidecar = SidecarProcess(
            fhir_base,
            workers=SIDECAR_WORKERS,
            log_path=LOG_DIR / "sidecar.log",
            port=port,
            env={
                **sidecar_env(port),  # the guard key, as the test HAPI expects it
                "HOLD_SWEEP_SECONDS": "0",
                "SLOT_END_SEARCH": "on",  # `register` installed it
                "LOG_LEVEL": "DEBUG",  # one JSON line per upstream call, with its duration
            },
        )
        stack.callback(sidecar.stop)
        yield fhir_base.rstrip("/"), sidecar, hapi_seconds


def fmt(value: float, width: int = 7, digits: int = 1) -> str:
    return f"{value:{width}.{digits}f}"


def rt_text(counter: Counter[int]) -> str:
    return ", ".join(f"{k}x{v}" for k, v in sorted(counter.items())) or "-"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--bookings", type=int, default=100, help="bookings per mode and side (default 100)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent client threads (default 8)")
    parser.add_argument("--fhir-base", help="use this running FHIR server instead of starting HAPI")
    args = parser.parse_args(argv)
    if not 1 <= args.bookings <= 1000:
        parser.error("--bookings must be within 1..1000 ($find's _count limit)")
    if not 1 <= args.concurrency <= 64:
        parser.error("--concurrency must be within 1..64")
    signal.signal(signal.SIGTERM, _terminate_on_sigterm)
    # Ctrl-C raises KeyboardInterrupt even when started in the background (which ignores SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)

    began = time.perf_counter()
    stop = threading.Event()
    with servers(args.fhir_base) as (fhir_base, sidecar, hapi_seconds):
        clinic = Clinic(fhir_base)
        clinic.load_service()
        finder = requests.Session()
        stack_began = time.perf_counter()

        def per_schedule(schedule: str, count: int) -> list[Resource]:
            return proposals(finder, sidecar.base_url, clinic.service, schedule, count)

        def via_sidecar(session: requests.Session, proposal: Resource, request_id: str) -> Outcome:
            return book_via_sidecar(session, sidecar.base_url, proposal, request_id)

        def via_hapi(session: requests.Session, proposal: Resource, request_id: str) -> Outcome:
            return book_raw(session, fhir_base, proposal, request_id)

        sides: list[tuple[str, Action]] = [("sidecar", via_sidecar), ("raw", via_hapi)]

        # Warm-up (both paths, not measured): JIT, connection pools, HAPI's caches.
        warm = min(WARM_UP, args.bookings)
        for side, action in sides:
            (schedule,) = clinic.schedules(f"warm-{side}", 1)
            run(
                f"warm-{side}", split(per_schedule(schedule, warm), min(args.concurrency, warm)), action, stop
            )

        results: dict[tuple[str, str], Result] = {}
        for mode in modes(args.concurrency):
            for side, action in sides:
                schedules = clinic.schedules(f"{mode.key}-{side}", mode.schedules)
                lanes = lanes_for(mode, args.bookings, per_schedule, schedules)
                result = run(f"{mode.key}-{side}", lanes, action, stop)
                results[mode.key, side] = result
                stored = search(fhir_base, "Slot", schedule=",".join(f"Schedule/{s}" for s in schedules))
                if len(stored) != len(result.ok):
                    raise RuntimeError(
                        f"{mode.key}/{side}: {len(result.ok)} bookings answered 201 but HAPI holds {len(stored)} Slots"
                    )
        measured = time.perf_counter() - stack_began
        finder.close()

        print(
            f"setup: HAPI {fhir_base}"
            + (f" (started in {hapi_seconds:.1f} s)" if args.fhir_base is None else " (given)")
            + f"; sidecar pid {sidecar.process.pid if sidecar.process else '-'}, "
            f"{SIDECAR_WORKERS} workers x {SIDECAR_THREADS} threads, log {sidecar.log_path.relative_to(REPO)}"
        )
        print(
            f"workload: N={args.bookings} bookings per mode and side, C={args.concurrency}; one service, "
            f"15-min visits on a 15-min grid, no buffers; fresh schedules per run, locks pre-created; "
            f"{warm} warm-up bookings per side"
        )
        header = (
            f"{'mode':<24} | {'sidecar bk/s':>12} {'med ms':>7} {'p95 ms':>7} | "
            f"{'raw tx/s':>9} {'med ms':>7} {'p95 ms':>7} | {'ratio':>5}"
        )
        print(header)
        print("-" * len(header))
        for mode in modes(args.concurrency):
            s, r = results[mode.key, "sidecar"], results[mode.key, "raw"]
            ratio = s.rate / r.rate if r.rate else math.nan
            print(
                f"{mode.title:<24} | {fmt(s.rate, 12)} {fmt(s.latency_ms(50))} {fmt(s.latency_ms(95))} | "
                f"{fmt(r.rate, 9)} {fmt(r.latency_ms(50))} {fmt(r.latency_ms(95))} | {ratio:5.2f}"
            )
        print("round trips per booking (value x count):")
        for mode in modes(args.concurrency):
            s, r = results[mode.key, "sidecar"], results[mode.key, "raw"]
            failures = {side: results[mode.key, side].failures() for side, _ in sides}
            failed = "; ".join(f"{side} failed {dict(c)}" for side, c in failures.items() if c)
            print(
                f"  {mode.title:<24} sidecar {rt_text(s.round_trips())} | raw {rt_text(r.round_trips())}"
                + (f" | {failed}" if failed else "")
            )
        print("sidecar time per $book, server side (medians, ms; from its DEBUG log):")
        for mode in modes(args.concurrency):
            b = breakdown(sidecar.log_path, fhir_base, f"{mode.key}-sidecar")
            if b is None:
                print(f"  {mode.title:<24} (no log records)")
                continue
            parts = ", ".join(f"{c} {b.by_category[c]:.1f}" for c in CATEGORIES)
            print(
                f"  {mode.title:<24} in sidecar {b.server_ms:.1f} = upstream {b.upstream_ms:.1f} "
                f"({parts}) + own {b.server_ms - b.upstream_ms:.1f}"
            )
        print(f"measured phase {measured:.1f} s, total {time.perf_counter() - began:.1f} s")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        print("interrupted: the sidecar and HAPI were stopped", file=sys.stderr)
        raise SystemExit(130) from None
