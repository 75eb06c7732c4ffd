"""The fault proxy itself, against a tiny upstream on 127.0.0.1 (no HAPI): each fault does what
the fault tests rely on, and keep-alive connections from ``requests`` work."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from tests.reliability import proxy as faults
from tests.reliability.proxy import Fault, FaultProxy


class _Upstream(ThreadingHTTPServer):
    daemon_threads = True
    received: list[tuple[str, str, bytes]]


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Upstream

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.received.append((self.command, self.path, body))
        answer = json.dumps({"resourceType": "Bundle", "path": self.path, "seen": len(self.server.received)})
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer.encode())

    do_GET = do_POST = _reply


@pytest.fixture
def upstream() -> Iterator[_Upstream]:
    server = _Upstream(("127.0.0.1", 0), _Echo)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def proxy(upstream: _Upstream) -> Iterator[FaultProxy]:
    running = FaultProxy(f"http://127.0.0.1:{upstream.server_address[1]}/fhir")
    try:
        yield running
    finally:
        running.close()


TRANSACTION = {
    "resourceType": "Bundle",
    "type": "transaction",
    "entry": [
        {"resource": {"resourceType": "Appointment"}, "request": {"method": "POST", "url": "Appointment"}}
    ],
}


def test_forwards_on_one_keep_alive_connection(proxy: FaultProxy, upstream: _Upstream) -> None:
    with requests.Session() as session:
        answers = [session.get(f"{proxy.base_url}/Slot", params={"n": str(i)}, timeout=5) for i in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert answers[2].json()["path"] == "/fhir/Slot?n=2"
    assert len(upstream.received) == 3
    assert proxy.counts() == {"GET Slot": 3}
    # One client connection carried all three (requests reuses it only if the proxy keeps it).
    assert all(a.headers["Connection"] == "keep-alive" for a in answers)


def test_status_answers_without_forwarding(proxy: FaultProxy, upstream: _Upstream) -> None:
    fault = proxy.inject(Fault(faults.status(500), faults.transaction()))
    answer = requests.post(proxy.base_url, json=TRANSACTION, timeout=5)
    assert answer.status_code == 500
    assert answer.json()["resourceType"] == "OperationOutcome"
    assert upstream.received == []
    assert fault.wait_done()
    again = requests.post(proxy.base_url, json=TRANSACTION, timeout=5)  # the fault was for one request
    assert again.status_code == 200
    assert len(upstream.received) == 1


def test_status_after_forward_and_cut_after_send_forward_first(
    proxy: FaultProxy, upstream: _Upstream
) -> None:
    proxy.inject(Fault(faults.status_after_forward(502), faults.transaction()))
    assert requests.post(proxy.base_url, json=TRANSACTION, timeout=5).status_code == 502
    proxy.inject(Fault(faults.CUT_AFTER_SEND, faults.transaction()))
    with pytest.raises(requests.ConnectionError):
        requests.post(proxy.base_url, json=TRANSACTION, timeout=5)
    assert len(upstream.received) == 2
    assert [p.upstream_status for p in proxy.passages] == [200, 200]
    assert [p.answered for p in proxy.passages] == [502, "cut"]


def test_a_predicate_picks_only_what_it_matches(proxy: FaultProxy) -> None:
    proxy.inject(Fault(faults.status(503), faults.transaction(operation="book")))
    assert requests.post(proxy.base_url, json=TRANSACTION, timeout=5).status_code == 200  # no Provenance
    assert requests.get(f"{proxy.base_url}/Appointment", timeout=5).status_code == 200


def test_stop_refuses_connections_until_resumed(proxy: FaultProxy) -> None:
    with requests.Session() as session:
        assert session.get(f"{proxy.base_url}/metadata", timeout=5).status_code == 200
        proxy.stop()
        with pytest.raises(requests.ConnectionError) as refused:
            session.get(f"{proxy.base_url}/metadata", timeout=5)
        assert "refused" in str(refused.value).lower()
        proxy.resume()
        assert session.get(f"{proxy.base_url}/metadata", timeout=5).status_code == 200


def test_delay_response_outlasts_the_clients_timeout(proxy: FaultProxy, upstream: _Upstream) -> None:
    fault = proxy.inject(Fault(faults.delay_response(1.0), faults.any_request()))
    with pytest.raises(requests.ReadTimeout):
        requests.get(f"{proxy.base_url}/Slot", timeout=0.3)
    assert len(upstream.received) == 1  # forwarded at once; only the answer was held
    assert fault.wait_done(timeout=5)


def test_pause_holds_the_request_until_released(proxy: FaultProxy, upstream: _Upstream) -> None:
    fault = proxy.inject(Fault(faults.pause(), faults.transaction()))
    answers: list[int] = []
    client = threading.Thread(
        target=lambda: answers.append(requests.post(proxy.base_url, json=TRANSACTION, timeout=10).status_code)
    )
    client.start()
    assert fault.wait_hits()
    assert upstream.received == []
    fault.release.set()
    client.join(10)
    assert answers == [200]
    assert len(upstream.received) == 1
    assert proxy.wait_idle(5)


def test_a_paused_request_whose_client_is_gone_can_be_dropped(proxy: FaultProxy, upstream: _Upstream) -> None:
    fault = proxy.inject(Fault(faults.pause(forward_if_client_gone=False), faults.transaction()))
    with pytest.raises(requests.ReadTimeout):
        requests.post(proxy.base_url, json=TRANSACTION, timeout=0.3)  # the client gives up and closes
    fault.release.set()
    assert fault.wait_done(timeout=5)
    assert fault.done[0].answered == "dropped"
    assert upstream.received == []
