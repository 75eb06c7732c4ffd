"""HTTP to the upstream FHIR server for one identity in one request: headers, credentials, the
guard key, timeouts within the request's time budget, what a transport failure means, and
following a search's ``next`` pages (never to another host).

:class:`Transport` is the base of ``plugin.upstream.FhirUpstream``, which adds the FHIR reads,
searches and transactions on top.
"""

from __future__ import annotations

import http.cookiejar
import json
import logging
import threading
import time
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Protocol
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
import requests.adapters
import requests.auth

from operations.store import Resource
from plugin import version
from plugin.config import Settings
from plugin.metrics import record_upstream_call
from plugin.one_page import OnePageSearches
from plugin.service_credentials import CredentialsUnavailable, ServiceCredentials
from plugin.upstream_errors import (
    BudgetExhausted,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    connection_dropped,
    fhir_resource,
    is_read_timeout,
    never_connected,
    raise_for_status,
)

Params = Sequence[tuple[str, str]]

logger = logging.getLogger("plugin.upstream")

FHIR_JSON = "application/fhir+json"
SERVICE_KEY_HEADER = "X-Fanoni-Service-Key"
"""How the HAPI guard recognises the sidecar's own writes (docs/security.md)."""
_POOL_SIZE = 32
PAGE_SIZE = 1000
"""``_count`` asked for on every search; the server may cap it, paging then does the rest."""
ONE_PAGE = f"no-cache, no-store, max-results={PAGE_SIZE}"
"""How a search that wants every match is asked first (:meth:`Transport._one_page`)."""


class Client(Protocol):
    """What a transport needs of the per-process client (``plugin.upstream.UpstreamClient``)."""

    settings: Settings
    one_page: OnePageSearches

    @property
    def base_url(self) -> str: ...

    def session(self) -> requests.Session: ...


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


class Transport:
    """One identity's HTTP calls in one request.

    ``round_trips`` counts every HTTP call made (pages included), so tests and logs can see the
    cost of an operation. ``deadline`` (``time.monotonic()`` value) bounds the whole request:
    each call waits at most until then, and none starts after it (:class:`BudgetExhausted`).
    With ``credentials`` (the sidecar's own) the guard key is sent too, and a 401 fetches a
    fresh token once.
    """

    def __init__(
        self,
        client: Client,
        *,
        authorization: str | None = None,
        credentials: ServiceCredentials | None = None,
        request_id: str | None = None,
        deadline: float | None = None,
    ) -> None:
        self._client = client
        self._base = client.base_url
        self._authorization = authorization
        self._credentials = credentials
        self._request_id = request_id
        self._deadline = deadline
        self.round_trips = 0
        self._counting = threading.Lock()  # reads of one request may run in several threads

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
        try:
            response = self._send_once(
                method, url, params=params, body=body, headers=headers, read_timeout=read_timeout
            )
        except UpstreamUnavailable as exc:
            if method != "GET" or not exc.connection_dropped:
                raise
            # HAPI (or a proxy) closed a kept-alive connection just as it was reused. A read
            # changes nothing: send it once more, on a fresh connection.
            logger.info(
                "upstream closed a reused connection; reading again",
                extra={"request_id": self._request_id, "upstream_url": url},
            )
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
        with self._counting:
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
            self._record_call(method, "timeout", started)
            self._log_failure(method, url, exc)
            error: UpstreamError = UpstreamTimeout("the upstream FHIR server did not answer in time")
            error.never_sent = never_connected(exc)
            raise error from exc
        except requests.ConnectionError as exc:
            self._record_call(method, "timeout" if is_read_timeout(exc) else "unreachable", started)
            self._log_failure(method, url, exc)
            if is_read_timeout(exc):
                raise UpstreamTimeout("the upstream FHIR server did not answer in time") from exc
            error = UpstreamUnavailable("the upstream FHIR server is unreachable")
            error.never_sent = never_connected(exc)
            error.connection_dropped = connection_dropped(exc)
            raise error from exc
        except requests.RequestException as exc:
            self._record_call(method, "error", started)
            self._log_failure(method, url, exc)
            raise UpstreamBadResponse("the upstream FHIR server sent an unusable answer") from exc
        self._record_call(method, str(response.status_code), started)
        logger.debug(
            "upstream call",
            extra={
                "request_id": self._request_id,
                "upstream_method": method,
                "upstream_url": response.url,
                "upstream_status": response.status_code,
                "duration_ms": round((time.monotonic() - started) * 1000, 1),
                "as_service": self._credentials is not None,
                # What the server is asked to do besides the URL (``handling=strict``): the
                # benchmark's replay of these reads sends it too (bench/replay.py).
                "upstream_prefer": sent_headers.get("Prefer"),
                "upstream_cache_control": sent_headers.get("Cache-Control"),
            },
        )
        return response

    def _record_call(self, method: str, status: str, started: float) -> None:
        identity = "service" if self._credentials is not None else "caller"
        record_upstream_call(identity, method, status, time.monotonic() - started)

    def _log_failure(self, method: str, url: str, exc: Exception) -> None:
        logger.warning(
            "upstream call failed: %s",
            exc,
            extra={"request_id": self._request_id, "upstream_method": method, "upstream_url": url},
        )

    def _raise_for_status(self, response: requests.Response) -> None:
        raise_for_status(response, own_credentials=self._credentials is not None, request_id=self._request_id)

    # ---- paging -------------------------------------------------------------------------------

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
        bundle = self._one_page(resource_type, query, headers) if _wants_every_match(query) else None
        if bundle is None:
            bundle = self._page(f"{self._base}/{resource_type}", query, headers)
        seen: set[str] = set()
        while True:
            yield bundle
            next_link = _link(bundle, "next")
            if next_link is None:
                return
            url = self._paging_url(next_link)  # the next link carries its own query
            if url in seen:
                raise UpstreamBadResponse("the upstream FHIR server returned a paging loop")
            seen.add(url)
            bundle = self._page(url, None, headers)

    def _page(self, url: str, query: Params | None, headers: Mapping[str, str] | None) -> Resource:
        response = self._send("GET", url, params=query, headers=headers)
        self._raise_for_status(response)
        return fhir_resource(response, "Bundle")

    def _one_page(
        self, resource_type: str, query: list[tuple[str, str]], headers: Mapping[str, str] | None
    ) -> Resource | None:
        """A search asked as one page the server need not keep for paging.

        ``Cache-Control: no-store`` spares HAPI storing the search and its result ids for
        paging, and ``max-results`` (a HAPI directive; other servers ignore it) lets such a
        page hold up to :data:`PAGE_SIZE` matches (HAPI's default for ``no-store`` is 100).
        Measured on HAPI 8.8, warm: 900 Slots 159 -> 109 ms of HAPI CPU, a lock search of 20 ids
        13.3 -> 8.1 ms. ``no-cache`` stays: nothing comes from HAPI's search cache either.

        HAPI cuts such a search at ``max-results`` matches without a ``next`` link, so the page
        counts as the whole result only when it has fewer matches than that, or a ``next`` link
        (the server pages it anyway; the caller follows). A full page may have been cut: then
        ``None``, and the caller searches again the usual way, paged. So does every search of
        this process once HAPI refuses ``max-results`` (``HAPI-1165``: an administrator set
        its ``no-store`` limit below :data:`PAGE_SIZE`), and the same search again for a while
        (:class:`OnePageSearches`)."""
        search = _search_key(resource_type, query)
        if not self._client.one_page.worth_asking(search):
            return None
        try:
            bundle = self._page(
                f"{self._base}/{resource_type}", query, {**(headers or {}), "Cache-Control": ONE_PAGE}
            )
        except UpstreamRejected as refused:
            if "HAPI-1165" not in str(refused):
                raise
            self._client.one_page.refuse()
            logger.warning(
                "the upstream refuses Cache-Control max-results=%d; searching page by page from now on",
                PAGE_SIZE,
                extra={"request_id": self._request_id, "upstream_diagnostics": str(refused)},
            )
            return None
        if _link(bundle, "next") is not None or _matches(bundle, resource_type) < PAGE_SIZE:
            return bundle
        self._client.one_page.filled(search)
        logger.info(
            "a search filled one page; searching it again page by page",
            extra={"request_id": self._request_id, "resource_type": resource_type},
        )
        return None

    def fills_one_page(self, resource_type: str, query: Params) -> bool:
        """Whether this search filled one page lately (:class:`OnePageSearches`): the caller
        may ask it in pieces instead -- unless the upstream refuses one-page searches, when
        pieces would only be more pages."""
        one_page = self._client.one_page
        return not one_page.refused and one_page.filled_lately(_search_key(resource_type, query))

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


def _search_key(resource_type: str, query: Params) -> Hashable:
    """How :class:`OnePageSearches` knows a search again: its type and its exact query (with
    the ``_count`` :meth:`Transport._search_pages` adds)."""
    full = list(query)
    if not any(name == "_count" for name, _ in full):
        full.append(("_count", str(PAGE_SIZE)))
    return (resource_type, tuple(full))


def _wants_every_match(query: Params) -> bool:
    """A search asking for full pages (:data:`PAGE_SIZE`): it wants every match. One that asks
    for fewer wants the first few (a listing, a batch of housekeeping) and is paged as asked."""
    return any(name == "_count" and value == str(PAGE_SIZE) for name, value in query)


def _matches(bundle: Resource, resource_type: str) -> int:
    """The entries of a searchset page that are matches (not includes, not outcomes)."""
    count = 0
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            continue
        search = entry.get("search")
        mode = search.get("mode") if isinstance(search, dict) else None
        if mode == "match" or (mode is None and resource.get("resourceType") == resource_type):
            count += 1
    return count


def _link(bundle: Resource, relation: str) -> str | None:
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == relation:
            url = link.get("url")
            if isinstance(url, str) and url:
                return url
    return None
