"""The store over FHIR REST: the upstream server is the only source of truth (SPEC §1, §5).

Two levels:

* :class:`UpstreamClient` -- one per process: the pooled ``requests.Session``, the timeouts, the
  sidecar's own credentials and what the sidecar has learnt about the upstream (whether Slot
  has an ``end`` search parameter, and whether its index is complete).
* :class:`FhirUpstream` -- one per identity per incoming request (SPEC §5.1):
  :meth:`UpstreamClient.as_caller` carries that caller's ``Authorization`` (permission reads);
  :meth:`UpstreamClient.as_service` carries the sidecar's own credentials and guard key, and adds
  a Provenance to every transaction (deciding reads, every write). Both count their round
  trips and share the request's time budget. They implement ``operations.store.FhirStore``.

``fhirclient`` is not used here: its ``FHIRServer`` keeps one authorisation per server object and
has no hook for per-call headers, timeouts or paging across ``next`` links, which is exactly
what this module is about. ``requests`` is used directly.
"""

from __future__ import annotations

import http.cookiejar
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
import requests.adapters
import requests.auth
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError

from operations.errors import (
    ConcurrentChange,
    OutcomeUnknown,
    ReferencedElsewhere,
    StoreFailure,
    Unprocessable,
)
from operations.store import Resource
from plugin import version
from plugin.config import Settings
from plugin.identity import CredentialsUnavailable, ServiceCredentials, credentials_from_settings
from plugin.provenance import Attribution, with_provenance

Params = Sequence[tuple[str, str]]

logger = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
PAGE_SIZE = 1000
"""``_count`` asked for on every search; the server may cap it, paging then does the rest."""
SLOT_END_CACHE_SECONDS = 600.0
"""How long an answer about Slot ``end`` (supported, index complete) is trusted before it is
checked again."""
SLOT_END_NOT_READY_RECHECK_SECONDS = 10.0
"""While the upstream is still indexing Slot ``end``, how often to look again."""
SERVICE_KEY_HEADER = "X-Fanoni-Service-Key"
"""How the HAPI guard recognises the sidecar's own writes (docs/security.md)."""
_EARLIEST_END = "ge1000-01-01"

_STRICT = {"Prefer": "handling=strict"}
"""Ask the server to refuse parameters it does not know rather than ignore them: an ignored
``end`` would silently turn a Slot query into "every Slot ever"."""
_ACTOR_TYPES = frozenset({"Practitioner", "PractitionerRole", "Location", "Device", "HealthcareService"})
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_POOL_SIZE = 32
_MAX_DIAGNOSTICS = 300


# --------------------------------------------------------------------------------------------
# Errors: each knows the status and issue code the caller should see (SPEC §4, last table row).


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


# --------------------------------------------------------------------------------------------
# The process-wide part.


class _NoNetrcAuth(requests.auth.AuthBase):
    """Leaves requests alone. Set as the session's auth so ``requests`` never adds ``~/.netrc``
    credentials to a call that carries none: an anonymous caller must reach the upstream
    anonymously, or the sidecar would widen access."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        return r


def new_session() -> requests.Session:
    """A ``requests.Session`` fit to be shared by every request thread of a process.

    Only the connection pool is shared: headers go on each call, and cookies are refused,
    because a cookie set in answer to one caller's credentials must never ride along with
    another caller's request.
    """
    session = requests.Session()
    session.auth = _NoNetrcAuth()
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=_POOL_SIZE, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class UpstreamClient:
    """Per-process state shared by all requests: the session, the sidecar's credentials and
    what is known of the Slot ``end`` search parameter."""

    def __init__(
        self,
        settings: Settings,
        *,
        session_factory: Callable[[], requests.Session] = new_session,
        clock: Callable[[], float] = time.monotonic,
        credentials: ServiceCredentials | None = None,
    ) -> None:
        self.settings = settings
        self._session_factory = session_factory
        self._clock = clock
        self._lock = threading.Lock()
        self._session: requests.Session | None = None
        self._session_pid: int | None = None
        self._slot_end: tuple[bool, float] | None = None
        self._slot_end_ready: tuple[bool, float] | None = None
        self.credentials: ServiceCredentials = (
            credentials if credentials is not None else credentials_from_settings(settings, self.session)
        )

    @property
    def base_url(self) -> str:
        return self.settings.fhir_base_url

    def session(self) -> requests.Session:
        """The pooled session, created lazily and again after a fork: sockets opened by a
        gunicorn master (``--preload``) must not be shared with its workers."""
        pid = os.getpid()
        with self._lock:
            if self._session is None or self._session_pid != pid:
                self._session = self._session_factory()
                self._session_pid = pid
            return self._session

    def as_caller(
        self, authorization: str | None, request_id: str | None = None, *, deadline: float | None = None
    ) -> FhirUpstream:
        """A store acting with the caller's credentials: for the reads that stand for
        permission (SPEC §5.1). It never writes."""
        return FhirUpstream(self, authorization=authorization, request_id=request_id, deadline=deadline)

    def as_service(self, attribution: Attribution, *, deadline: float | None = None) -> FhirUpstream:
        """A store acting as the sidecar itself: its credentials, its guard key, and a
        Provenance (``attribution``) on every transaction."""
        return FhirUpstream(
            self,
            credentials=self.credentials,
            request_id=attribution.request_id,
            attribution=attribution,
            deadline=deadline,
        )

    def background(self, request_id: str | None = None, operation: str = "maintenance") -> FhirUpstream:
        """The sidecar's own store for work done on nobody's behalf (registration, readiness,
        hold expiry, notifications)."""
        return self.as_service(Attribution(operation, request_id, self.settings.service_name))

    def slot_end_supported(self) -> bool | None:
        """Whether to search Slots by ``end``; ``None``: unknown, the next query finds out."""
        mode = self.settings.slot_end_search
        if mode == "off":
            return False
        with self._lock:
            if self._slot_end is not None:
                supported, checked_at = self._slot_end
                if self._clock() - checked_at < SLOT_END_CACHE_SECONDS:
                    return supported
        return None

    def remember_slot_end_support(self, supported: bool) -> None:
        with self._lock:
            self._slot_end = (supported, self._clock())

    def slot_end_index_ready(self) -> bool | None:
        """Whether every stored Slot is indexed by ``end`` (``None``: unknown, or time to look
        again). Not ready is looked at again after a few seconds, ready after ten minutes."""
        with self._lock:
            if self._slot_end_ready is None:
                return None
            ready, checked_at = self._slot_end_ready
            limit = SLOT_END_CACHE_SECONDS if ready else SLOT_END_NOT_READY_RECHECK_SECONDS
            return ready if self._clock() - checked_at < limit else None

    def remember_slot_end_index(self, ready: bool) -> None:
        with self._lock:
            self._slot_end_ready = (ready, self._clock())


# --------------------------------------------------------------------------------------------
# The per-request part.


class FhirUpstream:
    """The ``FhirStore`` over FHIR REST, acting for one identity in one request.

    Not thread-safe by design: one instance serves one incoming request. ``round_trips`` counts
    every HTTP call made (pages included), so tests and logs can see the cost of an operation.
    ``deadline`` (``time.monotonic()`` value) bounds the whole request: each call waits at most
    until then, and none starts after it (:class:`BudgetExhausted`).
    """

    def __init__(
        self,
        client: UpstreamClient,
        *,
        authorization: str | None = None,
        credentials: ServiceCredentials | None = None,
        request_id: str | None = None,
        attribution: Attribution | None = None,
        deadline: float | None = None,
    ) -> None:
        self._client = client
        self._base = client.base_url
        self._authorization = authorization
        self._credentials = credentials
        self._request_id = request_id
        self._attribution = attribution
        self._deadline = deadline
        self.round_trips = 0

    # ---- SchedulingStore -------------------------------------------------------------------

    def read_schedules(self, ids: Sequence[str]) -> tuple[list[Resource], dict[str, Resource]]:
        """One search for all the Schedules with their actors included; Schedules come back in
        the order asked for, actors keyed ``"Practitioner/x"``."""
        wanted = _valid_ids(ids)
        if not wanted:
            return [], {}
        found = self._search_all("Schedule", [("_id", ",".join(wanted)), ("_include", "Schedule:actor")])
        by_id: dict[str, Resource] = {}
        actors: dict[str, Resource] = {}
        for resource, _mode in found:
            resource_type, resource_id = resource.get("resourceType"), resource.get("id")
            if not isinstance(resource_type, str) or not isinstance(resource_id, str):
                continue
            if resource_type == "Schedule":
                if resource_id in wanted:
                    by_id.setdefault(resource_id, resource)
            else:
                actors[f"{resource_type}/{resource_id}"] = resource
        schedules = [by_id[i] for i in wanted if i in by_id]
        self._read_missing_actors(schedules, actors)
        return schedules, actors

    def _read_missing_actors(self, schedules: list[Resource], actors: dict[str, Resource]) -> None:
        """Servers that do not support ``_include=Schedule:actor`` (or ignore it) leave actors out;
        fetch those with one ``_id`` search per actor type (at most four), never one per actor.
        On HAPI everything came included and this costs nothing."""
        missing: dict[str, list[str]] = {}
        for schedule in schedules:
            for actor in schedule.get("actor") or []:
                reference = actor.get("reference") if isinstance(actor, dict) else None
                if not isinstance(reference, str) or reference in actors:
                    continue
                parts = reference.split("/")
                if len(parts) == 2 and parts[0] in _ACTOR_TYPES and _FHIR_ID.match(parts[1]):
                    missing.setdefault(parts[0], [])
                    if parts[1] not in missing[parts[0]]:
                        missing[parts[0]].append(parts[1])
        for resource_type, ids in missing.items():
            for resource in self.search(resource_type, [("_id", ",".join(ids))]):
                actors[f"{resource_type}/{resource.get('id')}"] = resource

    def read_service(self, service_id: str) -> Resource | None:
        return self.read("HealthcareService", service_id)

    def search_slots(self, schedule_ids: Sequence[str], start: datetime, end: datetime) -> list[Resource]:
        """One Slot search for all the Schedules; never misses a Slot that overlaps the range.

        With a Slot ``end`` search parameter on the upstream *whose index is complete*:
        ``start=lt{end}&end=gt{start}``, exact whatever the Slot's length. Otherwise: ``start``
        within ``SLOT_LOOKBACK_DAYS`` before the range, which sees any Slot shorter than the
        look-back. Whether the index is complete is found out by counting (see
        :meth:`_slot_end_index_complete`), so no decision rests on ``end=`` while the upstream
        is still indexing Slots stored before the parameter existed.
        """
        wanted = _valid_ids(schedule_ids)
        if not wanted:
            return []
        common = [
            ("schedule", ",".join(f"Schedule/{i}" for i in wanted)),
            ("start", "lt" + _search_instant(end, round_up=True)),
        ]
        settings = self._client.settings
        if self._use_slot_end():
            # ``gt`` compares against the end of the stated second; one second earlier keeps a
            # Slot ending a fraction of a second after ``start`` (more is fine, fewer is not).
            lower = _search_instant(start - timedelta(seconds=1), round_up=False)
            return self.search("Slot", [*common, ("end", "gt" + lower)], headers=_STRICT)
        lookback = start - timedelta(days=settings.slot_lookback_days)
        return self.search(
            "Slot",
            [*common, ("start", "ge" + _search_instant(lookback, round_up=False))],
            headers=_STRICT,
        )

    def _use_slot_end(self) -> bool:
        """Whether this Slot search may use ``end``: the parameter exists and every stored Slot
        is indexed by it. Costs two counting searches once per process (and again every ten
        minutes, or every few seconds while the upstream is still indexing)."""
        client = self._client
        if client.settings.slot_end_search == "on":
            return True  # the operator vouches for the parameter and its index
        if client.slot_end_supported() is False:
            return False
        ready = client.slot_end_index_ready()
        if ready is None:
            ready = self._slot_end_index_complete()
            if ready is None:
                return False  # the parameter is unknown: remembered as unsupported
            client.remember_slot_end_index(ready)
            if not ready:
                logger.info("the upstream is still indexing Slot end; using the start look-back meanwhile")
        return ready

    def _slot_end_index_complete(self) -> bool | None:
        """``True`` when every Slot on the upstream is found by an ``end`` search -- every Slot
        has an ``end``, so the count of ``Slot?end=ge1000-01-01`` equals the count of all Slots
        (counted before and after it) when the index is complete. ``None``: the upstream does not know ``end``.

        A server-agnostic way to learn that a reindex has finished, whichever process or tool
        asked for it. Slots written between the two counts make them differ; that only means
        "look again shortly"; a wrong "complete" would need writes that exactly make up for the
        Slots not yet indexed, between two of the three counts.
        """
        before = self._count("Slot", [])
        try:
            indexed = self._count("Slot", [("end", _EARLIEST_END)])
        except UpstreamRejected as exc:
            if exc.upstream_status != 400:
                raise
            logger.info(
                "upstream refused the Slot 'end' search parameter; using the start look-back",
                extra={"upstream_diagnostics": exc.diagnostics},
            )
            self._client.remember_slot_end_support(False)
            return None
        self._client.remember_slot_end_support(True)
        # Counted before and after: a Slot written or deleted meanwhile shows as a difference.
        return before == indexed == self._count("Slot", [])

    def _count(self, resource_type: str, params: Params) -> int:
        response = self._send(
            "GET",
            f"{self._base}/{resource_type}",
            params=[*params, ("_summary", "count")],
            headers=_STRICT,
        )
        self._raise_for_status(response)
        total = self._resource(response, "Bundle").get("total")
        if not isinstance(total, int):
            raise UpstreamBadResponse("the upstream FHIR server did not count the search (_summary=count)")
        return total

    # ---- generic FHIR REST ------------------------------------------------------------------

    def read(self, resource_type: str, resource_id: str) -> Resource | None:
        """``GET [base]/Type/id``; ``None`` when it does not exist (404, or 410 once deleted)."""
        if not _FHIR_ID.match(resource_id):
            return None  # no resource can have that id; asking would only build a bad URL
        response = self._send("GET", f"{self._base}/{resource_type}/{resource_id}")
        if response.status_code in (404, 410):
            return None
        self._raise_for_status(response)
        return self._resource(response, resource_type)

    def search(
        self,
        resource_type: str,
        params: Params | Mapping[str, str],
        *,
        headers: Mapping[str, str] | None = None,
        limit: int | None = None,
    ) -> list[Resource]:
        """Every match of the search across all pages (included resources left out); with
        ``limit``, the first ``limit`` matches, asking for no more pages than that needs."""
        return [
            resource
            for resource, mode in self._search_all(resource_type, params, headers=headers, limit=limit)
            if mode == "match"
        ][:limit]

    def _search_all(
        self,
        resource_type: str,
        params: Params | Mapping[str, str],
        *,
        headers: Mapping[str, str] | None = None,
        limit: int | None = None,
    ) -> list[tuple[Resource, str]]:
        """Every resource across all pages with its search mode, ``match`` or ``include``
        (inferred from the resource type when the server omits it); outcomes dropped."""
        found: list[tuple[Resource, str]] = []
        matches = 0
        query = list(params.items()) if isinstance(params, Mapping) else list(params)
        if limit is not None and not any(name == "_count" for name, _ in query):
            query.append(("_count", str(min(limit, PAGE_SIZE))))
        for bundle in self._search_pages(resource_type, query, headers=headers):
            for entry in bundle.get("entry") or []:
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if not isinstance(resource, dict) or resource.get("resourceType") == "OperationOutcome":
                    continue
                search = entry.get("search")
                mode = search.get("mode") if isinstance(search, dict) else None
                if mode not in ("match", "include"):
                    if mode is not None:
                        continue  # "outcome": the server talking about the search, not a result
                    mode = "match" if resource.get("resourceType") == resource_type else "include"
                found.append((resource, mode))
                matches += mode == "match"
            if limit is not None and matches >= limit:
                break
        return found

    def transaction(self, bundle: Resource) -> Resource:
        """``POST [base]`` a transaction Bundle; the ``transaction-response`` Bundle back.

        The service store adds the Provenance (``plugin/provenance.py``). Failures, as the
        ``FhirStore`` contract says: a 409/412 version conflict raises ``ConcurrentChange`` (the
        use cases re-read and decide again); a 409 refusing a delete raises
        ``ReferencedElsewhere``; a 400/422 is the caller's content (422). When the request may
        have reached the upstream but no usable answer came back -- a read timeout, a
        connection cut after sending, a 5xx, an unreadable 2xx -- ``OutcomeUnknown``: the write
        may have landed, and the use case finds out. A connection that was never made, or a
        429, is a plain ``UpstreamError``: nothing was sent or processed.
        """
        if self._attribution is not None:
            bundle = with_provenance(bundle, self._attribution)
        try:
            response = self._send(
                "POST",
                self._base,
                body=bundle,
                headers={"Prefer": "return=representation"},
            )
        except (UpstreamTimeout, UpstreamUnavailable, UpstreamBadResponse) as exc:
            if isinstance(exc, BudgetExhausted) or getattr(exc, "never_sent", False):
                raise
            raise OutcomeUnknown(exc) from exc
        try:
            self._raise_for_status(response)
        except UpstreamRejected as exc:
            if exc.upstream_status not in (400, 422):
                raise
            # The server refused what would be stored (e.g. a participant referencing a Patient
            # that does not exist): the caller's content, not our query, so 422, not 502.
            raise Unprocessable(
                f"The FHIR server refused to store the change: {_outcome_text(exc.outcome) or exc.diagnostics}",
                code="processing",
            ) from exc
        except ConcurrentChange as exc:
            deletes = any(
                (e.get("request") or {}).get("method") == "DELETE" for e in bundle.get("entry") or []
            )
            if deletes and response.status_code == 409 and _is_delete_conflict(_outcome_or_none(response)):
                raise ReferencedElsewhere(str(exc)) from None
            raise
        except UpstreamBadResponse as exc:
            if exc.upstream_status is not None and exc.upstream_status >= 500:
                raise OutcomeUnknown(exc) from exc
            raise
        except UpstreamUnavailable as exc:
            if exc.upstream_status == 429:
                raise  # "too many requests": not processed
            raise OutcomeUnknown(exc) from exc
        try:
            return self._resource(response, "Bundle")
        except UpstreamBadResponse as exc:
            raise OutcomeUnknown(exc) from exc

    def update(self, resource: Resource) -> tuple[Resource, bool]:
        """``PUT [base]/Type/id``; the stored resource and whether it was created (201)."""
        url = f"{self._base}/{resource['resourceType']}/{resource['id']}"
        response = self._send("PUT", url, body=resource)
        self._raise_for_status(response)
        return self._resource(response, resource["resourceType"]), response.status_code == 201

    def operation(
        self, path: str, parameters: Resource, *, headers: Mapping[str, str] | None = None
    ) -> Resource | None:
        """``POST [base]/{path}`` (e.g. ``$reindex``) with a Parameters body."""
        response = self._send("POST", f"{self._base}/{path}", body=parameters, headers=headers)
        self._raise_for_status(response)
        return self._json(response) if response.content else None

    def capabilities(self, *, read_timeout: float | None = None) -> Resource:
        """``GET [base]/metadata``: the readiness check, and proof the base URL is a FHIR server."""
        response = self._send("GET", f"{self._base}/metadata", read_timeout=read_timeout)
        self._raise_for_status(response)
        return self._resource(response, "CapabilityStatement")

    # ---- plumbing ---------------------------------------------------------------------------

    def _search_pages(
        self,
        resource_type: str,
        params: Params | Mapping[str, str],
        *,
        headers: Mapping[str, str] | None,
    ) -> Iterator[Resource]:
        query = list(params.items()) if isinstance(params, Mapping) else list(params)
        if not any(name == "_count" for name, _ in query):
            query.append(("_count", str(PAGE_SIZE)))
        url: str = f"{self._base}/{resource_type}"
        page_query: list[tuple[str, str]] | None = query
        seen: set[str] = set()
        while True:
            response = self._send("GET", url, params=page_query, headers=headers)
            self._raise_for_status(response)
            bundle = self._resource(response, "Bundle")
            yield bundle
            next_link = _link(bundle, "next")
            if next_link is None:
                return
            url = self._paging_url(next_link)
            page_query = None  # the next link carries its own query
            if url in seen:
                raise UpstreamBadResponse("the upstream FHIR server returned a paging loop")
            seen.add(url)

    def _paging_url(self, link: str) -> str:
        """Where to fetch a ``next`` page, without ever sending credentials to another host.

        HAPI writes links with its configured public address, which behind an ingress may not
        be the ``FHIR_BASE_URL`` the sidecar reaches it by; when the path layout is the same
        the link is re-based onto ``FHIR_BASE_URL``, otherwise it is refused.
        """
        base = urlsplit(self._base)
        target = urlsplit(urljoin(self._base + "/", link))
        if (target.scheme, target.netloc) == (base.scheme, base.netloc):
            return target.geturl()
        base_path = base.path.rstrip("/")
        if not base_path or target.path == base_path or target.path.startswith(base_path + "/"):
            return urlunsplit((base.scheme, base.netloc, target.path, target.query, ""))
        logger.error(
            "upstream paging link is outside FHIR_BASE_URL; not following it",
            extra={"link": link, "fhir_base_url": self._base},
        )
        raise UpstreamBadResponse(
            "the upstream FHIR server returned a paging link outside FHIR_BASE_URL (see the sidecar log)"
        )

    def _send(
        self,
        method: str,
        url: str,
        *,
        params: Params | None = None,
        body: Resource | None = None,
        headers: Mapping[str, str] | None = None,
        read_timeout: float | None = None,
    ) -> requests.Response:
        response = self._send_once(
            method, url, params=params, body=body, headers=headers, read_timeout=read_timeout
        )
        if response.status_code == 401 and self._credentials is not None:
            # The sidecar's token may have been revoked or expired early: one fresh token, once.
            sent = response.request.headers.get("Authorization")
            self._credentials.invalidate(sent if isinstance(sent, str) else "")
            response = self._send_once(
                method, url, params=params, body=body, headers=headers, read_timeout=read_timeout
            )
        return response

    def _authorization_header(self) -> str | None:
        if self._credentials is None:
            return self._authorization
        try:
            return self._credentials.authorization()
        except CredentialsUnavailable as exc:
            error = UpstreamUnavailable(f"the scheduling service could not obtain its own credentials: {exc}")
            error.never_sent = True
            raise error from exc

    def _send_once(
        self,
        method: str,
        url: str,
        *,
        params: Params | None,
        body: Resource | None,
        headers: Mapping[str, str] | None,
        read_timeout: float | None,
    ) -> requests.Response:
        settings = self._client.settings
        sent_headers = {"Accept": FHIR_JSON, "User-Agent": f"fanoni-scheduling/{version()}"}
        if method == "GET":
            # HAPI reuses cached search results unless told not to; a decision to write must
            # never rest on a stale search (SPEC §5).
            sent_headers["Cache-Control"] = "no-cache"
        if body is not None:
            sent_headers["Content-Type"] = f"{FHIR_JSON}; charset=utf-8"
        authorization = self._authorization_header()
        if authorization:
            sent_headers["Authorization"] = authorization
        if self._credentials is not None and settings.guard_key:
            sent_headers[SERVICE_KEY_HEADER] = settings.guard_key
        if self._request_id:
            sent_headers["X-Request-ID"] = self._request_id
        sent_headers.update(headers or {})
        read = settings.upstream_read_timeout if read_timeout is None else read_timeout
        if self._deadline is not None:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0.05:
                exhausted = BudgetExhausted(
                    "the operation ran out of time waiting for the upstream FHIR server "
                    f"(at most {settings.operation_budget_seconds:g} s per operation)"
                )
                exhausted.never_sent = True
                raise exhausted
            read = min(read, remaining)
        timeout = (min(settings.upstream_connect_timeout, read), read)
        data = json.dumps(body).encode() if body is not None else None
        self.round_trips += 1
        started = time.monotonic()
        try:
            response = self._client.session().request(
                method,
                url,
                params=params,
                data=data,
                headers=sent_headers,
                timeout=timeout,
                allow_redirects=False,
            )
        except requests.Timeout as exc:
            self._log_failure(method, url, exc)
            error: UpstreamError = UpstreamTimeout("the upstream FHIR server did not answer in time")
            error.never_sent = _never_connected(exc)
            raise error from exc
        except requests.ConnectionError as exc:
            self._log_failure(method, url, exc)
            if _is_read_timeout(exc):
                raise UpstreamTimeout("the upstream FHIR server did not answer in time") from exc
            error = UpstreamUnavailable("the upstream FHIR server is unreachable")
            error.never_sent = _never_connected(exc)
            raise error from exc
        except requests.RequestException as exc:
            self._log_failure(method, url, exc)
            raise UpstreamBadResponse("the upstream FHIR server sent an unusable answer") from exc
        logger.debug(
            "upstream call",
            extra={
                "request_id": self._request_id,
                "upstream_method": method,
                "upstream_url": response.url,
                "upstream_status": response.status_code,
                "duration_ms": round((time.monotonic() - started) * 1000, 1),
                "as_service": self._credentials is not None,
            },
        )
        return response

    def _log_failure(self, method: str, url: str, exc: Exception) -> None:
        logger.warning(
            "upstream call failed: %s",
            exc,
            extra={"request_id": self._request_id, "upstream_method": method, "upstream_url": url},
        )

    def _raise_for_status(self, response: requests.Response) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        outcome = _outcome_or_none(response)
        detail = _outcome_text(outcome)
        if status in (401, 403) and self._credentials is not None:
            # The sidecar's own credentials (or guard key) were refused: a deployment fault, not
            # the caller's, so neither the status nor the challenge is passed on.
            logger.error(
                "the upstream refused the scheduling service's own credentials",
                extra={
                    "upstream_status": status,
                    "upstream_diagnostics": detail,
                    "request_id": self._request_id,
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
            raise ConcurrentChange(
                detail or f"the upstream FHIR server reported a concurrent change ({status})"
            )
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

    def _json(self, response: requests.Response) -> Resource:
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

    def _resource(self, response: requests.Response, resource_type: str) -> Resource:
        value = self._json(response)
        if value["resourceType"] != resource_type:
            raise UpstreamBadResponse(
                f"the upstream FHIR server sent a {value['resourceType']} "
                f"where a {resource_type} was expected",
                upstream_status=response.status_code,
            )
        return value


# --------------------------------------------------------------------------------------------
# Helpers.


def _valid_ids(ids: Sequence[str]) -> list[str]:
    """Unique ids in order, dropping any that cannot be FHIR ids: no resource has such an id,
    and a comma would split an ``_id`` list into ids nobody asked for."""
    seen: dict[str, None] = {}
    for resource_id in ids:
        if isinstance(resource_id, str) and _FHIR_ID.match(resource_id):
            seen.setdefault(resource_id, None)
    return list(seen)


def _search_instant(value: datetime, *, round_up: bool) -> str:
    """A UTC instant to whole seconds, rounded outward so a search bound never excludes more
    than asked (``lt`` bounds round up, ``gt``/``ge`` bounds round down)."""
    if value.tzinfo is None:
        raise ValueError("search bounds must be aware datetimes")
    value = value.astimezone(UTC)
    if round_up and value.microsecond:
        value += timedelta(seconds=1)
    return value.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _link(bundle: Resource, relation: str) -> str | None:
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == relation:
            url = link.get("url")
            if isinstance(url, str) and url:
                return url
    return None


def _never_connected(exc: requests.RequestException) -> bool:
    """Whether the failure happened before a connection existed (refused, DNS, connect
    timeout), so the request cannot have reached the upstream."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, NewConnectionError | ConnectTimeoutError | requests.ConnectTimeout):
            return True
        pending += [a for a in current.args if isinstance(a, BaseException)]
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            pending.append(reason)
        if current.__cause__ is not None:
            pending.append(current.__cause__)
        if current.__context__ is not None:
            pending.append(current.__context__)
    return False


def _is_delete_conflict(outcome: Resource | None) -> bool:
    """HAPI answers 409 both for version conflicts and for deletes that referential integrity
    refuses; only the text tells them apart ("Unable to delete ... has a reference")."""
    text = _outcome_text(outcome).lower()
    return "unable to delete" in text or "has a reference to this resource" in text


def _is_read_timeout(exc: requests.ConnectionError) -> bool:
    """``requests`` reports a timeout while reading the body as a ConnectionError."""
    return any(isinstance(arg, ReadTimeoutError) for arg in exc.args)


def _outcome_or_none(response: requests.Response) -> Resource | None:
    try:
        value = response.json()
    except ValueError:
        return None
    if isinstance(value, dict) and value.get("resourceType") == "OperationOutcome":
        return value
    return None


def _outcome_text(outcome: Resource | None) -> str:
    """The upstream's own explanation, shortened: enough to act on, not a dump."""
    if not outcome:
        return ""
    texts = []
    for issue in outcome.get("issue") or []:
        if isinstance(issue, dict):
            details = issue.get("details")
            text = issue.get("diagnostics") or (details.get("text") if isinstance(details, dict) else None)
            if isinstance(text, str) and text:
                texts.append(text)
    joined = "; ".join(texts)
    return joined if len(joined) <= _MAX_DIAGNOSTICS else joined[: _MAX_DIAGNOSTICS - 1] + "…"
