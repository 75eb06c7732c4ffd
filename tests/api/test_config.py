from __future__ import annotations

import pytest

from plugin.app import create_app
from plugin.config import ConfigError, Settings


def test_defaults_when_only_the_base_url_is_given() -> None:
    settings = Settings.from_env({"FHIR_BASE_URL": "http://hapi:8080/fhir/"})
    assert settings == Settings(fhir_base_url="http://hapi:8080/fhir")
    assert settings.fhir_base_url == "http://hapi:8080/fhir"
    assert settings.base_path == "/fhir"
    assert settings.max_range_days == 31
    assert settings.hold_ttl_seconds == 300
    assert settings.upstream_timeout == (5.0, 30.0)
    assert settings.upstream_authorization is None
    assert settings.slot_end_search == "auto"
    assert settings.slot_lookback_days == 62
    assert settings.log_level == "INFO"


def test_every_variable_is_read() -> None:
    settings = Settings.from_env(
        {
            "FHIR_BASE_URL": "https://fhir.example.org/r4",
            "BASE_PATH": "/api/fhir/",
            "MAX_RANGE_DAYS": "14",
            "HOLD_TTL_SECONDS": "90",
            "UPSTREAM_CONNECT_TIMEOUT": "1.5",
            "UPSTREAM_READ_TIMEOUT": "10",
            "UPSTREAM_AUTHORIZATION": "Basic YWRtaW46c2VjcmV0",
            "SLOT_END_SEARCH": "OFF",
            "SLOT_LOOKBACK_DAYS": "120",
            "LOG_LEVEL": "debug",
        }
    )
    assert settings.base_path == "/api/fhir"
    assert settings.max_range_days == 14
    assert settings.hold_ttl_seconds == 90
    assert settings.upstream_timeout == (1.5, 10.0)
    assert settings.upstream_authorization == "Basic YWRtaW46c2VjcmV0"
    assert settings.slot_end_search == "off"
    assert settings.slot_lookback_days == 120
    assert settings.log_level == "DEBUG"


def test_empty_values_fall_back_to_defaults() -> None:
    settings = Settings.from_env(
        {"FHIR_BASE_URL": "http://h/fhir", "MAX_RANGE_DAYS": "", "UPSTREAM_AUTHORIZATION": " "}
    )
    assert settings.max_range_days == 31
    assert settings.upstream_authorization is None


def test_root_base_path() -> None:
    assert Settings.from_env({"FHIR_BASE_URL": "http://h/fhir", "BASE_PATH": "/"}).base_path == ""


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({}, "FHIR_BASE_URL"),
        ({"FHIR_BASE_URL": "hapi:8080/fhir"}, "FHIR_BASE_URL"),
        ({"FHIR_BASE_URL": "ftp://hapi/fhir"}, "FHIR_BASE_URL"),
        ({"FHIR_BASE_URL": "http://hapi/fhir?x=1"}, "FHIR_BASE_URL"),
        ({"BASE_PATH": "fhir"}, "BASE_PATH"),
        ({"MAX_RANGE_DAYS": "a month"}, "MAX_RANGE_DAYS"),
        ({"MAX_RANGE_DAYS": "0"}, "MAX_RANGE_DAYS"),
        ({"HOLD_TTL_SECONDS": "-5"}, "HOLD_TTL_SECONDS"),
        ({"UPSTREAM_CONNECT_TIMEOUT": "0"}, "UPSTREAM_CONNECT_TIMEOUT"),
        ({"UPSTREAM_READ_TIMEOUT": "nan"}, "UPSTREAM_READ_TIMEOUT"),
        ({"UPSTREAM_READ_TIMEOUT": "soon"}, "UPSTREAM_READ_TIMEOUT"),
        ({"SLOT_END_SEARCH": "maybe"}, "SLOT_END_SEARCH"),
        ({"SLOT_LOOKBACK_DAYS": "-1"}, "SLOT_LOOKBACK_DAYS"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"PUBLISH_DAYS": "0"}, "PUBLISH_DAYS"),
        ({"PUBLISH_DAYS": "93"}, "PUBLISH_DAYS"),
        ({"PUBLISH_DAYS": "two weeks"}, "PUBLISH_DAYS"),
        ({"PUBLISH_MAX_AGE_SECONDS": "-1"}, "PUBLISH_MAX_AGE_SECONDS"),
        ({"PUBLISH_BASE_URL": "fhir.example.org"}, "PUBLISH_BASE_URL"),
    ],
)
def test_bad_values_name_the_variable(environ: dict[str, str], variable: str) -> None:
    full = {"FHIR_BASE_URL": "http://hapi:8080/fhir", **environ}
    if not environ:
        full = {}
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env(full)


def test_create_app_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FHIR_BASE_URL", "http://hapi.test/fhir")
    monkeypatch.setenv("BASE_PATH", "/api/r4")
    # No hold sweeper: started by the first request, it would live on in this test process and
    # every minute send its search to whatever upstream mock another test has active.
    monkeypatch.setenv("HOLD_SWEEP_SECONDS", "0")
    client = create_app().test_client()
    assert client.get("/api/r4/metadata").status_code == 200
    assert client.get("/fhir/metadata").status_code == 404


def test_create_app_without_configuration_fails_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FHIR_BASE_URL", raising=False)
    with pytest.raises(ConfigError, match="FHIR_BASE_URL"):
        create_app()


def test_publishing_settings() -> None:
    settings = Settings.from_env({"FHIR_BASE_URL": "http://h/fhir"})
    assert (settings.publish_days, settings.publish_max_age_seconds) == (14, 300)
    assert settings.booking_link is None  # publishing is off
    settings = Settings.from_env(
        {
            "FHIR_BASE_URL": "http://h/fhir",
            "PUBLISH_BOOKING_URL_TEMPLATE": "https://portal.example.org/book/{schedule}?at={start}",
            "PUBLISH_DAYS": "28",
            "PUBLISH_MAX_AGE_SECONDS": "0",
            "PUBLISH_BOOKING_PHONE": "+1 413 555 0100",
            "PUBLISH_BASE_URL": "https://fhir.example.org/fhir/",
        }
    )
    assert settings.booking_link is not None
    assert settings.booking_link.render(
        schedule="a b", service="s", start="09:00+01:00", end="e", slot="x"
    ) == ("https://portal.example.org/book/a%20b?at=09%3A00%2B01%3A00")
    assert (settings.publish_days, settings.publish_max_age_seconds) == (28, 0)
    assert settings.publish_booking_phone == "+1 413 555 0100"
    assert settings.publish_base_url == "https://fhir.example.org/fhir"


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("https://portal.example.org/book?start={start", "does not parse"),
        ("https://portal.example.org/book?start={start}}", "does not parse"),
        ("https://portal.example.org/book?start={start}&who={patient}", "unknown placeholder {patient}"),
        ("https://portal.example.org/book?start={start:%Y}", "takes no format"),
        ("https://portal.example.org/book?start={start!r}", "takes no format"),
        ("https://portal.example.org/book?start={}", "unknown placeholder {}"),
        ("https://portal.example.org/book?schedule={schedule}", "must contain {start}"),
        ("/book?start={start}", "absolute http(s) URL"),
        ("mailto:desk@example.org?subject={start}", "absolute http(s) URL"),
    ],
)
def test_a_booking_link_template_that_cannot_work_stops_the_sidecar(template: str, why: str) -> None:
    with pytest.raises(ConfigError, match="PUBLISH_BOOKING_URL_TEMPLATE") as raised:
        Settings.from_env({"FHIR_BASE_URL": "http://h/fhir", "PUBLISH_BOOKING_URL_TEMPLATE": template})
    assert why in str(raised.value)
