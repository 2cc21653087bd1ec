"""The command line's fixed cost: ``kmemdump dump PID`` of a process with 1 MiB registered, against
starting a bare interpreter (``python3 -c pass``, the same interpreter), interleaved round by round."""

from __future__ import annotations

import subprocess
import sys
import time

from benchmarks.procs import MiB
from benchmarks.procs import bench_env
from benchmarks.procs import kmemdump_command
from benchmarks.procs import producer
from benchmarks.procs import tmpdir
from benchmarks.rows import Row
from benchmarks.timing import Config
from benchmarks.timing import median
from benchmarks.timing import median_ratio
from benchmarks.timing import spread

__all__ = ["cli_cost"]


def cli_cost(config: Config) -> list[Row]:
    rounds = config.pick(full=11, quick=3)
    runs: dict[str, list[float | None]] = {"bare": [], "no_stacks": [], "default": [], "import": []}
    kmemdump = kmemdump_command()
    with (
        tmpdir("kmd-bench-") as tables,
        tmpdir("kmd-bench-cli-", disk=True) as dumps,
        producer(tables, MiB) as target,
    ):
        commands = {
            "bare": [sys.executable, "-c", "pass"],
            "import": [sys.executable, "-c", "import kmemdump"],
            "no_stacks": [*kmemdump, "dump", str(target.pid), "--dir", str(dumps), "--no-stacks"],
            "default": [*kmemdump, "dump", str(target.pid), "--dir", str(dumps)],
        }
        env = bench_env(KMEMDUMP_DIR=str(tables))
        for number in range(1 + rounds):
            for name, argv in commands.items():
                t0 = time.perf_counter_ns()
                subprocess.run(argv, check=True, capture_output=True, env=env)
                elapsed = time.perf_counter_ns() - t0
                if number:
                    runs[name].append(elapsed)
            for dump in dumps.iterdir():
                dump.unlink()
    how = f"{rounds} rounds after a warm-up, interleaved; ms median (min to max)"

    def row(measure: str, name: str, target: float | None) -> Row:
        ratio = median_ratio(runs[name], runs["bare"])
        return Row(
            measure,
            median(runs[name]) or 0.0,
            "ns",
            median(runs["bare"]),
            "python3 -c pass",
            ratio,
            "(informational)" if target is None else f"≤ {target:g}x",
            None if target is None or ratio is None else ratio <= target,
            f"{spread(runs[name])} against {spread(runs['bare'])}; {how}",
        )

    return [
        row("kmemdump dump PID, 1 MiB registered, --no-stacks", "no_stacks", 3.0),
        row("kmemdump dump PID, 1 MiB registered (default: stacks)", "default", None),
        row("python3 -c 'import kmemdump'", "import", None),
    ]
