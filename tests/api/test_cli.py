"""``fanoni-scheduling serve | register``, without starting a server."""

from __future__ import annotations

import gc
import threading
from pathlib import Path
from typing import Any

import pytest
import responses
from flask import Flask

from plugin import cli
from plugin.config import Settings
from tests.api.conftest import BASE, outcome


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FHIR_BASE_URL", BASE)
    monkeypatch.setenv("UPSTREAM_AUTHORIZATION", "Bearer admin-token")


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Capture the gunicorn options instead of running gunicorn."""
    runs: list[dict[str, Any]] = []

    def run(self: cli.GunicornServer) -> None:
        runs.append({key: self.cfg.settings[key].get() for key in ("bind", "workers", "threads")})

    monkeypatch.setattr(cli.GunicornServer, "run", run)
    return runs


def test_serve_defaults(upstream: responses.RequestsMock, started: list[dict[str, Any]]) -> None:
    assert cli.main(["serve", "--no-register"]) == 0
    assert started == [{"bind": ["0.0.0.0:8090"], "workers": 2, "threads": 16}]
    assert len(upstream.calls) == 0


def test_serve_options(upstream: responses.RequestsMock, started: list[dict[str, Any]]) -> None:
    cli.main(["serve", "--no-register", "--host", "::", "--port", "9000", "--workers", "5"])
    assert started[0]["bind"] == ["[::]:9000"] and started[0]["workers"] == 5


def test_serve_registers_first_and_survives_a_refusal(
    upstream: responses.RequestsMock, started: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    retried = threading.Event()
    monkeypatch.setattr(cli, "keep_registering", lambda settings: retried.set())
    upstream.get(f"{BASE}/SearchParameter/fanoni-slot-end", status=403, json=outcome("no"))
    assert cli.main(["serve"]) == 0
    assert len(started) == 1
    assert upstream.calls[0].request.headers["Authorization"] == "Bearer admin-token"
    assert retried.wait(5), "a failed registration goes on in the background"


def test_gunicorn_loads_the_app_factory(settings: Settings) -> None:
    server = cli.GunicornServer(settings, {"bind": "127.0.0.1:0"})
    assert isinstance(server.load(), Flask)


def test_a_worker_puts_what_it_started_with_out_of_the_collectors_sight(settings: Settings) -> None:
    gc.unfreeze()
    try:
        cli.GunicornServer(settings, {"bind": "127.0.0.1:0"}).load()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_register_command_exit_status(
    upstream: responses.RequestsMock, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["register"]) == 1  # upstream unreachable: reported, non-zero
    assert "failed: SearchParameter/fanoni-slot-end" in capsys.readouterr().out


def test_missing_configuration_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("FHIR_BASE_URL")
    assert cli.main(["serve"]) == 2
    assert "FHIR_BASE_URL" in capsys.readouterr().err


def test_bad_port_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["serve", "--port", "70000"])
    assert caught.value.code == 2


def test_a_smart_key_that_does_not_fit_stops_the_process_at_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "key.pem"
    key.write_text("not a key")
    for name, value in {
        "FHIR_BASE_URL": "http://hapi.test/fhir",
        "SMART_TOKEN_URL": "http://idp.test/token",
        "SMART_CLIENT_ID": "fanoni",
        "SMART_PRIVATE_KEY_FILE": str(key),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("UPSTREAM_AUTHORIZATION")
    assert cli.main(["serve", "--no-register"]) == 2
    assert "configuration error: SMART" in capsys.readouterr().err
