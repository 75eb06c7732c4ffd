"""The scheduling model: plain dataclasses, no FHIR JSON and no I/O.

Every instant in the engine is an aware ``datetime`` in UTC; local wall-clock time exists
only while weekly windows and the alignment grid are expanded (``availability.py``,
``alignment.py``), always through ``zoneinfo``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

#: Base URL of the extensions this project defines itself (hold expiry, capacity stamps, ...).
FANONI_EXTENSION_BASE = "https://fanoni.dev/fhir/StructureDefinition/"
#: The project's own code system: lock codes and the tags on what the sidecar writes.
FANONI_CODE_SYSTEM = "https://fanoni.dev/fhir/CodeSystem/fanoni"
HOLD_EXPIRES_URL = FANONI_EXTENSION_BASE + "hold-expires"
SLOT_CAPACITY_URL = FANONI_EXTENSION_BASE + "slot-capacity"
SERIES_URL = FANONI_EXTENSION_BASE + "series"
"""On every Appointment of a recurring series (SPEC §7.4): the series identifier, the
occurrence's number and the series' length."""
SERIES_SYSTEM = "https://fanoni.dev/fhir/series"
"""System of a series' shared identifier (and of the ``meta.tag`` that finds its Appointments)."""

SCHEDULING_PARAMETERS_URL = "https://medplum.com/fhir/StructureDefinition/SchedulingParameters"
SERVICE_TYPE_REFERENCE_URL = "https://medplum.com/fhir/service-type-reference"
TIMEZONE_URL = "http://hl7.org/fhir/StructureDefinition/timezone"

BUFFER_BEFORE_COMMENT = "buffer before appointment"
BUFFER_AFTER_COMMENT = "buffer after appointment"

DEFAULT_ALIGNMENT_INTERVAL = timedelta(minutes=60)


class Interval(NamedTuple):
    """A half-open span of time ``[start, end)`` between two aware UTC instants."""

    start: datetime
    end: datetime

    @property
    def duration(self) -> timedelta:
        return self.end - self.start


@dataclass(frozen=True)
class WeeklyWindow:
    """One recurring window: on each listed weekday, from ``start`` local time for ``length``.

    ``weekdays`` uses Python's numbering (Monday = 0). ``end`` at or before ``start`` runs into
    the next day; ``start == end`` (and ``allDay``) means 24 hours.
    """

    weekdays: frozenset[int]
    start: time
    end: time


@dataclass(frozen=True)
class ParameterBlock:
    """One SchedulingParameters extension as written: ``None`` means "not set here".

    ``expression`` is the FHIRPath of the extension, used when an error must point at it.
    """

    expression: str
    service_id: str | None = None
    duration: timedelta | None = None
    buffer_before: timedelta | None = None
    buffer_after: timedelta | None = None
    alignment_interval: timedelta | None = None
    alignment_offset: timedelta | None = None
    alignment_timezone: ZoneInfo | None = None
    timezone: ZoneInfo | None = None
    slot_capacity: int | None = None
    availability: tuple[WeeklyWindow, ...] | None = None
    not_available: tuple[Interval, ...] | None = None
    minimum_notice: timedelta | None = None
    booking_window: timedelta | None = None
    daily_limit: int | None = None
    """``bookingLimit`` with ``periodUnit`` ``d``; the two units inherit separately."""
    weekly_limit: int | None = None
    """``bookingLimit`` with ``periodUnit`` ``wk``."""


@dataclass(frozen=True)
class Coding:
    system: str | None
    code: str | None


@dataclass(frozen=True)
class Service:
    """A HealthcareService as far as scheduling is concerned."""

    id: str
    active: bool
    name: str | None
    type_concepts: tuple[dict[str, Any], ...]
    type_codings: frozenset[Coding]
    parameters: ParameterBlock | None
    available_times: tuple[WeeklyWindow, ...] | None
    not_available: tuple[Interval, ...]


@dataclass(frozen=True)
class Actor:
    """The one actor of a Schedule (Practitioner, PractitionerRole, Location, Device)."""

    reference: str
    display: str | None
    timezone: ZoneInfo | None


@dataclass(frozen=True)
class Schedule:
    """A Schedule: one actor, the services it offers and its per-service parameter blocks."""

    id: str
    active: bool
    actor: Actor
    offered_service_ids: tuple[str, ...]
    parameter_blocks: dict[str, ParameterBlock]
    planning_horizon: Interval | None
    """Planning horizon; an open end is represented by ``datetime.max``/``min`` in UTC."""


@dataclass(frozen=True)
class ResolvedParameters:
    """The parameters in force for one Schedule and one service, after inheritance."""

    duration: timedelta
    buffer_before: timedelta
    buffer_after: timedelta
    alignment_interval: timedelta
    alignment_offset: timedelta
    alignment_timezone: ZoneInfo | None
    """Only when set explicitly on the Schedule block or the service."""
    timezone: ZoneInfo
    slot_capacity: int
    availability: tuple[WeeklyWindow, ...] | None
    """``None`` means always available."""
    not_available: tuple[Interval, ...]
    minimum_notice: timedelta = timedelta(0)
    """Nothing may start earlier than now + this (SPEC §7.1)."""
    booking_window: timedelta | None = None
    """Nothing may start later than now + this; ``None``: no rolling limit."""
    daily_limit: int | None = None
    """At most this many visits per local calendar day of ``timezone``; ``None``: no limit."""
    weekly_limit: int | None = None
    """At most this many visits per ISO week (local, Monday to Sunday); ``None``: no limit."""

    @property
    def has_limits(self) -> bool:
        return self.daily_limit is not None or self.weekly_limit is not None


class SlotStatus:
    BUSY = "busy"
    BUSY_TENTATIVE = "busy-tentative"
    BUSY_UNAVAILABLE = "busy-unavailable"
    FREE = "free"
    ENTERED_IN_ERROR = "entered-in-error"


class SlotOverlay(NamedTuple):
    """A stored Slot as an override of a Schedule's availability (a NamedTuple: thousands are
    built per ``$find``, and tuples are several times cheaper to build than frozen dataclasses)."""

    id: str | None
    schedule_id: str
    status: str
    interval: Interval
    service_codings: frozenset[Coding] | None
    """``None``: the Slot has no serviceType and applies to every service."""
    service_ids: frozenset[str]
    """Services named by a service-type-reference extension on the Slot's serviceType."""
    capacity: int | None
    """Capacity stamped by the operations; unstamped counts as 1."""
    hold_expires: datetime | None
    is_buffer: bool


@dataclass(frozen=True)
class Leg:
    """One Schedule of a request with the parameters in force for the requested service;
    ``expression`` says where the request named it, for errors."""

    schedule: Schedule
    params: ResolvedParameters
    expression: str
