"""FHIR primitive values -> Python values, with the checks the SPEC asks for.

Each parser raises ``ValueError`` with a short reason; callers wrap it into the domain error
that fits (400 for request parameters, 422 for stored configuration).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_DATETIME_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$"
)
_TIME_RE = re.compile(r"^(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?$")

DURATION_UNITS: dict[str, timedelta] = {
    "min": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "wk": timedelta(weeks=1),
}


def dig(value: Any, *keys: str) -> Any:
    """``value[k1][k2]...`` through dicts only; ``None`` as soon as a level is missing or is not
    an object. Caller-supplied JSON can have any shape; this keeps lookups from raising."""
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def as_list(value: Any) -> list[Any]:
    """A JSON array as a list; anything else (absent, an object, a scalar) as an empty list."""
    return value if isinstance(value, list) else []


def parse_instant(text: Any) -> datetime:
    """A FHIR dateTime/instant *with* a time and an offset, as an aware UTC datetime.

    A ``+`` that arrived as a space (an unencoded ``+`` in a query string) is read as ``+``.
    """
    if not isinstance(text, str):
        raise ValueError("expected a dateTime string")
    candidate = text.strip()
    if len(candidate) > 19 and candidate[-6] == " ":
        candidate = candidate[:-6] + "+" + candidate[-5:]
    match = _DATETIME_RE.match(candidate)
    if match is None:
        raise ValueError(
            f"{text!r} is not a FHIR dateTime with a time and an offset "
            "(e.g. 2026-12-01T09:00:00-05:00 or 2026-12-01T14:00:00Z)"
        )
    try:
        value = datetime.fromisoformat(candidate.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a valid date and time: {exc}") from None
    return value.astimezone(UTC)


def parse_stored_instant(text: Any) -> datetime:
    """An instant stored on the upstream (Slot.start, Slot.end): the fast path, since a
    ``$find`` reads thousands. Servers write canonical FHIR dateTimes, which
    ``datetime.fromisoformat`` reads directly; anything without a time and an offset is refused
    (a date alone parses as a naive midnight, which has no offset)."""
    try:
        value = datetime.fromisoformat(text)
    except TypeError:
        raise ValueError("expected a dateTime string") from None
    except ValueError:
        return parse_instant(text)  # odd but valid forms get the careful path (and its message)
    if value.tzinfo is None:
        raise ValueError(f"{text!r} has no time or no offset")
    return value.astimezone(UTC)


def parse_time(text: Any) -> time:
    """A FHIR ``time`` (``HH:MM:SS``, seconds optional) as a naive ``time``."""
    if not isinstance(text, str):
        raise ValueError("expected a time string such as 09:00:00")
    match = _TIME_RE.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a FHIR time (HH:MM:SS)")
    hour, minute, second = int(match[1]), int(match[2]), int(match[3] or 0)
    if hour == 24 and minute == 0 and second == 0:
        return time(0, 0)  # 24:00 is the end of the day: the same as 00:00 of the next
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"{text!r} is not a valid time of day")
    return time(hour, minute, second)


def parse_duration(value: Any, *, allow_negative: bool = False) -> timedelta:
    """A FHIR Duration ``{"value": n, "unit": "min"|"h"|"d"|"wk"}`` as a timedelta.

    The UCUM ``code`` is accepted in place of ``unit`` when ``unit`` is absent.
    """
    if not isinstance(value, dict):
        raise ValueError("expected a Duration object with value and unit")
    number = value.get("value")
    if isinstance(number, bool) or not isinstance(number, int | float):
        raise ValueError("the Duration has no numeric value")
    unit = value.get("unit")
    if unit is None:
        unit = value.get("code")
    if unit not in DURATION_UNITS:
        raise ValueError(f"the Duration unit {unit!r} is not one of min, h, d, wk")
    if number < 0 and not allow_negative:
        raise ValueError("the Duration must not be negative")
    return DURATION_UNITS[unit] * number


def parse_timezone(value: Any) -> ZoneInfo:
    """An IANA time zone id as a ``ZoneInfo``."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected an IANA time zone id such as America/New_York")
    try:
        return ZoneInfo(value.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{value!r} is not a known IANA time zone") from None


def parse_positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("expected a positive integer")
    return value


def format_instant(value: datetime, zone: ZoneInfo | None = None) -> str:
    """An instant as a FHIR dateTime, in ``zone`` when given (else UTC, written with ``Z``)."""
    if zone is None:
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return value.astimezone(zone).isoformat()


_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def is_fhir_id(value: Any) -> bool:
    """Whether ``value`` can be a FHIR resource id (R4: 1-64 of ``A-Z a-z 0-9 - .``)."""
    return isinstance(value, str) and _FHIR_ID.fullmatch(value) is not None


def is_relative_reference(reference: str) -> bool:
    """Whether ``reference`` is ``Type/id``: a resource type's name (letters, capitalised) and a
    FHIR id -- what may go into a search or an ``_id`` read without changing its meaning."""
    resource_type, _, resource_id = reference.partition("/")
    return resource_type.isalpha() and resource_type[:1].isupper() and is_fhir_id(resource_id)


def reference_id(reference: Any, resource_type: str) -> str:
    """The id in ``"<Type>/<id>"`` (a full URL or a ``/_history/n`` suffix is tolerated)."""
    if not isinstance(reference, str) or not reference.strip():
        raise ValueError(f"expected a reference like {resource_type}/<id>")
    parts = reference.strip().split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) < 2 or parts[-2] != resource_type or not parts[-1]:
        raise ValueError(f"{reference!r} is not a reference to a {resource_type}")
    resource_id = parts[-1]
    if not is_fhir_id(resource_id):
        raise ValueError(f"{resource_id!r} is not a valid FHIR id")
    return resource_id


def transaction_bundle(entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A FHIR ``transaction`` Bundle of these entries: all of them land, or none does."""
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}
