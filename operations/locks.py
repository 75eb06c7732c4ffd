"""The lock resources every booking transaction takes (docs/consistency.md argues them), and the
fence that settles a write whose answer was lost.

**Bucket locks.** Time on a Schedule is cut into fixed :data:`BUCKET` intervals (UTC-aligned,
the same for every sidecar process). A booking takes the lock of every bucket its footprint --
visit plus buffers, the span its decision looks at -- touches, on every Schedule it touches:
the lock's version, read before the Slot search that decides, goes into the booking
transaction as ``ifMatch``. Two bookings whose footprints overlap share at least one bucket, so
they cannot both commit on the same view; bookings of separate times on one Schedule mostly
take different buckets and do not queue behind each other.

**Creating bucket locks.** A bucket's lock does not exist until the first booking that needs
it, and "create it unless it exists" is not something a FHIR transaction can say. So each
Schedule has one more lock, its *master* (``Basic/fanoni-lock-<schedule>``), and a transaction
that creates bucket locks also takes the master (``ifMatch``): two bookings that both found a
bucket missing cannot both create it, and one that found it missing fails when anybody created
it since. The whole :data:`CREATED_TOGETHER` group around a missing bucket is created at once,
so the master is taken once per Schedule and group, not once per booking. The master itself is
created, once per Schedule ever, by a transaction of its own.

Every lock carries a counter that each update increments, so an update never stores content
identical to the last version (an upstream may skip such a no-op update and its version check).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from operations.errors import ConcurrentChange, Conflict, OutcomeUnknown, StoreFailure
from operations.fhir_values import transaction_bundle
from operations.model import FANONI_CODE_SYSTEM, FANONI_EXTENSION_BASE, Interval
from operations.retries import Clock
from operations.store import FhirStore, Resource

LOCK_COUNTER_URL = FANONI_EXTENSION_BASE + "lock-counter"
LOCK_PREFIX = "fanoni-lock-"

BUCKET = timedelta(minutes=15)
"""The lock granularity. Every sidecar process of a deployment must use the same value: it is
part of the lock protocol, not a setting (docs/consistency.md)."""
CREATED_TOGETHER = 24
"""Bucket locks created in one transaction: a UTC-aligned group of 24 buckets (6 hours)."""
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def lock_id(schedule_id: str) -> str:
    """The id of a Schedule's master lock (a ``Basic``), within FHIR's 64-character limit."""
    candidate = LOCK_PREFIX + schedule_id
    if len(candidate) <= 64:
        return candidate
    return LOCK_PREFIX + _short(schedule_id)


def bucket_lock_id(schedule_id: str, bucket: int) -> str:
    """The id of the lock of one bucket of a Schedule (``fanoni-lock-<schedule>.b<n>``)."""
    candidate = f"{LOCK_PREFIX}{schedule_id}.b{bucket}"
    if len(candidate) <= 64:
        return candidate
    return f"{LOCK_PREFIX}{_short(schedule_id)}.b{bucket}"


def _short(schedule_id: str) -> str:
    return hashlib.sha256(schedule_id.encode()).hexdigest()[:40]


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


def _group(bucket: int) -> range:
    first = bucket - bucket % CREATED_TOGETHER
    return range(first, first + CREATED_TOGETHER)


@dataclass(frozen=True)
class LockVersion:
    """One lock as read: the version the transaction will check and the counter it stored."""

    lock_id: str
    schedule_id: str
    version: str
    counter: int
    bucket: int | None = None
    """``None`` for a Schedule's master lock."""


@dataclass(frozen=True)
class Locks:
    """What one attempt read before deciding: every lock its transaction takes."""

    taken: tuple[LockVersion, ...]
    """Existing bucket locks (and, when buckets are created, the masters), in a fixed order."""
    creating: tuple[tuple[str, int], ...] = ()
    """``(schedule id, bucket)`` of the bucket locks the transaction creates."""

    def __bool__(self) -> bool:
        return bool(self.taken)

    @property
    def ids(self) -> list[str]:
        return [lock.lock_id for lock in self.taken]


NO_LOCKS = Locks(taken=())


def footprint_buckets(footprints: Mapping[str, Iterable[Interval]]) -> dict[str, list[int]]:
    """Per Schedule, the sorted buckets its footprints touch."""
    wanted: dict[str, set[int]] = {}
    for schedule_id, spans in footprints.items():
        for span in spans:
            wanted.setdefault(schedule_id, set()).update(buckets(span))
    return {schedule_id: sorted(found) for schedule_id, found in sorted(wanted.items())}


@dataclass(frozen=True)
class LockRead:
    """The answer to the one lock search of an attempt, before anything is written."""

    wanted: dict[str, list[int]]
    found: dict[str, LockVersion]

    @property
    def masters_missing(self) -> list[str]:
        return [s for s in self.wanted if lock_id(s) not in self.found]


def search_locks(store: FhirStore, footprints: Mapping[str, Iterable[Interval]]) -> LockRead:
    """One search for the bucket locks of ``footprints`` (per Schedule id, the spans a write
    decides on) and the Schedules' masters. Writes nothing, so it may run before the request
    is validated, at the same time as the configuration reads."""
    wanted = footprint_buckets(footprints)
    return LockRead(wanted, _search_locks(store, wanted) if wanted else {})


def take_locks(store: FhirStore, read: LockRead) -> Locks:
    """The locks a transaction takes, from what :func:`search_locks` found. Only when a Schedule
    has no master yet (its very first booking ever) does this cost round trips: one
    transaction creating the masters, and the search again."""
    if not read.wanted:
        return NO_LOCKS
    found = read.found
    missing_masters = read.masters_missing
    if missing_masters:
        lost = _create_masters(store, missing_masters)
        found = _search_locks(store, read.wanted)
        if any(lock_id(s) not in found for s in read.wanted):
            if lost is not None:
                lost.resolution = "Nothing was stored (checked): ask again."
                raise lost
            raise Conflict("Could not create the lock resources on the upstream")
    taken: list[LockVersion] = []
    creating: list[tuple[str, int]] = []
    for schedule_id, indexes in read.wanted.items():
        absent = {b for b in indexes if bucket_lock_id(schedule_id, b) not in found}
        if absent:
            taken.append(found[lock_id(schedule_id)])
            groups = sorted({g for b in absent for g in _group(b)})
            creating.extend((schedule_id, b) for b in groups if bucket_lock_id(schedule_id, b) not in found)
        taken.extend(found[bucket_lock_id(schedule_id, b)] for b in indexes if b not in absent)
    return Locks(taken=tuple(taken), creating=tuple(creating))


def read_locks(store: FhirStore, footprints: Mapping[str, Iterable[Interval]]) -> Locks:
    """:func:`search_locks` then :func:`take_locks`: the locks a write over ``footprints`` takes."""
    return take_locks(store, search_locks(store, footprints))


def _search_locks(store: FhirStore, wanted: Mapping[str, Sequence[int]]) -> dict[str, LockVersion]:
    meaning: dict[str, tuple[str, int | None]] = {}
    for schedule_id, indexes in wanted.items():
        meaning[lock_id(schedule_id)] = (schedule_id, None)
        for b in indexes:
            meaning[bucket_lock_id(schedule_id, b)] = (schedule_id, b)
    found: dict[str, LockVersion] = {}
    for resource in store.search("Basic", [("_id", ",".join(meaning))]):
        resource_id = str(resource.get("id"))
        version = (resource.get("meta") or {}).get("versionId")
        if resource_id in meaning and version is not None:
            owner, bucket = meaning[resource_id]
            found[resource_id] = LockVersion(
                resource_id, owner, str(version), _lock_counter(resource), bucket
            )
    return found


def _create_masters(store: FhirStore, schedule_ids: Sequence[str]) -> OutcomeUnknown | None:
    """Create missing master locks. Harmless when two processes do it at once: both then read
    a version before their Slot search, which is all the protocol needs. A lost answer is
    returned: creating a master is idempotent, and the search that follows tells whether it
    landed."""
    try:
        store.transaction(transaction_bundle([_put(lock_resource(s, 0)) for s in schedule_ids]))
    except ConcurrentChange:
        pass  # another process created them just now
    except OutcomeUnknown as exc:
        return exc
    return None


def lock_resource(schedule_id: str, counter: int, bucket: int | None = None) -> Resource:
    """A lock as stored: a ``Basic`` about the Schedule, naming its bucket's start when it has one."""
    resource: Resource = {
        "resourceType": "Basic",
        "id": lock_id(schedule_id) if bucket is None else bucket_lock_id(schedule_id, bucket),
        "code": {"coding": [{"system": FANONI_CODE_SYSTEM, "code": "schedule-lock"}]},
        "subject": {"reference": f"Schedule/{schedule_id}"},
        "extension": [{"url": LOCK_COUNTER_URL, "valueInteger": counter}],
    }
    if bucket is not None:
        resource["created"] = bucket_span(bucket).start.date().isoformat()
        resource["code"]["coding"][0]["code"] = "schedule-time-lock"
    return resource


def _lock_counter(resource: Resource) -> int:
    for ext in resource.get("extension") or []:
        if (
            isinstance(ext, dict)
            and ext.get("url") == LOCK_COUNTER_URL
            and isinstance(ext.get("valueInteger"), int)
        ):
            return int(ext["valueInteger"])
    return 0


def _put(resource: Resource, version: str | None = None) -> Resource:
    url = f"Basic/{resource['id']}"
    request: Resource = {"method": "PUT", "url": url}
    if version is not None:
        request["ifMatch"] = f'W/"{version}"'
    return {"fullUrl": url, "resource": resource, "request": request}


def lock_entries(locks: Locks) -> list[Resource]:
    """The transaction entries that take ``locks``: a version-checked update of each lock read
    (the heart of race freedom), then the creation of the bucket locks that were missing."""
    entries = [
        _put(lock_resource(lock.schedule_id, lock.counter + 1, lock.bucket), lock.version)
        for lock in locks.taken
    ]
    entries.extend(_put(lock_resource(schedule_id, 0, b)) for schedule_id, b in locks.creating)
    return entries


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
    entry = _put(lock_resource(lock.schedule_id, lock.counter + 2, lock.bucket), lock.version)
    last: StoreFailure | None = None
    for tries in range(SETTLE_ATTEMPTS):
        try:
            store.transaction(transaction_bundle([entry]))
            return True
        except ConcurrentChange:
            return False
        except StoreFailure as exc:
            if not exc.transient:
                raise
            last = exc
            clock.sleep(min(2.0, 0.1 * 2**tries))
    assert last is not None
    raise last if isinstance(last, OutcomeUnknown) else OutcomeUnknown(last)
