"""``plugin/host_buckets.py``: the worker processes of one host write one booking group per
bucket at a time, through byte locks in a shared file -- checked between two open files of this
process, with another real process, and with two ``BookingGroups`` standing for two workers.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from plugin.booking_groups import BookingGroups
from plugin.config import Settings
from plugin.host_buckets import HostBuckets, default_path, host_buckets
from tests.unit.test_booking import at
from tests.unit.test_booking_groups import Calls, capacity_clinic, until

BUCKET = "lock-s1-b1234"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "buckets.lock"


def test_a_bucket_held_by_one_file_makes_another_wait_until_it_is_released(path: Path) -> None:
    first, second = HostBuckets(path), HostBuckets(path)
    held, waited = first.take([BUCKET], 1.0)
    assert not waited
    taken: dict[str, Any] = {}

    def take() -> None:
        taken["result"] = second.take([BUCKET], 5.0)
        taken["at"] = time.monotonic()

    thread = threading.Thread(target=take)
    thread.start()
    until(lambda: second.waiting == 1, "the second waits")
    released_at = time.monotonic()
    held.release()
    thread.join(5)
    held_second, waited_second = taken["result"]
    assert waited_second and taken["at"] >= released_at
    assert second.waiting == 0
    held_second.release()


def test_other_buckets_never_wait_and_a_wait_ends_at_its_bound(path: Path) -> None:
    first, second = HostBuckets(path), HostBuckets(path)
    held, _ = first.take([BUCKET, "lock-s1-b1235"], 1.0)
    other, waited = second.take(["lock-s2-b1234"], 1.0)
    assert not waited
    began = time.monotonic()
    late, waited = second.take(["lock-s1-b1235"], 0.2)  # held by the first: it waits, then goes ahead
    assert waited and 0.2 <= time.monotonic() - began < 2.0
    for h in (held, other, late):
        h.release()


def test_another_process_holding_a_bucket_makes_this_one_wait(path: Path) -> None:
    script = (
        "import sys; from pathlib import Path; from plugin.host_buckets import HostBuckets\n"
        f"held, _ = HostBuckets(Path({str(path)!r})).take([{BUCKET!r}], 1.0)\n"
        "print('held', flush=True); sys.stdin.readline(); held.release(); print('released', flush=True)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "held"
        mine = HostBuckets(path)
        began = time.monotonic()
        held, waited = mine.take([BUCKET], 0.2)
        assert waited and time.monotonic() - began >= 0.2  # the other process holds it
        held.release()
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "released"
        held, waited = mine.take([BUCKET], 1.0)
        assert not waited
        held.release()
    finally:
        child.kill()
        child.wait(5)


def test_off_or_an_unusable_file_never_waits(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    off = host_buckets(Settings(fhir_base_url="http://hapi.test/fhir", bucket_lock_file="off"))
    assert off.path is None and off.take([BUCKET], 1.0)[1] is False
    missing = HostBuckets(tmp_path / "no such directory" / "buckets.lock")
    held, waited = missing.take([BUCKET], 1.0)
    assert not waited
    held.release()
    assert "host-wide bucket file cannot be used" in caplog.text
    assert host_buckets(Settings(fhir_base_url="http://hapi.test/fhir")).path == default_path(
        "http://hapi.test/fhir"
    )


def test_two_workers_of_a_host_do_not_race_for_a_bucket_they_share(path: Path) -> None:
    """Two ``BookingGroups`` (two worker processes). While worker 1's 09:15 booking is inside its
    transaction, worker 2's 09:30 booking (30-minute visits: the 09:30 bucket is shared) waits
    for it instead of reading the lock it is about to move, and lands at its first attempt.
    Without the shared file it reads the lock at once and loses its version check."""
    store = capacity_clinic(2)
    worker_1 = Calls(store, BookingGroups(max_size=30, host=HostBuckets(path)))
    worker_2 = Calls(store, BookingGroups(max_size=30, host=HostBuckets(path)))

    def hold_a() -> None:
        store.before_transaction.clear()
        worker_2.start("b", at(store, "09:30"))
        until(lambda: worker_2.groups.waiting() == 1, "worker 2's booking waits for the shared bucket")

    store.before_transaction.append(hold_a)
    worker_1.start("a", at(store, "09:15"))
    a, b = worker_1.finish()["a"], worker_2.finish()["b"]
    assert a.status == b.status == 201
    assert a.attempts == b.attempts == 1
