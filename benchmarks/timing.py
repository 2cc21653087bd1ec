"""Timing helpers: best-of-N loops for the micro-benchmarks, medians of interleaved rounds for the rest.

Interleaving runs every variant once per round, round after round, so a machine that slows down
(other people's work on a shared host, a CPU that changes speed) slows every variant alike; the
ratios are the medians of the per-round ratios.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Config", "best_ns_per_op", "median", "median_ratio", "spread"]


@dataclass(frozen=True, slots=True)
class Config:
    """How long to run: ``quick`` for a short run, ``rounds`` to override a suite's round count."""

    quick: bool = False
    rounds: int | None = None

    def pick(self, full: int, quick: int) -> int:
        """The number of rounds: the override, else the suite's figure for a full or a quick run."""
        if self.rounds is not None:
            return self.rounds
        return quick if self.quick else full


def best_ns_per_op(fn: Callable[[int], None], n: int, repeats: int = 7) -> float:
    """Run ``fn(n)`` (which performs n operations) ``repeats`` times; the best ns per operation."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fn(n)
        best = min(best, (time.perf_counter_ns() - t0) / n)
    return best


def median(values: Sequence[float | None]) -> float | None:
    """The median of the values that are not None (None when there are none)."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def median_ratio(ours: Sequence[float | None], base: Sequence[float | None]) -> float | None:
    """The median of ``ours[i] / base[i]`` over the rounds where both were measured."""
    return median([o / b for o, b in zip(ours, base, strict=True) if o is not None and b])


def spread(values: Sequence[float | None], scale: float = 1e-6) -> str:
    """``median (min to max)`` of the values, scaled (ns to ms by default), for the notes."""
    present = [v * scale for v in values if v is not None]
    if not present:
        return "—"
    return f"{statistics.median(present):.1f} ({min(present):.1f} to {max(present):.1f})"
