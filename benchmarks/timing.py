"""Small timing helpers: best-of-N loops, so a noisy shared machine disturbs the ratios least."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["best_ns_per_op"]


def best_ns_per_op(fn: Callable[[int], None], n: int, repeats: int = 7) -> float:
    """Run ``fn(n)`` (which performs n operations) ``repeats`` times; the best ns per operation."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fn(n)
        best = min(best, (time.perf_counter_ns() - t0) / n)
    return best
