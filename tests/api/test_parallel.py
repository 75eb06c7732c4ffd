"""``plugin.parallel.Parallel``: independent reads at the same time, results and failures in order."""

from __future__ import annotations

import threading

import pytest

from plugin.parallel import Parallel


def test_calls_overlap_and_results_come_in_order() -> None:
    barrier = threading.Barrier(3, timeout=5)  # passes only if all three run at once

    def call(value: int) -> int:
        barrier.wait()
        return value

    assert Parallel()(lambda: call(1), lambda: call(2), lambda: call(3)) == [1, 2, 3]


def test_the_first_failure_in_order_wins_after_every_call_finished() -> None:
    finished: list[str] = []

    def slow_ok() -> str:
        threading.Event().wait(0.1)
        finished.append("slow")
        return "ok"

    def refused() -> str:
        raise PermissionError("the caller may not read it")

    def broken() -> str:
        raise RuntimeError("later failure")

    with pytest.raises(PermissionError):
        Parallel()(slow_ok, refused, broken)
    assert finished == ["slow"]


def test_one_call_runs_inline() -> None:
    assert Parallel()(lambda: threading.current_thread().name) == [threading.current_thread().name]
