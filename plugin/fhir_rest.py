"""FHIR REST over the HTTP transport: read, search across pages, count, transaction, update,
operation and ``metadata`` -- what any R4 server offers, with the failures the
``operations.store.FhirStore`` contract names. :class:`plugin.upstream.FhirUpstream` adds the
scheduling searches (Schedules with their actors, services, Slots by time) on top; the HTTP
itself (headers, credentials, budgets, one page or paged) is :class:`plugin.transport.Transport`.
"""

from __future__ import annotations

from collections.abc import Mapping

from operations.errors import (
    ConcurrentChange,
    OutcomeUnknown,
    ReferencedElsewhere,
    Unprocessable,
)
from operations.fhir_values import is_fhir_id
from operations.store import Resource
from plugin.provenance import Attribution, carries_provenance, with_provenance
from plugin.service_credentials import ServiceCredentials
from plugin.transport import PAGE_SIZE, Client, Params, Transport
from plugin.upstream_errors import (
    UpstreamBadResponse,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    fhir_json,
    fhir_resource,
    is_delete_conflict,
    outcome_or_none,
    outcome_text,
)

STRICT = {"Prefer": "handling=strict"}
"""Ask the server to refuse parameters it does not know rather than ignore them: an ignored
``end`` would silently turn a Slot query into "every Slot ever"."""


class FhirRest(Transport):
    """One identity's FHIR REST calls in one request; with ``attribution`` (the sidecar acting
    for someone) every transaction carries that Provenance."""

    def __init__(
        self,
        client: Client,
        *,
        authorization: str | None = None,
        credentials: ServiceCredentials | None = None,
        request_id: str | None = None,
        attribution: Attribution | None = None,
        deadline: float | None = None,
    ) -> None:
        super().__init__(
            client,
            authorization=authorization,
            credentials=credentials,
            request_id=request_id,
            deadline=deadline,
        )
        self._attribution = attribution

    def _count(self, resource_type: str, params: Params) -> int:
        response = self._send(
            "GET",
            f"{self._base}/{resource_type}",
            params=[*params, ("_summary", "count")],
            headers=STRICT,
        )
        self._raise_for_status(response)
        total = fhir_resource(response, "Bundle").get("total")
        if not isinstance(total, int):
            raise UpstreamBadResponse("the upstream FHIR server did not count the search (_summary=count)")
        return total

    def read(self, resource_type: str, resource_id: str) -> Resource | None:
        """``GET [base]/Type/id``; ``None`` when it does not exist (404, or 410 once deleted)."""
        if not is_fhir_id(resource_id):
            return None  # no resource can have that id; asking would only build a bad URL
        response = self._send("GET", f"{self._base}/{resource_type}/{resource_id}")
        if response.status_code in (404, 410):
            return None
        self._raise_for_status(response)
        return fhir_resource(response, resource_type)

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

    def search_including(
        self, resource_type: str, params: Params | Mapping[str, str]
    ) -> tuple[list[Resource], list[Resource]]:
        """The matches of the search and, apart, what its ``_include`` brought, across all pages."""
        found = self._search_all(resource_type, params, headers=STRICT)
        return [r for r, mode in found if mode == "match"], [r for r, mode in found if mode == "include"]

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

    def attributed(self, bundle: Resource) -> Resource:
        """``bundle`` with this store's Provenance (``plugin/provenance.py``); as it is for a
        store that writes on nobody's behalf."""
        return bundle if self._attribution is None else with_provenance(bundle, self._attribution)

    def transaction(self, bundle: Resource) -> Resource:
        """``POST [base]`` a transaction Bundle; the ``transaction-response`` Bundle back.

        The service store adds the Provenance (``plugin/provenance.py``), unless the bundle
        carries its own (a group of bookings: one per booking, attributed by its own request). Failures, as the
        ``FhirStore`` contract says: a 409/412 version conflict raises ``ConcurrentChange`` (the
        use cases re-read and decide again); a 409 refusing a delete raises
        ``ReferencedElsewhere``; a 400/422 is the caller's content (422). When the request may
        have reached the upstream but no usable answer came back -- a read timeout, a
        connection cut after sending, a 5xx, an unreadable 2xx -- ``OutcomeUnknown``: the write
        may have landed, and the use case finds out. A connection that was never made, or a
        429, is a plain ``UpstreamError``: nothing was sent or processed.
        """
        if not carries_provenance(bundle):
            bundle = self.attributed(bundle)
        try:
            response = self._send(
                "POST",
                self._base,
                body=bundle,
                headers={"Prefer": "return=representation"},
            )
        except (UpstreamTimeout, UpstreamUnavailable, UpstreamBadResponse) as exc:
            if exc.never_sent:  # no connection, no credentials, or the time budget was spent
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
                f"The FHIR server refused to store the change: {outcome_text(exc.outcome) or exc.diagnostics}",
                code="processing",
            ) from exc
        except ConcurrentChange as exc:
            deletes = any(
                (e.get("request") or {}).get("method") == "DELETE" for e in bundle.get("entry") or []
            )
            if deletes and response.status_code == 409 and is_delete_conflict(outcome_or_none(response)):
                raise ReferencedElsewhere(str(exc)) from None
            raise
        except UpstreamBadResponse as exc:
            if exc.upstream_status is not None and exc.upstream_status >= 500:
                raise OutcomeUnknown(exc) from exc
            raise  # a redirect: not processed (a 429 is UpstreamUnavailable: not processed either)
        try:
            return fhir_resource(response, "Bundle")
        except UpstreamBadResponse as exc:
            raise OutcomeUnknown(exc) from exc

    def update(self, resource: Resource) -> tuple[Resource, bool]:
        """``PUT [base]/Type/id``; the stored resource and whether it was created (201)."""
        url = f"{self._base}/{resource['resourceType']}/{resource['id']}"
        response = self._send("PUT", url, body=resource)
        self._raise_for_status(response)
        return fhir_resource(response, resource["resourceType"]), response.status_code == 201

    def operation(
        self, path: str, parameters: Resource, *, headers: Mapping[str, str] | None = None
    ) -> Resource | None:
        """``POST [base]/{path}`` (e.g. ``$reindex``) with a Parameters body."""
        response = self._send("POST", f"{self._base}/{path}", body=parameters, headers=headers)
        self._raise_for_status(response)
        return fhir_json(response) if response.content else None

    def capabilities(self, *, read_timeout: float | None = None) -> Resource:
        """``GET [base]/metadata``: the readiness check, and proof the base URL is a FHIR server."""
        response = self._send("GET", f"{self._base}/metadata", read_timeout=read_timeout)
        self._raise_for_status(response)
        return fhir_resource(response, "CapabilityStatement")
