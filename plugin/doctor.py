"""``fanoni-scheduling doctor``: read a clinic's configuration and bookings on the upstream and
report everything that makes scheduling silently wrong (docs/doctor.md lists every finding).

It reads with the administrator's credentials: the sidecar's own (``UPSTREAM_AUTHORIZATION``
or SMART Backend Services, as configured for ``serve``) unless ``--authorization`` gives
others. It never writes. Exit status: 0 clean (or warnings only), 1 something is wrong (an
error; with ``--strict`` a warning too), 2 the command could not run (usage, configuration,
the upstream failed or refused).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import IO, Any

from tqdm import tqdm

from operations.fhir_values import is_fhir_id
from plugin.config import ConfigError, Settings
from plugin.doctor_bookings import check_bookings
from plugin.doctor_config import check_configuration
from plugin.doctor_findings import Finding
from plugin.doctor_read import ClinicData, DoctorStore, default_window, read_clinic
from plugin.doctor_report import Run, as_json, as_text
from plugin.doctor_service_types import check_service_types
from plugin.logs import configure_logging
from plugin.upstream import UpstreamClient
from plugin.upstream_errors import UpstreamError

DEFAULT_DAYS = 60
DEFAULT_PAST_DAYS = 1
USAGE_ERROR = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``doctor`` subcommand's options (``plugin.cli.build_parser``)."""
    parser.add_argument(
        "--schedule",
        action="append",
        type=_schedule_ids,
        metavar="Schedule/ID",
        help="check only this Schedule, and the Slots and Appointments on it (repeat, or a "
        "comma-separated list); default: every Schedule",
    )
    parser.add_argument(
        "--days",
        type=_whole,
        default=DEFAULT_DAYS,
        help=f"Slots and Appointments up to this many days ahead (default {DEFAULT_DAYS})",
    )
    parser.add_argument(
        "--past-days",
        type=_whole,
        default=DEFAULT_PAST_DAYS,
        help=f"and this many days back (default {DEFAULT_PAST_DAYS})",
    )
    parser.add_argument("--json", action="store_true", help="the findings as JSON on stdout (docs/doctor.md)")
    parser.add_argument("--strict", action="store_true", help="exit 1 on warnings too, not only on errors")
    parser.add_argument(
        "--authorization",
        metavar="HEADER",
        help="read with this Authorization instead of the sidecar's own credentials: a header "
        "value ('Bearer …', 'Basic …') or a bare bearer token; '-' reads it from stdin",
    )
    parser.add_argument("--fhir-base-url", metavar="URL", help="the upstream (default: FHIR_BASE_URL)")
    parser.add_argument(
        "--hold-grace",
        type=_whole,
        metavar="SECONDS",
        help="how long past its expiry a hold may stay before it counts as stuck "
        "(default: HOLD_SWEEP_SECONDS, 60)",
    )
    parser.add_argument(
        "--page-size", type=_positive, metavar="N", help="resources per page asked for (default 1000)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")


def diagnose(clinic: ClinicData) -> list[Finding]:
    """Every finding about the clinic: its configuration, what is booked on it, and the
    service-type codes that match nothing."""
    findings, configuration = check_configuration(clinic)
    return findings + check_bookings(clinic, configuration) + check_service_types(clinic, configuration)


def run(
    args: argparse.Namespace,
    *,
    environ: Mapping[str, str] | None = None,
    stdin: IO[str] | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
    now: datetime | None = None,
) -> int:
    """Run the doctor as parsed from the command line; returns the exit status."""
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    env = dict(os.environ if environ is None else environ)
    if args.fhir_base_url:
        env["FHIR_BASE_URL"] = args.fhir_base_url
    try:
        settings = Settings.from_env(env)
        client = UpstreamClient(settings)  # a SMART key that does not fit stops us here
        authorization = _authorization(args.authorization, stdin or sys.stdin)
    except ConfigError as exc:
        print(f"fanoni-scheduling doctor: configuration error: {exc}", file=stderr)
        return USAGE_ERROR
    # JSON log lines only for what goes wrong: the report is the output.
    configure_logging(max(logging.WARNING, settings.log_level_number))
    now = now or datetime.now(UTC)
    progress = Progress(stderr, enabled=not args.no_progress)
    store = DoctorStore(
        client,
        authorization=authorization,
        credentials=None if authorization else client.credentials,
        request_id=f"doctor-{uuid.uuid4().hex[:12]}",
        on_page=progress.page,
        page_size=args.page_size,
    )
    hold_grace = settings.hold_sweep_seconds if args.hold_grace is None else args.hold_grace
    started = time.monotonic()
    try:
        clinic = read_clinic(
            store,
            schedule_ids=[i for ids in args.schedule for i in ids] if args.schedule else None,
            window=default_window(now, args.days, args.past_days),
            now=now,
            hold_grace=timedelta(seconds=hold_grace),
            phase=progress.phase,
        )
    except LookupError as exc:
        print(f"fanoni-scheduling doctor: {exc.args[0]}", file=stderr)
        return USAGE_ERROR
    except UpstreamError as exc:
        status = f" ({exc.upstream_status})" if exc.upstream_status else ""
        print(
            f"fanoni-scheduling doctor: reading {settings.fhir_base_url} failed{status}: {exc.diagnostics}",
            file=stderr,
        )
        return USAGE_ERROR
    finally:
        progress.close()
    report = Run(
        fhir_base_url=settings.fhir_base_url,
        identity="authorization" if authorization else "sidecar",
        clinic=clinic,
        findings=diagnose(clinic),
        round_trips=store.round_trips,
        seconds=time.monotonic() - started,
        strict=args.strict,
    )
    print(as_json(report) if args.json else as_text(report), file=stdout)
    return report.exit_status


class Progress:
    """One progress bar per phase of reading, on ``stream`` and only when it is a terminal (a
    pipe or a log file gets none). tqdm draws it: width, rate and redraws are its business.

    The bar's total grows as the server counts each search (``_total=accurate``); a server
    that does not count gets a plain counter.
    """

    def __init__(self, stream: IO[str], *, enabled: bool = True) -> None:
        self._stream = stream
        self._enabled = enabled and stream.isatty()
        self._bar: tqdm[Any] | None = None

    def phase(self, label: str) -> None:
        self.close()
        if self._enabled:
            # Updates come once per page (up to 1000 resources, a round trip apart), so each one
            # is drawn: tqdm's default 0.1 s throttle would hide a fast server's progress.
            self._bar = tqdm(
                desc=label,
                unit=" resources",
                file=self._stream,
                leave=False,
                dynamic_ncols=True,
                mininterval=0,
                miniters=1,
            )

    def page(self, _resource_type: str, entries: int, total: int | None) -> None:
        if self._bar is None:
            return
        if total is not None:
            self._bar.total = (self._bar.total or 0) + total
        self._bar.update(entries)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _authorization(value: str | None, stdin: IO[str]) -> str | None:
    """The Authorization header to read with: as given when it names a scheme, ``Bearer`` in
    front of a bare token; ``-`` reads it from stdin (kept out of ``ps`` and shell history)."""
    if value is None:
        return None
    if value == "-":
        value = stdin.readline()
    value = value.strip()
    if not value or any(c in value for c in "\r\n"):
        raise ConfigError("--authorization must be a header value such as 'Bearer <token>', or a token")
    return value if " " in value else f"Bearer {value}"


def _schedule_ids(text: str) -> list[str]:
    ids = []
    for part in text.split(","):
        schedule_id = part.strip().removeprefix("Schedule/")
        if not is_fhir_id(schedule_id):
            raise argparse.ArgumentTypeError(f"{part.strip()!r} is not Schedule/<id> or an id")
        ids.append(schedule_id)
    return ids


def _whole(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value
