"""The IHE ITI-115 parameters of ``Appointment/$find`` as the caller sent them, validated (SPEC
§7.2): 400 naming the parameter at fault, or an :class:`IheCriteria`.

What each parameter means, and which ones the product does not support, is in docs/ihe.md;
the resolution into Schedules and a service is ``operations/ihe_find.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from operations.errors import InvalidRequest
from operations.fhir_values import as_list, reference_id

MAX_PATIENTS = 50
"""Patients one request may name (each becomes a participant of every proposal)."""

REFUSED = {
    "location-string": "search Locations by address yourself and pass location-reference",
    "patient-resource": "create the Patient first and pass patient-reference",
}
"""ITI-115 parameters refused with 400 ``not-supported``: ignoring them would offer times or
book for someone the caller did not ask for."""

IGNORED = ("reason", "referral-identifier", "timing", "insurance-reference")
"""ITI-115 parameters accepted and ignored, with a warning in the Bundle: they state
preferences or context, and leaving them out offers no time the caller excluded."""

RESOLVING = ("practitioner", "location-reference", "visit-type", "specialty", "organization")
"""The parameters that decide which Schedules and which service a request means."""


@dataclass(frozen=True)
class Token:
    """A FHIR search token: ``system|code``; ``|code`` (no system); ``code`` (any system)."""

    system: str | None
    code: str

    def matches(self, coding: Any) -> bool:
        """Whether a Coding carries this token."""
        if not isinstance(coding, dict) or coding.get("code") != self.code:
            return False
        return self.system is None or (coding.get("system") or "") == self.system

    def carried_by(self, concepts: Any) -> bool:
        """Whether one of these CodeableConcepts has a coding that carries this token."""
        return any(
            self.matches(coding)
            for concept in as_list(concepts)
            if isinstance(concept, dict)
            for coding in as_list(concept.get("coding"))
        )

    def __str__(self) -> str:
        return self.code if self.system is None else f"{self.system}|{self.code}"


def any_carried(tokens: Iterable[Token], concepts: Any) -> bool:
    """Whether one of the concepts carries one of the tokens (repeats are "any of")."""
    return any(token.carried_by(concepts) for token in tokens)


@dataclass(frozen=True)
class Named:
    """A reference the caller named: the id, and where (``Parameters.practitioner[1]``)."""

    id: str
    expression: str


@dataclass(frozen=True)
class IheCriteria:
    """The ITI-115 parameters of one ``$find``; empty when none was given."""

    practitioners: tuple[Named, ...] = ()
    locations: tuple[Named, ...] = ()
    visit_types: tuple[Token, ...] = ()
    specialties: tuple[Token, ...] = ()
    organizations: tuple[str, ...] = ()
    patients: tuple[Named, ...] = ()
    ignored: tuple[str, ...] = ()
    """Names of the ignored parameters given, each once, in the order of :data:`IGNORED`."""
    max_schedules: int = 20
    """How many Schedules the practitioners and locations may resolve to, together."""

    @property
    def given(self) -> bool:
        """Whether the request carries any ITI-115 parameter (the plain ``$find`` otherwise)."""
        return bool(self.resolves or self.patients or self.ignored)

    @property
    def resolves(self) -> bool:
        """Whether Schedules or the service must be looked up before the search."""
        return bool(
            self.practitioners or self.locations or self.visit_types or self.specialties or self.organizations
        )

    @property
    def names_schedules(self) -> bool:
        return bool(self.practitioners or self.locations)

    @classmethod
    def from_parameters(
        cls, by_name: Mapping[str, Sequence[str]], *, max_schedules: int, in_url: bool = False
    ) -> IheCriteria:
        """Validate the ITI-115 parameters among ``by_name`` (every other name is left alone).

        Repeats and comma-separated values are "any one of", as in FHIR search. ``in_url``:
        the request is ``Schedule/<id>/$find``, which takes none of them.
        """
        for name, advice in REFUSED.items():
            if by_name.get(name):
                raise InvalidRequest(
                    f"{name} is not supported: {advice}",
                    code="not-supported",
                    expression=f"Parameters.{name}",
                )
        if in_url:
            for name in (*RESOLVING, "patient-reference"):
                if by_name.get(name):
                    raise InvalidRequest(
                        f"{name} is a parameter of Appointment/$find, not of Schedule/<id>/$find",
                        code="not-supported",
                        expression=f"Parameters.{name}",
                    )
            return cls()
        practitioners = _references(by_name, "practitioner", "Practitioner")
        locations = _references(by_name, "location-reference", "Location")
        if len(practitioners) + len(locations) > max_schedules:
            raise InvalidRequest(
                f"At most {max_schedules} practitioners and locations may be named in one request, "
                f"this one names {len(practitioners) + len(locations)}",
                code="value",
                expression="Parameters.practitioner" if practitioners else "Parameters.location-reference",
            )
        patients = _references(by_name, "patient-reference", "Patient")
        if len(patients) > MAX_PATIENTS:
            raise InvalidRequest(
                f"At most {MAX_PATIENTS} patients may be named in one request, this one names {len(patients)}",
                code="value",
                expression="Parameters.patient-reference",
            )
        return cls(
            practitioners=practitioners,
            locations=locations,
            visit_types=_tokens(by_name, "visit-type"),
            specialties=_tokens(by_name, "specialty"),
            organizations=tuple(n.id for n in _references(by_name, "organization", "Organization")),
            patients=patients,
            ignored=tuple(name for name in IGNORED if by_name.get(name)),
            max_schedules=max_schedules,
        )


def _split(by_name: Mapping[str, Sequence[str]], name: str) -> list[tuple[str, str]]:
    """Every value of ``name``, comma-separated lists split, with the expression of its
    parameter."""
    return [
        (part.strip(), f"Parameters.{name}[{index}]")
        for index, value in enumerate(by_name.get(name, ()))
        for part in value.split(",")
    ]


def _references(by_name: Mapping[str, Sequence[str]], name: str, resource_type: str) -> tuple[Named, ...]:
    found: dict[str, Named] = {}
    for value, expression in _split(by_name, name):
        try:
            resource_id = reference_id(value, resource_type)
        except ValueError as exc:
            raise InvalidRequest(str(exc), code="value", expression=expression) from None
        found.setdefault(resource_id, Named(resource_id, expression))
    return tuple(found.values())


def _tokens(by_name: Mapping[str, Sequence[str]], name: str) -> tuple[Token, ...]:
    found: dict[Token, None] = {}
    for value, expression in _split(by_name, name):
        system, bar, code = value.rpartition("|")
        if not code or any(c.isspace() for c in code):
            raise InvalidRequest(
                f"{name} {value!r} is not a token: give system|code (for example "
                "http://snomed.info/sct|394814009)",
                code="value",
                expression=expression,
            )
        found.setdefault(Token(system if bar else None, code), None)
    return tuple(found)
