"""PNG plots of a run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the backend

SIDECAR_COLOR = "tab:blue"
REPLAY_COLOR = "tab:gray"
RAW_COLOR = "tab:orange"


def _reference(values: list[int]) -> int:
    """The value the other panels hold a dimension at: the middle one measured."""
    ordered = sorted(set(values))
    return ordered[(len(ordered) - 1) // 2] if len(ordered) > 2 else ordered[-1]


def find_plot(cells: list[dict[str, Any]], path: Path) -> Path:
    """``$find`` p50 (bars to p95) against schedules, days and Slots, each panel holding the
    other two dimensions at a reference value; the last panel every cell, sidecar against reads
    alone."""
    dims = ("schedules", "days", "slots")
    reference = {d: _reference([c[d] for c in cells]) for d in dims}
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.5))
    for ax, dim in zip(axes, dims, strict=False):
        others = [d for d in dims if d != dim]
        chosen = sorted((c for c in cells if all(c[o] == reference[o] for o in others)), key=lambda c: c[dim])
        xs = [c[dim] for c in chosen]
        for key, label, color, style in (
            ("sidecar", "sidecar", SIDECAR_COLOR, "-o"),
            ("replay", "same reads alone", REPLAY_COLOR, "--s"),
        ):
            p50 = [c[key]["p50"] for c in chosen]
            p95 = [c[key]["p95"] for c in chosen]
            ax.errorbar(
                xs,
                p50,
                yerr=[[0] * len(p50), [b - a for a, b in zip(p50, p95, strict=True)]],
                fmt=style,
                color=color,
                capsize=3,
                label=f"{label} p50 (bar: p95)",
            )
        ax.set_xlabel(dim if dim != "slots" else "busy Slots in the pool")
        ax.set_ylabel("ms")
        ax.set_title(", ".join(f"{o} = {reference[o]}" for o in others), fontsize=9)
        if dim == "slots" and min(xs, default=0) >= 0:
            ax.set_xscale("symlog", linthresh=100)
        ax.set_xticks(xs)
        ax.set_xticklabels([str(x) for x in xs])
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    ax = axes[3]
    replay = [c["replay"]["p50"] for c in cells]
    sidecar = [c["sidecar"]["p50"] for c in cells]
    ax.scatter(replay, sidecar, color=SIDECAR_COLOR, s=18)
    top = max([*replay, *sidecar, 1.0]) * 1.05
    ax.plot([0, top], [0, top], color=REPLAY_COLOR, lw=1, label="ratio 1")
    ax.plot([0, top / 1.25], [0, top], color="tab:red", lw=1, ls="--", label="ratio 1.25 (target)")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("same reads alone p50 ms")
    ax.set_ylabel("sidecar p50 ms")
    ax.set_title("every cell", fontsize=9)
    ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper left")
    ax.legend(fontsize=8, loc="upper left")
    fig.suptitle("Appointment/$find latency: sidecar vs the same upstream reads sent straight to HAPI (H2)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def book_plot(book: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """``$book`` throughput per mode (bars: median; whiskers: min-max over repetitions),
    sidecar against raw transactions, one panel per database."""
    fig, axes = plt.subplots(1, len(book), figsize=(7.5 * len(book), 4.8), squeeze=False)
    for ax, (database, modes) in zip(axes[0], book.items(), strict=True):
        positions = range(len(modes))
        width = 0.38
        for offset, side, color, label in (
            (-width / 2, "sidecar", SIDECAR_COLOR, "sidecar $book"),
            (width / 2, "raw", RAW_COLOR, "raw HAPI transactions"),
        ):
            medians = [m[side]["throughput"]["median"] for m in modes]
            low = [m[side]["throughput"]["median"] - m[side]["throughput"]["min"] for m in modes]
            high = [m[side]["throughput"]["max"] - m[side]["throughput"]["median"] for m in modes]
            ax.bar(
                [p + offset for p in positions],
                medians,
                width,
                yerr=[low, high],
                capsize=3,
                color=color,
                label=label,
            )
        ax.set_xticks(list(positions))
        ax.set_xticklabels(
            [m["title"].replace(", ", "\n").replace("capacity", "cap.") for m in modes], fontsize=8
        )
        ax.set_ylabel("bookings per second")
        ax.set_title(database)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("$book throughput against clients and schedules")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
