"""Many small regions: the dump's cost per region and the file's size against the bytes it stores.

Two producers stay alive together, one with 10 and one with 10,000 regions of 64 bytes
(``kmemdump.alloc(64)``, besides the banner and the Python layout ``init`` registers). Each round
dumps both in-process (no stacks, no thread sampling) and measures the limit for the same ranges:
``process_vm_readv`` of them, ``IOV_MAX`` a call, into memory already touched, plus a write and
fsync of their bytes. The cost per region is the difference between the two dumps over the
difference in regions, so what every dump costs once (its file, its fsync) cancels out.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.limits import Staging
from benchmarks.limits import write_file
from benchmarks.procs import dump_in_process
from benchmarks.procs import producer
from benchmarks.procs import tmpdir
from benchmarks.rows import Row
from benchmarks.timing import Config
from benchmarks.timing import median
from benchmarks.timing import spread

__all__ = ["small_regions"]

_FEW, _MANY = 10, 10_000
_QUIET = {"stacks": False, "threads": -1.0}


def small_regions(config: Config) -> list[Row]:
    rounds = config.pick(full=7, quick=3)
    per_region: list[float | None] = []
    limit_per_region: list[float | None] = []
    many_ns: list[float | None] = []
    file_ratio: list[float | None] = []
    stored_bytes = file_bytes = 0
    with (
        tmpdir("kmd-bench-") as tables,
        tmpdir("kmd-bench-scale-", disk=True) as dumps,
        producer(tables, small=_FEW) as few,
        producer(tables, small=_MANY) as many,
    ):
        from kmemdump.formats.table import read_table

        ranges = {
            n: [(e.address, e.size) for e in read_table(p.table).entries]
            for n, p in ((_FEW, few), (_MANY, many))
        }
        staging = Staging(sum(size for _, size in ranges[_MANY]))
        for number in range(1 + rounds):
            made: list[Path] = []
            t_few, result_few = dump_in_process(few, dumps, **_QUIET)
            t_many, result = dump_in_process(many, dumps, **_QUIET)
            made += [result_few.path, result.path]
            limits = {}
            for n in (_FEW, _MANY):
                copy = staging.read((few if n == _FEW else many).pid, ranges[n])
                total = sum(size for _, size in ranges[n])
                write, path = write_file(dumps, staging.view(total), fsync=True)
                made.append(path)
                limits[n] = copy + write
            stored_bytes = result.meta.stored_bytes
            file_bytes = result.path.stat().st_size
            for path in made:
                path.unlink()
            if number == 0:
                continue
            regions = len(result.meta.regions) - len(result_few.meta.regions)
            per_region.append((t_many - t_few) / regions)
            limit_per_region.append((limits[_MANY] - limits[_FEW]) / regions)
            many_ns.append(t_many)
            file_ratio.append(file_bytes / stored_bytes)
    cost = median(per_region) or 0.0
    limit = median(limit_per_region)
    how = f"{rounds} rounds after a warm-up; µs median (min to max)"
    return [
        Row(
            f"{_MANY:,} small regions: dump cost per region",
            cost / 1e3,
            "µs",
            None if limit is None else limit / 1e3,
            "limit: process_vm_readv + write + fsync",
            None if not limit else cost / limit,
            "≤ 5 µs",
            cost <= 5e3,
            f"kmemdump {spread(per_region, 1e-3)}, limit {spread(limit_per_region, 1e-3)}; whole dump of "
            f"{_MANY:,} regions {spread(many_ns)} ms; {how}",
        ),
        Row(
            f"{_MANY:,} small regions: file size / bytes stored",
            float(file_bytes),
            "B",
            float(stored_bytes),
            "bytes stored",
            median(file_ratio),
            "≤ 1.5x",
            (median(file_ratio) or 99.0) <= 1.5,
        ),
    ]
