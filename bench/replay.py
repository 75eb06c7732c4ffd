"""Send the reads the sidecar made for one request straight to HAPI, the same way
(``bench.upstream_log.replay_plan``): the same URLs, the same headers (``Cache-Control:
no-cache``, or the one-page ``no-cache, no-store, max-results=1000`` where the sidecar sent that, the sidecar's credentials and
guard key where it used them, its ``Prefer``), the reads of a round at
the same time on kept-alive connections, pages one after another following HAPI's ``next``
links. The wall time of that is what the sidecar cannot go below: its overhead is the rest.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

import requests

from bench.upstream_log import Chain, Round, UpstreamCall
from tests.integration.trust import GUARD_KEY, SIDECAR_TOKEN

FHIR_JSON = "application/fhir+json"
LANES = 32
"""Concurrent reads at most (a round of ``$find`` has three, and up to 16 pieces of a split Slot search)."""


def _headers(call: UpstreamCall, request_id: str) -> dict[str, str]:
    headers = {
        "Accept": FHIR_JSON,
        "Cache-Control": call.cache_control or "no-cache",
        "X-Request-ID": request_id,
    }
    if call.as_service:
        headers["Authorization"] = SIDECAR_TOKEN
        headers["X-Fanoni-Service-Key"] = GUARD_KEY
    if call.prefer:
        headers["Prefer"] = call.prefer
    return headers


class ReplayError(RuntimeError):
    """HAPI answered a replayed read differently from the original (not 200)."""


class Replayer:
    """Kept-alive connections to HAPI, one per lane, as the sidecar's pooled session has."""

    def __init__(self, lanes: int = LANES) -> None:
        self._sessions = [requests.Session() for _ in range(lanes)]
        self._pool = ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="bench-replay")

    def replay(self, plan: list[Round], request_id: str) -> float:
        """Seconds the plan's reads take straight to HAPI."""
        if any(call.method != "GET" for r in plan for chain in r.chains for call in chain.calls):
            raise ValueError("only reads are replayed")
        began = time.perf_counter()
        for round_ in plan:
            if len(round_.chains) == 1:
                self._chain(self._sessions[0], round_.chains[0], request_id)
                continue
            if len(round_.chains) > len(self._sessions):
                raise ValueError(f"{len(round_.chains)} concurrent reads, {len(self._sessions)} lanes")
            futures = [
                self._pool.submit(self._chain, self._sessions[lane], chain, request_id)
                for lane, chain in enumerate(round_.chains)
            ]
            for future in futures:
                future.result()
        return time.perf_counter() - began

    def _chain(self, session: requests.Session, chain: Chain, request_id: str) -> None:
        response: requests.Response | None = None
        for call in chain.calls:
            url = call.url
            if response is not None:
                # HAPI's next link for *this* search (a fresh one): the original's page URLs
                # name the original search's cached results.
                url = _next_link(response) or call.url
            response = session.get(url, headers=_headers(call, request_id), timeout=120)
            if response.status_code != 200:
                raise ReplayError(f"GET {url} answered {response.status_code}: {response.text[:300]}")

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for session in self._sessions:
            session.close()

    def __enter__(self) -> Replayer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _next_link(response: requests.Response) -> str | None:
    links = response.json().get("link") or []
    return next((str(link["url"]) for link in links if link.get("relation") == "next"), None)
