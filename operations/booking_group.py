"""Committing bookings: one read-decide-write cycle for one booking, or for a group of bookings
of the same time that arrived while another was being written (group commit).

**Why groups.** On a busy Schedule -- a vaccination day, a group class of capacity 30 opening --
many bookings want the same few buckets at once. Each on its own would read the same locks and
Slots, and all but one would lose the version check, re-read and try again: the upstream does
the work of every booking many times over, and the tail grows to seconds. A process instead
lets one booking of the same time buckets be written at a time (``Grouping``, given by the
plugin, keyed by :func:`group_key`);
those that arrive meanwhile wait, and are then decided together on one lock read and one Slot
search, and written in one transaction. The upstream does a group's reads once, and bookings
of one process never contend with each other.

**Why it stays race-free** (docs/consistency.md). A group is decided like one booking whose
footprint is the union of its members': the locks of every member's buckets and periods are
read before the one Slot search that covers every member's deciding spans, and the
transaction checks every lock it takes against the version read. Each member is decided on the
Slots found *plus the Slots of the members accepted before it*, so two members cannot both take
the last place. Another process's write that lands after the lock read makes the transaction
fail its version check, and the group re-reads and decides again, as one booking would.

**Each member keeps its own answer.** Its caller's participant reads, its identifier look-up
(an idempotent replay is 200 for it alone), its decision (a 409 or 422 for it alone), its
Provenance (attributed to its own caller by its own store), its own transaction-response
entries. A failure of the shared reads or of the transaction is every member's. When the
upstream refuses the content of a group's transaction (400/422), which member caused it is not
known: each member is then committed alone (:data:`ALONE`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from operations.availability import merge
from operations.booking_lookup import look_up, settle_lost
from operations.decision import decide, footprints, search_spans
from operations.errors import ConcurrentChange, Conflict, OutcomeUnknown, Unprocessable
from operations.fhir_values import transaction_bundle
from operations.locks import NO_LOCKS, LockPlan, Locks, lock_entries, lock_plan, read_planned
from operations.model import Interval, Leg, Service
from operations.participants import ParticipantReads, check_participants
from operations.proposal import BookingRequest
from operations.retries import Clock, RetryPolicy, retrying
from operations.store import FhirStore, Resource, Stores, Together
from operations.writes import (
    BookingResult,
    booking_bundle,
    response_bundle,
)

logger = logging.getLogger(__name__)


@dataclass
class Prepared:
    """One booking once its configuration is read and checked: everything its decision and its
    transaction need (``operations/booking.py`` prepares it)."""

    request: BookingRequest
    stores: Stores
    hold: bool
    hold_ttl: timedelta
    service: Service
    legs: list[Leg]
    visits: list[Interval]
    plan: LockPlan
    """The locks it takes (``decision.exact_plan``)."""
    spans: list[Interval]
    """What its Slot search must cover (``decision.deciding_spans``)."""
    participants: ParticipantReads
    """The participants besides the actors, read with its caller's credentials once."""
    actors: frozenset[str]
    marker: str
    series_id: str | None = None
    speculated: Locks | None = None
    """The locks read in its first round trip, before the configuration: used when it is
    committed at once, alone (they are stale once it has waited for another group)."""
    participants_checked: bool = field(default=False)


class Alone:
    """The outcome of a member whose group's transaction the upstream refused for its content:
    commit it again, by itself, to learn whose content it was."""


ALONE = Alone()

Outcome = BookingResult | BaseException | Alone
Commit = Callable[[Sequence[Prepared], bool], list[Outcome]]
"""Commits a group (``waited``: whether it waited for another group first) and returns one
outcome per member, in order."""


class Grouping(Protocol):
    """Lets one group per ``key`` (:func:`group_key`) be committed at a time in this process: the
    bookings that arrive meanwhile wait and go next, together (``plugin/booking_groups.py``)."""

    def __call__(self, key: Hashable, member: Prepared, commit: Commit) -> Outcome: ...

    def busy(self, key: Hashable) -> bool:
        """Whether a group of ``key`` is being written now (a booking arriving would wait)."""
        ...


def group_key(request: BookingRequest) -> Hashable:
    """Bookings are grouped by the time buckets they take (``operations/locks.py``): those of one
    time, which would all lose to each other's version checks. Bookings of other times of the
    same Schedule take other buckets and go on at the same time, in groups of their own: put in
    one group they would not save a retry, and the group's footprint -- the union of theirs --
    would collide with other processes' bookings far more often than each of theirs does
    (measured: a day of 60 times booked at random by 64 clients through two processes, grouped
    by Schedule, had groups lose their version check 20 and 46 times in a row)."""
    return tuple(sorted(lock_plan(footprints(request))))


def commit(
    members: Sequence[Prepared], waited: bool, *, clock: Clock, policy: RetryPolicy | None = None
) -> list[Outcome]:
    """Decide and write ``members`` together (module docstring): one outcome per member.

    Three round trips of latency after the configuration: the locks; the Slot search with every
    member's participants and identifier look-up; the transaction. A lone member that did not
    wait reuses the locks its first round trip read, so its booking costs three round trips in
    all. A lost version check repeats the three for the members not yet answered -- and halves
    how many of them the next transaction writes (the others go in the next one): a big group's
    transaction, slower to decide and to commit, would otherwise keep losing to the smaller,
    quicker ones of other processes until the deadline. Each transaction that lands doubles it
    again: once the contention has passed, the members still open are not written one by one
    (measured: a group of 8 that lost three times took 11 attempts without it). All within one
    deadline.
    """
    policy = policy or RetryPolicy()
    outcomes: list[Outcome | None] = [None] * len(members)
    lead = members[0].stores
    store, together = lead.service, lead.together
    speculated = [members[0].speculated] if len(members) == 1 and not waited else []
    writes = [len(members)]  # how many accepted members the next transaction writes

    tried = [0]  # attempts so far: a member's own count is the attempt that answered it
    answered_at: list[int | None] = [None] * len(members)

    def attempt() -> None:
        tried[0] += 1
        try:
            _attempt()
        finally:
            for i, outcome in enumerate(outcomes):
                if outcome is not None and answered_at[i] is None:
                    answered_at[i] = tried[0]

    def _attempt() -> None:
        open_ = [i for i, o in enumerate(outcomes) if o is None]
        plan: LockPlan = {}
        for i in open_:
            plan |= members[i].plan
        locks = _taken_locks(store, plan, speculated.pop() if speculated else None, together)
        now = clock.now()
        accepted, provisional = _decide_members(members, open_, outcomes, store, together, now, writes[0])
        if accepted:
            taken = locks.keeping({lock for i in accepted for lock in members[i].plan})
            try:
                landed = _write(members, accepted, outcomes, taken, store, now, clock)
            except ConcurrentChange:
                writes[0] = max(1, writes[0] // 2)
                raise
            if landed:  # the places they were refused for are taken now
                for i, taken_time in provisional.items():
                    outcomes[i] = taken_time
                writes[0] = min(len(members), writes[0] * 2)

    operation = "$hold" if all(m.hold for m in members) else "$book"
    started = clock.monotonic()
    while any(o is None for o in outcomes):
        rest = replace(policy, deadline_seconds=policy.deadline_seconds - (clock.monotonic() - started))
        try:
            retrying(rest, clock, attempt, operation=operation)
        except Exception as exc:  # the deadline, the transaction failed: every open member's answer
            outcomes[:] = [exc if o is None else o for o in outcomes]
    if len(members) > 1:
        logger.info(
            "booking group committed",
            extra={"operation": operation, "members": len(members), "attempts": tried[0]},
        )
    return [_counted(outcome, answered_at[i] or tried[0], len(members)) for i, outcome in enumerate(outcomes)]


def _decide_members(
    members: Sequence[Prepared],
    open_: Sequence[int],
    outcomes: list[Outcome | None],
    store: FhirStore,
    together: Together,
    now: datetime,
    limit: int,
) -> tuple[dict[int, Resource], dict[int, Conflict]]:
    """Round two and the decisions: the bundle (without locks) of each member of ``open_``
    accepted, in order, at most ``limit`` of them (the members after them stay open). The others
    get their outcome: a replay (200), or their own error -- except a member refused only once
    members before it were accepted: its 409 counts their places, so it is *provisional*
    (returned apart) until their transaction lands."""
    calls: list[Callable[[], _Captured]] = []
    reads: dict[int, tuple[int, int]] = {}
    for i in open_:
        member = members[i]
        first = len(calls)
        if not member.participants_checked:
            calls += [_captured(search) for search in member.participants.searches(member.stores.caller)]
        calls.append(_captured(look_up(store, member.request)))
        reads[i] = (first, len(calls))
    schedule_ids = sorted({leg.schedule.id for i in open_ for leg in members[i].legs})
    spans = merge([span for i in open_ for span in members[i].spans])
    calls.append(_captured(lambda: search_spans(store, schedule_ids, spans, together)))
    *answers, slots = together(*calls)
    slot_resources: list[Resource] | None = None
    accepted: dict[int, Resource] = {}
    conflicted: dict[int, Conflict] = {}
    provisional: dict[int, Conflict] = {}
    for i in open_:
        member = members[i]
        first, last = reads[i]
        *participants, replay = answers[first:last]
        try:
            # In this order, as one booking alone: a refusal of its caller's credentials wins.
            if not member.participants_checked:
                found_participants = dict(_unwrapped(p) for p in participants)
                check_participants(member.participants, found_participants, member.actors)
                member.participants_checked = True
            found = _unwrapped(replay)
            if found is not None:
                outcomes[i] = found
                continue
            if len(accepted) == limit:
                continue  # decided in a later transaction, on what this one leaves
            if slot_resources is None:
                slot_resources = list(_unwrapped(slots))
            decide(member.service, member.legs, slot_resources, member.visits, now, member.request.root)
        except Conflict as taken:
            (provisional if accepted else conflicted)[i] = taken
            continue
        except Exception as exc:  # its own answer (400/422, its caller refused), or the reads'
            outcomes[i] = exc
            continue
        accepted[i] = _member_bundle(member, now)
        slot_resources += _pending_slots(accepted[i], i)
    if conflicted or provisional:
        _replay_or_conflict(members, conflicted, provisional, outcomes, store, together)
    return accepted, provisional


def _member_bundle(member: Prepared, now: datetime) -> Resource:
    """What one accepted member writes: its Slots and Appointment (the locks go once per group)."""
    return booking_bundle(
        member.request,
        member.legs,
        NO_LOCKS,
        hold=member.hold,
        expires=_expiry(member, now),
        marker=member.marker,
        visits=member.visits,
        series_id=member.series_id,
    )


def _expiry(member: Prepared, now: datetime) -> datetime | None:
    return now + member.hold_ttl if member.hold else None


def _replay_or_conflict(
    members: Sequence[Prepared],
    conflicted: dict[int, Conflict],
    provisional: dict[int, Conflict],
    outcomes: list[Outcome | None],
    store: FhirStore,
    together: Together,
) -> None:
    """A member whose time looked taken may be racing its own twin (same identifier) that
    committed after the first look-up: look once more; 409 when there is none (a provisional
    409 stays in ``provisional``, unanswered)."""
    refused = [*conflicted, *provisional]
    replays = together(*[_captured(look_up(store, members[i].request)) for i in refused])
    for i, replay in zip(refused, replays, strict=True):
        try:
            found = _unwrapped(replay)
        except Exception as exc:
            found = exc
        if found is not None:
            outcomes[i] = found
            provisional.pop(i, None)
        elif i in conflicted:
            outcomes[i] = conflicted[i]


def _write(
    members: Sequence[Prepared],
    accepted: dict[int, Resource],
    outcomes: list[Outcome | None],
    locks: Locks,
    store: FhirStore,
    now: datetime,
    clock: Clock,
) -> bool:
    """The accepted members' transaction: the locks once, then each member's Slots, Appointment
    and (in a group) Provenance. Whether it landed; raises ``ConcurrentChange`` (the caller
    retries the open members)."""
    entries = lock_entries(locks)
    parts: dict[int, tuple[int, int]] = {}
    for i, written in accepted.items():
        # In a group each member is attributed to its own caller; alone, the store does it.
        part = (
            members[i].stores.service.attributed(written)["entry"] if len(members) > 1 else written["entry"]
        )
        parts[i] = (len(entries), len(entries) + len(part))
        entries += part
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(
            "booking transaction",
            extra={
                "booking_request": [members[i].marker for i in accepted],
                "locks": [f"{lock.lock_id}@{lock.version}" for lock in locks.taken],
            },
        )
    try:
        response = store.transaction(transaction_bundle(entries))
    except OutcomeUnknown as lost:
        return _settle(members, list(accepted), outcomes, locks, store, clock, lost)
    except Unprocessable:
        if len(members) == 1:
            raise
        for i in accepted:
            outcomes[i] = ALONE
        return False
    answered = response.get("entry") or []
    for i, (first, last) in parts.items():
        expires = _expiry(members[i], now)
        outcomes[i] = BookingResult(201, response_bundle({"entry": answered[first:last]}), expires)
    return True


def _settle(
    members: Sequence[Prepared],
    accepted: Sequence[int],
    outcomes: list[Outcome | None],
    locks: Locks,
    store: FhirStore,
    clock: Clock,
    lost: OutcomeUnknown,
) -> bool:
    """The transaction's answer was lost: each accepted member's outcome as ``settle_lost``
    establishes it (for a group, one fence for all: it landed for every member or for none).
    Whether it landed."""
    settled = settle_lost(store, locks, [members[i].marker for i in accepted], clock, lost)
    for i, outcome in zip(accepted, settled, strict=True):
        outcomes[i] = outcome
    return any(isinstance(outcome, BookingResult) for outcome in settled)


def _counted(outcome: Outcome | None, attempts: int, group: int) -> Outcome:
    assert outcome is not None
    if isinstance(outcome, BookingResult):
        return replace(outcome, attempts=attempts, group=group)
    return outcome


def _taken_locks(store: FhirStore, plan: LockPlan, speculated: Locks | None, together: Together) -> Locks:
    """The locks of ``plan`` at their current versions: from the speculative read of the first
    round trip where it has them (the rest read now), else read afresh."""
    if speculated is None:
        return read_planned(store, plan, together=together)
    known = {lock.lock_id for lock in speculated.taken}
    missing = {lock_id: where for lock_id, where in plan.items() if lock_id not in known}
    locks = speculated.keeping(plan)
    return locks.merged(read_planned(store, missing, together=together)) if missing else locks


def _pending_slots(bundle: Resource, index: int) -> list[Resource]:
    """The Slots an accepted member will write, as the next members' decisions must see them."""
    slots = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Slot"]
    return [{**slot, "id": f"pending-{index}-{n}"} for n, slot in enumerate(slots)]


@dataclass(frozen=True)
class _Captured:
    value: Any = None
    error: BaseException | None = None


def _captured(call: Callable[[], Any]) -> Callable[[], _Captured]:
    """A member's read, whose failure is that member's alone (kept, not raised, so the others'
    reads and the shared Slot search still count)."""

    def run() -> _Captured:
        try:
            return _Captured(value=call())
        except Exception as exc:
            return _Captured(error=exc)

    return run


def _unwrapped(captured: _Captured) -> Any:
    if captured.error is not None:
        raise captured.error
    return captured.value
