"""64 MiB to disk: a dump of a live process against the physical limit, durable and not.

Variants, interleaved in every round, each writing a new file in the same directory on disk:

* the limit: ``process_vm_readv`` of the 64 MiB into memory already touched, then a write of them
  to a new file; with ``fsync`` (the faster of a buffered and an ``O_DIRECT`` write) and without;
* ``dump_target`` of the same process, held while copied, no stacks, no thread sampling: with the
  durability option (fsync, ``O_DIRECT``) and without it.

The files of a round are removed at its end, so every variant finds the page cache alike.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.limits import Staging
from benchmarks.limits import write_file
from benchmarks.procs import MiB
from benchmarks.procs import dump_in_process
from benchmarks.procs import has_option
from benchmarks.procs import producer
from benchmarks.procs import tmpdir
from benchmarks.rows import Row
from benchmarks.rows import skipped
from benchmarks.timing import Config
from benchmarks.timing import median
from benchmarks.timing import median_ratio
from benchmarks.timing import spread

__all__ = ["disk"]

_QUIET = {"stacks": False, "threads": -1.0}


def disk(config: Config) -> list[Row]:
    rounds = config.pick(full=7, quick=2)
    size = 64 * MiB
    durable_option = has_option("durable")
    times: dict[str, list[float | None]] = {
        k: [] for k in ("limit_fsync", "limit_plain", "dump_durable", "dump_plain", "pvr")
    }
    sizes: tuple[int, int] = (0, 0)
    with (
        tmpdir("kmd-bench-") as tables,
        tmpdir("kmd-bench-disk-", disk=True) as dumps,
        producer(tables, size) as target,
    ):
        from kmemdump.formats.table import read_table

        entry = next(e for e in read_table(target.table).entries if e.name == "payload")
        staging = Staging(size)
        for number in range(1 + rounds):
            made: list[Path] = []
            pvr = staging.read(target.pid, [(entry.address, size)])
            buffered, path = write_file(dumps, staging.view(size), fsync=True)
            made.append(path)
            try:
                direct, path = write_file(dumps, staging.view(size), fsync=True, direct=True)
                made.append(path)
            except OSError:
                direct = buffered  # no O_DIRECT on this file system
            pvr2 = staging.read(target.pid, [(entry.address, size)])
            plain, path = write_file(dumps, staging.view(size), fsync=False)
            made.append(path)
            durable_ns, result = dump_in_process(target, dumps, **_QUIET, durable=True)
            made.append(result.path)
            info = result.path.stat()
            sizes = (info.st_size, info.st_blocks * 512)
            plain_ns = None
            if durable_option:
                plain_ns, result = dump_in_process(target, dumps, **_QUIET, durable=False)
                made.append(result.path)
            for path in made:
                path.unlink()
            if number == 0:
                continue  # warm-up
            times["pvr"].append(pvr)
            times["limit_fsync"].append(pvr + min(buffered, direct))
            times["limit_plain"].append(pvr2 + plain)
            times["dump_durable"].append(durable_ns)
            times["dump_plain"].append(plain_ns)
    how = f"{rounds} rounds after a warm-up, interleaved; ms median (min to max)"
    rows = [
        _row(
            "dump 64 MiB to disk, durable (fsync, O_DIRECT)",
            times["dump_durable"],
            times["limit_fsync"],
            "limit: process_vm_readv + write + fsync",
            1.25,
            how,
        )
    ]
    if durable_option:
        rows.append(
            _row(
                "dump 64 MiB to disk, not durable (the default)",
                times["dump_plain"],
                times["limit_plain"],
                "limit: process_vm_readv + write",
                1.1,
                how,
            )
        )
    else:
        rows.append(skipped("dump 64 MiB to disk, not durable", "this version has no durability option"))
    pvr_ms = median(times["pvr"])
    rows.append(
        Row(
            "of which process_vm_readv of 64 MiB",
            pvr_ms or 0.0,
            "ns",
            None,
            "",
            None,
            "(informational)",
            None,
            f"{spread(times['pvr'])} ms into memory touched before",
        )
    )
    apparent, allocated = sizes
    rows.append(
        Row(
            "dump file: apparent size / allocated size",
            apparent,
            "B",
            allocated,
            "allocated",
            apparent / allocated if allocated else None,
            "≈ 1x (no sparse holes)",
            bool(allocated) and 0.95 <= apparent / allocated <= 1.05,
        )
    )
    return rows


def _row(  # noqa: PLR0917 - a row's parts
    measure: str, ours: list[float | None], base: list[float | None], label: str, target: float, how: str
) -> Row:
    ratio = median_ratio(ours, base)
    note = f"kmemdump {spread(ours)}, limit {spread(base)}; {how}"
    return Row(
        measure,
        median(ours) or 0.0,
        "ns",
        median(base),
        label,
        ratio,
        f"≤ {target:g}x the limit",
        None if ratio is None else ratio <= target,
        note,
    )
