"""Booking a Schedule until it is full, and the soak; each followed by an independent scan of
what HAPI holds (``tests/reliability/scan.py``).

**Mass booking.** C clients book one Schedule (capacity 30, a day of 10-minute visits) until it
is full. Each client asks ``$find`` for the day, books a random one of the times offered, and
again (the same list: a time with places left is still bookable) until a 409, after which it
asks ``$find`` again; it stops when ``$find`` offers nothing.

**Soak.** A fixed number of booking attempts, as fast as C clients can send them, spread over
the sidecar processes given: each attempt books a random proposal from one pool (30-minute
visits on a 15-minute grid, so neighbours overlap, on a few Schedules over 31 days) that is
never refreshed, so attempts collide on the same and on overlapping times.

The checks: no instant over-booked, nothing stored half, every 201 stored (its Appointment
``booked``), nothing stored without a 201, no 5xx, no 409 for conflicts that did not settle --
and for the mass booking, every place filled.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import requests

from bench import clinic as bench_clinic
from bench.book import Outcome, book_via_sidecar
from bench.servers import CpuMeter
from bench.stats import latency
from tests.reliability.scan import ScanReport, scan

Resource = dict[str, Any]


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def outcome_counts(outcomes: Sequence[Outcome]) -> dict[str, int]:
    return {
        "attempts": len(outcomes),
        "booked_201": sum(1 for o in outcomes if o.status == 201),
        "taken_409": sum(1 for o in outcomes if o.status == 409 and not o.deadline),
        "deadline_409": sum(1 for o in outcomes if o.deadline),
        "server_errors_5xx": sum(1 for o in outcomes if o.status >= 500),
        "other": sum(1 for o in outcomes if o.status not in (201, 409) and o.status < 500),
    }


def _run_together(clients: int, client: Callable[[int], None], start: threading.Barrier, name: str) -> float:
    """Run ``client(0..clients-1)`` in threads released together by ``start`` (which each client
    waits on, and this thread too); the wall time from the release until the last one ends."""
    with ThreadPoolExecutor(max_workers=clients, thread_name_prefix=name) as pool:
        futures = [pool.submit(client, n) for n in range(clients)]
        start.wait()
        began = time.perf_counter()
        for future in futures:
            future.result()
        return time.perf_counter() - began


def checked(report: ScanReport, outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """What the scan found, against what the callers were told."""
    told = {o.appointment_id for o in outcomes if o.status == 201 and o.appointment_id}
    live = {a.id: a for a in report.live()}
    stored_booked = {i for i, a in live.items() if a.status == "booked"}
    return {
        "scan": report.summary(),
        "scan_seconds": round(report.duration_seconds, 1),
        "problems": report.problems[:20],
        "over_booked": len(report.overlaps),
        "told_201_not_stored": len(told - stored_booked),
        "stored_without_201": len(set(live) - told),
        "clean": report.clean and told == stored_booked == set(live),
    }


WARM_UP_BOOKINGS = 600
"""Bookings made on a Schedule of their own before the timed mass booking, so HAPI's JVM is
compiled and warm as a running server's is (measured 2026-12-07 on H2: mass booking alone on a
freshly started HAPI 13.9-15.2 bookings/s, p99 8.3-9.2 s; after the ``$book`` part 21.7/s,
p99 4.5 s)."""


def warm_up(fhir_base: str, sidecars: Sequence[str], bookings: int, *, clients: int = 16) -> float:
    """``bookings`` through ``sidecars`` (a day's 10-minute times of capacity 30, each client
    asking ``$find`` once and booking every time it was offered); the seconds it took."""
    if bookings <= 0:
        return 0.0
    clinic = bench_clinic.BenchClinic(fhir_base, "warm")
    service = clinic.service("group", duration=10, grid=10, capacity=30)
    (schedule,) = clinic.schedules("room", 1, [service])
    params = bench_clinic.find_params(service, [schedule], bench_clinic.first_day(), 1, 1000)
    each = -(-bookings // clients)

    def client(number: int) -> None:
        with requests.Session() as session:
            sidecar = sidecars[number % len(sidecars)]
            offered = bench_clinic.matches(bench_clinic.find(session, sidecar, params))
            for n in range(each):
                book_via_sidecar(
                    session, sidecar, offered[(number + n) % len(offered)], f"bench-warm-{number}-{n}"
                )

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients, thread_name_prefix="bench-warm") as pool:
        for future in [pool.submit(client, n) for n in range(clients)]:
            future.result()
    return time.perf_counter() - began


def mass_booking(
    fhir_base: str,
    sidecars: Sequence[str],
    *,
    clients: int,
    capacity: int,
    opens: str,
    closes: str,
    seed: int = 20261208,
    progress: Callable[[str], None] = print,
    cpu: CpuMeter | None = None,
    warm: int = WARM_UP_BOOKINGS,
) -> dict[str, Any]:
    """``cpu`` (the sidecar's and the upstream's process trees): their CPU per booking over the
    run, clients excluded. ``warm`` bookings first (:func:`warm_up`), not counted."""
    warmed = warm_up(fhir_base, sidecars, warm)
    if warm:
        progress(f"  warm-up: {warm} bookings on a Schedule of their own in {warmed:.1f} s")
    clinic = bench_clinic.BenchClinic(fhir_base, "mass")
    service = clinic.service("group", duration=10, grid=10, opens=opens, closes=closes, capacity=capacity)
    (schedule,) = clinic.schedules("room", 1, [service])
    day = bench_clinic.first_day()
    params = bench_clinic.find_params(service, [schedule], day, 1, 1000)
    with requests.Session() as session:
        times = len(bench_clinic.matches(bench_clinic.find(session, sidecars[0], params)))
    places = times * capacity
    outcomes: list[Outcome] = []
    finds: list[float] = []
    guard = threading.Lock()
    start = threading.Barrier(clients + 1)

    def client(number: int) -> None:
        rng = random.Random(seed * 1000 + number)
        sidecar = sidecars[number % len(sidecars)]
        mine: list[Outcome] = []
        find_ms: list[float] = []
        with requests.Session() as session:

            def offers() -> list[Resource]:
                began = time.perf_counter()
                found = bench_clinic.matches(bench_clinic.find(session, sidecar, params))
                find_ms.append((time.perf_counter() - began) * 1000)
                return found

            start.wait()
            offered = offers()
            for n in itertools.count():
                if not offered:
                    break
                outcome = book_via_sidecar(session, sidecar, rng.choice(offered), f"bench-mass-{number}-{n}")
                mine.append(outcome)
                if outcome.status != 201:
                    offered = offers()
        with guard:
            outcomes.extend(mine)
            finds.extend(find_ms)

    cpu_before = cpu.read() if cpu is not None else {}
    wall = _run_together(clients, client, start, "bench-mass")
    cpu_used = CpuMeter.used(cpu_before, cpu.read()) if cpu is not None else {}
    report = scan(fhir_base, [schedule])
    check = checked(report, outcomes)
    ok = [o for o in outcomes if o.status == 201]
    per_start = Counter(_instant(a.start).isoformat() for a in report.live() if a.start)
    filled = len(per_start) == times and all(n == capacity for n in per_start.values())
    result = {
        "clients": clients,
        "capacity": capacity,
        "times": times,
        "places": places,
        "wall_seconds": wall,
        "throughput": len(ok) / wall if wall else 0.0,
        **outcome_counts(outcomes),
        "latency": latency([o.seconds * 1000 for o in ok]),
        "latency_409": latency([o.seconds * 1000 for o in outcomes if o.status == 409]),
        "find_latency": latency(finds),
        "finds": len(finds),
        "retries_mean": sum(o.attempts - 1 for o in ok) / len(ok) if ok else 0.0,
        "retries_max": max((o.attempts - 1 for o in ok), default=0),
        "upstream_calls_mean": sum(o.upstream_calls for o in ok) / len(ok) if ok else 0.0,
        "group_mean": sum(o.group for o in ok) / len(ok) if ok else 0.0,
        "group_max": max((o.group for o in ok), default=0),
        "every_place_filled": filled and len(ok) == places,
        "cpu_ms_per_booking": {name: used * 1000 / len(ok) for name, used in cpu_used.items()} if ok else {},
        **check,
    }
    progress(
        f"  mass booking: {len(ok)}/{places} places in {wall:.1f} s ({result['throughput']:.1f}/s), "
        f"409 taken {result['taken_409']}, deadline {result['deadline_409']}, 5xx {result['server_errors_5xx']}, "
        f"scan {'clean' if check['clean'] else 'NOT CLEAN'}, filled {result['every_place_filled']}"
    )
    return result


def soak(
    fhir_base: str,
    sidecars: Sequence[str],
    *,
    attempts: int,
    clients: int,
    schedules: int,
    seed: int = 20261209,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    clinic = bench_clinic.BenchClinic(fhir_base, "soak")
    service = clinic.service("visit", duration=30, grid=15, opens="06:00", closes="22:00")
    ids = clinic.schedules("doc", schedules, [service])
    day = bench_clinic.first_day()
    pool: list[Resource] = []
    with requests.Session() as session:
        for sid in ids:
            params = bench_clinic.find_params(service, [sid], day, 31, 1000)
            pool += bench_clinic.matches(bench_clinic.find(session, sidecars[0], params))
    outcomes: list[Outcome] = []
    guard = threading.Lock()
    counter = itertools.count()
    start = threading.Barrier(clients + 1)
    run_id = uuid.uuid4().hex[:6]

    def client(number: int) -> None:
        rng = random.Random(seed * 1000 + number)
        mine: list[Outcome] = []
        with requests.Session() as session:
            start.wait()
            while (n := next(counter)) < attempts:
                sidecar = sidecars[n % len(sidecars)]
                mine.append(book_via_sidecar(session, sidecar, rng.choice(pool), f"bench-soak-{run_id}-{n}"))
        with guard:
            outcomes.extend(mine)

    wall = _run_together(clients, client, start, "bench-soak")
    report = scan(fhir_base, ids)
    check = checked(report, outcomes)
    ok = [o for o in outcomes if o.status == 201]
    result = {
        "clients": clients,
        "schedules": schedules,
        "sidecar_processes": len(sidecars),
        "pool": len(pool),
        "wall_seconds": wall,
        "attempts_per_second": len(outcomes) / wall if wall else 0.0,
        **outcome_counts(outcomes),
        "latency": latency([o.seconds * 1000 for o in outcomes]),
        "latency_201": latency([o.seconds * 1000 for o in ok]),
        "retries_mean": sum(o.attempts - 1 for o in ok) / len(ok) if ok else 0.0,
        "retries_max": max((o.attempts - 1 for o in ok), default=0),
        "double_bookings": check["over_booked"],
        **check,
    }
    progress(
        f"  soak: {len(outcomes)} attempts in {wall:.1f} s ({result['attempts_per_second']:.1f}/s): "
        f"201 {result['booked_201']}, 409 taken {result['taken_409']}, deadline {result['deadline_409']}, "
        f"5xx {result['server_errors_5xx']}, double bookings {result['double_bookings']}, "
        f"scan {'clean' if check['clean'] else 'NOT CLEAN'}"
    )
    return result
