"""What ``$book`` and ``$hold`` are given (SPEC §4, §7.2; IHE ITI-116/117): a proposal to book
(``appointment``, alias ``appointment-resource``, or a bare Appointment body), or a stored
Appointment (``appointment-reference``), with the patients to add (``patient-reference``) and a
``comment``. Validated here: a 400 naming the parameter at fault, or :class:`BookingInputs`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from operations.errors import InvalidRequest
from operations.fhir_values import as_list, reference_id
from operations.find_request import DEFAULT_MAX_SCHEDULES
from operations.ihe_parameters import MAX_PATIENTS, REFUSED, Named
from operations.proposal import Additions, BookingRequest, StructureCheck
from operations.series import DEFAULT_MAX_SERIES


@dataclass(frozen=True)
class BookingInputs:
    """A validated ``$book``/``$hold`` body: exactly one of ``proposal`` and ``reference``."""

    proposal: BookingRequest | None
    """A proposal to book (its ``additions`` already applied)."""
    reference: str | None
    """The id of a stored Appointment to book (``$book``: confirm it) or hold (``$hold``)."""
    additions: Additions = field(default_factory=Additions)

    @classmethod
    def from_body(
        cls,
        body: Any,
        *,
        max_schedules: int = DEFAULT_MAX_SCHEDULES,
        max_series: int = DEFAULT_MAX_SERIES,
        check_structure: StructureCheck | None = None,
    ) -> BookingInputs:
        """Read a Parameters body (or a bare Appointment, which can only be a proposal).

        ``appointment-reference`` (valueReference or valueString, ``Appointment/<id>``) excludes
        ``appointment``/``appointment-resource`` and ``recurrence``; ``patient-reference`` may
        repeat; ``comment`` is a valueString, at most once. ``patient-resource`` is refused (400
        ``not-supported``): the Patient must exist to be booked for.
        """
        if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
            proposal = BookingRequest.from_body(
                body, max_schedules=max_schedules, max_series=max_series, check_structure=check_structure
            )
            return cls(proposal, None)
        items = [p for p in as_list(body.get("parameter")) if isinstance(p, dict)]
        by_name: dict[str, list[dict[str, Any]]] = {}
        for item in items:
            by_name.setdefault(str(item.get("name")), []).append(item)
        if by_name.get("patient-resource"):
            raise InvalidRequest(
                f"patient-resource is not supported: {REFUSED['patient-resource']}",
                code="not-supported",
                expression="Parameters.patient-resource",
            )
        additions = Additions(
            _patients(by_name.get("patient-reference", [])), _comment(by_name.get("comment", []))
        )
        references = by_name.get("appointment-reference", [])
        if not references:
            proposal = BookingRequest.from_body(
                body,
                max_schedules=max_schedules,
                max_series=max_series,
                check_structure=check_structure,
                additions=additions,
            )
            return cls(proposal, None, additions)
        if len(references) > 1:
            raise InvalidRequest(
                "appointment-reference may be given only once",
                code="value",
                expression="Parameters.appointment-reference[1]",
            )
        resources = [n for n in ("appointment", "appointment-resource", "recurrence") if by_name.get(n)]
        if resources:
            raise InvalidRequest(
                f"appointment-reference names a stored Appointment: give it or {resources[0]}, not both",
                code="invalid",
                expression=["Parameters.appointment-reference", f"Parameters.{resources[0]}"],
            )
        reference = _reference(references[0], "Appointment", "Parameters.appointment-reference")
        return cls(None, reference, additions)


def _value(item: dict[str, Any]) -> Any:
    """A reference-valued parameter's value: ``valueReference.reference`` or ``valueString``."""
    if "valueReference" in item:
        reference = item["valueReference"]
        return reference.get("reference") if isinstance(reference, dict) else None
    return item.get("valueString")


def _reference(item: dict[str, Any], resource_type: str, expression: str) -> str:
    try:
        return reference_id(_value(item), resource_type)
    except ValueError as exc:
        raise InvalidRequest(
            f"{exc} (give valueReference or valueString {resource_type}/<id>)",
            code="value",
            expression=expression,
        ) from None


def _patients(items: Sequence[dict[str, Any]]) -> tuple[Named, ...]:
    if len(items) > MAX_PATIENTS:
        raise InvalidRequest(
            f"At most {MAX_PATIENTS} patients may be named, this request names {len(items)}",
            code="value",
            expression="Parameters.patient-reference",
        )
    found: dict[str, Named] = {}
    for index, item in enumerate(items):
        expression = f"Parameters.patient-reference[{index}]"
        patient_id = _reference(item, "Patient", expression)
        found.setdefault(patient_id, Named(patient_id, expression))
    return tuple(found.values())


def _comment(items: Sequence[dict[str, Any]]) -> str | None:
    if not items:
        return None
    if len(items) > 1:
        raise InvalidRequest(
            "comment may be given only once", code="value", expression="Parameters.comment[1]"
        )
    text = items[0].get("valueString")
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest(
            "comment must be a valueString with some text", code="value", expression="Parameters.comment"
        )
    return text
