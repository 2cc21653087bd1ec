"""Dump size at each capture level (``--capture regions``, ``--capture stacks``), beside gcore's."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

from benchmarks.procs import dump_in_process
from benchmarks.procs import has_option
from benchmarks.procs import producer
from benchmarks.procs import tmpdir
from benchmarks.rows import Row
from benchmarks.rows import skipped
from benchmarks.timing import Config

__all__ = ["capture_levels"]

REGISTERED = 64 << 10


def capture_levels(config: Config) -> list[Row]:
    """One process with 64 KiB registered, blocked reading its standard input, dumped at each level;
    a full core of the same process (gcore) beside it, when gdb is installed."""
    if not has_option("capture"):
        return [skipped("dump size at each capture level", "this kmemdump has no capture levels")]
    with (
        tmpdir("kmd-bench-") as tables,
        tmpdir("kmd-bench-capture-", disk=True) as dumps,
        producer(tables, REGISTERED) as target,
    ):
        regions_ns, regions = dump_in_process(target, dumps, stacks=False)
        stacks_ns, stacks = dump_in_process(target, dumps, stacks=False, capture="stacks")
        full = None
        exe = shutil.which("gcore")
        if exe is not None:
            command = [exe, "-o", str(dumps / "gcore"), str(target.pid)]
            subprocess.run(command, capture_output=True, check=True)
            full = sum(p.stat().st_size for p in dumps.glob("gcore*"))
            os.kill(target.pid, signal.SIGCONT)
        small, large = regions.path.stat().st_size, stacks.path.stat().st_size
    return [
        Row("dump size, --capture regions (64 KiB registered)", small, "B", full, "gcore",
            _ratio(small, full), "—", None),
        Row("dump size, --capture stacks (pystack, gdb bt, py-bt)", large, "B", small, "--capture regions",
            large / small, "≤ 1 MiB more than regions", large - small <= 1 << 20),
        Row("dump time, --capture stacks", stacks_ns, "ns", regions_ns, "--capture regions",
            stacks_ns / regions_ns, "—", None),
    ]  # fmt: skip


def _ratio(ours: int, theirs: int | None) -> float | None:
    return None if theirs is None else ours / theirs
