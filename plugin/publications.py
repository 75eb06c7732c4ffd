"""The publication a process serves at ``$bulk-publish``: computed once, reused for
``PUBLISH_MAX_AGE_SECONDS``, and kept a little longer so the files a manifest lists can still be
fetched from it (docs/operations.md, "Consistency of the manifest and its files").

A snapshot is named by its ``transactionTime``; the manifest's file URLs carry that name
(``?snapshot=...``), so a consumer that fetches them from this process gets exactly the data the
manifest was computed with, even after a newer publication replaced it as the current one.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from operations.publish import Publication
from operations.publish_resources import files, ndjson, timestamp

FETCH_GRACE = timedelta(seconds=120)
"""How long after its max-age a snapshot stays fetchable: a consumer reads the manifest, then
its files, possibly at the very end of the manifest's freshness."""
KEPT = 4
"""Snapshots kept at most per process (with ``PUBLISH_MAX_AGE_SECONDS=0`` every manifest is one)."""


@dataclass(frozen=True)
class Snapshot:
    """One computed publication, its files rendered once."""

    publication: Publication
    name: str
    """``transactionTime``: the snapshot's name in file URLs."""
    bodies: dict[str, bytes]
    """NDJSON by file type (``Location``, ``Schedule``, ``Slot``, ``OperationOutcome``)."""
    etags: dict[str, str]

    @classmethod
    def of(cls, publication: Publication) -> Snapshot:
        bodies = {kind: ndjson(resources) for kind, resources in files(publication).items()}
        return cls(
            publication,
            timestamp(publication.transaction_time),
            bodies,
            {k: etag(b) for k, b in bodies.items()},
        )

    @property
    def computed_at(self) -> datetime:
        return self.publication.transaction_time


def etag(body: bytes) -> str:
    """A strong validator: equal bodies, equal tags, in every process."""
    return hashlib.sha256(body).hexdigest()[:32]


class Publications:
    """The snapshots of one process (thread-safe: one computes, the others wait for it)."""

    def __init__(self, max_age: timedelta, clock: Callable[[], datetime]) -> None:
        self.max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshots: list[Snapshot] = []  # newest last

    def current(self, compute: Callable[[], Publication]) -> Snapshot:
        """The newest snapshot while it is fresh, else a new one from ``compute``."""
        with self._lock:
            now = self._clock()
            if self._snapshots and now - self._snapshots[-1].computed_at < self.max_age:
                return self._snapshots[-1]
            snapshot = Snapshot.of(compute())
            kept = [s for s in self._snapshots if now - s.computed_at <= self.max_age + FETCH_GRACE]
            self._snapshots = [*kept, snapshot][-KEPT:]
            return snapshot

    def named(self, name: str) -> Snapshot | None:
        """The snapshot a manifest named, while this process still keeps it."""
        with self._lock:
            return next((s for s in self._snapshots if s.name == name), None)

    def age(self, snapshot: Snapshot) -> int:
        """Whole seconds since the snapshot was computed (the ``Age`` header)."""
        return max(0, int((self._clock() - snapshot.computed_at).total_seconds()))
