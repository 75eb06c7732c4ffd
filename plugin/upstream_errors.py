"""What an upstream failure means for the caller: the errors the store raises, and how an HTTP
answer or a transport failure is read (docs/configuration.md, "Errors from the upstream").

Each error knows the status and issue code the caller gets (SPEC §4, last table row), and
whether asking again may help (``transient``); a write's failure also says whether the request
certainly never reached the upstream (``never_sent``), which decides whether it may have landed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from http.client import RemoteDisconnected
from typing import Any

import orjson
import requests
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError

from operations.errors import ConcurrentChange, StoreFailure
from operations.store import Resource

logger = logging.getLogger(__name__)

MAX_DIAGNOSTICS = 300
"""The upstream's own explanation is passed on up to this many characters."""

ROLLED_BACK_BY_A_CONCURRENT_WRITE = (
    # PostgreSQL's own words: each error aborts the transaction that receives it.
    "could not serialize access",  # 40001: serialization failure (repeatable read, serializable)
    "deadlock detected",  # 40P01: this transaction was chosen as the deadlock victim
    "duplicate key value violates unique constraint",  # 23505: another transaction inserted it first
    # Hibernate's and Spring's names for those, and for a version check that failed at flush
    # (the database's messages can be translated, these cannot).
    "LockAcquisitionException",
    "CannotAcquireLockException",
    "CannotSerializeTransactionException",
    "OptimisticLockException",
    "OptimisticLockingFailureException",
    "StaleObjectStateException",
    # HAPI's: a version conflict (HAPI-0989: not the current version; HAPI-0823/0826: the version,
    # HAPI-0825: the client-assigned id, was taken by another thread), and its wrapper around
    # every exception it counts as a concurrent-write conflict (HAPI-0550; HAPI-0549 after retries).
    "ResourceVersionConflictException",
    "HAPI-0550:",
    "HAPI-0549:",
    "HAPI-0823:",
    "HAPI-0825:",
    "HAPI-0826:",
    "HAPI-0989:",
)
"""Texts of a 500 that mean the upstream's database rolled the write back because another
transaction wrote the same rows at the same time (HAPI FHIR on PostgreSQL; observed bodies and
why each one means "nothing was stored": docs/reliability.md, "HAPI on PostgreSQL")."""


class UpstreamError(StoreFailure):
    """The upstream could not give a usable answer; rendered as an OperationOutcome."""

    status: int = 502
    code: str = "exception"
    transient = True

    def __init__(
        self,
        diagnostics: str,
        *,
        upstream_status: int | None = None,
        outcome: Resource | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.diagnostics = diagnostics
        self.upstream_status = upstream_status
        self.outcome = outcome
        """The upstream's OperationOutcome, when it sent one (for callers that inspect it)."""
        self.headers: dict[str, str] = dict(headers or {})
        """Headers worth passing on to the caller (``WWW-Authenticate``, ``Retry-After``)."""
        self.never_sent = False
        self.connection_dropped = False
        """The upstream closed a kept-alive connection as it was reused: for a read, safe to send
        again on a fresh connection."""
        """True when the request certainly never reached the upstream (no connection was
        made): a write that failed so cannot have landed."""


class UpstreamUnavailable(UpstreamError):
    """Connection refused, DNS failure, TLS failure, or the upstream asked us to back off."""

    status = 503
    code = "transient"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "timeout"


class BudgetExhausted(UpstreamTimeout):
    """The operation's time budget is spent: no further upstream call is made for it."""

    transient = False


class UpstreamBadResponse(UpstreamError):
    """Upstream 5xx, a redirect, or an answer that is not the FHIR JSON expected."""

    status = 502
    code = "exception"


class UpstreamRejected(UpstreamError):
    """The upstream refused a request with a 4xx we did not expect (our query, its rules).

    Still a 502 to the caller (the sidecar built that request, not the caller), but callers
    such as the Slot ``end`` probe look at ``upstream_status``.
    """

    status = 502
    code = "exception"
    transient = False


class UpstreamAccessDenied(UpstreamError):
    """401/403 from the upstream, passed through with the same status (SPEC §6)."""

    transient = False

    def __init__(self, upstream_status: int, diagnostics: str, **kwargs: Any) -> None:
        super().__init__(diagnostics, upstream_status=upstream_status, **kwargs)
        self.status = upstream_status
        self.code = "security" if upstream_status == 401 else "forbidden"


def raise_for_status(response: requests.Response, *, own_credentials: bool, request_id: str | None) -> None:
    """The error a non-2xx answer means for the caller (the table in docs/configuration.md).

    ``own_credentials``: the request carried the sidecar's own credentials, so a 401/403 is a
    deployment fault (502), not the caller's to see.
    """
    status = response.status_code
    if 200 <= status < 300:
        return
    outcome = outcome_or_none(response)
    detail = outcome_text(outcome)
    if status in (401, 403) and own_credentials:
        # The sidecar's own credentials (or guard key) were refused: a deployment fault, not
        # the caller's, so neither the status nor the challenge is passed on.
        logger.error(
            "the upstream refused the scheduling service's own credentials",
            extra={
                "upstream_status": status,
                "upstream_diagnostics": detail,
                "request_id": request_id,
            },
        )
        raise UpstreamRejected(
            f"the upstream FHIR server refused the scheduling service's own credentials ({status})"
            + (f": {detail}" if detail else ""),
            upstream_status=status,
            outcome=outcome,
        )
    if status in (401, 403):
        headers = {k: v for k, v in response.headers.items() if k.lower() == "www-authenticate"}
        raise UpstreamAccessDenied(
            status,
            detail or f"the upstream FHIR server refused access ({status})",
            outcome=outcome,
            headers=headers,
        )
    if status in (409, 412):
        raise ConcurrentChange(detail or f"the upstream FHIR server reported a concurrent change ({status})")
    if status == 500 and rolled_back_by_a_concurrent_write(outcome):
        # Not a lost answer: the database refused the transaction for a concurrent write and
        # rolled it back, as a failed version check does (HAPI on PostgreSQL answers some of
        # these with 500 instead of 409). Re-read and decide again; nothing to settle.
        logger.info(
            "the upstream rolled a write back for a concurrent write (500)",
            extra={"upstream_diagnostics": detail, "request_id": request_id},
        )
        raise ConcurrentChange(f"the upstream FHIR server reported a concurrent change (500): {detail}")
    if status == 429:
        retry_after = response.headers.get("Retry-After")
        raise UpstreamUnavailable(
            "the upstream FHIR server is busy (429); try again later",
            upstream_status=status,
            headers={"Retry-After": retry_after} if retry_after else None,
        )
    suffix = f": {detail}" if detail else ""
    if 400 <= status < 500:
        raise UpstreamRejected(
            f"the upstream FHIR server rejected a request ({status}){suffix}",
            upstream_status=status,
            outcome=outcome,
        )
    if 300 <= status < 400:
        logger.error(
            "upstream redirected; set FHIR_BASE_URL to the final address",
            extra={"upstream_url": response.url, "location": response.headers.get("Location")},
        )
        raise UpstreamBadResponse(
            f"the upstream FHIR server answered with a redirect ({status})",
            upstream_status=status,
        )
    raise UpstreamBadResponse(
        f"the upstream FHIR server failed ({status}){suffix}",
        upstream_status=status,
        outcome=outcome,
    )


def fhir_json(response: requests.Response) -> Resource:
    """The answer as a FHIR resource (any type); 502 when it is not FHIR JSON.

    Parsed with orjson (1.4 ms against 2.3 ms with ``json`` for a page of 1,000 Slots); what it
    refuses (an encoding other than UTF-8, an integer beyond 64 bits) gets ``requests``' own
    parser before the answer counts as not JSON."""
    try:
        value = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        try:
            value = response.json()
        except ValueError:
            value = None
    if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
        raise UpstreamBadResponse(
            "the upstream FHIR server sent an answer that is not FHIR JSON",
            upstream_status=response.status_code,
        )
    return value


def fhir_resource(response: requests.Response, resource_type: str) -> Resource:
    """The answer as a FHIR resource of ``resource_type``; 502 otherwise."""
    value = fhir_json(response)
    if value["resourceType"] != resource_type:
        raise UpstreamBadResponse(
            f"the upstream FHIR server sent a {value['resourceType']} where a {resource_type} was expected",
            upstream_status=response.status_code,
        )
    return value


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it wraps: its exception arguments, ``reason`` (urllib3), cause and
    context, each once."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending += [a for a in current.args if isinstance(a, BaseException)]
        for linked in (getattr(current, "reason", None), current.__cause__, current.__context__):
            if isinstance(linked, BaseException):
                pending.append(linked)


def never_connected(exc: requests.RequestException) -> bool:
    """Whether the failure happened before a connection existed (refused, DNS, connect
    timeout), so the request cannot have reached the upstream."""
    return any(
        isinstance(cause, NewConnectionError | ConnectTimeoutError | requests.ConnectTimeout)
        for cause in _causes(exc)
    )


def is_delete_conflict(outcome: Resource | None) -> bool:
    """HAPI answers 409 both for version conflicts and for deletes that referential integrity
    refuses; only the text tells them apart ("Unable to delete ... has a reference")."""
    text = outcome_text(outcome).lower()
    return "unable to delete" in text or "has a reference to this resource" in text


def rolled_back_by_a_concurrent_write(outcome: Resource | None) -> bool:
    """Whether a 500's OperationOutcome says the database rolled the write back because of a
    concurrent write (``ROLLED_BACK_BY_A_CONCURRENT_WRITE``), read in full: the database's
    reason comes after the SQL statement, far past what ``outcome_text`` keeps."""
    text = " ".join(_issue_texts(outcome))
    return any(marker in text for marker in ROLLED_BACK_BY_A_CONCURRENT_WRITE)


def connection_dropped(exc: requests.RequestException) -> bool:
    """Whether the connection was closed or reset under the request (a kept-alive connection
    the upstream had just closed), as opposed to a timeout or a refused connection."""
    return any(
        isinstance(cause, RemoteDisconnected | ConnectionResetError | BrokenPipeError)
        for cause in _causes(exc)
    )


def is_read_timeout(exc: requests.ConnectionError) -> bool:
    """``requests`` reports a timeout while reading the body as a ConnectionError."""
    return any(isinstance(arg, ReadTimeoutError) for arg in exc.args)


def outcome_or_none(response: requests.Response) -> Resource | None:
    try:
        value = response.json()
    except ValueError:
        return None
    if isinstance(value, dict) and value.get("resourceType") == "OperationOutcome":
        return value
    return None


def outcome_text(outcome: Resource | None) -> str:
    """The upstream's own explanation, shortened: enough to act on, not a dump."""
    joined = "; ".join(_issue_texts(outcome))
    return joined if len(joined) <= MAX_DIAGNOSTICS else joined[: MAX_DIAGNOSTICS - 1] + "…"


def _issue_texts(outcome: Resource | None) -> list[str]:
    texts = []
    for issue in (outcome or {}).get("issue") or []:
        if isinstance(issue, dict):
            details = issue.get("details")
            text = issue.get("diagnostics") or (details.get("text") if isinstance(details, dict) else None)
            if isinstance(text, str) and text:
                texts.append(text)
    return texts
