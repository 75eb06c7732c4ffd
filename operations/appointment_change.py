"""What ``$confirm`` and ``$cancel`` (and any operation that changes one stored Appointment)
share: reading the Appointment, and settling a write whose answer was lost.

The caller's credentials read the addressed Appointment first (a caller may change what it may
read); every other read and every write uses the sidecar's own (``Stores``). The Appointment
update is version-checked (``ifMatch``): a hold being confirmed while the clean-up cancels it is
settled by the upstream, never by luck -- whichever commits second fails its version check,
re-reads and decides again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from operations.errors import ConcurrentChange, NotFound, OutcomeUnknown, StoreFailure
from operations.retries import Clock, RetryPolicy, retrying
from operations.store import FhirReader, FhirStore, Resource, Stores, as_stores

T = TypeVar("T")


def read_appointment(reader: FhirReader, appointment_id: str) -> Resource:
    appointment = reader.read("Appointment", appointment_id)
    if appointment is None:
        raise NotFound(f"Appointment/{appointment_id} does not exist", expression="Appointment")
    return appointment


class LostWrite:
    """The write of one operation whose answer was lost, if any. Once there is one, the
    operation's next attempt settles it, and any failure to reach the upstream on the way is
    answered as that write's unknown outcome -- never as a plain error that reads "nothing
    happened" (it may have)."""

    def __init__(self) -> None:
        self.error: OutcomeUnknown | None = None
        self.fenced = False
        """Whether the lock it was checked against has been fenced: it can no longer land."""

    def lose(self, error: OutcomeUnknown, what: str) -> ConcurrentChange:
        """Remember ``error``; the ``ConcurrentChange`` to raise so that the operation re-reads.
        A second lost answer in a row is raised as it is: the upstream is not answering."""
        if self.error is not None:
            raise error
        self.error = error
        return ConcurrentChange(f"the answer to the {what} was lost; re-reading")

    def guarding(self, step: Callable[[], T]) -> Callable[[], T]:
        """``step`` as an attempt that answers a failure after a lost write as its outcome."""

        def attempt() -> T:
            try:
                return step()
            except StoreFailure:
                if self.error is not None:
                    raise self.error from None
                raise

        return attempt


def change_appointment(
    stores: Stores | FhirStore,
    appointment_id: str,
    step: Callable[[FhirStore, Resource, LostWrite], T],
    *,
    clock: Clock,
    policy: RetryPolicy | None,
    operation: str,
    permission_reads: Sequence[Callable[[], object]] = (),
) -> T:
    """The frame of an operation on one stored Appointment: read it with the caller's
    credentials (permission: a caller may change what it may read), then run ``step`` on the
    sidecar's own fresh read of it -- with the sidecar's store and the operation's
    :class:`LostWrite` -- until it stops losing version checks (``operations/retries.py``).

    ``permission_reads`` (reads and checks of what else the change names, with the caller's
    credentials) run together with the caller's read of the Appointment: no round trip more."""
    stores = as_stores(stores)
    stores.together(lambda: read_appointment(stores.caller, appointment_id), *permission_reads)
    store = stores.service
    lost = LostWrite()

    def attempt() -> T:
        return step(store, read_appointment(store, appointment_id), lost)

    return retrying(policy or RetryPolicy(), clock, lost.guarding(attempt), operation=operation)
