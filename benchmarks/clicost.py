"""The command line's start-up: ``kmemdump --version``, ``ls`` of a directory of three dumps, ``show`` of
a small dump and ``dump PID`` of a process with 1 MiB registered, each against starting a bare
interpreter (``python3 -c pass``, the same interpreter), interleaved round by round in fresh processes;
and ``import kmemdump`` timed inside a fresh interpreter (alone, and with the producer's API loaded)."""

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
    runs: dict[str, list[float | None]] = {
        "bare": [],
        "version": [],
        "ls": [],
        "show": [],
        "no_stacks": [],
        "default": [],
        "import": [],
    }
    inside: dict[str, list[float | None]] = {"import": [], "api": []}
    kmemdump = kmemdump_command()
    with (
        tmpdir("kmd-bench-") as tables,
        tmpdir("kmd-bench-cli-", disk=True) as dumps,
        producer(tables, MiB) as target,
    ):
        env = bench_env(KMEMDUMP_DIR=str(tables))
        for _ in range(3):  # a small directory to list and a dump to show
            made = subprocess.run(
                [*kmemdump, "dump", str(target.pid), "--dir", str(dumps), "--no-stacks"],
                check=True,
                capture_output=True,
                text=True,
                env=env,
            )
        shown = made.stdout.split(": ")[0]
        commands = {
            "bare": [sys.executable, "-c", "pass"],
            "version": [*kmemdump, "--version"],
            "ls": [*kmemdump, "ls", str(dumps)],
            "show": [*kmemdump, "show", shown],
            "import": [sys.executable, "-c", "import kmemdump"],
            "no_stacks": [*kmemdump, "dump", str(target.pid), "--dir", str(dumps), "--no-stacks"],
            "default": [*kmemdump, "dump", str(target.pid), "--dir", str(dumps)],
        }
        kept = set(dumps.iterdir())
        for number in range(1 + rounds):
            for name, argv in commands.items():
                t0 = time.perf_counter_ns()
                subprocess.run(argv, check=True, capture_output=True, env=env)
                elapsed = time.perf_counter_ns() - t0
                if number:
                    runs[name].append(elapsed)
            for name, code in (("import", _IMPORT), ("api", _IMPORT + "; kmemdump.register")):
                timed = subprocess.run(
                    [sys.executable, "-c", _TIMED.format(code)], check=True, capture_output=True, env=env
                )
                if number:
                    inside[name].append(float(timed.stdout))
            for dump in dumps.iterdir():
                if dump not in kept:
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

    def import_row(measure: str, name: str, target_ms: float | None) -> Row:
        value = median(inside[name]) or 0.0
        return Row(
            measure,
            value,
            "ns",
            None,
            "",
            None,
            "(informational)" if target_ms is None else f"≤ {target_ms:g} ms",
            None if target_ms is None else value <= target_ms * 1e6,
            f"timed inside a fresh interpreter; {spread(inside[name])}; {how}",
        )

    return [
        row("kmemdump --version", "version", 2.0),
        row("kmemdump ls (3 dumps)", "ls", 2.0),
        row("kmemdump show DUMP (a 1 MiB dump, piped)", "show", 4.0),
        row("kmemdump dump PID, 1 MiB registered, --no-stacks", "no_stacks", 3.0),
        row("kmemdump dump PID, 1 MiB registered (default: stacks)", "default", None),
        row("python3 -c 'import kmemdump'", "import", None),
        import_row("import kmemdump, inside the interpreter", "import", 20.0),
        import_row("import kmemdump and load its API (kmemdump.register)", "api", None),
    ]


_IMPORT = "import kmemdump"
_TIMED = "import time; _t = time.perf_counter_ns(); {}; print(time.perf_counter_ns() - _t)"
