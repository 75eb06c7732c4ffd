"""What the sidecar sent upstream for one request, read from its DEBUG log, and the plan to send
the same reads again straight to HAPI (``bench.replay``). No I/O here but reading the log.

With ``LOG_LEVEL=DEBUG`` the sidecar logs one JSON line per upstream call when its answer has
arrived (``"message": "upstream call"``, with ``request_id``, ``upstream_method``,
``upstream_url`` -- the URL as sent, query included --, ``duration_ms``, ``as_service`` and
``upstream_prefer``, the ``Prefer`` header if any) and
one access line per request (``upstream_round_trips``, ``status``, ``duration_ms`` and, for
bookings, ``attempts``). A call's line is written when it ends, so it started ``duration_ms``
before the line's ``time`` (milliseconds).

**Rounds.** The sidecar sends independent reads at the same time and waits for all of them
before it goes on (``$find``: the Schedules with their actors, the HealthcareService and the
Slots; ``$book``: those and the lock search, then the Slot search, then the transaction). So a
read that started while a read of the current round was still under way belongs to that round
and is replayed at the same time; one that started after every read of the round had ended
begins the next round, replayed after the previous one has finished. In practice the reads of
a round start within a few milliseconds of each other; on a loaded machine a thread may start
later than that, which is why "still under way", not a fixed window, decides. A paging read
(``_getpages=``) continues the read whose last page ended last before it started, in order.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

UPSTREAM_CALL = "upstream call"
PAGE_MARKER = "_getpages="
CLOCK_SLACK_MS = 1.0
"""Log times have millisecond resolution (truncated): a read may seem to start up to this much
before the read it waited for ended."""


@dataclass(frozen=True)
class UpstreamCall:
    """One HTTP call the sidecar made for a request."""

    request_id: str
    method: str
    url: str
    status: int
    end: float
    """When its answer had arrived (epoch seconds, from the log line's ``time``)."""
    duration_ms: float
    as_service: bool
    """Sent with the sidecar's own credentials (else the caller's)."""
    prefer: str | None = None
    """Its ``Prefer`` header (``handling=strict`` on the sidecar's searches), sent again by the
    replay: a server that checks every parameter does a little more work."""
    cache_control: str | None = None
    """Its ``Cache-Control`` header (``no-cache`` on pages; ``no-cache, no-store, max-results=1000`` on a search asked as one page),
    sent again by the replay: a search HAPI need not keep costs it less."""

    @property
    def start(self) -> float:
        return self.end - self.duration_ms / 1000

    @property
    def is_page(self) -> bool:
        """A ``next`` page of a search (HAPI's paging links carry ``_getpages``)."""
        return PAGE_MARKER in self.url


@dataclass(frozen=True)
class AccessRecord:
    """The sidecar's own line for a request, written just before it answers."""

    request_id: str
    status: int
    duration_ms: float
    upstream_round_trips: int
    attempts: int | None


def parse_line(line: str) -> UpstreamCall | AccessRecord | None:
    """One log line; ``None`` for anything else (gunicorn's lines, other records, garbage)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or not record.get("request_id"):
        return None
    request_id = str(record["request_id"])
    try:
        if record.get("message") == UPSTREAM_CALL:
            return UpstreamCall(
                request_id=request_id,
                method=str(record["upstream_method"]),
                url=str(record["upstream_url"]),
                status=int(record.get("upstream_status") or 0),
                end=_epoch(str(record["time"])),
                duration_ms=float(record["duration_ms"]),
                as_service=bool(record.get("as_service")),
                prefer=str(record["upstream_prefer"]) if record.get("upstream_prefer") else None,
                cache_control=(
                    str(record["upstream_cache_control"]) if record.get("upstream_cache_control") else None
                ),
            )
        if "upstream_round_trips" in record and "status" in record:
            attempts = record.get("attempts")
            return AccessRecord(
                request_id=request_id,
                status=int(record["status"]),
                duration_ms=float(record.get("duration_ms") or 0.0),
                upstream_round_trips=int(record["upstream_round_trips"]),
                attempts=int(attempts) if attempts is not None else None,
            )
    except (KeyError, TypeError, ValueError):
        return None
    return None


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass
class RequestLog:
    calls: list[UpstreamCall] = field(default_factory=list)
    access: AccessRecord | None = None


class LogIndex:
    """Follows a growing log file and indexes its records by request id."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self._requests: dict[str, RequestLog] = {}

    def refresh(self) -> None:
        try:
            with self.path.open("rb") as log:
                log.seek(self._offset)
                data = log.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for raw in lines:
            self.add(raw.decode("utf-8", "replace"))

    def add(self, line: str) -> None:
        parsed = parse_line(line)
        if parsed is None:
            return
        entry = self._requests.setdefault(parsed.request_id, RequestLog())
        if isinstance(parsed, UpstreamCall):
            entry.calls.append(parsed)
        else:
            entry.access = parsed

    def get(self, request_id: str) -> RequestLog | None:
        return self._requests.get(request_id)

    def wait_for(self, request_id: str, timeout: float = 10.0) -> RequestLog:
        """The request's calls, once its access line is in the log (the sidecar writes it
        before answering, but another process's buffer may lag a moment)."""
        deadline = time.monotonic() + timeout
        while True:
            self.refresh()
            entry = self._requests.get(request_id)
            if entry is not None and entry.access is not None:
                return entry
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no access line for request {request_id} in {self.path}")
            time.sleep(0.005)

    def forget(self, request_id: str) -> None:
        self._requests.pop(request_id, None)

    def requests(self) -> dict[str, RequestLog]:
        return dict(self._requests)


@dataclass(frozen=True)
class Chain:
    """A read and the pages that followed it, sent one after another."""

    calls: tuple[UpstreamCall, ...]

    @property
    def end(self) -> float:
        return self.calls[-1].end


@dataclass(frozen=True)
class Round:
    """Reads the sidecar sent at the same time."""

    chains: tuple[Chain, ...]


def replay_plan(calls: list[UpstreamCall]) -> list[Round]:
    """Group a request's calls into rounds of concurrent chains (module docstring)."""
    slack = CLOCK_SLACK_MS / 1000
    rounds: list[list[list[UpstreamCall]]] = []
    round_end = 0.0
    for call in sorted(calls, key=lambda c: (c.start, c.end)):
        if call.is_page and rounds:
            chains = [chain for round_ in rounds for chain in round_]
            before = [c for c in chains if c[-1].end <= call.start + slack]
            continued = max(before or chains, key=lambda c: c[-1].end)
            continued.append(call)
            round_end = max(round_end, call.end)
            continue
        if rounds and call.start < round_end - slack:
            rounds[-1].append([call])
        else:
            rounds.append([[call]])
        round_end = max(round_end, call.end)
    return [Round(tuple(Chain(tuple(chain)) for chain in round_)) for round_ in rounds]


def plan_shape(plan: list[Round]) -> str:
    """Per round, the number of concurrent reads and the pages that followed them (``p``), joined
    by ``+``: a ``$find`` whose Slot search took ten pages is ``"3p9"``, a ``$book`` ``"3+1+1"``."""
    parts = []
    for round_ in plan:
        pages = sum(len(chain.calls) - 1 for chain in round_.chains)
        parts.append(f"{len(round_.chains)}" + (f"p{pages}" if pages else ""))
    return "+".join(parts)


def describe(call: UpstreamCall) -> dict[str, Any]:
    return {
        "method": call.method,
        "url": call.url,
        "status": call.status,
        "duration_ms": call.duration_ms,
        "as_service": call.as_service,
        "prefer": call.prefer,
        "cache_control": call.cache_control,
    }
