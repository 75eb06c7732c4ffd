"""Use cases ``$book`` and ``$hold`` of a stored Appointment (``appointment-reference``, IHE
ITI-116/117, SPEC §7.2).

``$book`` of a stored ``proposed`` or ``pending`` Appointment is ``$confirm`` (same locks, same
expiry check, ``operations/confirm.py``), with the comment and patients given beside it written
in the same transaction. ``$hold`` of a live hold answers that hold as it stands (holding what is
held changes nothing); a stored proposal cannot be held -- ``$find``'s proposals are not stored,
and ``$hold`` holds them given as ``appointment-resource`` -- so that, like every other status,
is 422. The Appointment is named by a parameter, not by the URL: an unknown one is 422
``not-found``, and every error about it points at ``Parameters.appointment-reference``.
"""

from __future__ import annotations

from operations import confirm
from operations.appointment_change import read_appointment
from operations.booking_inputs import BookingInputs
from operations.errors import InvalidRequest, NotFound, SchedulingError, Unprocessable
from operations.fhir_values import format_instant
from operations.retries import Clock, RetryPolicy
from operations.store import FhirStore, Stores, as_stores
from operations.writes import BookingResult, hold_expiry, replay_bundle

EXPRESSION = "Parameters.appointment-reference"


def book_stored(
    stores: Stores | FhirStore,
    inputs: BookingInputs,
    *,
    hold: bool,
    clock: Clock,
    policy: RetryPolicy | None = None,
) -> BookingResult:
    """``$book`` (confirm it) or ``$hold`` (it is held already) of ``inputs.reference``."""
    assert inputs.reference is not None
    try:
        if hold:
            return _held(as_stores(stores), inputs, clock)
        return confirm.confirm(
            stores, inputs.reference, clock=clock, policy=policy, additions=inputs.additions
        )
    except NotFound as exc:
        raise Unprocessable(exc.diagnostics, code="not-found", expression=EXPRESSION) from None
    except SchedulingError as exc:
        if any(e.startswith("Appointment") for e in exc.expression):
            exc.expression = [EXPRESSION]
        raise


def _held(stores: Stores, inputs: BookingInputs, clock: Clock) -> BookingResult:
    reference = str(inputs.reference)
    if inputs.additions:
        raise InvalidRequest(
            "$hold of a stored Appointment changes nothing: give patient-reference and comment "
            "when you book it ($book with appointment-reference)",
            code="invalid",
            expression="Parameters.patient-reference" if inputs.additions.patients else "Parameters.comment",
        )
    appointment = read_appointment(stores.caller, reference)
    status = appointment.get("status")
    expires = hold_expiry(appointment)
    if status == "pending" and (expires is None or expires > clock.now()):
        return BookingResult(200, replay_bundle(stores.service, appointment), expires)
    if status == "pending" and expires is not None:
        reason = f"The hold on Appointment/{reference} expired at {format_instant(expires)}"
    elif status == "proposed":
        reason = (
            f"Appointment/{reference} is a stored proposal: $hold holds a proposal given as "
            "appointment-resource (as $find returns it); book this one with $book"
        )
    else:
        reason = f"Appointment/{reference} is {status!r}: only a live hold (pending) can be held"
    raise Unprocessable(reason, expression=EXPRESSION)
