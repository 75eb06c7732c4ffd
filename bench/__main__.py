"""The benchmark, end to end: ``python -m bench`` (docs/performance.md reads its numbers).

Starts HAPI FHIR (on its in-memory H2, and on a throwaway PostgreSQL when asked, stopped
afterwards), registers the sidecar on it, runs the sidecar under gunicorn (2 worker processes,
16 threads each, DEBUG log), loads its own clinic and measures, side by side:

1. ``$find`` over days x schedules x existing busy Slots against the same upstream reads
   replayed alone straight to HAPI (``bench/find_matrix.py``; H2);
   ... and ``$find`` with every booking rule on against the same ``$find`` without them, 10
   schedules x 31 days, ranges from local midnights and from 09:30 (``bench/find_rules.py``; H2);
   ... and what the sidecar's searches (by ids, identifier, a day of Slots) cost HAPI asked as one page it
   need not keep against paged (``bench/lookups.py``; H2);
2. ``$book`` against raw HAPI transactions of the same shape: one client, 16 clients on 16
   schedules, 16 and 64 clients on one schedule with capacity 1 and 30 (``bench/book.py``;
   all on H2, the one-schedule modes and the 16-schedule reference on PostgreSQL);
   ... and what each upstream call of a ``$book`` costs HAPI, one booking at a time: the bound
   the SPEC's reads put on ``$book`` / raw (``bench/call_costs.py``; H2);
3. mass booking: 64 clients fill one Schedule of capacity 30, then an independent scan of HAPI
   (``bench/mass.py``; each database; with ``--quick`` or ``--mass-ungrouped`` also with group
   commit off, side by side);
4. with ``--soak``: 10,000 contended booking attempts over 2 sidecar processes x 4 workers,
   then the scan (each database);
5. with ``--profile``: pyinstrument on the sidecar in-process for one ``$find`` and one
   ``$book`` (``bench/profiling.py``).

Writes ``results.json``, ``report.md`` (the tables), ``find.png`` and ``book.png`` to ``--out``
(default ``build/bench``); a full run (not ``--quick``) also copies the plots into
``docs/performance/``.

    python -m bench --quick                  # under 3 minutes: H2 only, a subset, fewer repetitions
    python -m bench                          # the full run, H2 and PostgreSQL
    python -m bench --soak --profile         # ... with the soak and the profiles
    python -m bench --database h2 --fhir-base http://localhost:8080/fhir   # a running HAPI (H2)
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import book as book_bench
from bench import find_matrix, find_rules, lookups, mass, plots, report, servers
from bench.upstream_log import LogIndex
from tests.integration.processes import REPO

DOCS_PLOTS = REPO / "docs" / "performance"


def _plans(quick: bool, args: argparse.Namespace) -> dict[str, Any]:
    if quick:
        return {
            "find": find_matrix.FindPlan(days=(1, 7), schedules=(1, 10), slots=(0, 1000), reps=5, warmup=1),
            "rules": find_rules.RulesPlan(slots=(1000,), reps=11, warmup=2),
            "bookings": args.bookings or 32,
            "reps": args.reps or 1,
            "mass": {"clients": 64, "capacity": 30, "opens": "08:00", "closes": "08:30"},
            "mass_ungrouped": True,
            "soak": {"attempts": args.soak_attempts or 1000, "clients": 32, "schedules": 4},
        }
    return {
        "find": find_matrix.FindPlan(
            days=(1, 7, 31), schedules=(1, 2, 10), slots=(0, 1000, 10000), reps=11, warmup=2
        ),
        "rules": find_rules.RulesPlan(slots=(0, 1000), reps=21, warmup=3),
        "bookings": args.bookings or 128,
        "reps": args.reps or 3,
        "mass": {"clients": 64, "capacity": 30, "opens": "08:00", "closes": "18:00"},
        # Without group commit the full day takes about 25 minutes per database on 2 cores.
        "mass_ungrouped": args.mass_ungrouped,
        "soak": {"attempts": args.soak_attempts or 10000, "clients": 32, "schedules": 4},
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Fanoni Scheduling benchmark: $find and $book against HAPI FHIR."
    )
    parser.add_argument(
        "--quick", action="store_true", help="under 3 minutes: H2 only, a subset, fewer repetitions"
    )
    parser.add_argument(
        "--soak", action="store_true", help="add the soak (10,000 contended booking attempts)"
    )
    parser.add_argument(
        "--database",
        choices=("h2", "postgres", "both"),
        help="HAPI's database (default: both for a full run, h2 with --quick)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="pyinstrument profiles of one $find and one $book"
    )
    parser.add_argument("--out", type=Path, default=REPO / "build" / "bench", help="results directory")
    parser.add_argument(
        "--fhir-base", help="a running HAPI (H2, with the test guard key) instead of starting one"
    )
    parser.add_argument(
        "--bookings", type=int, help="bookings per $book mode, side and repetition (at least one per client)"
    )
    parser.add_argument("--reps", type=int, help="repetitions of each $book mode")
    parser.add_argument("--soak-attempts", type=int, help="booking attempts of the soak")
    parser.add_argument(
        "--mass-ungrouped",
        action="store_true",
        help="run the mass booking with group commit off too, side by side (always with --quick)",
    )
    parser.add_argument(
        "--report-from",
        type=Path,
        metavar="RESULTS_JSON",
        help="measure nothing: write report.md and the plots again from a run's results.json",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=("find", "rules", "book", "mass", "soak", "profile", "lookups", "costs"),
        help="run only these parts (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.bookings is not None and not 1 <= args.bookings <= 1000:
        parser.error("--bookings must be within 1..1000 ($find's _count limit)")
    if args.fhir_base and args.database not in (None, "h2"):
        parser.error("--fhir-base is for one running HAPI on H2")
    return args


def _terminate_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_from is not None:
        earlier = _nan(json.loads(args.report_from.read_text()))
        args.out.mkdir(parents=True, exist_ok=True)
        args.quick = earlier["meta"]["quick"]
        _finish(args, args.out, earlier, print)
        return 0
    signal.signal(signal.SIGTERM, _terminate_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    database = args.database or ("h2" if args.quick else "both")
    databases = ["h2", "postgres"] if database == "both" else [database]
    parts = set(args.only or ("find", "rules", "lookups", "book", "costs", "mass"))
    if not args.only:
        parts |= {"soak"} if args.soak else set()
        parts |= {"profile"} if args.profile else set()
    plan = _plans(args.quick, args)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    command = "python -m bench" + (" " + shlex.join(sys.argv[1:]) if argv is None and sys.argv[1:] else "")
    results: dict[str, Any] = {
        "meta": {
            "command": command,
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "quick": args.quick,
            "databases": databases,
            "machine": servers.machine(),
            "plan": {k: (v.__dict__ if hasattr(v, "__dict__") else v) for k, v in plan.items()},
            "wall_seconds": 0.0,
        }
    }

    def progress(text: str) -> None:
        print(text, flush=True)

    def save() -> None:
        results["meta"]["wall_seconds"] = time.perf_counter() - began
        (out / "results.json").write_text(json.dumps(_plain(results), indent=1, allow_nan=False))

    progress(f"bench: {command}; databases {', '.join(databases)}; results in {out}")
    for index, db in enumerate(databases):
        first = index == 0
        with servers.upstream(db, args.fhir_base) as up:
            progress(f"[{db}] HAPI at {up.fhir_base} (up and registered in {up.start_seconds:.0f} s)")
            _measure(db, first, up, args, parts, plan, out, results, progress, save)
            save()
    save()
    _finish(args, out, results, progress)
    save()
    progress(f"bench: done in {time.perf_counter() - began:.0f} s; {out / 'report.md'}")
    return 0


def _measure(
    db: str,
    first: bool,
    up: servers.Upstream,
    args: argparse.Namespace,
    parts: set[str],
    plan: dict[str, Any],
    out: Path,
    results: dict[str, Any],
    progress: Callable[[str], None],
    save: Callable[[], None],
) -> None:
    """Each part in turn on one database; the results are saved after each."""
    fhir_base = up.fhir_base
    sidecar = servers.start_sidecar(fhir_base, out / f"sidecar-{db}.log")
    try:
        log = LogIndex(sidecar.log_path)
        assert sidecar.process is not None
        cpu = servers.CpuMeter({"sidecar": sidecar.process.pid, **up.pids})
        if "find" in parts and db == "h2":
            progress(f"[{db}] $find matrix")
            results["find"] = find_matrix.run(fhir_base, sidecar.base_url, log, plan["find"], cpu, progress)
            save()
        if "rules" in parts and db == "h2":
            progress(f"[{db}] $find with every booking rule on vs none")
            results["rules"] = find_rules.run(fhir_base, sidecar.base_url, log, plan["rules"], cpu, progress)
            save()
        if "costs" in parts and db == "h2":
            from bench import call_costs

            progress(f"[{db}] what each call of a $book costs HAPI")
            results["costs"] = call_costs.run(
                fhir_base, up.pids.get("hapi"), progress, bookings=90 if args.quick else call_costs.BOOKINGS
            )
            save()
        if "lookups" in parts and db == "h2":
            progress(f"[{db}] look-ups: paged vs one page not kept")
            results["lookups"] = lookups.run(fhir_base, up.pids.get("hapi"), lookups.LookupPlan(), progress)
            save()
        if "book" in parts:
            modes = tuple(m.key for m in book_bench.MODES)
            if db != "h2":
                modes = ("dist16", *book_bench.ONE_SCHEDULE)
            progress(f"[{db}] $book vs raw transactions, {plan['bookings']} bookings x {plan['reps']} reps")
            book_plan = book_bench.BookPlan(
                modes=modes, bookings=plan["bookings"], reps=plan["reps"], warmup=16 if args.quick else 32
            )
            results.setdefault("book", {})[db] = book_bench.run(
                fhir_base, sidecar.base_url, log, book_plan, cpu, progress
            )
            save()
        # A HAPI that has not served the $book part yet is warmed up first (bench/mass.py).
        warm = 0 if "book" in parts else mass.WARM_UP_BOOKINGS
        if "mass" in parts and plan["mass_ungrouped"]:
            # Side by side: the same run with group commit off (BOOKING_GROUP_MAX=0), then on.
            ungrouped = servers.start_sidecar(
                fhir_base,
                out / f"sidecar-{db}-ungrouped.log",
                env={"BOOKING_GROUP_MAX": "0"},
                log_level="INFO",
            )
            try:
                progress(f"[{db}] mass booking, group commit off")
                assert ungrouped.process is not None
                ungrouped_cpu = servers.CpuMeter({"sidecar": ungrouped.process.pid, **up.pids})
                results.setdefault("mass_ungrouped", {})[db] = mass.mass_booking(
                    fhir_base,
                    [ungrouped.base_url],
                    progress=progress,
                    cpu=ungrouped_cpu,
                    warm=warm,
                    **plan["mass"],
                )
                warm = 0
            finally:
                ungrouped.stop()
        if "mass" in parts:
            progress(f"[{db}] mass booking")
            results.setdefault("mass", {})[db] = mass.mass_booking(
                fhir_base, [sidecar.base_url], progress=progress, cpu=cpu, warm=warm, **plan["mass"]
            )
            save()
        if "profile" in parts and first:
            from bench import profiling

            progress(f"[{db}] profiles")
            results["profile"] = profiling.run(fhir_base, out)
            save()
    finally:
        sidecar.stop()
    if "soak" in parts:
        progress(f"[{db}] soak: 2 sidecar processes x 4 workers")
        soakers = []
        try:
            for n in range(2):
                soakers.append(
                    servers.start_sidecar(
                        fhir_base, out / f"sidecar-soak-{db}-{n}.log", workers=4, log_level="INFO"
                    )
                )
            results.setdefault("soak", {})[db] = mass.soak(
                fhir_base, [s.base_url for s in soakers], progress=progress, **plan["soak"]
            )
            save()
        finally:
            for soaker in soakers:
                soaker.stop()


def _finish(
    args: argparse.Namespace, out: Path, results: dict[str, Any], progress: Callable[[str], None]
) -> None:
    written = []
    if results.get("find"):
        written.append(plots.find_plot(results["find"], out / "find.png"))
    if results.get("book"):
        written.append(plots.book_plot(results["book"], out / "book.png"))
    text = report.markdown(results)
    (out / "report.md").write_text(text)
    if not args.quick and written:
        DOCS_PLOTS.mkdir(parents=True, exist_ok=True)
        for path in written:
            shutil.copy2(path, DOCS_PLOTS / path.name)
        progress(f"plots copied to {DOCS_PLOTS.relative_to(REPO)}/")
    progress("")
    progress(text)


def _nan(value: Any) -> Any:
    """``results.json`` read back: ``null`` numbers are NaN again, as the report expects."""
    if value is None:
        return math.nan
    if isinstance(value, dict):
        return {k: _nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    """JSON without NaN (``null``), tuples as lists."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        print("interrupted: the servers were stopped", file=sys.stderr)
        raise SystemExit(130) from None
