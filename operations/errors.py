"""Domain errors that carry a FHIR issue code, a human text and FHIRPath expressions.

Raised anywhere in ``operations/``; rendered once, as an OperationOutcome, by ``plugin/``.
The class says which HTTP status family applies; ``code`` is the FHIR ``issue.code``.
"""

from __future__ import annotations


class SchedulingError(Exception):
    """Base class: one OperationOutcome issue."""

    status: int = 400
    default_code: str = "invalid"

    def __init__(
        self,
        diagnostics: str,
        *,
        code: str | None = None,
        expression: str | list[str] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.diagnostics = diagnostics
        self.code = code or self.default_code
        if expression is None:
            self.expression: list[str] = []
        elif isinstance(expression, str):
            self.expression = [expression]
        else:
            self.expression = list(expression)


class InvalidRequest(SchedulingError):
    """400: the request itself is malformed (missing/unparseable parameter, bad range, ...)."""

    status = 400
    default_code = "invalid"


class NotFound(SchedulingError):
    """404: the resource addressed in the URL does not exist."""

    status = 404
    default_code = "not-found"


class Unprocessable(SchedulingError):
    """422: well formed, but cannot be honoured (missing/inactive references, bad stored config, ...)."""

    status = 422
    default_code = "business-rule"


class InvalidConfiguration(Unprocessable):
    """422: configuration stored on the upstream (Schedule, HealthcareService, actor) is invalid."""

    default_code = "processing"


class Conflict(SchedulingError):
    """409: the time is already taken, or concurrent changes did not settle."""

    status = 409
    default_code = "conflict"


class ConcurrentChange(Exception):
    """Raised by a store when the upstream refused a write for a version conflict (409/412).

    Not shown to callers as such: the booking use cases re-read and decide again, and only
    when the deadline passes does a ``Conflict`` reach the caller.
    """


class ReferencedElsewhere(Conflict):
    """409: the upstream refused to delete a resource that something else still references
    (HAPI answers 409 for this too, but it is no version conflict: retrying cannot help)."""


class StoreFailure(Exception):
    """The store could not give an answer: network, timeout, server error, access refused.

    ``transient`` says whether asking again may help (a timeout, a 503), as opposed to an
    answer that will not change (a 403). The plugin's upstream errors derive from this, so the
    use cases can tell "try again" from "give up" without knowing about HTTP.
    """

    transient: bool = False


class OutcomeUnknown(StoreFailure):
    """A write reached (or may have reached) the upstream, but its answer was lost: a timeout
    after the request was sent, a connection cut mid-answer, a 5xx from something in between.

    The write may have landed or not. The use cases find out (docs/reliability.md) before they
    answer; ``cause`` is what the caller sees when they cannot.
    """

    transient = True

    def __init__(self, cause: StoreFailure) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.resolution: str | None = None
        """What the use case established, told to the caller (e.g. "nothing was stored");
        ``None``: it could not be established."""
