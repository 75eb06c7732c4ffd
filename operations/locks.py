"""The per-Schedule lock resources: the version-checked token every booking transaction takes
(docs/consistency.md), and the fence that settles a write whose answer was lost.

A lock is ``Basic/fanoni-lock-<schedule id>``; its version, read before the Slot search that
decides, goes into the booking transaction as ``ifMatch``, so two bookings that decided on the
same view of a Schedule cannot both commit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from operations.errors import ConcurrentChange, Conflict, OutcomeUnknown, StoreFailure
from operations.model import FANONI_CODE_SYSTEM, FANONI_EXTENSION_BASE
from operations.retries import Clock
from operations.store import FhirStore, Resource

LOCK_COUNTER_URL = FANONI_EXTENSION_BASE + "lock-counter"


def lock_id(schedule_id: str) -> str:
    """The id of a Schedule's lock resource (a ``Basic``), within FHIR's 64-character limit."""
    candidate = f"fanoni-lock-{schedule_id}"
    if len(candidate) <= 64:
        return candidate
    return "fanoni-lock-" + hashlib.sha256(schedule_id.encode()).hexdigest()[:52]


def lock_resource(schedule_id: str, counter: int) -> Resource:
    return {
        "resourceType": "Basic",
        "id": lock_id(schedule_id),
        "code": {"coding": [{"system": FANONI_CODE_SYSTEM, "code": "schedule-lock"}]},
        "subject": {"reference": f"Schedule/{schedule_id}"},
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


def read_locks(store: FhirStore, schedule_ids: Sequence[str]) -> dict[str, tuple[str, int]]:
    """``{schedule id: (version, counter)}``, creating missing locks first (one transaction).

    Creating a lock concurrently from two processes is harmless: both then read a version
    before their Slot search, which is all the protocol needs.
    """
    wanted = {lock_id(s): s for s in schedule_ids}
    found = _search_locks(store, wanted)
    missing = [s for s in schedule_ids if s not in found]
    if missing:
        entries = [
            {
                "fullUrl": f"Basic/{lock_id(s)}",
                "resource": lock_resource(s, 0),
                "request": {"method": "PUT", "url": f"Basic/{lock_id(s)}"},
            }
            for s in missing
        ]
        lost: OutcomeUnknown | None = None
        try:
            store.transaction({"resourceType": "Bundle", "type": "transaction", "entry": entries})
        except ConcurrentChange:
            pass  # another process created them just now
        except OutcomeUnknown as exc:
            lost = exc  # creating a lock is idempotent: whether it landed, the search tells
        found = _search_locks(store, wanted)
        if any(s not in found for s in schedule_ids):
            if lost is not None:
                lost.resolution = "Nothing was stored (checked): ask again."
                raise lost
            raise Conflict("Could not create the per-Schedule lock resources on the upstream")
    return found


def _search_locks(store: FhirStore, wanted: dict[str, str]) -> dict[str, tuple[str, int]]:
    found = {}
    for resource in store.search("Basic", [("_id", ",".join(wanted))]):
        schedule_id = wanted.get(str(resource.get("id")))
        version = (resource.get("meta") or {}).get("versionId")
        if schedule_id is not None and version is not None:
            found[schedule_id] = (str(version), _lock_counter(resource))
    return found


def lock_entries(locks: dict[str, tuple[str, int]]) -> list[Resource]:
    """Version-checked updates of the locks: the heart of race freedom."""
    return [
        {
            "fullUrl": f"Basic/{lock_id(schedule_id)}",
            "resource": lock_resource(schedule_id, counter + 1),
            "request": {
                "method": "PUT",
                "url": f"Basic/{lock_id(schedule_id)}",
                "ifMatch": f'W/"{version}"',
            },
        }
        for schedule_id, (version, counter) in locks.items()
    ]


SETTLE_ATTEMPTS = 6
"""How often the sidecar tries to fence a lock after a lost answer before it gives up and
tells the caller the outcome is unknown (the upstream is down)."""


def fence(store: FhirStore, locks: dict[str, tuple[str, int]], clock: Clock) -> bool:
    """After a write's answer was lost: advance one lock past the version the write was checked
    against, so the write can no longer land if it has not already.

    Returns ``True`` when the fence landed (the lost write had not landed, and now never will),
    ``False`` when the lock had moved (the lost write, or another, landed first: look it up).
    Raises ``OutcomeUnknown`` when the upstream cannot be reached for it either.
    """
    schedule_id = min(locks)
    version, counter = locks[schedule_id]
    # counter + 2: content that differs from what the lost write stored (counter + 1), so the
    # upstream cannot treat the fence as a no-op update and skip its version check.
    entry = lock_entries({schedule_id: (version, counter + 1)})
    last: StoreFailure | None = None
    for tries in range(SETTLE_ATTEMPTS):
        try:
            store.transaction({"resourceType": "Bundle", "type": "transaction", "entry": entry})
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
