"""The structure of an incoming Appointment checked against FHIR R4 with ``fhirclient``'s
generated models (strict parsing), before the use case reads it (``$book``, ``$hold``,
``$reschedule``): an element of the wrong JSON type, or one R4 does not define, is 400
``structure`` naming the element; a value in the wrong format (a dateTime that is not one) is 400
``value``. Missing required elements are left to the use case, which knows what it requires (a
proposal may leave out ``status``; ``$find`` fills in what booking needs).

The models are generated from the R4 StructureDefinitions and cover every element of every
resource a proposal may contain; writing that by hand would be a second, partial copy of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from fhirclient.models.appointment import Appointment
from fhirclient.models.fhirabstractbase import FHIRValidationError

from operations.errors import InvalidRequest
from operations.store import Resource

_CLASS = re.compile(r"<class '(?:[\w]+\.)*(\w+)'>")
_OBJECT = re.compile(r"<(?:[\w]+\.)*(\w+) object at 0x[0-9a-f]+>")
_SUPERFLUOUS = re.compile(r'Superfluous entry "([^"]+)"')


def check_appointment(appointment: Resource, root: str) -> None:
    """Raise ``InvalidRequest`` for the first structural fault of ``appointment`` (at FHIRPath
    ``root``), in document order; return when there is none."""
    for name, _, _, is_list, _, _ in Appointment().elementProperties():
        # Checked first: the models read an object given for a list as its one item, and
        # would then complain about the item's members instead.
        if is_list and appointment.get(name) is not None and not isinstance(appointment[name], list):
            raise InvalidRequest(
                f"{root}.{name} must be a list (a JSON array)", code="structure", expression=f"{root}.{name}"
            )
    try:
        Appointment(appointment, strict=True)
    except FHIRValidationError as exc:
        for path, error in _leaves(exc, []):
            if isinstance(error, KeyError):
                continue  # a required element missing: the use case's call
            if isinstance(error, AttributeError) and (name := _SUPERFLUOUS.search(str(error))):
                where = _fhirpath(root, [*path, name.group(1)])
                raise InvalidRequest(
                    f"{where} is not an element of a FHIR R4 {_owner(error)}",
                    code="structure",
                    expression=where,
                ) from None
            where = _fhirpath(root, path)
            code = "value" if isinstance(error, ValueError) else "structure"
            raise InvalidRequest(f"{where}: {_readable(error)}", code=code, expression=where) from None
    except Exception as exc:  # the models fail in other ways on JSON shapes they do not expect
        raise InvalidRequest(
            f"{root} is not a FHIR R4 Appointment: {_readable(exc)}", code="structure", expression=root
        ) from None


def _leaves(error: BaseException, path: list[str]) -> Iterator[tuple[list[str], BaseException]]:
    """Every underlying error of a (nested) ``FHIRValidationError`` with its element path."""
    if isinstance(error, FHIRValidationError):
        here = [*path, *str(error.path).split(".")] if error.path else path
        for inner in error.errors:
            yield from _leaves(inner, here)
    else:
        yield path, error


def _fhirpath(root: str, path: list[str]) -> str:
    """``["participant", "0", "actor"]`` -> ``root.participant[0].actor`` (the models name
    elements as in JSON, ``class`` aside, which an Appointment does not have)."""
    text = root
    for part in path:
        text += f"[{part}]" if part.isdigit() else f".{part.rstrip('_')}"
    return text


def _owner(error: BaseException) -> str:
    """The FHIR type whose member was unknown, from the model class named in the message:
    ``FHIRReference`` is a Reference, ``AppointmentParticipant`` is Appointment.participant."""
    found = _OBJECT.search(str(error))
    name = found.group(1) if found else "Appointment"
    if name.startswith("FHIR"):
        return name[4:]
    if name.startswith("Appointment") and name != "Appointment":
        rest = name[len("Appointment") :]
        return f"Appointment.{rest[0].lower()}{rest[1:]}"
    return name


def _readable(error: BaseException) -> str:
    """fhirclient's message without Python class and object names."""
    if not isinstance(error, TypeError | ValueError | AttributeError):
        return "an element has the wrong JSON type"  # e.g. a NameError inside the models
    text = _OBJECT.sub(r"\1", _CLASS.sub(r"\1", str(error)))
    text = (
        text.replace("`cls.with_json()` ", "")
        .replace("`with_json()` on ", "")
        .replace("FHIRReference", "Reference")
    )
    return " ".join(text.strip("'\"").split())
