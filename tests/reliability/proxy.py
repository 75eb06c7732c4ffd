"""A fault-injecting HTTP/1.1 proxy between the sidecar and HAPI (the reliability suite).

The sidecar's ``FHIR_BASE_URL`` points at the proxy; the proxy forwards every request to HAPI
unchanged (``Host`` included, so HAPI's paging links point back at the proxy) and passes the
answer back, on keep-alive connections as the sidecar's pooled ``requests`` session expects.

A test injects :class:`Fault` objects: an :class:`Action` (what goes wrong) for the next
``times`` requests that ``match`` (a predicate such as :func:`transaction`). What can go wrong:

* ``stop()`` / ``resume()``: the proxy stops listening and drops every client connection --
  connections are refused, as when HAPI is down -- until resumed on the same port;
* ``delay_request(s)``: hold the request ``s`` seconds, then forward it (it lands late, after
  the sidecar gave up); ``delay_response(s)``: forward it, HAPI commits, hold the answer;
* ``status(code)``: answer ``code`` with an OperationOutcome without forwarding (nothing
  landed); ``status_after_forward(code)``: forward, HAPI commits, answer ``code`` instead;
* ``cut_before_send`` / ``cut_after_send``: close the client connection without an answer,
  before forwarding or after HAPI committed (connection reset);
* ``pause()`` / ``pause_after_forward()``: hold the request (or, once HAPI committed, its
  answer) until the test sets ``fault.release``; a request paused before forwarding is
  forwarded on release even when its client has died, unless ``forward_if_client_gone=False``;
* ``stop_before_send`` / ``stop_after_forward``: ``stop()`` with the request in hand, before
  forwarding it or once HAPI committed: the answer is lost and HAPI stays unreachable until
  the test resumes the proxy.

Every request is recorded as a :class:`Passage` (what it was, which fault hit it, what HAPI
answered, what the client got): ``proxy.passages``, ``proxy.counts()``; each fault records
its own hits, and tests wait on them (``fault.wait_hits``, ``fault.wait_done``) rather than
sleeping.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import select
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import urlsplit

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)
UPSTREAM_TIMEOUT = 120.0
"""How long the proxy waits for HAPI (longer than any delay a test injects)."""
MAX_PAUSE = 120.0
"""A paused request is let go after this long even if the test never releases it."""
OPERATION_SYSTEM = "https://fanoni.dev/fhir/CodeSystem/operation"
"""The system of the operation code in the Provenance every sidecar transaction carries."""

Json = dict[str, Any]


# --------------------------------------------------------------------------------------------
# What passes through, and how faults pick it.


@dataclass(frozen=True)
class ProxiedRequest:
    """One request as the proxy received it."""

    method: str
    target: str
    """Path and query, as sent (``/fhir/Slot?schedule=...``)."""
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @cached_property
    def json(self) -> Any:
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def is_transaction(self) -> bool:
        body = self.json
        return (
            self.method == "POST"
            and isinstance(body, dict)
            and body.get("resourceType") == "Bundle"
            and body.get("type") == "transaction"
        )

    def entries(self) -> list[Json]:
        body = self.json
        if not isinstance(body, dict):
            return []
        return [e for e in body.get("entry") or [] if isinstance(e, dict)]

    @property
    def operation(self) -> str | None:
        """The operation code of the transaction's Provenance (``book``, ``hold``, ``confirm``,
        ``cancel``, ``hold-expiry``, ...), if it carries one."""
        for entry in self.entries():
            resource = entry.get("resource") or {}
            if resource.get("resourceType") != "Provenance":
                continue
            for coding in (resource.get("activity") or {}).get("coding") or []:
                if coding.get("system") == OPERATION_SYSTEM:
                    return str(coding.get("code"))
        return None

    def writes(self, resource_type: str) -> bool:
        """Whether the transaction creates or updates a resource of this type."""
        return any(
            (e.get("request") or {}).get("method") in ("POST", "PUT")
            and (e.get("resource") or {}).get("resourceType") == resource_type
            for e in self.entries()
        )

    @property
    def kind(self) -> str:
        """A short label for counting: ``GET Slot``, ``transaction book``, ``transaction lock``."""
        if self.is_transaction:
            if self.writes("Appointment"):
                return f"transaction {self.operation or '?'}"
            return "transaction lock" if self.writes("Basic") else "transaction other"
        resource = self.path.rstrip("/").rsplit("/fhir", 1)[-1].strip("/").split("/", 1)[0]
        return f"{self.method} {resource or '[base]'}"


Predicate = Callable[[ProxiedRequest], bool]
F = TypeVar("F", bound="Fault")


def transaction(
    *,
    operation: str | None = None,
    writes: str | None = "Appointment",
    containing: str | Sequence[str] | None = None,
) -> Predicate:
    """Transaction Bundles posted to the FHIR base: by default those that write an Appointment
    (a booking, a confirmation, a cancellation -- not a lock's creation or fence); optionally
    only those of one ``operation`` and whose body contains ``containing`` (a clinic's prefix,
    or any of several)."""
    needles = _needles(containing)

    def predicate(request: ProxiedRequest) -> bool:
        return (
            request.is_transaction
            and (writes is None or request.writes(writes))
            and (operation is None or request.operation == operation)
            and (not needles or any(n in request.body for n in needles))
        )

    return predicate


def _needles(containing: str | Sequence[str] | None) -> list[bytes]:
    if containing is None:
        return []
    if isinstance(containing, str):
        return [containing.encode()]
    return [c.encode() for c in containing]


def lock_transaction(containing: str) -> Predicate:
    """Transactions that write only lock resources (creation or fence) of a clinic."""

    def predicate(request: ProxiedRequest) -> bool:
        return (
            request.is_transaction
            and request.writes("Basic")
            and not request.writes("Appointment")
            and containing.encode() in request.body
        )

    return predicate


def reads(containing: str, *, request_id: str | None = None) -> Predicate:
    """GET requests whose target (path and query) contains ``containing``; optionally only
    those made for one incoming request (its ``X-Request-ID``)."""

    def predicate(request: ProxiedRequest) -> bool:
        return (
            request.method == "GET"
            and containing in request.target
            and (request_id is None or request.header("X-Request-ID") == request_id)
        )

    return predicate


def any_request(containing: str | None = None) -> Predicate:
    """Every request, or those whose target or body contains ``containing``."""

    def predicate(request: ProxiedRequest) -> bool:
        if containing is None:
            return True
        return containing in request.target or containing.encode() in request.body

    return predicate


@dataclass(frozen=True)
class Action:
    """What goes wrong with one request (module docstring)."""

    kind: str
    seconds: float = 0.0
    status: int = 0
    forward_if_client_gone: bool = True

    def __str__(self) -> str:
        if self.kind in ("status", "status_after_forward"):
            return f"{self.kind}({self.status})"
        if self.kind.startswith("delay"):
            return f"{self.kind}({self.seconds:g})"
        return self.kind


def delay_request(seconds: float) -> Action:
    return Action("delay_request", seconds=seconds)


def delay_response(seconds: float) -> Action:
    return Action("delay_response", seconds=seconds)


def status(code: int) -> Action:
    return Action("status", status=code)


def status_after_forward(code: int) -> Action:
    return Action("status_after_forward", status=code)


CUT_BEFORE_SEND = Action("cut_before_send")
CUT_AFTER_SEND = Action("cut_after_send")
STOP_BEFORE_SEND = Action("stop_before_send")
STOP_AFTER_FORWARD = Action("stop_after_forward")


def pause(*, forward_if_client_gone: bool = True) -> Action:
    return Action("pause", forward_if_client_gone=forward_if_client_gone)


def pause_after_forward() -> Action:
    return Action("pause_after_forward")


@dataclass
class Passage:
    """One request through the proxy and what became of it."""

    kind: str
    method: str
    target: str
    request_id: str | None
    """The ``X-Request-ID`` the sidecar sent: which incoming request this upstream call served."""
    action: str | None
    """The fault's action, or ``None`` when the request passed untouched."""
    upstream_status: int | None = None
    """HAPI's status; ``None`` when the request was not forwarded."""
    answered: int | str | None = None
    """The status the client got, or ``cut``, ``client gone``, ``dropped``."""
    started: float = field(default_factory=time.monotonic)
    duration: float = 0.0


class Fault:
    """``action`` for the next ``times`` requests that ``match`` (after letting ``skip`` of them
    through); records its hits."""

    def __init__(self, action: Action, match: Predicate, *, times: int = 1, skip: int = 0) -> None:
        self.action = action
        self.match = match
        self.remaining = times
        self.skip = skip
        """Matching requests to let through untouched before the fault starts."""
        self.release = threading.Event()
        """For ``pause`` actions: set it to let the held request (or answer) go."""
        self.hits: list[Passage] = []
        self.forwarded: list[Passage] = []
        self.done: list[Passage] = []
        self._changed = threading.Condition()

    def claim(self, request: ProxiedRequest) -> Action | None:
        """Called under the proxy's lock: this fault's action if it takes ``request``."""
        if self.remaining > 0 and self.match(request):
            if self.skip > 0:
                self.skip -= 1
                return None
            self.remaining -= 1
            return self.action
        return None

    def record_hit(self, passage: Passage) -> None:
        with self._changed:
            self.hits.append(passage)
            self._changed.notify_all()

    def record_forwarded(self, passage: Passage) -> None:
        with self._changed:
            self.forwarded.append(passage)
            self._changed.notify_all()

    def record_done(self, passage: Passage) -> None:
        with self._changed:
            self.done.append(passage)
            self._changed.notify_all()

    def wait_hits(self, count: int = 1, timeout: float = 30.0) -> bool:
        """Wait until ``count`` requests were taken by this fault (they are held, if paused)."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.hits) >= count, timeout)

    def wait_forwarded(self, count: int = 1, timeout: float = 30.0) -> bool:
        """Wait until HAPI has answered ``count`` of the requests this fault took (so a
        transaction has committed, or been refused, whatever the client is told)."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.forwarded) >= count, timeout)

    def wait_done(self, count: int = 1, timeout: float = 30.0) -> bool:
        """Wait until the proxy has finished with ``count`` of the requests this fault took
        (forwarded and answered, cut or dropped)."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.done) >= count, timeout)


class RandomFaults(Fault):
    """One of ``actions`` for a ``rate`` share of the requests that ``match``, chosen by a
    seeded generator (the load test)."""

    def __init__(self, actions: Sequence[Action], match: Predicate, *, rate: float, seed: int) -> None:
        super().__init__(actions[0], match, times=0)
        self.actions = list(actions)
        self.rate = rate
        self.random = random.Random(seed)
        self.considered = 0

    def claim(self, request: ProxiedRequest) -> Action | None:
        if not self.match(request):
            return None
        self.considered += 1
        if self.random.random() >= self.rate:
            return None
        return self.random.choice(self.actions)


# --------------------------------------------------------------------------------------------
# The proxy.


class _Cut(Exception):
    """The client connection was closed on purpose; no answer is written."""


class FaultProxy:
    """Listens on 127.0.0.1 (a free port unless given) and forwards to ``upstream_base``."""

    def __init__(self, upstream_base: str, *, port: int = 0) -> None:
        parts = urlsplit(upstream_base)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"the proxy forwards to http:// only, not {upstream_base!r}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.path = parts.path.rstrip("/")
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._clients: set[socket.socket] = set()
        self._in_flight = 0
        self._idle = threading.Condition(self._lock)
        self._closing = threading.Event()
        self.closed = False
        self.passages: list[Passage] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = port
        self.resume()

    @property
    def base_url(self) -> str:
        """The FHIR base as reached through the proxy (same path as the upstream's)."""
        return f"http://127.0.0.1:{self.port}{self.path}"

    @property
    def stopped(self) -> bool:
        return self._server is None

    # ---- control --------------------------------------------------------------------------

    def resume(self) -> None:
        """Listen (again) on the same port."""
        if self._server is not None or self.closed:
            return
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.proxy = self
        self.port = int(server.server_address[1])
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fault-proxy", daemon=True
        )
        thread.start()
        self._server, self._thread = server, thread

    def stop(self) -> None:
        """Refuse connections: close the listening socket and every client connection."""
        server, self._server = self._server, None
        if server is None:
            return
        # shutdown() waits for serve_forever to return; never call it from the serving thread
        # (handlers run on their own threads, so a handler may call stop()).
        server.shutdown()
        server.server_close()
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Stop for good: also let go of paused requests and skip pending delays."""
        self._closing.set()
        self.closed = True
        with self._lock:
            faults = list(self._faults)
        for fault in faults:
            fault.release.set()
        self.stop()

    def inject(self, fault: F) -> F:
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        """Remove every fault (paused requests are released) and listen again if stopped."""
        with self._lock:
            faults, self._faults = self._faults, []
        for fault in faults:
            fault.release.set()
        if not self.closed:
            self.resume()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Wait until no request is being handled (delayed and paused ones included)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    def counts(self, since: int = 0, *, request_id: str | None = None) -> Counter[str]:
        """Requests by kind (``GET Slot``, ``transaction book``, ...) from ``passages[since:]``,
        or only those made for one incoming request (its ``X-Request-ID``)."""
        with self._lock:
            return Counter(
                p.kind for p in self.passages[since:] if request_id is None or p.request_id == request_id
            )

    def mark(self) -> int:
        """A position in ``passages``, for ``counts(since=...)``."""
        with self._lock:
            return len(self.passages)

    # ---- request handling -----------------------------------------------------------------

    def _claim(self, request: ProxiedRequest) -> tuple[Fault | None, Action | None, Passage]:
        with self._lock:
            fault, action = None, None
            for candidate in self._faults:
                action = candidate.claim(request)
                if action is not None:
                    fault = candidate
                    break
            passage = Passage(
                request.kind,
                request.method,
                request.target[:200],
                request.header("X-Request-ID"),
                str(action) if action else None,
            )
            self.passages.append(passage)
            self._in_flight += 1
        if fault is not None:
            fault.record_hit(passage)
        return fault, action, passage

    def _finished(self, fault: Fault | None, passage: Passage) -> None:
        passage.duration = time.monotonic() - passage.started
        if fault is not None:
            fault.record_done(passage)
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def _track(self, client: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._clients.add(client)
            else:
                self._clients.discard(client)

    def _forward(self, request: ProxiedRequest) -> tuple[int, str, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(
            self.upstream_host, self.upstream_port, timeout=UPSTREAM_TIMEOUT
        )
        try:
            headers = {k: v for k, v in request.headers if k.lower() not in HOP_BY_HOP}
            headers["Connection"] = "close"
            if request.body or request.method in ("POST", "PUT", "PATCH"):
                headers["Content-Length"] = str(len(request.body))
            connection.request(request.method, request.target, body=request.body or None, headers=headers)
            response = connection.getresponse()
            body = response.read()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
            return response.status, response.reason, kept, body
        finally:
            connection.close()

    def _sleep(self, seconds: float) -> None:
        self._closing.wait(seconds)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: FaultProxy


def _outcome(code: int, text: str) -> bytes:
    return json.dumps(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "exception", "diagnostics": text}],
        }
    ).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the proxy records passages instead

    def setup(self) -> None:
        super().setup()
        self.server.proxy._track(self.connection, True)

    def finish(self) -> None:
        self.server.proxy._track(self.connection, False)
        with contextlib.suppress(OSError, ValueError):
            super().finish()

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET

    # ---- one request ----------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        proxy = self.server.proxy
        request = ProxiedRequest(self.command, self.path, tuple(self.headers.items()), self._read_body())
        fault, action, passage = proxy._claim(request)
        try:
            self._act(proxy, request, action, passage, fault)
        except _Cut:
            self.close_connection = True
        except OSError:
            # The client went away while we held its request or answer (a killed worker, a
            # sidecar that timed out): nothing to answer.
            self.close_connection = True
            if passage.answered is None:
                passage.answered = "client gone"
        finally:
            proxy._finished(fault, passage)

    def _act(
        self,
        proxy: FaultProxy,
        request: ProxiedRequest,
        action: Action | None,
        passage: Passage,
        fault: Fault | None,
    ) -> None:
        kind = action.kind if action is not None else None
        if kind == "status":
            assert action is not None
            self._answer(passage, action.status, "Injected", [], _outcome(action.status, "injected fault"))
            return
        if kind == "cut_before_send":
            self._cut(passage)
        if kind == "stop_before_send":
            passage.answered = "cut"
            proxy.stop()  # closes this connection too
            raise _Cut
        if kind == "delay_request":
            assert action is not None
            proxy._sleep(action.seconds)
        if kind == "pause":
            assert action is not None and fault is not None
            fault.release.wait(MAX_PAUSE)
            if not action.forward_if_client_gone and self._client_gone():
                passage.answered = "dropped"
                raise _Cut
        try:
            code, reason, headers, body = proxy._forward(request)
        except OSError as exc:
            passage.upstream_status = None
            self._answer(passage, 502, "Bad Gateway", [], _outcome(502, f"proxy: upstream failed: {exc}"))
            return
        passage.upstream_status = code
        if fault is not None:
            fault.record_forwarded(passage)
        if kind == "delay_response":
            assert action is not None
            proxy._sleep(action.seconds)
        elif kind == "pause_after_forward":
            assert fault is not None
            fault.release.wait(MAX_PAUSE)
        elif kind == "status_after_forward":
            assert action is not None
            self._answer(passage, action.status, "Injected", [], _outcome(action.status, "injected fault"))
            return
        elif kind == "cut_after_send":
            self._cut(passage)
        elif kind == "stop_after_forward":
            passage.answered = "cut"
            proxy.stop()  # closes this connection too
            raise _Cut
        self._answer(passage, code, reason, headers, body)

    def _answer(
        self, passage: Passage, code: int, reason: str, headers: list[tuple[str, str]], body: bytes
    ) -> None:
        self.send_response_only(code, reason)
        for name, value in headers:
            self.send_header(name, value)
        if not any(name.lower() == "content-type" for name, _ in headers):
            self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close" if self.close_connection else "keep-alive")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()
        passage.answered = code

    def _cut(self, passage: Passage) -> None:
        """Close the client connection without an answer (the client reads end-of-stream where
        the status line should be; the socket is reset when the handler lets it go)."""
        passage.answered = "cut"
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.shutdown(socket.SHUT_RDWR)
        raise _Cut

    def _client_gone(self) -> bool:
        """Whether the client closed its end (a killed process's socket is closed by the kernel)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            peeked: bytes = self.connection.recv(1, socket.MSG_PEEK)
            return peeked == b""
        except OSError:
            return True


@contextlib.contextmanager
def running_proxy(upstream_base: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream_base)
    try:
        yield proxy
    finally:
        proxy.close()
