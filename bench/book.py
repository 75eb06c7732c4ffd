"""``$book`` through the sidecar against raw HAPI transactions of the same shape.

Both sides book the same kind of proposals (from ``Appointment/$find``) on fresh Schedules of
their own, with the same number of client threads, each thread with one kept-alive session:

* **sidecar**: ``POST Appointment/$book`` per proposal; ``X-Fanoni-Attempts`` tells how many
  times it read and decided (1 + retries after version conflicts), ``X-Upstream-Round-Trips``
  how many upstream calls it made.
* **raw**: what the sidecar's lock protocol sends, with ``operations.locks`` itself: the lock
  search for the same bucket locks (``Basic?_id=...``, no-cache; ``operations.locks.read_locks``), then one transaction with the
  version-checked lock ``PUT``\\ s, the Slot ``POST``, the Appointment ``POST`` and the
  Provenance the sidecar adds to every transaction (``Prefer: return=representation``); on
  409/412 it reads the locks again and retries with the sidecar's backoff and deadline. It
  skips what only the sidecar does: reading the Schedule, its actor and the service, the
  deciding Slot search, and the decision.

The lock resources of every 15-minute bucket of the booked days are
created before the timed part, on both sides: the steady state of a Schedule booked before.

Modes (``MODES``): one client on one Schedule; C clients on C Schedules; C clients on one
Schedule, distinct times (capacity 1) or, with capacity 30, every time booked 30 times in a row
(the proposals are dealt to the clients time by time, so up to 30 clients want the same time,
as when a group class opens).
"""

from __future__ import annotations

import json
import math
import random
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

import requests

from bench import clinic as bench_clinic
from bench.servers import CpuMeter
from bench.stats import latency, ratio, spread
from bench.upstream_log import LogIndex, plan_shape, replay_plan
from operations.errors import ConcurrentChange
from operations.locks import lock_entries, read_locks
from operations.model import SLOT_CAPACITY_URL, Interval
from operations.retries import RetryPolicy, backoff
from operations.store import FhirStore
from operations.writes import BOOKING_REQUEST_SYSTEM
from plugin.provenance import Attribution, with_provenance
from plugin.transport import ONE_PAGE
from tests.integration.trust import GUARD_KEY, SIDECAR_TOKEN

Resource = dict[str, Any]
FHIR_JSON = "application/fhir+json"
DEADLINE_TEXT = "did not settle before the deadline"
VISITS_PER_DAY = 64
"""15-minute visits, 06:00-22:00."""
CONFLICT_STATUSES = (409, 412)


@dataclass(frozen=True)
class Mode:
    key: str
    title: str
    schedules: int
    clients: int
    capacity: int = 1


MODES = (
    Mode("seq", "1 client, 1 schedule", 1, 1),
    Mode("dist16", "16 clients, 16 schedules", 16, 16),
    Mode("one16", "16 clients, 1 schedule", 1, 16),
    Mode("one64", "64 clients, 1 schedule", 1, 64),
    Mode("one16c30", "16 clients, 1 schedule, capacity 30", 1, 16, 30),
    Mode("one64c30", "64 clients, 1 schedule, capacity 30", 1, 64, 30),
)
ONE_SCHEDULE = ("one16", "one64", "one16c30", "one64c30")


def mode(key: str) -> Mode:
    return next(m for m in MODES if m.key == key)


@dataclass(frozen=True)
class Outcome:
    status: int
    seconds: float
    upstream_calls: int
    attempts: int
    request_id: str
    error: str = ""
    appointment_id: str | None = None
    group: int = 1
    """Bookings written in one transaction with it (``X-Fanoni-Group``; group commit)."""

    @property
    def deadline(self) -> bool:
        """A 409 because conflicts did not settle in time (never because the time was taken)."""
        return self.status == 409 and DEADLINE_TEXT in self.error


# --------------------------------------------------------------------------------------------
# The two sides


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
    appointment_id = None
    if response.status_code == 201:
        first = ((response.json().get("entry") or [{}])[0]).get("resource") or {}
        appointment_id = first.get("id") if first.get("resourceType") == "Appointment" else None
    return Outcome(
        status=response.status_code,
        seconds=seconds,
        upstream_calls=int(response.headers.get("X-Upstream-Round-Trips", "0")),
        attempts=int(response.headers.get("X-Fanoni-Attempts", "0")),
        request_id=request_id,
        error="" if response.status_code == 201 else response.text[:500],
        appointment_id=appointment_id,
        group=int(response.headers.get("X-Fanoni-Group", "1")),
    )


class RawStore:
    """Just enough of a ``FhirStore`` for ``operations.locks``: searches and transactions sent
    straight to HAPI as the sidecar sends them (its credentials and guard key, no-cache reads)."""

    def __init__(self, session: requests.Session, fhir_base: str, request_id: str) -> None:
        self.session = session
        self.fhir_base = fhir_base
        self.request_id = request_id
        self.calls = 0

    def _headers(self) -> dict[str, str]:
        return {
            "Accept": FHIR_JSON,
            "Authorization": SIDECAR_TOKEN,
            "X-Fanoni-Service-Key": GUARD_KEY,
            "X-Request-ID": self.request_id,
        }

    def search(
        self, resource_type: str, params: Sequence[tuple[str, str]], *, limit: int | None = None
    ) -> list[Resource]:
        url: str | None = f"{self.fhir_base}/{resource_type}"
        query: list[tuple[str, str]] | None = [*params, ("_count", "1000")]
        # Sent as the sidecar sends every search (plugin/transport.py, _one_page): one page HAPI
        # does not keep, of up to 1,000 matches. The raw side's lock searches never come near.
        cache = ONE_PAGE
        found: list[Resource] = []
        while url:
            self.calls += 1
            response = self.session.get(
                url, params=query, headers={**self._headers(), "Cache-Control": cache}, timeout=120
            )
            if response.status_code != 200:
                raise RuntimeError(f"raw search answered {response.status_code}: {response.text[:300]}")
            bundle = response.json()
            found += [
                e["resource"]
                for e in bundle.get("entry") or []
                if (e.get("search") or {}).get("mode") != "include"
            ]
            url = next((link["url"] for link in bundle.get("link") or [] if link["relation"] == "next"), None)
            query, cache = None, "no-cache"
        return found

    def attributed(self, bundle: Resource) -> Resource:
        return bundle  # the raw side adds its Provenance itself, in the shape the sidecar's has

    def transaction(self, bundle: Resource) -> Resource:
        self.calls += 1
        response = self.session.post(
            self.fhir_base,
            data=json.dumps(bundle),
            headers={
                **self._headers(),
                "Content-Type": f"{FHIR_JSON}; charset=utf-8",
                "Prefer": "return=representation",
            },
            timeout=120,
        )
        if response.status_code in CONFLICT_STATUSES:
            raise ConcurrentChange(response.text[:300])
        if response.status_code != 200:
            raise RuntimeError(f"raw transaction answered {response.status_code}: {response.text[:300]}")
        result: Resource = response.json()
        return result


def visit_slot(proposal: Resource) -> Resource:
    slots = [r for r in proposal.get("contained") or [] if r.get("resourceType") == "Slot"]
    return next(s for s in slots if s.get("status") in ("busy", "busy-tentative"))


def schedule_of(proposal: Resource) -> str:
    return str(visit_slot(proposal)["schedule"]["reference"]).split("/", 1)[1]


def raw_entries(proposal: Resource, capacity: int, marker: str) -> list[Resource]:
    """The Slot and the Appointment ``$book`` writes for a proposal without buffers."""
    visit = visit_slot(proposal)
    tag = {"system": BOOKING_REQUEST_SYSTEM, "code": marker}
    slot_url = f"urn:uuid:{uuid.uuid4()}"
    slot = {
        "resourceType": "Slot",
        "meta": {"tag": [tag]},
        "extension": [{"url": SLOT_CAPACITY_URL, "valuePositiveInt": capacity}],
        "schedule": {"reference": f"Schedule/{schedule_of(proposal)}"},
        "status": "busy",
        "start": visit["start"],
        "end": visit["end"],
    }
    appointment = {k: v for k, v in proposal.items() if k not in ("id", "meta", "contained", "slot", "text")}
    appointment.update({"status": "booked", "slot": [{"reference": slot_url}], "meta": {"tag": [tag]}})
    return [
        {"fullUrl": slot_url, "resource": slot, "request": {"method": "POST", "url": "Slot"}},
        {
            "fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": appointment,
            "request": {"method": "POST", "url": "Appointment"},
        },
    ]


def book_raw(
    session: requests.Session, fhir_base: str, proposal: Resource, request_id: str, capacity: int
) -> Outcome:
    """Lock search, one transaction; on a version conflict the same again after the sidecar's
    backoff, until its deadline."""
    policy = RetryPolicy()
    store = RawStore(session, fhir_base, request_id)
    visit = visit_slot(proposal)
    spans = {
        schedule_of(proposal): [
            Interval(datetime.fromisoformat(visit["start"]), datetime.fromisoformat(visit["end"]))
        ]
    }
    marker = uuid.uuid4().hex
    began = time.perf_counter()
    tries = 0
    for tries in range(1, policy.max_attempts + 1):
        locks = read_locks(cast(FhirStore, store), spans)
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [*lock_entries(locks), *raw_entries(proposal, capacity, marker)],
        }
        bundle = with_provenance(bundle, Attribution("book", request_id, "bench-raw"))
        try:
            store.transaction(bundle)
        except ConcurrentChange:
            elapsed = time.perf_counter() - began
            if elapsed >= policy.deadline_seconds:
                break
            time.sleep(random.uniform(0, backoff(policy, tries, elapsed)))  # jitter, not security
            continue
        return Outcome(201, time.perf_counter() - began, store.calls, tries, request_id)
    return Outcome(409, time.perf_counter() - began, store.calls, tries, request_id, DEADLINE_TEXT)


# --------------------------------------------------------------------------------------------
# Runs

Action = Callable[[requests.Session, Resource, str], Outcome]


@dataclass
class Run:
    outcomes: list[Outcome]
    wall: float

    @property
    def ok(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == 201]

    @property
    def rate(self) -> float:
        return len(self.ok) / self.wall if self.wall > 0 else 0.0


def run_lanes(label: str, lanes: Sequence[Sequence[Resource]], action: Action) -> Run:
    """One client thread per lane, each booking its lane's proposals in order; wall time of all."""
    outcomes: list[Outcome] = []
    guard = threading.Lock()
    start = threading.Barrier(len(lanes) + 1)

    def client(lane_number: int, lane: Sequence[Resource]) -> None:
        with requests.Session() as session:
            start.wait()
            for n, proposal in enumerate(lane):
                outcome = action(session, proposal, f"bench-{label}-{lane_number}-{n}")
                with guard:
                    outcomes.append(outcome)

    with ThreadPoolExecutor(max_workers=len(lanes), thread_name_prefix=f"bench-{label}") as pool:
        futures = [pool.submit(client, i, lane) for i, lane in enumerate(lanes)]
        start.wait()
        began = time.perf_counter()
        for future in futures:
            future.result()
        wall = time.perf_counter() - began
    return Run(outcomes, wall)


def deal(items: Sequence[Resource], lanes: int) -> list[list[Resource]]:
    """Round-robin: lane ``i`` gets items ``i``, ``i + lanes``, ..."""
    return [list(items[i::lanes]) for i in range(lanes) if items[i::lanes]]


@dataclass
class Side:
    """One mode on one side, over its repetitions."""

    runs: list[Run] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)
    upstream_ms: list[float] = field(default_factory=list)
    shapes: Counter[str] = field(default_factory=Counter)
    cpu_seconds: Counter[str] = field(default_factory=Counter)
    """CPU used by each process tree during the runs (``sidecar``, ``hapi``, ``postgres``)."""

    def summary(self) -> dict[str, Any]:
        ok = [o for r in self.runs for o in r.ok]
        outcomes = [o for r in self.runs for o in r.outcomes]
        failures = Counter(o.status for o in outcomes if o.status != 201)
        return {
            "bookings": len(ok),
            "attempted": len(outcomes),
            "throughput": spread([r.rate for r in self.runs]),
            "latency": latency([o.seconds * 1000 for o in ok]),
            "p50_per_rep": spread([latency([o.seconds * 1000 for o in r.ok])["p50"] for r in self.runs]),
            "retries_mean": statistics.fmean(o.attempts - 1 for o in ok) if ok else math.nan,
            "retries_max": max((o.attempts - 1 for o in ok), default=0),
            "upstream_calls_mean": statistics.fmean(o.upstream_calls for o in ok) if ok else math.nan,
            "failures": {str(k): v for k, v in sorted(failures.items())},
            "deadline_409": sum(1 for o in outcomes if o.deadline),
            "server_ms_p50": statistics.median(self.server_ms) if self.server_ms else math.nan,
            "upstream_critical_ms_p50": statistics.median(self.upstream_ms) if self.upstream_ms else math.nan,
            "shapes": dict(self.shapes.most_common(5)),
            "cpu_ms_per_booking": {
                name: seconds * 1000 / len(ok) if ok else math.nan
                for name, seconds in self.cpu_seconds.items()
            },
        }


@dataclass(frozen=True)
class BookPlan:
    modes: tuple[str, ...]
    bookings: int
    reps: int
    warmup: int = 32


def run(
    fhir_base: str,
    sidecar: str,
    log: LogIndex,
    plan: BookPlan,
    cpu: CpuMeter,
    progress: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    clinic = bench_clinic.BenchClinic(fhir_base, "book")
    opens, closes = "06:00", "22:00"
    services = {
        1: clinic.service("visit", duration=15, grid=15, opens=opens, closes=closes),
        30: clinic.service("group", duration=15, grid=15, opens=opens, closes=closes, capacity=30),
    }
    start = bench_clinic.first_day()
    finder = requests.Session()

    def proposals(schedule: str, capacity: int, count: int) -> list[Resource]:
        """``count`` bookings' proposals on ``schedule``: distinct times, or with capacity
        above 1 each time ``capacity`` times in a row."""
        distinct = count if capacity == 1 else math.ceil(count / capacity)
        days = min(31, math.ceil(distinct / VISITS_PER_DAY) + 1)
        params = bench_clinic.find_params(services[capacity], [schedule], start, days, min(distinct, 1000))
        found = bench_clinic.matches(bench_clinic.find(finder, sidecar, params))
        if len(found) < distinct:
            raise RuntimeError(f"$find gave {len(found)} proposals on {schedule}, {distinct} wanted")
        return [p for p in found[:distinct] for _ in range(capacity)][:count]

    def prepare(m: Mode, label: str, bookings: int) -> tuple[list[str], list[list[Resource]]]:
        """Fresh Schedules for one run, their locks, and each client's proposals."""
        ids = clinic.schedules(label, m.schedules, [services[m.capacity]])
        per = [bookings // m.schedules + (i < bookings % m.schedules) for i in range(m.schedules)]
        days = math.ceil(max(per) / (VISITS_PER_DAY * m.capacity)) + 2
        clinic.create_locks(ids, start, start + timedelta(days=days))
        if m.schedules == m.clients:
            return ids, [proposals(s, m.capacity, c) for s, c in zip(ids, per, strict=True) if c]
        return ids, deal(proposals(ids[0], m.capacity, bookings), m.clients)

    def actions(capacity: int) -> dict[str, Action]:
        return {
            "sidecar": lambda s, p, rid: book_via_sidecar(s, sidecar, p, rid),
            "raw": lambda s, p, rid: book_raw(s, fhir_base, p, rid, capacity),
        }

    # Warm-up, both sides, not measured: JIT, connection pools, HAPI's caches.
    for side, action in actions(1).items():
        _, lanes = prepare(Mode("warm", "warm-up", 1, 8), f"warm-{side}", plan.warmup)
        run_lanes(f"warm-{side}-{uuid.uuid4().hex[:4]}", lanes, action)

    sides: dict[tuple[str, str], Side] = {}
    for rep in range(plan.reps):
        for key in plan.modes:
            m = mode(key)
            order = ["sidecar", "raw"] if rep % 2 == 0 else ["raw", "sidecar"]
            for side in order:
                label = f"{key}-{side}-r{rep}-{uuid.uuid4().hex[:4]}"
                ids, lanes = prepare(m, label, max(plan.bookings, m.clients))
                before = cpu.read()
                result = run_lanes(label, lanes, actions(m.capacity)[side])
                record = sides.setdefault((key, side), Side())
                record.runs.append(result)
                record.cpu_seconds.update(CpuMeter.used(before, cpu.read()))
                if side == "sidecar":
                    _breakdown(log, result, record)
                stored = _stored_slots(fhir_base, ids)
                if stored != len(result.ok):
                    raise RuntimeError(
                        f"{label}: {len(result.ok)} bookings answered 201 but HAPI holds {stored} Slots"
                    )
                progress(
                    f"  $book {m.title:<36} {side:<7} rep {rep + 1}: {result.rate:6.1f}/s, "
                    f"p50 {latency([o.seconds * 1000 for o in result.ok])['p50']:6.1f} ms, "
                    f"{len(result.ok)}/{len(result.outcomes)} booked"
                )
    finder.close()
    results = []
    for key in plan.modes:
        s, r = sides[key, "sidecar"].summary(), sides[key, "raw"].summary()
        m = mode(key)
        results.append(
            {
                "mode": key,
                "title": m.title,
                "clients": m.clients,
                "schedules": m.schedules,
                "capacity": m.capacity,
                "sidecar": s,
                "raw": r,
                "ratio_throughput": ratio(s["throughput"]["median"], r["throughput"]["median"]),
                "ratio_p50": ratio(s["latency"]["p50"], r["latency"]["p50"]),
                "ratio_p95": ratio(s["latency"]["p95"], r["latency"]["p95"]),
            }
        )
    return results


def _stored_slots(fhir_base: str, schedule_ids: Sequence[str]) -> int:
    response = requests.get(
        f"{fhir_base}/Slot",
        params=[("schedule", ",".join(f"Schedule/{s}" for s in schedule_ids)), ("_summary", "count")],
        headers={"Accept": FHIR_JSON, "Cache-Control": "no-cache"},
        timeout=120,
    )
    response.raise_for_status()
    return int(response.json().get("total", -1))


def _breakdown(log: LogIndex, result: Run, record: Side) -> None:
    """Server time and the upstream critical path of each booked request, from the DEBUG log."""
    log.refresh()
    for outcome in result.ok:
        entry = log.get(outcome.request_id)
        if entry is None or entry.access is None:
            continue
        rounds = replay_plan(entry.calls)
        record.server_ms.append(entry.access.duration_ms)
        record.upstream_ms.append(
            sum(max(sum(c.duration_ms for c in chain.calls) for chain in r.chains) for r in rounds)
        )
        record.shapes[plan_shape(rounds)] += 1
        log.forget(outcome.request_id)
