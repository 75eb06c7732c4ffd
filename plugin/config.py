"""Settings from the environment: one frozen dataclass, validated once at start.

A wrong value should stop the process at start with a message that names the variable, rather
than surface later as an odd upstream error in the middle of a booking.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeVar, cast
from urllib.parse import urlsplit

from operations.booking_link import BookingLinkTemplate, LinkTemplateError

SlotEndSearch = Literal["auto", "on", "off"]
_SLOT_END_SEARCH_VALUES: tuple[SlotEndSearch, ...] = ("auto", "on", "off")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MAX_PUBLISH_DAYS = 92
"""Three months of free starts is already a large file; more would be computed on every refresh."""

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
    upstream_authorization: str | None = field(default=None, repr=False)
    """``Authorization`` header value for work done on nobody's behalf (registration, readiness)."""
    slot_end_search: SlotEndSearch = "auto"
    slot_lookback_days: int = 62
    log_level: str = "INFO"
    booking_deadline_seconds: float = 20.0
    """How long ``$book``/``$hold``/``$confirm``/``$cancel`` keep re-deciding after version
    conflicts before answering 409."""
    hold_sweep_seconds: int = 60
    """Period of the background clean-up of lapsed holds in each worker; 0 turns it off."""
    max_schedules: int = 20
    """Schedules one ``$find`` or booking may name (400 beyond): each adds locks and work."""
    booking_group_max: int = 30
    """Most bookings of one time a process writes in one transaction (group commit,
    ``plugin/booking_groups.py``); ``0`` turns grouping off."""
    bucket_lock_file: str | None = None
    """The file the worker processes of one host share to write one booking group per time
    bucket at a time (``plugin/host_buckets.py``); ``None``: one per upstream in ``/dev/shm``
    (or the temporary directory); ``off``: none."""
    max_series: int = 12
    """Most occurrences a recurring series may have (``recurrence.repeat.count``, SPEC §7.4)."""
    guard_key: str | None = field(default=None, repr=False)
    """Sent as ``X-Fanoni-Service-Key`` on the sidecar's own calls: how the HAPI guard knows a
    write comes from the sidecar (docs/security.md)."""
    service_name: str = "fanoni-scheduling"
    """The sidecar's name as the author of every Provenance it writes."""
    notification_url: str | None = None
    """Where the upstream delivers subscription notifications (this sidecar's webhook, as the
    upstream reaches it); unset: no Subscription is registered."""
    notification_secret: str | None = field(default=None, repr=False)
    """The bearer secret notifications must carry; anything else gets 401."""
    smart_token_url: str | None = None
    """SMART Backend Services: the token endpoint. Set, the sidecar's own credentials are
    access tokens from it instead of ``UPSTREAM_AUTHORIZATION``."""
    smart_client_id: str | None = None
    smart_private_key: str | None = field(default=None, repr=False)
    """The private key (PEM or JWK/JWKS JSON) the client assertion is signed with (the file's
    content; ``from_env`` reads ``SMART_PRIVATE_KEY_FILE``)."""
    smart_key_id: str | None = None
    smart_algorithm: str = "RS384"
    smart_scope: str = "system/*.cruds"
    caller_jwks_url: str | None = None
    """JWKS of the callers' token issuer: a caller whose bearer token verifies against it is
    named in the Provenance as verified; otherwise as unverified."""
    caller_jwt_issuer: str | None = None
    caller_jwt_audience: str | None = None
    publish_booking_url_template: str | None = None
    """SMART Scheduling Links (``$bulk-publish``): the booking deep link of every published Slot,
    with ``{schedule}``, ``{service}``, ``{start}``, ``{end}``, ``{slot}``; unset: nothing is published."""
    publish_days: int = 14
    """Published Slots start within the next this many days."""
    publish_max_age_seconds: int = 300
    """``Cache-Control: max-age`` of the publication, and how long each process reuses it."""
    publish_booking_phone: str | None = None
    """The booking phone every published Slot carries (``booking-phone``), if any."""
    publish_base_url: str | None = None
    """The sidecar's FHIR base as consumers reach it (manifest and file URLs); unset: the
    URL each request came in on."""

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
        _at_least(self.max_schedules, 1, "MAX_SCHEDULES")
        _at_least(self.max_series, 2, "MAX_SERIES")
        _at_least(self.booking_group_max, 0, "BOOKING_GROUP_MAX")
        _at_least(self.publish_days, 1, "PUBLISH_DAYS")
        if self.publish_days > MAX_PUBLISH_DAYS:
            raise ConfigError(f"PUBLISH_DAYS must be at most {MAX_PUBLISH_DAYS}, not {self.publish_days!r}")
        _at_least(self.publish_max_age_seconds, 0, "PUBLISH_MAX_AGE_SECONDS")
        if self.publish_booking_url_template is not None:
            try:
                BookingLinkTemplate.parse(self.publish_booking_url_template)
            except LinkTemplateError as exc:
                raise ConfigError(
                    f"PUBLISH_BOOKING_URL_TEMPLATE {self.publish_booking_url_template!r} cannot make booking links: {exc}"
                ) from None
        if self.publish_base_url is not None:
            object.__setattr__(self, "publish_base_url", _base_url(self.publish_base_url, "PUBLISH_BASE_URL"))
        for name, url in (
            ("NOTIFICATION_URL", self.notification_url),
            ("SMART_TOKEN_URL", self.smart_token_url),
            ("CALLER_JWKS_URL", self.caller_jwks_url),
        ):
            if url is not None:
                _base_url(url, name)
        if self.notification_url and not self.notification_secret:
            raise ConfigError(
                "NOTIFICATION_SECRET is required with NOTIFICATION_URL: notifications must be authenticated"
            )
        if self.notification_secret is not None and len(self.notification_secret) < 16:
            raise ConfigError("NOTIFICATION_SECRET must be at least 16 characters")
        if self.guard_key is not None and len(self.guard_key) < 16:
            raise ConfigError("GUARD_KEY must be at least 16 characters")
        if self.smart_token_url:
            if self.upstream_authorization:
                raise ConfigError(
                    "Set either UPSTREAM_AUTHORIZATION (a static header) or SMART_TOKEN_URL "
                    "(SMART Backend Services), not both"
                )
            if not self.smart_client_id or not self.smart_private_key:
                raise ConfigError("SMART_TOKEN_URL needs SMART_CLIENT_ID and SMART_PRIVATE_KEY_FILE as well")
            if self.smart_algorithm not in ("RS384", "ES384"):
                raise ConfigError(
                    f"SMART_ALGORITHM must be RS384 or ES384 (SMART Backend Services), not {self.smart_algorithm!r}"
                )
        elif self.smart_client_id or self.smart_private_key:
            raise ConfigError("SMART_CLIENT_ID and SMART_PRIVATE_KEY_FILE need SMART_TOKEN_URL")
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
    def booking_link(self) -> BookingLinkTemplate | None:
        """The checked booking link template; ``None``: publishing is off."""
        template = self.publish_booking_url_template
        return BookingLinkTemplate.parse(template) if template is not None else None

    @property
    def upstream_timeout(self) -> tuple[float, float]:
        """``(connect, read)`` as ``requests`` expects it."""
        return (self.upstream_connect_timeout, self.upstream_read_timeout)

    @property
    def operation_budget_seconds(self) -> float:
        """The longest any one operation may take, end to end: the booking deadline, plus one
        last upstream read, plus time to settle a lost answer. Proxies in front of the sidecar
        (the HAPI forwarding interceptor: 90 s) must wait longer than this, or they could
        answer 504 while a booking still commits."""
        return self.booking_deadline_seconds + self.upstream_read_timeout + 10.0

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
            max_schedules=typed("MAX_SCHEDULES", int, 20, "a whole number"),
            max_series=typed("MAX_SERIES", int, 12, "a whole number"),
            booking_group_max=typed("BOOKING_GROUP_MAX", int, 30, "a whole number"),
            bucket_lock_file=get("BUCKET_LOCK_FILE"),
            guard_key=get("GUARD_KEY"),
            service_name=get("SERVICE_NAME") or "fanoni-scheduling",
            notification_url=get("NOTIFICATION_URL"),
            notification_secret=get("NOTIFICATION_SECRET"),
            smart_token_url=get("SMART_TOKEN_URL"),
            smart_client_id=get("SMART_CLIENT_ID"),
            smart_private_key=_file_text(get("SMART_PRIVATE_KEY_FILE"), "SMART_PRIVATE_KEY_FILE"),
            smart_key_id=get("SMART_KEY_ID"),
            smart_algorithm=(get("SMART_ALGORITHM") or "RS384").upper(),
            smart_scope=get("SMART_SCOPE") or "system/*.cruds",
            caller_jwks_url=get("CALLER_JWKS_URL"),
            caller_jwt_issuer=get("CALLER_JWT_ISSUER"),
            caller_jwt_audience=get("CALLER_JWT_AUDIENCE"),
            publish_booking_url_template=get("PUBLISH_BOOKING_URL_TEMPLATE"),
            publish_days=typed("PUBLISH_DAYS", int, 14, "a whole number of days"),
            publish_max_age_seconds=typed("PUBLISH_MAX_AGE_SECONDS", int, 300, "a whole number of seconds"),
            publish_booking_phone=get("PUBLISH_BOOKING_PHONE"),
            publish_base_url=get("PUBLISH_BASE_URL"),
        )


def _file_text(path: str | None, name: str) -> str | None:
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path!r} ({exc.strerror})") from None


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
