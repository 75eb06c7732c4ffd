"""``fanoni-scheduling``: ``serve`` runs the sidecar under gunicorn, ``register`` installs the
SearchParameter and OperationDefinitions on the upstream.

Configuration comes from the environment (``docs/configuration.md``); the options here only
choose how the process listens.
"""

from __future__ import annotations

import argparse
import gc
import sys
import threading
from collections.abc import Sequence
from typing import Any

from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]

from plugin import doctor
from plugin.app import create_app
from plugin.config import ConfigError, Settings
from plugin.logs import configure_logging
from plugin.metrics import mark_process_dead, multiprocess_directory
from plugin.registration import keep_registering, register
from plugin.service_credentials import credentials_from_settings

DEFAULT_HOST = "0.0.0.0"  # a sidecar listens for its neighbours, not only for localhost
DEFAULT_PORT = 8090
DEFAULT_WORKERS = 2
DEFAULT_THREADS = 16
DEFAULT_TIMEOUT = 120
"""gunicorn's worker timeout: above a $find's worst case of a few upstream reads at
UPSTREAM_READ_TIMEOUT (30 s) each, so a slow upstream yields a 504, not a killed worker."""


class GunicornServer(BaseApplication):  # type: ignore[misc]
    """gunicorn driven from code: the options come from our CLI, the app from ``create_app``."""

    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self._settings = settings
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)
        if "control_socket_disable" in self.cfg.settings:
            # gunicorn >= 27 opens an admin socket under $HOME; a sidecar has no use for it,
            # and its home directory is often read-only.
            self.cfg.set("control_socket_disable", True)

    def load(self) -> Any:
        # Called in each worker after the fork: one app, one connection pool per process.
        app = create_app(self._settings)
        # What exists now (modules, the app, fhirclient's models: ~50,000 objects) lives as long
        # as the process: out of the collector's sight. Otherwise every full collection scans it
        # all, and a large $find answer (thousands of dicts alive at once) sets one off about
        # every tenth request: 7-16 ms each, 0.75 ms a request on average (docs/performance.md).
        gc.freeze()
        return app

    def run(self) -> None:
        # The workers forked in here share their metrics through one directory (plugin/metrics.py).
        with multiprocess_directory():
            super().run()


def gunicorn_options(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    host = f"[{args.host}]" if ":" in args.host else args.host
    return {
        "bind": f"{host}:{args.port}",
        "workers": args.workers,
        "threads": args.threads,
        "worker_class": "gthread" if args.threads > 1 else "sync",
        "timeout": args.timeout,
        "accesslog": None,  # the app logs every request itself, with request id and round trips
        "errorlog": "-",
        "loglevel": settings.log_level.lower(),
        "proc_name": "fanoni-scheduling",
        "child_exit": _worker_exited,
    }


def _worker_exited(server: Any, worker: Any) -> None:
    """gunicorn's ``child_exit`` hook, in the master."""
    mark_process_dead(worker.pid)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fanoni-scheduling",
        description="Scheduling operations ($find, ...) for a FHIR R4 server, as a sidecar.",
        epilog="Configuration is read from environment variables; see docs/configuration.md.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the sidecar (gunicorn)")
    serve.add_argument("--host", default=DEFAULT_HOST, help=f"default {DEFAULT_HOST}")
    serve.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    serve.add_argument(
        "--workers", type=_positive, default=DEFAULT_WORKERS, help=f"processes (default {DEFAULT_WORKERS})"
    )
    serve.add_argument(
        "--threads",
        type=_positive,
        default=DEFAULT_THREADS,
        help=f"threads per process (default {DEFAULT_THREADS})",
    )
    serve.add_argument(
        "--timeout",
        type=_positive,
        default=DEFAULT_TIMEOUT,
        help=f"seconds before gunicorn restarts a stuck worker (default {DEFAULT_TIMEOUT})",
    )
    serve.add_argument(
        "--no-register", action="store_true", help="skip registration on the upstream at start"
    )
    serve.add_argument("--dev", action="store_true", help="Flask's development server instead of gunicorn")

    commands.add_parser("register", help="install the Slot end SearchParameter and OperationDefinitions")
    doctor.add_arguments(
        commands.add_parser(
            "doctor",
            help="report what makes scheduling silently wrong in the clinic's data (docs/doctor.md)",
        )
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "doctor":
        return doctor.run(args)  # its own settings: --fhir-base-url, --authorization
    try:
        settings = Settings.from_env()
        # The sidecar's own credentials, checked once here (a SMART key that does not fit its
        # algorithm stops the process now, not every gunicorn worker as it boots).
        credentials_from_settings(settings)
    except ConfigError as exc:
        print(f"fanoni-scheduling: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level_number)

    if args.command == "register":
        report = register(settings)
        print(report.summary())
        return 0 if report.ok else 1

    if not args.no_register and not register(settings).ok:
        # Logged; a refusal must not keep the sidecar from serving. The upstream is often just
        # not up yet: keep trying in the background (a daemon thread of the gunicorn master).
        threading.Thread(
            target=keep_registering, args=(settings,), name="fanoni-register", daemon=True
        ).start()
    if args.dev:
        create_app(settings).run(host=args.host, port=args.port, threaded=True)
    else:
        GunicornServer(settings, gunicorn_options(args, settings)).run()
    return 0


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"{text} is not a TCP port")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value
