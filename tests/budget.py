"""How much work the randomised and stress tests do: a quick profile locally, the full budget in CI.

``KMEMDUMP_TEST_PROFILE=ci`` (set by ``.ci/run``) selects the full budget; anything else, or nothing,
the quick one. Hypothesis tests take their example counts from :func:`examples`; stress tests run
for :func:`seconds` and report what they covered through the ``stress_report`` fixture, which the
terminal summary prints. No test depends on how fast the machine is.
"""

from __future__ import annotations

import os

__all__ = ["FULL", "examples", "seconds"]

FULL = os.environ.get("KMEMDUMP_TEST_PROFILE", "") == "ci"
_QUICK_SHARE = 0.2


def examples(full: int) -> int:
    """Hypothesis examples for a test whose full budget is ``full``."""
    return full if FULL else max(10, int(full * _QUICK_SHARE))


def seconds(full: float) -> float:
    """Seconds a stress test runs when its full budget is ``full``."""
    return full if FULL else max(1.0, full * _QUICK_SHARE)
