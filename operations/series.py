"""Recurring series (SPEC §7.4): the ``recurrence`` Timing, the occurrences it gives, and what
marks each occurrence's Appointment.

Occurrences keep the first one's **local wall-clock time** in the Schedule's time zone: a
weekly 09:00 stays 09:00 across a DST change, so its UTC instant moves by the change. A wall
time that does not exist on an occurrence's date (a 02:30 on a spring-forward night) moves
forward by the gap, one that occurs twice takes the earlier instant -- the rules the weekly
windows follow (SPEC §2.2). The dates come from ``dateutil``'s ``rrule``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from dateutil.rrule import DAILY, WEEKLY, rrule

from operations.errors import InvalidRequest
from operations.model import SERIES_SYSTEM, SERIES_URL
from operations.store import Resource

DEFAULT_MAX_SERIES = 12
_FREQUENCIES: dict[str, Literal[2, 3]] = {"d": DAILY, "wk": WEEKLY}
_REPEAT_FIELDS = frozenset({"frequency", "period", "periodUnit", "count", "id", "extension"})


@dataclass(frozen=True)
class Recurrence:
    """A validated ``recurrence``: ``count`` occurrences, one a day (``d``) or a week (``wk``)."""

    unit: str
    count: int

    def starts(self, first: datetime, zone: ZoneInfo) -> list[datetime]:
        """The UTC start of every occurrence, the first included, at the first's local wall time."""
        local = first.astimezone(zone).replace(tzinfo=None)
        dates = rrule(_FREQUENCIES[self.unit], dtstart=local, count=self.count)
        # ``replace(tzinfo=zone)`` with fold 0: the earlier instant of a repeated hour; a time
        # in a gap is read with the offset before it, i.e. moved forward by the gap.
        return [d.replace(tzinfo=zone).astimezone(UTC) for d in dates]


def parse_recurrence(value: Any, *, expression: str, max_series: int) -> Recurrence:
    """``recurrence`` as given: a Timing (JSON text of one, from the operation's parameters).
    400 naming the field at fault for anything but ``repeat`` with ``frequency`` 1, ``period``
    1, ``periodUnit`` ``d``/``wk`` and ``count`` 2..``max_series``."""
    timing = value
    if isinstance(value, str):
        try:
            timing = json.loads(value)
        except ValueError:
            raise InvalidRequest(
                "recurrence is a Timing: send it as valueTiming in a POST Parameters body",
                code="structure",
                expression=expression,
            ) from None
    if not isinstance(timing, dict):
        raise InvalidRequest("recurrence must be a Timing", code="structure", expression=expression)
    for key in timing:
        if key not in ("repeat", "id", "extension"):
            raise InvalidRequest(
                f"recurrence supports only Timing.repeat, not {key!r}",
                code="value",
                expression=f"{expression}.{key}",
            )
    repeat = timing.get("repeat")
    if not isinstance(repeat, dict):
        raise InvalidRequest("recurrence needs repeat", code="required", expression=f"{expression}.repeat")
    at = f"{expression}.repeat"
    for key in repeat:
        if key not in _REPEAT_FIELDS:
            raise InvalidRequest(
                f"recurrence supports frequency, period, periodUnit and count, not {key!r}",
                code="value",
                expression=f"{at}.{key}",
            )
    for key in ("frequency", "period"):
        given = repeat.get(key, 1 if key == "frequency" else None)
        if isinstance(given, bool) or given != 1:
            raise InvalidRequest(
                f"recurrence.repeat.{key} must be 1 (one visit a day or a week), not {given!r}",
                code="value",
                expression=f"{at}.{key}",
            )
    unit = repeat.get("periodUnit")
    if unit not in _FREQUENCIES:
        raise InvalidRequest(
            f"recurrence.repeat.periodUnit must be 'd' or 'wk', not {unit!r}",
            code="value",
            expression=f"{at}.periodUnit",
        )
    count = repeat.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or not 2 <= count <= max_series:
        raise InvalidRequest(
            f"recurrence.repeat.count must be an integer from 2 to {max_series}, not {count!r}",
            code="value" if count is not None else "required",
            expression=f"{at}.count",
        )
    return Recurrence(unit=str(unit), count=count)


def series_tag(series_id: str) -> Resource:
    """The ``meta.tag`` that finds every Appointment of one series (``_tag`` search)."""
    return {"system": SERIES_SYSTEM, "code": series_id}


def series_extension(series_id: str, occurrence: int, count: int) -> Resource:
    """The series extension of one occurrence's Appointment: the shared identifier, which
    occurrence this is (1-based) and how many the series has."""
    return {
        "url": SERIES_URL,
        "extension": [
            {"url": "identifier", "valueIdentifier": {"system": SERIES_SYSTEM, "value": series_id}},
            {"url": "occurrence", "valuePositiveInt": occurrence},
            {"url": "count", "valuePositiveInt": count},
        ],
    }


def series_id_of(appointment: Resource) -> str | None:
    """The series an Appointment belongs to, if any (from its series extension)."""
    for ext in appointment.get("extension") or []:
        if not isinstance(ext, dict) or ext.get("url") != SERIES_URL:
            continue
        for sub in ext.get("extension") or []:
            if isinstance(sub, dict) and sub.get("url") == "identifier":
                value = (sub.get("valueIdentifier") or {}).get("value")
                if isinstance(value, str) and value:
                    return value
    return None
