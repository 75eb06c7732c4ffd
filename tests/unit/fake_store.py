"""An in-memory ``SchedulingStore`` for the domain's tests: resources in, the same reads out."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from operations.errors import ConcurrentChange, OutcomeUnknown, ReferencedElsewhere, StoreFailure
from operations.fhir_values import parse_instant

Resource = dict[str, Any]


class FakeStore:
    """Holds FHIR JSON resources by ``Type/id`` and answers like the upstream would."""

    def __init__(self, *resources: Resource) -> None:
        self.resources: dict[str, Resource] = {}
        self.calls: list[str] = []
        for resource in resources:
            self.add(resource)

    def add(self, resource: Resource) -> Resource:
        if "id" not in resource:
            resource = {**resource, "id": f"{resource['resourceType'].lower()}-{len(self.resources)}"}
        self.resources[f"{resource['resourceType']}/{resource['id']}"] = resource
        return resource

    def read_schedules(self, ids: Sequence[str]) -> tuple[list[Resource], dict[str, Resource]]:
        self.calls.append("read_schedules")
        schedules = [self.resources[f"Schedule/{i}"] for i in ids if f"Schedule/{i}" in self.resources]
        actors = {}
        for schedule in schedules:
            for actor in schedule.get("actor", []):
                ref = actor.get("reference")
                if ref in self.resources:
                    actors[ref] = self.resources[ref]
        return schedules, actors

    def read_service(self, service_id: str) -> Resource | None:
        self.calls.append("read_service")
        return self.resources.get(f"HealthcareService/{service_id}")

    def search_slots(self, schedule_ids: Sequence[str], start: datetime, end: datetime) -> list[Resource]:
        self.calls.append("search_slots")
        wanted = {f"Schedule/{i}" for i in schedule_ids}
        return [
            r
            for r in self.resources.values()
            if r["resourceType"] == "Slot"
            and r.get("schedule", {}).get("reference") in wanted
            and parse_instant(r["start"]) < end
            and parse_instant(r["end"]) > start
        ]


def token_matches(token: str, coding: Resource) -> bool:
    """FHIR token search semantics: ``system|code``, ``|code`` (no system), ``code`` (any)."""
    if "|" not in token:
        return coding.get("code") == token
    system, _, code = token.partition("|")
    return coding.get("code") == code and (coding.get("system") or "") == system


class LostAnswer(StoreFailure):
    """What the fake raises (inside ``OutcomeUnknown``) when a transaction's answer is lost."""

    transient = True


class FakeFhirStore(FakeStore):
    """A ``FhirStore``: versioned resources, searches by a few parameters, atomic transactions
    with ``ifMatch`` checks that raise ``ConcurrentChange`` like the upstream's 409/412, and
    ``ReferencedElsewhere`` for a delete of something still referenced (HAPI's referential
    integrity).

    For interleaving tests: ``pause_after(call, action)`` runs ``action`` (typically another
    request against the same store) right after the first call named ``call`` returns, as if
    this request had been paused there; ``lose_next_answer`` makes the next transaction's
    answer go missing, with the write landed, not landed, or still in flight.
    """

    def __init__(self, *resources: Resource) -> None:
        super().__init__()
        self.transactions: list[Resource] = []
        self.before_transaction: list[Any] = []
        """Callables run just before the next transaction (to interleave a concurrent writer)."""
        self._pauses: list[tuple[str, Callable[[], object]]] = []
        self._lose: str | None = None
        self.unreachable = 0
        """How many more transactions fail as if the upstream were down (nothing lands)."""
        self.unreachable_reads = 0
        """How many more reads and searches fail as if the upstream were down."""
        self.in_flight: list[Resource] = []
        """Transactions sent whose answer was lost and which have not landed yet."""
        for resource in resources:
            self.add(resource)

    def pause_after(self, call: str, action: Callable[[], object]) -> None:
        """Run ``action`` once, right after the next call named ``call`` (as in ``calls``)."""
        self._pauses.append((call, action))

    def _paused(self, call: str) -> None:
        for index, (name, action) in enumerate(self._pauses):
            if name == call:
                del self._pauses[index]
                action()
                return

    def lose_next_answer(self, landed: str) -> None:
        """The next transaction's answer is lost: ``landed`` is ``"yes"`` (it committed),
        ``"no"`` (it never arrived) or ``"later"`` (it is still in flight: ``deliver_in_flight``
        lands it, or fails its version checks, afterwards)."""
        assert landed in ("yes", "no", "later")
        self._lose = landed

    def deliver_in_flight(self) -> list[str]:
        """Let transactions still in flight reach the store; what became of each."""
        outcomes = []
        pending, self.in_flight = self.in_flight, []
        for bundle in pending:
            try:
                self._apply(bundle)
                outcomes.append("landed")
            except ConcurrentChange:
                outcomes.append("refused")
        return outcomes

    def add(self, resource: Resource) -> Resource:
        stored = super().add(resource)
        meta = dict(stored.get("meta") or {})
        meta.setdefault("versionId", "1")
        stored = {**stored, "meta": meta}
        self.resources[f"{stored['resourceType']}/{stored['id']}"] = stored
        return stored

    def _reachable(self) -> None:
        if self.unreachable_reads > 0:
            self.unreachable_reads -= 1
            raise LostAnswer("the upstream FHIR server did not answer in time")

    def read(self, resource_type: str, resource_id: str) -> Resource | None:
        self._reachable()
        self.calls.append(f"read {resource_type}")
        found = self.resources.get(f"{resource_type}/{resource_id}")
        result = copy.deepcopy(found) if found else None
        self._paused(f"read {resource_type}")
        return result

    def search_slots(self, schedule_ids: Sequence[str], start: datetime, end: datetime) -> list[Resource]:
        found = super().search_slots(schedule_ids, start, end)
        self._paused("search_slots")
        return found

    def search(
        self, resource_type: str, params: Sequence[tuple[str, str]], *, limit: int | None = None
    ) -> list[Resource]:
        self._reachable()
        self.calls.append(f"search {resource_type}")
        results = []
        for resource in self.resources.values():  # insertion order: oldest first, as _sort=_lastUpdated
            if resource["resourceType"] != resource_type:
                continue
            if all(self._matches(resource, name, value) for name, value in params):
                results.append(copy.deepcopy(resource))
        self._paused(f"search {resource_type}")
        return results[:limit]

    def search_including(
        self, resource_type: str, params: Sequence[tuple[str, str]]
    ) -> tuple[list[Resource], list[Resource]]:
        includes = [value for name, value in params if name == "_include"]
        iterated = [value for name, value in params if name == "_include:iterate"]
        matches = self.search(resource_type, [(n, v) for n, v in params if not n.startswith("_include")])
        included: list[Resource] = []
        for include in includes:
            source, _, element = include.partition(":")
            assert source == resource_type, include
            self._include(matches, element, included)
        for include in iterated:  # applied to what was included (one level deep is all we need)
            source, _, element = include.partition(":")
            self._include([r for r in included if r["resourceType"] == source], element, included)
        return matches, included

    def _include(self, sources: list[Resource], element: str, included: list[Resource]) -> None:
        for source in sources:
            value = source.get(element) or []
            for reference in value if isinstance(value, list) else [value]:
                found = self.resources.get(str((reference or {}).get("reference")))
                if found is not None and found not in included:
                    included.append(copy.deepcopy(found))

    def _matches(self, resource: Resource, name: str, value: str) -> bool:
        if name == "_id":
            return resource.get("id") in value.split(",")
        if name == "status":
            return resource.get("status") in value.split(",")
        if name == "active:not":  # a resource without ``active`` matches, as on HAPI
            return str(resource.get("active", "")).lower() not in value.split(",")
        if name == "practitioner":
            return (resource.get("practitioner") or {}).get("reference") in value.split(",")
        if name == "identifier":
            system, _, code = value.rpartition("|")
            return any(
                (i.get("value") == code or (not code and system))
                and (not system or i.get("system") == system)
                for i in resource.get("identifier", [])
            )
        if name == "actor":
            return any(a.get("reference") in value.split(",") for a in resource.get("actor", []))
        if name == "actor:PractitionerRole.practitioner":  # the chain, as HAPI resolves it
            practitioners = value.split(",")
            for actor in resource.get("actor", []):
                role = self.resources.get(str(actor.get("reference")))
                if (
                    role is not None
                    and role["resourceType"] == "PractitionerRole"
                    and (role.get("practitioner") or {}).get("reference") in practitioners
                ):
                    return True
            return False
        if name == "service-type":
            return any(
                token_matches(token, coding)
                for token in value.split(",")
                for concept in resource.get("type", [])
                for coding in concept.get("coding", [])
            )
        if name in ("_sort", "_lastUpdated"):
            return True  # the fake keeps no timestamps: every resource is recent, in insertion order
        if name == "_tag":
            system, _, code = value.rpartition("|")
            return any(
                t.get("code") == code and t.get("system") == system
                for t in (resource.get("meta") or {}).get("tag", [])
            )
        raise AssertionError(f"the fake does not search by {name}")

    def search_schedules_by_actor(
        self, references: Sequence[str], *, via_role: bool = False
    ) -> tuple[list[Resource], dict[str, Resource]]:
        name = "actor:PractitionerRole.practitioner" if via_role else "actor"
        schedules, actors = self.search_including(
            "Schedule", [(name, ",".join(references)), ("_include", "Schedule:actor")]
        )
        self.calls[-1] = f"search Schedule by {name}"
        return sorted(schedules, key=lambda s: s["id"]), {f"{a['resourceType']}/{a['id']}": a for a in actors}

    def search_services(self, service_types: Sequence[str]) -> list[Resource]:
        return self.search("HealthcareService", [("service-type", ",".join(service_types))])

    def attributed(self, bundle: Resource) -> Resource:
        return bundle

    def transaction(self, bundle: Resource) -> Resource:
        self.calls.append("transaction")
        pending, self.before_transaction = self.before_transaction, []
        for interleaved in pending:
            interleaved()
        if self.unreachable > 0 and self._lose is None:
            self.unreachable -= 1
            raise OutcomeUnknown(LostAnswer("the upstream FHIR server is unreachable"))
        lose, self._lose = self._lose, None
        if lose == "later":
            self.in_flight.append(copy.deepcopy(bundle))
        if lose is not None:
            if lose == "yes":
                self._apply(bundle)
            raise OutcomeUnknown(LostAnswer("the upstream FHIR server did not answer in time"))
        response = self._apply(bundle)
        self._paused("transaction")
        return response

    def _apply(self, bundle: Resource) -> Resource:
        staged = dict(self.resources)
        deleting: list[str] = []
        ids: dict[str, str] = {}
        out = []
        for entry in bundle["entry"]:
            request = entry["request"]
            method, url = request["method"], request["url"]
            if method == "DELETE":
                staged.pop(url, None)
                deleting.append(url)
                out.append({"response": {"status": "204 No Content"}})
                continue
            resource = copy.deepcopy(entry["resource"])
            if method == "POST":
                resource["id"] = str(uuid.uuid4())
                ids[entry["fullUrl"]] = f"{resource['resourceType']}/{resource['id']}"
                version = 1
            else:
                current = staged.get(url)
                expected = request.get("ifMatch")
                # Like HAPI: W/"0" creates a resource that does not exist, and fails on one that does.
                if expected and (
                    (current is None and expected != 'W/"0"')
                    or (current is not None and f'W/"{current["meta"]["versionId"]}"' != expected)
                ):
                    raise ConcurrentChange(f"version conflict on {url}")
                version = int(current["meta"]["versionId"]) + 1 if current else 1
            old_meta = (staged.get(f"{resource['resourceType']}/{resource['id']}") or {}).get("meta", {})
            resource["meta"] = {**old_meta, **(resource.get("meta") or {}), "versionId": str(version)}
            staged[f"{resource['resourceType']}/{resource['id']}"] = resource
            out.append(
                {
                    "resource": resource,
                    "response": {"status": "201 Created" if method == "POST" else "200 OK"},
                }
            )
        text = json.dumps([e.get("resource") for e in out])
        for placeholder, real in ids.items():
            text = text.replace(placeholder, real)
        resolved = json.loads(text)
        for entry, resource in zip(out, resolved, strict=True):
            if resource is not None:
                entry["resource"] = resource
                staged[f"{resource['resourceType']}/{resource['id']}"] = resource
        for url in deleting:  # referential integrity, as HAPI keeps it
            referrers = [k for k, r in staged.items() if f'"reference": "{url}"' in json.dumps(r)]
            if referrers:
                raise ReferencedElsewhere(
                    f"Unable to delete {url} because at least one resource has a reference to this "
                    f"resource. First reference found was resource {referrers[0]}"
                )
        self.resources = staged
        self.transactions.append(bundle)
        return {"resourceType": "Bundle", "type": "transaction-response", "entry": out}


class Waves:
    """A ``Together`` that counts sequential round trips: each group of reads run together is
    one, and so is each store call made on its own."""

    def __init__(self, store: FakeFhirStore) -> None:
        self.store = store
        self.groups: list[list[str]] = []
        self._grouped = 0

    def __call__(self, *calls: Callable[[], Any]) -> list[Any]:
        before = len(self.store.calls)
        results = [call() for call in calls]
        self.groups.append(self.store.calls[before:])
        self._grouped += len(self.store.calls) - before
        return results

    @property
    def count(self) -> int:
        return len(self.groups) + len(self.store.calls) - self._grouped
