"""Settings from the environment: one frozen dataclass, validated once at start.

A wrong value should stop the process at start with a message that names the variable, rather
than surface later as an odd upstream error in the middle of a booking.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar, cast
from urllib.parse import urlsplit

SlotEndSearch = Literal["auto", "on", "off"]
_SLOT_END_SEARCH_VALUES: tuple[SlotEndSearch, ...] = ("auto", "on", "off")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_T = TypeVar("_T")


class ConfigError(ValueError):
    """A configuration variable is missing or has an unusable value; the message names it."""


@dataclass(frozen=True)
class Settings:
    """Everything the sidecar needs to know about its deployment.

    Build it with :meth:`from_env` in production; tests construct it directly.
    """

    fhir_base_url: str
    """Upstream FHIR base, without a trailing slash (``http://hapi:8080/fhir``)."""
    base_path: str = "/fhir"
    """Path prefix the operations are served under; ``""`` serves them at the root."""
    max_range_days: int = 31
    hold_ttl_seconds: int = 300
    upstream_connect_timeout: float = 5.0
    upstream_read_timeout: float = 30.0
    upstream_authorization: str | None = None
    """``Authorization`` header value for work done on nobody's behalf (registration, readiness)."""
    slot_end_search: SlotEndSearch = "auto"
    slot_lookback_days: int = 62
    log_level: str = "INFO"
    booking_deadline_seconds: float = 20.0
    """How long ``$book``/``$hold``/``$confirm``/``$cancel`` keep re-deciding after version
    conflicts before answering 409."""
    hold_sweep_seconds: int = 60
    """Period of the background clean-up of lapsed holds in each worker; 0 turns it off."""

    def __post_init__(self) -> None:
        # Normalise here as well as in from_env, so directly-built settings (tests, embedding)
        # obey the same rules as the environment.
        object.__setattr__(self, "fhir_base_url", _base_url(self.fhir_base_url, "FHIR_BASE_URL"))
        object.__setattr__(self, "base_path", _base_path(self.base_path, "BASE_PATH"))
        _at_least(self.max_range_days, 1, "MAX_RANGE_DAYS")
        _at_least(self.hold_ttl_seconds, 1, "HOLD_TTL_SECONDS")
        _positive(self.upstream_connect_timeout, "UPSTREAM_CONNECT_TIMEOUT")
        _positive(self.upstream_read_timeout, "UPSTREAM_READ_TIMEOUT")
        _at_least(self.slot_lookback_days, 0, "SLOT_LOOKBACK_DAYS")
        _positive(self.booking_deadline_seconds, "BOOKING_DEADLINE_SECONDS")
        _at_least(self.hold_sweep_seconds, 0, "HOLD_SWEEP_SECONDS")
        if self.slot_end_search not in _SLOT_END_SEARCH_VALUES:
            raise ConfigError(
                f"SLOT_END_SEARCH must be one of {', '.join(_SLOT_END_SEARCH_VALUES)}, "
                f"not {self.slot_end_search!r}"
            )
        level = self.log_level.upper()
        if level not in _LOG_LEVELS:
            raise ConfigError(f"LOG_LEVEL must be one of {', '.join(_LOG_LEVELS)}, not {self.log_level!r}")
        object.__setattr__(self, "log_level", level)

    @property
    def upstream_timeout(self) -> tuple[float, float]:
        """``(connect, read)`` as ``requests`` expects it."""
        return (self.upstream_connect_timeout, self.upstream_read_timeout)

    @property
    def log_level_number(self) -> int:
        return cast(int, logging.getLevelName(self.log_level))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the settings; raises :class:`ConfigError` naming the bad variable.

        Empty values count as unset, so ``FOO=`` in a compose file falls back to the default.
        """
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name)
            if value is None or not value.strip():
                return None
            return value.strip()

        def typed(name: str, convert: Callable[[str], _T], default: _T, what: str) -> _T:
            raw = get(name)
            if raw is None:
                return default
            try:
                return convert(raw)
            except ValueError:
                raise ConfigError(f"{name} must be {what}, not {raw!r}") from None

        base_url = get("FHIR_BASE_URL")
        if base_url is None:
            raise ConfigError(
                "FHIR_BASE_URL is required: the base URL of the upstream FHIR server, "
                "e.g. http://hapi:8080/fhir"
            )
        return cls(
            fhir_base_url=base_url,
            base_path=get("BASE_PATH") or "/fhir",
            max_range_days=typed("MAX_RANGE_DAYS", int, 31, "a whole number of days"),
            hold_ttl_seconds=typed("HOLD_TTL_SECONDS", int, 300, "a whole number of seconds"),
            upstream_connect_timeout=typed("UPSTREAM_CONNECT_TIMEOUT", float, 5.0, "a number of seconds"),
            upstream_read_timeout=typed("UPSTREAM_READ_TIMEOUT", float, 30.0, "a number of seconds"),
            upstream_authorization=get("UPSTREAM_AUTHORIZATION"),
            slot_end_search=cast(SlotEndSearch, (get("SLOT_END_SEARCH") or "auto").lower()),
            slot_lookback_days=typed("SLOT_LOOKBACK_DAYS", int, 62, "a whole number of days"),
            log_level=get("LOG_LEVEL") or "INFO",
            booking_deadline_seconds=typed("BOOKING_DEADLINE_SECONDS", float, 20.0, "a number of seconds"),
            hold_sweep_seconds=typed("HOLD_SWEEP_SECONDS", int, 60, "a whole number of seconds"),
        )


def _base_url(value: str, name: str) -> str:
    url = value.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name} must be an http(s) URL such as http://hapi:8080/fhir, not {value!r}")
    if parts.query or parts.fragment:
        raise ConfigError(f"{name} must not carry a query or fragment: {value!r}")
    return url


def _base_path(value: str, name: str) -> str:
    path = value.strip().rstrip("/")
    if path and not path.startswith("/"):
        raise ConfigError(f"{name} must start with '/' (e.g. /fhir), or be '/' for the root, not {value!r}")
    if any(ch in path for ch in "?#<> "):
        raise ConfigError(f"{name} must be a plain path such as /fhir, not {value!r}")
    return path


def _at_least(value: int, minimum: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be a whole number >= {minimum}, not {value!r}")


def _positive(value: float, name: str) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(f"{name} must be a number of seconds > 0, not {value!r}")
