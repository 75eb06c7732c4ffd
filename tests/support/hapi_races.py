"""Version-checked FHIR transactions racing each other straight against a HAPI server: what
HAPI answers the losers, whether any loser stored anything, and how the sidecar reads each
answer (``plugin.upstream_errors.raise_for_status``).

Each scenario sends ``width`` transactions at the same instant (a barrier), shaped like the
sidecar's own writes (docs/consistency.md):

* ``book``: ``PUT`` a Schedule's lock with ``ifMatch`` on the version all of them read, ``POST``
  two Slots, an Appointment and a Provenance; every Slot and the Appointment carry the request's
  booking request tag and a tag new to the server (the first write of a tag races too);
* ``book two locks``: two locks, half of the requests taking them in the other order;
* ``book creating locks``: the first booking of a time: ``PUT`` of four locks that do not exist
  yet, each with ``ifMatch: W/"0"`` (HAPI: create it unless it exists; operations/locks.py), two
  Slots;
* ``confirm``: the lock, the Slot and the Appointment, each ``PUT`` with ``ifMatch``;
* ``cancel``: ``PUT`` the Appointment (cancelled, its Slot reference dropped) with ``ifMatch``
  and ``DELETE`` the Slot;
* ``create lock`` / ``create two locks``: ``PUT`` of locks that do not exist yet with
  ``ifMatch: W/"0"`` (the same client-assigned ids at the same moment, the second in both
  orders); ``create lock, no ifMatch``: the same without ``ifMatch`` (a plain upsert: several
  may succeed one after the other).

Whether a request stored anything is read back (its Slots by booking request tag; the versions
of the contested resources), so an answer can be matched with what landed.

    python -m tests.support.hapi_races [--rounds N] [--width N] [--json FILE]

starts a throwaway PostgreSQL and HAPI on it (``tests/support/postgres.py``), runs every scenario
``--rounds`` times under PostgreSQL's default isolation (read committed), then under
``repeatable read`` and ``serializable``, and prints a Markdown table per isolation level (docs/reliability.md, "HAPI on
PostgreSQL"). ``--json`` writes one answer body per distinct kind of answer.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import requests

from operations.errors import ConcurrentChange
from operations.writes import BOOKING_REQUEST_SYSTEM
from plugin.upstream_errors import UpstreamError, raise_for_status
from tests.integration.trust import SERVICE_HEADERS

Resource = dict[str, Any]
WRITE = {"Content-Type": "application/fhir+json", "Prefer": "return=representation", **SERVICE_HEADERS}
NO_CACHE = {"Cache-Control": "no-cache", "Accept": "application/fhir+json"}
PROBE_TAG_SYSTEM = "urn:fanoni:race-probe"
START, END = "2027-01-04T15:00:00Z", "2027-01-04T15:30:00Z"
HAPI_CODE = re.compile(r"HAPI-\d{4}")
ABSENT = "0"
"""``ifMatch: W/"0"``: create it unless it exists (how the sidecar creates a missing lock)."""


@dataclass
class Answer:
    """One racing request's answer."""

    scenario: str
    status: int
    body: Any
    """The answer's JSON (text when it is not JSON)."""
    stored: bool | None = None
    """Whether anything this request wrote is in HAPI (``None``: not told apart per request;
    the round's ``consistent`` covers it)."""

    @property
    def text(self) -> str:
        """The OperationOutcome's diagnostics (or the raw body of any other answer)."""
        if isinstance(self.body, dict) and self.body.get("resourceType") == "OperationOutcome":
            return " | ".join(str(i.get("diagnostics") or "") for i in self.body.get("issue") or [])
        return "" if 200 <= self.status < 300 else str(self.body)

    @property
    def hapi_codes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(HAPI_CODE.findall(self.text)))

    @property
    def kind(self) -> str:
        """The answer reduced to what tells answers apart: status, HAPI codes, the database's
        reason when HAPI passed one on."""
        reason = next(
            (
                r
                for r in (
                    "could not serialize access",
                    "deadlock detected",
                    "duplicate key value violates unique constraint",
                    "OptimisticLockException",
                    "CannotAcquireLockException",
                )
                if r in self.text
            ),
            "",
        )
        return " ".join(filter(None, [str(self.status), *self.hapi_codes, reason and f"[{reason}]"]))


@dataclass
class Round:
    scenario: str
    answers: list[Answer]
    consistent: bool
    """What HAPI holds afterwards matches the answers: as many landed writes as 2xx answers,
    and every loser's own writes absent."""
    note: str = ""


@dataclass
class RaceReport:
    rounds: list[Round] = field(default_factory=list)

    @property
    def answers(self) -> list[Answer]:
        return [a for r in self.rounds for a in r.answers]

    def losers(self) -> list[Answer]:
        return [a for a in self.answers if not 200 <= a.status < 300]

    def inconsistent(self) -> list[Round]:
        return [r for r in self.rounds if not r.consistent]


def sidecar_reading(answer: Answer) -> str:
    """How the sidecar reads this answer to a transaction: ``ConcurrentChange`` (re-read and
    decide again), ``outcome unknown`` (a 5xx: settle by fencing), or the error's class."""
    response = requests.Response()
    response.status_code = answer.status
    response._content = (
        json.dumps(answer.body).encode() if not isinstance(answer.body, str) else answer.body.encode()
    )
    response.headers["Content-Type"] = "application/fhir+json"
    try:
        raise_for_status(response, own_credentials=True, request_id=None)
    except ConcurrentChange:
        return "ConcurrentChange"
    except UpstreamError as exc:
        if exc.upstream_status is not None and exc.upstream_status >= 500:
            return "outcome unknown"
        return type(exc).__name__
    return "success"


# --------------------------------------------------------------------------------------------
# Scenarios.


class Races:
    """The scenarios against one HAPI base; each call is one round with fresh resources."""

    def __init__(self, base: str, width: int = 20) -> None:
        self.base = base.rstrip("/")
        self.width = width
        self.prefix = "race" + uuid.uuid4().hex[:8]
        self._rounds = 0
        self._session = requests.Session()
        location = {"resourceType": "Location", "id": self.prefix}
        self._put(location)
        for suffix in ("a", "b"):
            self._put(
                {
                    "resourceType": "Schedule",
                    "id": f"{self.prefix}{suffix}",
                    "actor": [{"reference": f"Location/{self.prefix}"}],
                }
            )

    def all(self) -> list[Round]:
        return [
            self.book(),
            self.book_two_locks(),
            self.book_creating_locks(),
            self.confirm(),
            self.cancel(),
            self.create_lock(),
            self.create_lock_without_if_match(),
            self.create_two_locks(),
        ]

    def book(self) -> Round:
        lock = self._new_lock()
        shared_tag = {"system": PROBE_TAG_SYSTEM, "code": self._name("tag")}

        def send(i: int, marker: str) -> requests.Response:
            tags = [shared_tag, {"system": BOOKING_REQUEST_SYSTEM, "code": marker}]
            slots = [self._slot("a", tags) for _ in range(2)]
            appointment = {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": {
                    "resourceType": "Appointment",
                    "meta": {"tag": tags},
                    "status": "booked",
                    "start": START,
                    "end": END,
                    "slot": [{"reference": s["fullUrl"]} for s in slots],
                    "participant": [
                        {"actor": {"reference": f"Location/{self.prefix}"}, "status": "accepted"}
                    ],
                },
                "request": {"method": "POST", "url": "Appointment"},
            }
            provenance = {
                "resource": {
                    "resourceType": "Provenance",
                    "target": [{"reference": appointment["fullUrl"]}],
                    "recorded": "2026-12-01T00:00:00Z",
                    "agent": [{"who": {"display": "race probe"}}],
                },
                "request": {"method": "POST", "url": "Provenance"},
            }
            return self._transaction([self._lock_update(lock, 1, i), *slots, appointment, provenance])

        return self._slot_writing_round("book", send, [lock])

    def book_two_locks(self) -> Round:
        first, second = self._new_lock(), self._new_lock()

        def send(i: int, marker: str) -> requests.Response:
            locks = [self._lock_update(first, 1, i), self._lock_update(second, 1, i)]
            if i % 2:
                locks.reverse()
            tags = [{"system": BOOKING_REQUEST_SYSTEM, "code": marker}]
            return self._transaction([*locks, self._slot("a", tags), self._slot("b", tags)])

        return self._slot_writing_round("book two locks", send, [first, second])

    def book_creating_locks(self) -> Round:
        buckets = [self._name("lock") for _ in range(4)]

        def send(i: int, marker: str) -> requests.Response:
            tags = [{"system": BOOKING_REQUEST_SYSTEM, "code": marker}]
            created = [self._lock_update(b, 1, i, if_match=ABSENT) for b in buckets]
            return self._transaction([*created, *(self._slot("a", tags) for _ in range(2))])

        return self._slot_writing_round("book creating locks", send, buckets, expected_version="1")

    def confirm(self) -> Round:
        lock = self._new_lock()
        slot_id, appointment_id = self._name("slot"), self._name("appt")
        slot = {**self._slot("a", [])["resource"], "id": slot_id, "status": "busy-tentative"}
        appointment = self._appointment(appointment_id, slot_id, "pending")
        self._transaction([self._put_entry(slot), self._put_entry(appointment)], check=True)

        def send(i: int) -> requests.Response:
            return self._transaction(
                [
                    self._lock_update(lock, 1, i),
                    self._put_entry({**slot, "status": "busy", "comment": f"request {i}"}, if_match="1"),
                    self._put_entry(
                        {**appointment, "status": "booked", "comment": f"request {i}"}, if_match="1"
                    ),
                ]
            )

        answers = self._race("confirm", send)
        won = sum(200 <= a.status < 300 for a in answers)
        versions = [
            self._version("Basic", lock),
            self._version("Slot", slot_id),
            self._version("Appointment", appointment_id),
        ]
        return Round("confirm", answers, won == 1 and versions == ["2", "2", "2"], f"versions {versions}")

    def cancel(self) -> Round:
        slot_id, appointment_id = self._name("slot"), self._name("appt")
        slot = {**self._slot("a", [])["resource"], "id": slot_id}
        appointment = self._appointment(appointment_id, slot_id, "booked")
        self._transaction([self._put_entry(slot), self._put_entry(appointment)], check=True)
        cancelled = {k: v for k, v in appointment.items() if k != "slot"} | {"status": "cancelled"}

        def send(i: int) -> requests.Response:
            return self._transaction(
                [
                    self._put_entry({**cancelled, "comment": f"request {i}"}, if_match="1"),
                    {"request": {"method": "DELETE", "url": f"Slot/{slot_id}"}},
                ]
            )

        answers = self._race("cancel", send)
        won = sum(200 <= a.status < 300 for a in answers)
        version = self._version("Appointment", appointment_id)
        slot_gone = (
            self._session.get(f"{self.base}/Slot/{slot_id}", headers=NO_CACHE, timeout=60).status_code == 410
        )
        return Round(
            "cancel", answers, won == 1 and version == "2" and slot_gone, f"Appointment version {version}"
        )

    def create_lock(self) -> Round:
        lock = self._name("lock")
        answers = self._race(
            "create lock", lambda i: self._transaction([self._lock_update(lock, 0, i, if_match=ABSENT)])
        )
        return self._versions_round("create lock", answers, [lock], exactly_one=True)

    def create_lock_without_if_match(self) -> Round:
        lock = self._name("lock")
        answers = self._race(
            "create lock, no ifMatch",
            lambda i: self._transaction([self._lock_update(lock, 0, i, if_match=None)]),
        )
        return self._versions_round("create lock, no ifMatch", answers, [lock])

    def create_two_locks(self) -> Round:
        first, second = self._name("lock"), self._name("lock")

        def send(i: int) -> requests.Response:
            locks = [
                self._lock_update(first, 0, i, if_match=ABSENT),
                self._lock_update(second, 0, i, if_match=ABSENT),
            ]
            return self._transaction(locks[::-1] if i % 2 else locks)

        answers = self._race("create two locks", send)
        return self._versions_round("create two locks", answers, [first, second], exactly_one=True)

    # ---- helpers ------------------------------------------------------------------------------

    def _slot_writing_round(
        self,
        scenario: str,
        send: Callable[[int, str], requests.Response],
        locks: Sequence[str],
        *,
        expected_version: str = "2",
    ) -> Round:
        """Exactly one winner, each request's Slots stored exactly when it was answered 2xx, and
        each lock at ``expected_version``."""
        markers = [self._name("req") for _ in range(self.width)]
        answers = self._race(scenario, lambda i: send(i, markers[i]))
        for answer, marker in zip(answers, markers, strict=True):
            answer.stored = self._tagged_slots(marker) > 0
        won = sum(200 <= a.status < 300 for a in answers)
        versions = [self._version("Basic", lock) for lock in locks]
        consistent = (
            all(a.stored == (200 <= a.status < 300) for a in answers)
            and won == 1
            and versions == [expected_version] * len(locks)
        )
        return Round(scenario, answers, consistent, f"lock versions {versions}")

    def _versions_round(
        self, scenario: str, answers: list[Answer], ids: Sequence[str], *, exactly_one: bool = False
    ) -> Round:
        """Creates racing: every 2xx is one version of each (a create, then updates); checked
        against absence, only one may succeed."""
        won = sum(200 <= a.status < 300 for a in answers)
        histories = [self._history_count("Basic", i) for i in ids]
        consistent = (won == 1 if exactly_one else won >= 1) and histories == [won] * len(ids)
        return Round(scenario, answers, consistent, f"{won} succeeded, versions {histories}")

    def _race(self, scenario: str, send: Callable[[int], requests.Response]) -> list[Answer]:
        barrier = threading.Barrier(self.width)

        def go(i: int) -> Answer:
            barrier.wait()
            response = send(i)
            try:
                body: Any = response.json()
            except ValueError:
                body = response.text
            return Answer(scenario, response.status_code, body)

        with ThreadPoolExecutor(self.width) as pool:
            return list(pool.map(go, range(self.width)))

    def _name(self, what: str) -> str:
        self._rounds += 1
        return f"{self.prefix}-{what}{self._rounds}"

    def _new_lock(self) -> str:
        lock = self._name("lock")
        self._transaction([self._lock_update(lock, 0, 0, if_match=None)], check=True)
        return lock

    @staticmethod
    def _lock_update(lock: str, counter: int, request: int, *, if_match: str | None = "1") -> Resource:
        """``PUT`` of a lock, checked against version ``if_match`` (``ABSENT``: must not exist;
        ``None``: not checked)."""
        entry: Resource = {
            "fullUrl": f"Basic/fanoni-lock-{lock}",
            "resource": {
                "resourceType": "Basic",
                "id": f"fanoni-lock-{lock}",
                "code": {"text": "race probe lock"},
                "extension": [{"url": "urn:fanoni:race-probe:counter", "valueInteger": counter}],
                "text": {
                    "status": "generated",
                    "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{request}</div>',
                },
            },
            "request": {"method": "PUT", "url": f"Basic/fanoni-lock-{lock}"},
        }
        if if_match is not None:
            entry["request"]["ifMatch"] = f'W/"{if_match}"'
        return entry

    def _slot(self, schedule: str, tags: list[Resource]) -> Resource:
        return {
            "fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": {
                "resourceType": "Slot",
                "meta": {"tag": tags},
                "schedule": {"reference": f"Schedule/{self.prefix}{schedule}"},
                "status": "busy",
                "start": START,
                "end": END,
            },
            "request": {"method": "POST", "url": "Slot"},
        }

    def _appointment(self, appointment_id: str, slot_id: str, status: str) -> Resource:
        return {
            "resourceType": "Appointment",
            "id": appointment_id,
            "status": status,
            "start": START,
            "end": END,
            "slot": [{"reference": f"Slot/{slot_id}"}],
            "participant": [{"actor": {"reference": f"Location/{self.prefix}"}, "status": "accepted"}],
        }

    @staticmethod
    def _put_entry(resource: Resource, if_match: str | None = None) -> Resource:
        request = {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}
        if if_match is not None:
            request["ifMatch"] = f'W/"{if_match}"'
        return {"resource": resource, "request": request}

    def _transaction(self, entries: list[Resource], *, check: bool = False) -> requests.Response:
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        for _ in range(10 if check else 1):
            response = requests.post(self.base, json=bundle, headers=WRITE, timeout=120)
            # Setting up: under serializable, HAPI's own background work (the subscription
            # matcher reading HFJ_RESOURCE_MODIFIED) can make even an uncontested write fail.
            if not check or response.status_code not in (409, 500):
                break
        if check and response.status_code != 200:
            raise RuntimeError(f"setting up a race failed ({response.status_code}): {response.text[:500]}")
        return response

    def _put(self, resource: Resource) -> None:
        url = f"{self.base}/{resource['resourceType']}/{resource['id']}"
        for _ in range(10):  # as _transaction(check=True)
            response = self._session.put(url, json=resource, headers=WRITE, timeout=60)
            if response.status_code not in (409, 500):
                break
        if response.status_code not in (200, 201):
            raise RuntimeError(f"PUT {url} failed ({response.status_code}): {response.text[:500]}")

    def _version(self, resource_type: str, resource_id: str) -> str:
        if resource_type == "Basic":
            resource_id = f"fanoni-lock-{resource_id}"
        response = self._session.get(
            f"{self.base}/{resource_type}/{resource_id}", headers=NO_CACHE, timeout=60
        )
        response.raise_for_status()
        return str(response.json()["meta"]["versionId"])

    def _history_count(self, resource_type: str, resource_id: str) -> int:
        url = f"{self.base}/{resource_type}/fanoni-lock-{resource_id}/_history"
        response = self._session.get(url, params={"_count": "1000"}, headers=NO_CACHE, timeout=60)
        if response.status_code == 404:
            return 0
        response.raise_for_status()
        return len(response.json().get("entry") or [])

    def _tagged_slots(self, marker: str) -> int:
        response = self._session.get(
            f"{self.base}/Slot",
            params={"_tag": f"{BOOKING_REQUEST_SYSTEM}|{marker}", "_summary": "count"},
            headers=NO_CACHE,
            timeout=60,
        )
        response.raise_for_status()
        return int(response.json()["total"])


def run_races(base: str, *, rounds: int = 1, width: int = 20) -> RaceReport:
    """Every scenario ``rounds`` times against the HAPI at ``base``."""
    races = Races(base, width)
    report = RaceReport()
    for _ in range(rounds):
        report.rounds += races.all()
    return report


# --------------------------------------------------------------------------------------------
# The report.


def markdown(report: RaceReport, title: str) -> str:
    """One row per scenario and kind of answer: how often, whether it stored anything, how the
    sidecar reads it, and the shortest text seen for it."""
    counts: Counter[tuple[str, str]] = Counter()
    stored: dict[tuple[str, str], int | None] = {}
    texts: dict[tuple[str, str], str] = {}
    readings: dict[tuple[str, str], str] = {}
    for answer in report.answers:
        key = (answer.scenario, answer.kind)
        counts[key] += 1
        if answer.stored is None:
            stored.setdefault(key, None)
        else:
            stored[key] = (stored.get(key) or 0) + answer.stored
        if key not in texts or len(answer.text) < len(texts[key]):
            texts[key] = answer.text
        readings[key] = sidecar_reading(answer)
    lines = [
        f"### {title}",
        "",
        "| scenario | answer | count | of which stored | the sidecar reads it as | text (shortest seen, cut at 160) |",
        "|---|---|---|---|---|---|",
    ]
    for (scenario, kind), count in counts.items():
        text = texts[(scenario, kind)].replace("|", "\\|").replace("\n", " ")
        text = text if len(text) <= 160 else text[:159] + "…"
        landed = stored.get((scenario, kind))
        lines.append(
            f"| {scenario} | {kind} | {count} | {'(round)' if landed is None else landed} "
            f"| {readings[(scenario, kind)]} | {text} |"
        )
    bad = report.inconsistent()
    lines += ["", f"Rounds: {len(report.rounds)}; inconsistent with what HAPI holds: {len(bad)}"]
    lines += [f"* {r.scenario}: {r.note}" for r in bad]
    return "\n".join(lines)


def samples(reports: Iterable[tuple[str, RaceReport]]) -> list[dict[str, Any]]:
    """One body per (isolation, scenario, kind of answer) that is not a success."""
    seen: dict[tuple[str, str, str], dict[str, Any]] = {}
    for isolation, report in reports:
        for answer in report.losers():
            key = (isolation, answer.scenario, answer.kind)
            seen.setdefault(
                key,
                {
                    "isolation": isolation,
                    "scenario": answer.scenario,
                    "kind": answer.kind,
                    "status": answer.status,
                    "body": answer.body,
                    "stored": answer.stored,
                    "sidecar_reads_it_as": sidecar_reading(answer),
                },
            )
    return list(seen.values())


def main(argv: Sequence[str] | None = None) -> int:
    from tests.integration.trust import hapi_args
    from tests.support.postgres import start_hapi_on_postgres

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--width", type=int, default=20)
    parser.add_argument("--json", help="write one body per kind of losing answer to this file")
    args = parser.parse_args(argv)
    reports = []
    with start_hapi_on_postgres(hapi_args()) as (hapi, postgres):
        for isolation in ("read committed", "repeatable read", "serializable"):
            postgres.configure({"default_transaction_isolation": isolation})
            report = run_races(hapi.base_url, rounds=args.rounds, width=args.width)
            reports.append((isolation, report))
            print(markdown(report, f"PostgreSQL {isolation}"), end="\n\n", flush=True)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(samples(reports), out, indent=1)
    return 1 if any(r.inconsistent() for _, r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
