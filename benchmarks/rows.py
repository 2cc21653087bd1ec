"""One benchmark result row: our number, the baseline measured beside it, and the target."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Row", "fmt_bytes", "fmt_ns", "skipped"]


@dataclass(frozen=True, slots=True)
class Row:
    measure: str
    ours: float
    ours_unit: str
    baseline: float | None
    baseline_label: str
    ratio: float | None
    """ours / baseline (for sizes and times: lower is better unless the target says otherwise)."""
    target: str
    met: bool | None
    """None: informational, no target."""
    note: str = ""
    """How it was measured, the spread over rounds, or why a comparison was not run."""

    def cells(self) -> tuple[str, str, str, str, str, str]:
        ours = _fmt(self.ours, self.ours_unit)
        base = (
            "—" if self.baseline is None else f"{_fmt(self.baseline, self.ours_unit)} ({self.baseline_label})"
        )
        ratio = "—" if self.ratio is None else f"{self.ratio:.3g}x"
        met = {True: "yes", False: "NO", None: "—"}[self.met]
        return (self.measure, ours, base, ratio, self.target, met)


def _fmt(value: float, unit: str) -> str:
    if math.isnan(value):  # not measured
        return "—"
    if unit == "ns":
        return fmt_ns(value)
    if unit == "B":
        return fmt_bytes(value)
    if unit == "%":
        return f"{value:.2f} %"
    if unit == "MB/s":
        return f"{value:,.0f} MB/s"
    return f"{value:.4g} {unit}"


def fmt_ns(ns: float) -> str:
    if ns >= 1e9:
        return f"{ns / 1e9:.3g} s"
    if ns >= 1e6:
        return f"{ns / 1e6:.3g} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.3g} µs"
    return f"{ns:.0f} ns"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n} B"


def skipped(measure: str, why: str) -> Row:
    """A row for a comparison that could not run here, saying why."""
    return Row(measure, float("nan"), "", None, "", None, "skipped", None, why)
