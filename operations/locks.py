"""The lock resources every booking transaction takes (docs/consistency.md argues them), and the
fence that settles a write whose answer was lost.

**Bucket locks.** Time on a Schedule is cut into fixed :data:`BUCKET` intervals (UTC-aligned,
the same for every sidecar process). A booking takes the lock of every bucket its footprint --
visit plus buffers, the span its decision looks at -- touches, on every Schedule it touches.
Each lock entry of the booking transaction is checked against what was read before the Slot
search that decided: ``ifMatch`` on the version read, or, for a lock the search did not find,
``ifMatch: W/"0"`` -- which HAPI reads as "create it, unless it exists by now" (a resource
that exists has version 1 or more). Two bookings whose footprints overlap share at least one
bucket, so they cannot both commit on the same view; bookings of separate times on one
Schedule mostly take different buckets and do not queue behind each other.

**Period locks.** A Schedule with a booking limit (SPEC §7.1) counts its visits per local day or
ISO week; a booking there also takes the lock of that day (``fanoni-lock-<schedule>.d<date>``)
or week (``.w<monday>``), so two bookings that both see the last place of a day cannot both
commit. Which one applies is known only once the configuration is read, so the lock read asks
for every day and week the visit could fall on in any time zone
(``operations.rules.candidate_period_keys``) and the booking takes the one that applies.

Every lock carries a counter that each update increments, so an update never stores content
identical to the last version (an upstream may skip such a no-op update and its version check).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from operations.errors import ConcurrentChange, OutcomeUnknown, StoreFailure
from operations.fhir_values import transaction_bundle
from operations.model import FANONI_CODE_SYSTEM, FANONI_EXTENSION_BASE, Interval
from operations.retries import Clock
from operations.store import FhirStore, Resource, Together, one_after_another

LOCK_COUNTER_URL = FANONI_EXTENSION_BASE + "lock-counter"
LOCK_PREFIX = "fanoni-lock-"
ABSENT = "0"
"""The version a lock the search did not find is checked against: it is created, unless it
exists by the time the transaction commits."""

BUCKET = timedelta(minutes=15)
"""The lock granularity. Every sidecar process of a deployment must use the same value: it is
part of the lock protocol, not a setting (docs/consistency.md)."""
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def lock_id(schedule_id: str, key: str) -> str:
    """The id of one lock of a Schedule (``fanoni-lock-<schedule>.<key>``; ``key`` is ``b<n>`` for
    a time bucket, ``d<date>``/``w<monday>`` for a day or a week), within FHIR's 64-character
    limit (a long Schedule id is replaced by a hash of it)."""
    candidate = f"{LOCK_PREFIX}{schedule_id}.{key}"
    if len(candidate) <= 64:
        return candidate
    return f"{LOCK_PREFIX}{hashlib.sha256(schedule_id.encode()).hexdigest()[:40]}.{key}"


def bucket_lock_id(schedule_id: str, bucket: int) -> str:
    """The id of the lock of one time bucket of a Schedule (``fanoni-lock-<schedule>.b<n>``)."""
    return lock_id(schedule_id, f"b{bucket}")


def buckets(span: Interval) -> range:
    """The indexes of the buckets ``[start, end)`` touches (at least one)."""
    first = (span.start - _EPOCH) // BUCKET
    last = (span.end - _EPOCH) // BUCKET
    if (span.end - _EPOCH) % BUCKET == timedelta(0) and last > first:
        last -= 1
    return range(first, last + 1)


def bucket_span(bucket: int) -> Interval:
    start = _EPOCH + bucket * BUCKET
    return Interval(start, start + BUCKET)


@dataclass(frozen=True)
class LockVersion:
    """One lock as read before the decision: the version its update is checked against
    (:data:`ABSENT` when the search did not find it) and the counter it stored."""

    lock_id: str
    schedule_id: str
    key: str
    """``b<n>`` (a time bucket), ``d<date>`` or ``w<monday>`` (a period of a booking limit)."""
    version: str = ABSENT
    counter: int = -1


@dataclass(frozen=True)
class Locks:
    """Every lock one attempt's transaction takes, in a fixed order (Schedule, then time)."""

    taken: tuple[LockVersion, ...]

    def __bool__(self) -> bool:
        return bool(self.taken)

    def keeping(self, wanted: Collection[str]) -> Locks:
        """Only the locks with these ids (the period locks that apply, once the configuration
        says which), in the same order."""
        return Locks(taken=tuple(lock for lock in self.taken if lock.lock_id in wanted))

    def merged(self, other: Locks) -> Locks:
        """These locks and ``other``'s, each lock once (the version read first wins: it was read
        before the deciding reads), in the fixed order."""
        by_id = {lock.lock_id: lock for lock in other.taken} | {lock.lock_id: lock for lock in self.taken}
        return Locks(taken=tuple(sorted(by_id.values(), key=_order)))


def _order(lock: LockVersion) -> tuple[str, str]:
    return (lock.schedule_id, lock.key)


NO_LOCKS = Locks(taken=())


def footprint_buckets(footprints: Mapping[str, Iterable[Interval]]) -> dict[str, list[int]]:
    """Per Schedule, the sorted buckets its footprints touch."""
    wanted: dict[str, set[int]] = {}
    for schedule_id, spans in footprints.items():
        for span in spans:
            wanted.setdefault(schedule_id, set()).update(buckets(span))
    return {schedule_id: sorted(found) for schedule_id, found in sorted(wanted.items())}


LOCK_SEARCH_IDS = 100
"""Lock ids per search: a long series asks for hundreds, more than fits in one URL."""


LockPlan = dict[str, tuple[str, str]]
"""The locks a write takes: lock id -> (Schedule id, key)."""


def lock_plan(
    footprints: Mapping[str, Iterable[Interval]], periods: Mapping[str, Iterable[str]] | None = None
) -> LockPlan:
    """The locks of every bucket ``footprints`` (per Schedule id, the spans a write decides on)
    touch, and the period locks ``periods`` names (per Schedule id, keys such as ``d2026-12-07``)."""
    plan: LockPlan = {}
    for schedule_id, indexes in footprint_buckets(footprints).items():
        for b in indexes:
            plan[bucket_lock_id(schedule_id, b)] = (schedule_id, f"b{b}")
    for schedule_id, keys in sorted((periods or {}).items()):
        for key in sorted(keys):
            plan[lock_id(schedule_id, key)] = (schedule_id, key)
    return plan


def read_locks(
    store: FhirStore,
    footprints: Mapping[str, Iterable[Interval]],
    periods: Mapping[str, Iterable[str]] | None = None,
    *,
    together: Together = one_after_another,
) -> Locks:
    """The locks a write over ``footprints`` takes, and the period locks ``periods`` names
    (:func:`lock_plan`). Writes nothing, so it may run before the request is validated, at the
    same time as the configuration reads."""
    return read_planned(store, lock_plan(footprints, periods), together=together)


def read_planned(store: FhirStore, plan: LockPlan, *, together: Together = one_after_another) -> Locks:
    """The current version of every planned lock (absent ones as :data:`ABSENT`): one search for
    all of them, or a few ``together`` when they are too many for one URL."""
    if not plan:
        return NO_LOCKS
    ids = list(plan)
    chunks = [ids[i : i + LOCK_SEARCH_IDS] for i in range(0, len(ids), LOCK_SEARCH_IDS)]
    found: dict[str, LockVersion] = {}
    searches = [_lock_search(store, chunk) for chunk in chunks]
    for resources in together(*searches) if len(searches) > 1 else [searches[0]()]:
        for resource in resources:
            resource_id = str(resource.get("id"))
            version = (resource.get("meta") or {}).get("versionId")
            if resource_id in plan and version is not None:
                owner, key = plan[resource_id]
                found[resource_id] = LockVersion(
                    resource_id, owner, key, str(version), _lock_counter(resource)
                )
    locks = (found.get(i) or LockVersion(i, *where) for i, where in plan.items())
    return Locks(taken=tuple(sorted(locks, key=_order)))


def _lock_search(store: FhirStore, ids: Sequence[str]) -> Callable[[], list[Resource]]:
    return lambda: store.search("Basic", [("_id", ",".join(ids))])


def _created(key: str) -> str:
    """The date a lock is about: its bucket's UTC date, or its day's (week's first) date."""
    if key.startswith("b"):
        return bucket_span(int(key[1:])).start.date().isoformat()
    return key[1:]


def lock_resource(schedule_id: str, key: str, counter: int) -> Resource:
    """A lock as stored: a ``Basic`` about the Schedule, ``created`` on the date it is about (so
    locks of the past can be found)."""
    return {
        "resourceType": "Basic",
        "id": lock_id(schedule_id, key),
        "code": {"coding": [{"system": FANONI_CODE_SYSTEM, "code": "schedule-time-lock"}]},
        "subject": {"reference": f"Schedule/{schedule_id}"},
        "created": _created(key),
        "extension": [{"url": LOCK_COUNTER_URL, "valueInteger": counter}],
    }


def _lock_counter(resource: Resource) -> int:
    for ext in resource.get("extension") or []:
        if (
            isinstance(ext, dict)
            and ext.get("url") == LOCK_COUNTER_URL
            and isinstance(ext.get("valueInteger"), int)
        ):
            return int(ext["valueInteger"])
    return 0


def _put(resource: Resource, version: str) -> Resource:
    url = f"Basic/{resource['id']}"
    return {
        "fullUrl": url,
        "resource": resource,
        "request": {"method": "PUT", "url": url, "ifMatch": f'W/"{version}"'},
    }


def lock_entries(locks: Locks) -> list[Resource]:
    """The transaction entries that take ``locks``: each lock updated, checked against the
    version read, or created, checked against its absence -- the heart of race freedom."""
    return [
        _put(lock_resource(lock.schedule_id, lock.key, lock.counter + 1), lock.version)
        for lock in locks.taken
    ]


SETTLE_ATTEMPTS = 6
"""How often the sidecar tries to fence a lock after a lost answer before it gives up and
tells the caller the outcome is unknown (the upstream is down)."""


def fence(store: FhirStore, locks: Locks, clock: Clock) -> bool:
    """After a write's answer was lost: advance one lock past the version the write was checked
    against, so the write can no longer land if it has not already.

    Returns ``True`` when the fence landed (the lost write had not landed, and now never will),
    ``False`` when the lock had moved (the lost write, or another, landed first: look it up).
    Raises ``OutcomeUnknown`` when the upstream cannot be reached for it either.
    """
    lock = locks.taken[0]
    # counter + 2: content that differs from what the lost write stored (counter + 1), so the
    # upstream cannot treat the fence as a no-op update and skip its version check.
    entry = _put(lock_resource(lock.schedule_id, lock.key, lock.counter + 2), lock.version)
    last: StoreFailure | None = None
    for tries in range(SETTLE_ATTEMPTS):
        try:
            store.transaction(transaction_bundle([entry]))
            return True
        except ConcurrentChange as exc:
            # Refused. Usually because the lock moved -- but a database under repeatable read
            # or serializable isolation may refuse the fence for a concurrent write that has
            # not committed (yet), which proves nothing: look at the lock before concluding.
            if _current_version(store, lock) != lock.version:
                return False
            last = StoreFailure(f"the fence was refused with the lock unmoved: {exc}")
            last.transient = True
            clock.sleep(min(2.0, 0.1 * 2**tries))
            continue
        except StoreFailure as exc:
            if not exc.transient:
                raise
            last = exc
            clock.sleep(min(2.0, 0.1 * 2**tries))
    assert last is not None
    raise last if isinstance(last, OutcomeUnknown) else OutcomeUnknown(last)


def _current_version(store: FhirStore, lock: LockVersion) -> str:
    """The lock's version as stored now (:data:`ABSENT` when it does not exist)."""
    for resource in store.search("Basic", [("_id", lock.lock_id)]):
        version = (resource.get("meta") or {}).get("versionId")
        if resource.get("id") == lock.lock_id and version is not None:
            return str(version)
    return ABSENT
