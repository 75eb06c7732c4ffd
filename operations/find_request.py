"""A ``$find`` request as the caller sent it, validated (SPEC §4, §7.2, §7.3, §7.4): 400 naming
the parameter at fault, or a :class:`FindRequest`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from operations.errors import InvalidRequest
from operations.fhir_values import parse_instant, reference_id
from operations.ihe_parameters import IheCriteria
from operations.series import DEFAULT_MAX_SERIES, Recurrence, parse_recurrence

DEFAULT_COUNT = 20
MAX_COUNT = 1000
DEFAULT_MAX_SCHEDULES = 20
"""Schedules one request may name (``MAX_SCHEDULES``): each adds locks, reads and work."""
LISTED = "listed"
BALANCED = "balanced"
POOL_ORDERS = (LISTED, BALANCED)
"""How a pool chooses among its free members (SPEC §7.2): the first listed, or the one with the
fewest visits that local day."""


@dataclass(frozen=True)
class FindRequest:
    """A validated ``$find`` request."""

    start: datetime
    end: datetime
    service_id: str | None
    schedule_ids: tuple[str, ...]
    """Every Schedule the request names, each once, in the order named: what is read."""
    count: int
    now: datetime
    schedule_in_url: bool = False
    """True for ``Schedule/<id>/$find``: an unknown schedule is then 404, not 422."""
    recurrence: Recurrence | None = None
    """Offer only first starts whose every occurrence is free and within the rules (§7.4)."""
    ignore_appointment: str | None = None
    """The id of an Appointment whose own time counts as free (a reschedule, §7.3)."""
    schedule_groups: tuple[tuple[str, ...], ...] = ()
    """The schedules as the caller grouped them (SPEC §7.2): each group is one ``schedule``
    parameter, a pool whose comma-separated members are "any one of"; the groups are "all of".
    Empty means one group per id of ``schedule_ids``."""
    ihe: IheCriteria = field(default_factory=IheCriteria)
    """The IHE ITI-115 parameters (SPEC §7.2): practitioners and locations stand for Schedules,
    a visit type for the service (``operations/ihe_find.py`` resolves them)."""

    pool_order: str = LISTED
    """``listed`` or ``balanced``: which free member of a pool a proposal names (SPEC §7.2)."""
    named_at: tuple[tuple[str, str], ...] = ()
    """(Schedule id, expression) for Schedules that another parameter stands for
    (``practitioner``, ``location-reference``): errors and notices about them point there."""

    @property
    def groups(self) -> tuple[tuple[str, ...], ...]:
        """The pools of the request, each at least one Schedule id: "all of" these, each "any one of"."""
        return self.schedule_groups or tuple((i,) for i in self.schedule_ids)

    @property
    def schedule_expressions(self) -> tuple[str, ...]:
        """Where each of ``schedule_ids`` was named, for errors: the parameter that stands for it
        (:attr:`named_at`), else ``Parameters.schedule[k]`` with ``k`` the index of the first
        ``schedule`` parameter (pool) that names it."""
        named_at = dict(self.named_at)
        return tuple(
            named_at.get(i)
            or f"Parameters.schedule[{next(k for k, group in enumerate(self.groups) if i in group)}]"
            for i in self.schedule_ids
        )

    @classmethod
    def from_parameters(
        cls,
        params: Sequence[tuple[str, str]],
        *,
        now: datetime,
        max_range_days: int,
        schedule_id: str | None = None,
        max_schedules: int = DEFAULT_MAX_SCHEDULES,
        max_series: int = DEFAULT_MAX_SERIES,
    ) -> FindRequest:
        """Validate ``(name, value)`` pairs (query string or Parameters, values as strings).

        Raises ``InvalidRequest`` (400) with ``expression`` like ``Parameters.schedule[1]``.
        Unknown parameter names are ignored, as FHIR servers ignore unknown search parameters
        they are not asked to be strict about.
        """
        by_name: dict[str, list[str]] = {}
        for name, value in params:
            by_name.setdefault(name, []).append(value)
        ihe = IheCriteria.from_parameters(
            by_name, max_schedules=max_schedules, in_url=schedule_id is not None
        )

        start = _single_instant(by_name, "start")
        end = _single_instant(by_name, "end")
        if start >= end:
            raise InvalidRequest(
                "start must be before end",
                code="invalid",
                expression=["Parameters.start", "Parameters.end"],
            )
        if end - start > timedelta(days=max_range_days):
            raise InvalidRequest(
                f"The range from start to end is longer than {max_range_days} days",
                code="value",
                expression="Parameters.end",
            )

        service_id = None
        service_values = by_name.get("service-type-reference", [])
        if len(service_values) > 1:
            raise InvalidRequest(
                "service-type-reference may be given only once",
                code="value",
                expression="Parameters.service-type-reference[1]",
            )
        if service_values:
            service_id = _reference(
                service_values[0], "HealthcareService", "Parameters.service-type-reference"
            )
        elif schedule_id is None and not ihe.visit_types:
            raise InvalidRequest(
                "service-type-reference (HealthcareService/<id>) or visit-type is required",
                code="required",
                expression="Parameters.service-type-reference",
            )

        if schedule_id is not None:
            schedule_ids: tuple[str, ...] = (schedule_id,)
            groups: tuple[tuple[str, ...], ...] = ((schedule_id,),)
        else:
            found: list[str] = []
            named: list[tuple[str, ...]] = []
            for index, value in enumerate(by_name.get("schedule", [])):
                members = [
                    _reference(part, "Schedule", f"Parameters.schedule[{index}]") for part in value.split(",")
                ]
                found.extend(members)
                named.append(tuple(dict.fromkeys(members)))
            groups = tuple(named)
            if not found and not ihe.names_schedules:
                raise InvalidRequest(
                    "At least one schedule (Schedule/<id>), practitioner or location-reference is required",
                    code="required",
                    expression="Parameters.schedule",
                )
            schedule_ids = tuple(dict.fromkeys(found))
            if len(schedule_ids) > max_schedules:
                raise InvalidRequest(
                    f"At most {max_schedules} schedules may be named in one request, "
                    f"this one names {len(schedule_ids)}",
                    code="value",
                    expression="Parameters.schedule",
                )

        count = DEFAULT_COUNT
        count_value = _at_most_once(by_name, "_count")
        if count_value is not None:
            try:
                count = int(count_value.strip())
            except ValueError:
                raise InvalidRequest(
                    f"_count {count_value!r} is not an integer",
                    code="value",
                    expression="Parameters._count",
                ) from None
            if not 1 <= count <= MAX_COUNT:
                raise InvalidRequest(
                    f"_count must be between 1 and {MAX_COUNT}",
                    code="value",
                    expression="Parameters._count",
                )

        recurrence = None
        timing = _at_most_once(by_name, "recurrence")
        if timing is not None:
            recurrence = parse_recurrence(timing, expression="Parameters.recurrence", max_series=max_series)

        pool_order = _at_most_once(by_name, "pool-order")
        if pool_order is not None and pool_order.strip() not in POOL_ORDERS:
            raise InvalidRequest(
                f"pool-order must be 'listed' or 'balanced', not {pool_order!r}",
                code="value",
                expression="Parameters.pool-order",
            )

        ignore = None
        ignored = _at_most_once(by_name, "ignore-appointment")
        if ignored is not None:
            ignore = _reference(ignored, "Appointment", "Parameters.ignore-appointment")

        return cls(
            start=start,
            end=end,
            service_id=service_id,
            schedule_ids=schedule_ids,
            count=count,
            now=now,
            schedule_in_url=schedule_id is not None,
            recurrence=recurrence,
            ignore_appointment=ignore,
            schedule_groups=groups,
            ihe=ihe,
            pool_order=pool_order.strip() if pool_order is not None else LISTED,
        )


def _single_instant(by_name: dict[str, list[str]], name: str) -> datetime:
    values = by_name.get(name, [])
    if not values:
        raise InvalidRequest(f"{name} is required", code="required", expression=f"Parameters.{name}")
    if len(values) > 1:
        raise InvalidRequest(
            f"{name} may be given only once", code="value", expression=f"Parameters.{name}[1]"
        )
    try:
        return parse_instant(values[0])
    except ValueError as exc:
        raise InvalidRequest(f"{name}: {exc}", code="value", expression=f"Parameters.{name}") from None


def _at_most_once(by_name: dict[str, list[str]], name: str) -> str | None:
    """The value of an optional parameter that may be given once (400 for a second)."""
    values = by_name.get(name, [])
    if len(values) > 1:
        raise InvalidRequest(
            f"{name} may be given only once", code="value", expression=f"Parameters.{name}[1]"
        )
    return values[0] if values else None


def _reference(value: str, resource_type: str, expression: str) -> str:
    try:
        return reference_id(value, resource_type)
    except ValueError as exc:
        raise InvalidRequest(str(exc), code="value", expression=expression) from None
