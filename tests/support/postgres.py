"""A throwaway PostgreSQL server, and HAPI FHIR on it, for tests and benchmarks.

Production clinics run HAPI on PostgreSQL, where concurrent version-checked writes fail in ways
H2 never shows (docs/reliability.md, "HAPI on PostgreSQL"). This starts Debian's PostgreSQL
binaries (``/usr/lib/postgresql/<newest version>/bin``): ``initdb`` into a fresh temporary
directory, the server listening on 127.0.0.1 on a free port (its unix socket in that directory
too), one database and one password-protected role for HAPI. ``stop()`` shuts it down and
deletes the directory: nothing is left behind.

initdb and the server refuse to run as root, so when this process is root (CI) they run as the
``postgres`` OS user (``runuser -u postgres --``), which Debian's ``postgresql`` package creates,
and the temporary directory is handed to that user.

    with start_postgres() as pg:
        hapi = start_hapi(extra_args=[*pg.hapi_args(), *other_args])

    with start_hapi_on_postgres(extra_args=hapi_args()) as (hapi, pg):
        ...

Missing binaries raise ``PostgresUnavailable`` (never a skip): ``.ci/run`` installs Debian's
``postgresql`` package when they are missing. ``FANONI_POSTGRES_BIN`` names another bin directory.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, Self

from tests.integration.hapi_server import BASE_URL_ENV, HapiServer, start_hapi

POSTGRES_LIB = Path("/usr/lib/postgresql")
BIN_ENV = "FANONI_POSTGRES_BIN"
OS_USER = "postgres"
"""The OS user the server runs as when this process is root."""
HAPI_DIALECT = "ca.uhn.fhir.jpa.model.dialect.HapiFhirPostgresDialect"
START_TIMEOUT = 60
STOP_TIMEOUT = 30
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
"""A throwaway database needs no crash safety; these make commits cheap (``durable=False``)."""
LOG_TAIL_CHARS = 4000


class PostgresUnavailable(RuntimeError):
    """PostgreSQL's binaries are missing, or the server could not be set up or started."""


class PostgresServer:
    """A running throwaway PostgreSQL server (see the module docstring); a context manager.

    Attributes: ``host`` (127.0.0.1), ``port``, ``database``, ``username``, ``password``,
    ``jdbc_url``, ``bin_dir``, ``data_dir``, ``log_path`` (inside the temporary directory; gone
    after ``stop()``).
    """

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        port: int | None = None,
        database: str = "hapi",
        username: str = "fanoni",
        durable: bool = False,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        """Create and start the server. ``durable=False`` turns fsync and synchronous commit off
        (``FAST_SETTINGS``); ``settings`` are more ``postgresql.conf`` lines (``max_connections``,
        ``default_transaction_isolation``, ...), applied last."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", database) or not re.fullmatch(r"[a-z_][a-z0-9_]*", username):
            raise ValueError("database and username must be plain lower-case SQL identifiers")
        self.bin_dir = postgres_bin_dir()
        self.database = database
        self.username = username
        self.password = secrets.token_hex(16)
        self._run_as = _run_as_prefix()
        # As root, under /tmp: the postgres user must be able to reach it (TMPDIR may be private).
        self._dir: Path | None = Path(
            tempfile.mkdtemp(prefix="fanoni-postgres-", dir="/tmp" if self._run_as else None)
        )
        self.data_dir = self._dir / "data"
        self.socket_dir = self._dir / "run"
        self.log_path = self._dir / "postgres.log"
        self.port = port if port is not None else _free_port()
        self._started = False
        try:
            self._init(durable, settings or {})
            self._start(fixed_port=port is not None)
            self._create_database()
        except BaseException:
            self.stop()
            raise

    @property
    def jdbc_url(self) -> str:
        return f"jdbc:postgresql://{self.host}:{self.port}/{self.database}"

    def hapi_args(self) -> list[str]:
        """What ``hapi-server`` needs to run on this database (``start_hapi(extra_args=...)``)."""
        return [
            f"--spring.datasource.url={self.jdbc_url}",
            f"--spring.datasource.username={self.username}",
            f"--spring.datasource.password={self.password}",
            f"--spring.jpa.properties.hibernate.dialect={HAPI_DIALECT}",
        ]

    def psql(self, sql: str, *, database: str | None = None) -> str:
        """Run ``sql`` with ``psql`` over the unix socket (as the database's superuser);
        unaligned, tuples only. For looking at what HAPI stored, or tuning a benchmark."""
        result = self._run(
            [
                str(self.bin_dir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                self.username,
                "-d",
                database or self.database,
                "-c",
                sql,
            ],
            what="psql",
        )
        return result.stdout

    def configure(self, settings: Mapping[str, str]) -> None:
        """Change server settings while it runs (``ALTER SYSTEM`` and a reload): e.g.
        ``{"default_transaction_isolation": "serializable"}`` switches HAPI's open connections
        at their next transaction. ``"DEFAULT"`` as a value resets a setting to what it was at
        start."""
        for name, value in settings.items():
            if not re.fullmatch(r"[a-z_]+", name):
                raise ValueError(f"not a setting name: {name!r}")
            literal = "DEFAULT" if value == "DEFAULT" else "'" + value.replace("'", "''") + "'"
            self.psql(f"ALTER SYSTEM SET {name} = {literal}")
        self.psql("SELECT pg_reload_conf()")
        # The reload signal is asynchronous: wait until this session's backend sees the values
        # (the others read the file at the same signal).
        deadline = time.monotonic() + 10
        expected = {n: v for n, v in settings.items() if v != "DEFAULT"}
        while expected and time.monotonic() < deadline:
            if all(self.psql(f"SHOW {n}").strip() == v for n, v in expected.items()):
                return
            time.sleep(0.05)

    def is_running(self) -> bool:
        return self._started and self._postmaster_pid() is not None

    def stop(self) -> None:
        """Shut the server down (fast: open sessions are ended) and delete its directory.
        Idempotent."""
        directory, self._dir = self._dir, None
        if directory is None:
            return
        try:
            if self._started and (self.data_dir / "postmaster.pid").exists():
                stopped = self._run(
                    [
                        str(self.bin_dir / "pg_ctl"),
                        "stop",
                        "-D",
                        str(self.data_dir),
                        "-m",
                        "fast",
                        "-w",
                        "-t",
                        str(STOP_TIMEOUT),
                    ],
                    what="pg_ctl stop",
                    check=False,
                )
                if stopped.returncode != 0:
                    self._kill_postmaster()
        finally:
            self._started = False
            shutil.rmtree(directory, ignore_errors=True)

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError as exc:
            return f"(cannot read {self.log_path}: {exc})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"PostgresServer(jdbc_url={self.jdbc_url!r}, data_dir={str(self.data_dir)!r})"

    # ---- setting up ---------------------------------------------------------------------------

    def _init(self, durable: bool, settings: Mapping[str, str]) -> None:
        assert self._dir is not None
        self.socket_dir.mkdir()
        password_file = self._dir / "password"
        password_file.write_text(self.password + "\n")
        self.log_path.touch()
        if self._run_as:
            owner = pwd.getpwnam(OS_USER)
            for path in (self._dir, self.socket_dir, password_file, self.log_path):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        try:
            self._run(
                [
                    str(self.bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    self.username,
                    f"--pwfile={password_file}",
                    # TCP connections (HAPI's) need the password; the unix socket in the private
                    # directory (psql() here) is trusted.
                    "--auth-host=scram-sha-256",
                    "--auth-local=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                what="initdb",
            )
        finally:
            password_file.unlink(missing_ok=True)
        lines = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "max_connections": "200",
            **(FAST_SETTINGS if not durable else {}),
            **settings,
        }
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# tests/support/postgres.py\n")
            conf.writelines(f"{name} = {value}\n" for name, value in lines.items())

    def _start(self, *, fixed_port: bool) -> None:
        for attempt in range(3):
            started = self._run(
                [
                    str(self.bin_dir / "pg_ctl"),
                    "start",
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_path),
                    "-o",
                    f"-p {self.port}",
                    "-w",
                    "-t",
                    str(START_TIMEOUT),
                ],
                what="pg_ctl start",
                check=False,
            )
            if started.returncode == 0:
                self._started = True
                return
            self._kill_postmaster()
            port_taken = "could not bind" in self.log_tail() or "already in use" in self.log_tail()
            if fixed_port or not port_taken or attempt == 2:
                raise PostgresUnavailable(
                    f"PostgreSQL did not start on port {self.port} (pg_ctl exit {started.returncode}): "
                    f"{started.stdout}{started.stderr}\n--- {self.log_path} ---\n{self.log_tail()}"
                )
            self.port = _free_port()  # somebody took the free port first: another one

    def _create_database(self) -> None:
        self.psql(f"CREATE DATABASE {self.database}", database="postgres")

    # ---- processes ----------------------------------------------------------------------------

    def _run(
        self, command: Sequence[str], *, what: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self._run_as, *command],
            # A directory the server's user may enter (initdb and psql complain otherwise).
            cwd=self._dir or tempfile.gettempdir(),
            env={**os.environ, "LC_ALL": "C", "PGTZ": "UTC"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT + 30,
            check=False,
        )
        if check and result.returncode != 0:
            raise PostgresUnavailable(
                f"{what} failed (exit {result.returncode}): {result.stdout}{result.stderr}".strip()
            )
        return result

    def _postmaster_pid(self) -> int | None:
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, another user's (we are not root and not the postgres user)
        return pid

    def _kill_postmaster(self) -> None:
        """Immediate shutdown (SIGQUIT) of the server of this data directory (its own
        postmaster.pid names it), SIGKILL if it lingers: when ``pg_ctl stop`` failed."""
        for sig in (signal.SIGQUIT, signal.SIGKILL):
            pid = self._postmaster_pid()
            if pid is None:
                return
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
            deadline = time.monotonic() + 10
            while self._postmaster_pid() is not None and time.monotonic() < deadline:
                time.sleep(0.1)


def start_postgres(
    *,
    port: int | None = None,
    database: str = "hapi",
    username: str = "fanoni",
    durable: bool = False,
    settings: Mapping[str, str] | None = None,
) -> PostgresServer:
    """A fresh, empty, running PostgreSQL server (``PostgresServer``)."""
    return PostgresServer(port=port, database=database, username=username, durable=durable, settings=settings)


class HapiOnPostgres(NamedTuple):
    """HAPI and the PostgreSQL it stores into; ``stop()`` (or leaving the ``with``) stops both,
    HAPI first."""

    hapi: HapiServer
    postgres: PostgresServer

    def stop(self) -> None:
        try:
            self.hapi.stop()
        finally:
            self.postgres.stop()

    def __enter__(self) -> HapiOnPostgres:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_hapi_on_postgres(
    extra_args: Sequence[str] = (),
    *,
    port: int | None = None,
    durable: bool = False,
    settings: Mapping[str, str] | None = None,
) -> HapiOnPostgres:
    """A fresh PostgreSQL and ``hapi-server`` on it (``start_hapi(port, [*pg.hapi_args(),
    *extra_args])``; HAPI creates its schema at start). ``port`` is HAPI's; ``durable`` and
    ``settings`` are PostgreSQL's (``start_postgres``)."""
    if os.environ.get(BASE_URL_ENV, "").strip():
        raise RuntimeError(f"{BASE_URL_ENV} is set: start_hapi would not start a HAPI on PostgreSQL")
    postgres = start_postgres(durable=durable, settings=settings)
    try:
        hapi = start_hapi(port, [*postgres.hapi_args(), *extra_args])
    except BaseException:
        postgres.stop()
        raise
    return HapiOnPostgres(hapi, postgres)


def postgres_bin_dir() -> Path:
    """``FANONI_POSTGRES_BIN``, or the newest ``/usr/lib/postgresql/<version>/bin`` with initdb."""
    named = os.environ.get(BIN_ENV, "").strip()
    if named:
        candidates = [Path(named)]
    else:
        versions = sorted(
            (p for p in POSTGRES_LIB.glob("*") if p.name.replace(".", "").isdigit()),
            key=lambda p: tuple(int(part) for part in p.name.split(".")),
            reverse=True,
        )
        candidates = [v / "bin" for v in versions]
    for candidate in candidates:
        if all((candidate / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres", "psql")):
            return candidate
    raise PostgresUnavailable(
        f"PostgreSQL's server binaries (initdb, pg_ctl, postgres, psql) were not found in "
        f"{named or str(POSTGRES_LIB) + '/<version>/bin'}: install Debian's postgresql package "
        "(apt-get install -y postgresql; .ci/run does) or set " + BIN_ENV
    )


def _run_as_prefix() -> list[str]:
    """``runuser -u postgres --`` when root (initdb and postgres refuse root), else nothing."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(OS_USER)
    except KeyError:
        raise PostgresUnavailable(
            f"running as root, but there is no '{OS_USER}' OS user to run PostgreSQL as "
            "(Debian's postgresql package creates it)"
        ) from None
    runuser = shutil.which("runuser")
    if runuser is None:
        raise PostgresUnavailable("running as root, but 'runuser' (util-linux) is not installed")
    return [runuser, "-u", OS_USER, "--"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
