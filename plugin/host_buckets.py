"""Bookings of one time bucket, across the worker processes of one host, written one group at a
time: the cross-process half of the bucket wait in ``plugin/booking_groups.py``.

Within a process a booking group waits while another group of the process holds one of its
buckets. Between processes nothing did: two workers' groups of the same or neighbouring times
both read the lock, both searched the Slots, and one of them lost its version check -- a
transaction HAPI had already mostly done (it runs a bundle's POSTs before its lock PUT), then
the reads and the transaction again. With two workers that was 0.28-0.36 retries per booking
in the full mass booking.

So a group also takes its buckets in a file every worker of the host shares: one byte per
bucket (a stable hash of the lock id into :data:`SLOTS` byte offsets), locked with Linux's open
file description locks (``F_OFD_SETLK``), which belong to one open file, not to the process --
so two groups of one process exclude each other too, and closing one never releases another's.
Bytes are taken in ascending order (no two groups wait for each other), each at most until the
group's wait runs out (``BUCKET_WAIT_SECONDS``), after which the group goes ahead without it.
A process that dies releases its bytes with its files.

**A hint, never the guarantee.** Correctness rests on the version-checked lock resources in
HAPI (docs/consistency.md): a hash collision only makes unrelated times wait for each other,
a timeout only lets two groups race as before, another host's workers are not seen at all,
and where the file cannot be used (not Linux, no writable directory) booking goes on without it.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Hashable, Iterable
from pathlib import Path

from plugin.config import Settings

logger = logging.getLogger(__name__)

SLOTS = 1 << 20
"""Byte offsets the buckets hash into: two buckets collide with odds of about one in a million."""
POLL_SECONDS = 0.005
"""How often a waiting group tries a byte again (non-blocking locks keep the wait bounded)."""
_OFD_SETLK: int | None = getattr(fcntl, "F_OFD_SETLK", None)


def default_path(fhir_base_url: str) -> Path:
    """One file per upstream on the host, in ``/dev/shm`` when there is one (memory, no disk)."""
    directory = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    name = f"fanoni-buckets-{zlib.crc32(fhir_base_url.encode()):08x}.lock"
    return directory / name


def host_buckets(settings: Settings) -> HostBuckets:
    """As configured: ``BUCKET_LOCK_FILE`` (a path, or ``off``), else :func:`default_path`."""
    value = settings.bucket_lock_file
    if value and value.strip().lower() == "off":
        return HostBuckets(None)
    return HostBuckets(Path(value) if value else default_path(settings.fhir_base_url))


def _offset(bucket: Hashable) -> int:
    return zlib.crc32(str(bucket).encode()) % SLOTS


def _flock(kind: int, offset: int) -> bytes:
    # struct flock on Linux: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid
    # (l_pid must be 0 for open file description locks).
    return struct.pack("hhqqi4x", kind, os.SEEK_SET, offset, 1, 0)


class Held:
    """The bytes one group holds; :meth:`release` gives them back (closing the file would too)."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases every lock of this open file description
            self._fd = None


class HostBuckets:
    """The host-wide bucket file (module docstring). ``path=None``: off."""

    def __init__(self, path: Path | None) -> None:
        self.path = path if _OFD_SETLK is not None else None
        self._warned = False
        self._counting = threading.Lock()
        self.waiting = 0
        """Groups of this process waiting now for a bucket another open file holds (tests,
        diagnostics)."""

    def take(self, buckets: Iterable[Hashable], wait_seconds: float) -> tuple[Held, bool]:
        """Hold ``buckets`` for one group: a :class:`Held` to release once its transaction is
        done, and whether it had to wait (another worker's group was writing one of them)."""
        if self.path is None:
            return Held(None), False
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            self._warn(exc)
            return Held(None), False
        held = Held(fd)
        deadline = time.monotonic() + wait_seconds
        waited = False
        try:
            for offset in sorted({_offset(b) for b in buckets}):
                while not self._try(fd, offset):
                    if not waited:
                        waited = True
                        self._count(1)
                    if time.monotonic() >= deadline:
                        logger.info("a booking group stopped waiting for another worker's bucket")
                        return held, waited
                    time.sleep(POLL_SECONDS)
        except OSError as exc:
            held.release()
            self._warn(exc)
            return Held(None), waited
        finally:
            if waited:
                self._count(-1)
        return held, waited

    def _count(self, change: int) -> None:
        with self._counting:
            self.waiting += change

    @staticmethod
    def _try(fd: int, offset: int) -> bool:
        assert _OFD_SETLK is not None  # take() is a no-op without it
        try:
            fcntl.fcntl(fd, _OFD_SETLK, _flock(fcntl.F_WRLCK, offset))
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True

    def _warn(self, exc: OSError) -> None:
        if not self._warned:
            self._warned = True
            logger.warning(
                "the host-wide bucket file cannot be used; bookings of different workers race "
                "through the version-checked locks alone",
                extra={"path": str(self.path), "error": str(exc)},
            )
