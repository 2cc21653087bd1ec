"""Small regions stored in runs: one segment for regions a few bytes apart, the gaps zeros never read,
a run that could not be read whole stored region by region; checked with pyelftools and gdb."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from elftools.elf.elffile import ELFFile

from conftest import require_tool
from helpers_child import spawn_child
from kmemdump.collector.dump import MAX_REGION_DEFAULT
from kmemdump.collector.dump import DumpOptions
from kmemdump.collector.dump import dump_target
from kmemdump.collector.runs import GAP
from kmemdump.collector.runs import SPAN
from kmemdump.collector.runs import plan_runs
from kmemdump.formats.table import TableEntry
from kmemdump.formats.table import read_table
from kmemdump.inspect.dumpfile import Dump
from kmemdump.procinfo import process_start_time

pytestmark = pytest.mark.slow

# One page of 0xAA with regions registered in it, the next page made unreadable (PROT_NONE).
PRODUCER = r"""
import ctypes, mmap
import kmemdump
kmemdump.init(table=True, pycoreinfo=False)
page = mmap.PAGESIZE
m = mmap.mmap(-1, 2 * page)
m[:] = b"\xaa" * (2 * page)
base = buffer_address(m)
layout = {}
for i in range(8):                                  # a run: 64-byte regions 16 bytes apart
    m[i * 80 : i * 80 + 64] = bytes([i + 1]) * 64
    layout[f"r{i}"] = (base + i * 80, 64)
layout["far"] = (base + 8 * 80 - 16 + 200, 64)      # 200 bytes after the run: a segment of its own
m[layout["far"][0] - base : layout["far"][0] - base + 64] = b"\x55" * 64
layout["near"] = (base + page - 112, 64)            # 16 bytes before ...
layout["cut"] = (base + page - 32, 64)              # ... a region half in the unreadable page
m[page - 112 : page - 48] = b"\x66" * 64
m[page - 32 : page] = b"\x77" * 32
for name, (address, size) in layout.items():
    kmemdump.register(address, size, name=name)
libc = ctypes.CDLL(None, use_errno=True)
assert libc.mprotect(ctypes.c_void_p(base + page), page, 0) == 0
send({"layout": layout, "table": str(kmemdump.current_backend().path)})
block()
"""


def _loads(path: Path) -> list[tuple[int, int]]:
    with path.open("rb") as handle:
        return [
            (seg["p_vaddr"], seg["p_filesz"])
            for seg in ELFFile(handle).iter_segments()
            if seg["p_type"] == "PT_LOAD"
        ]


def _dump(
    table_dir: Path, dump_dir: Path, max_region: int = MAX_REGION_DEFAULT
) -> tuple[Path, dict[str, Any], int]:
    with spawn_child(PRODUCER) as child:
        info = child.recv()
        pid = child.pid
        result = dump_target(
            pid,
            process_start_time(pid),
            Path(info["table"]),
            reason="request",
            options=DumpOptions(dump_dir, stacks=False, threads=-1, max_region=max_region),
        )
        return result.path, {k: tuple(v) for k, v in info["layout"].items()}, pid


def test_regions_a_few_bytes_apart_share_one_segment_and_the_gaps_are_zeros(
    table_dir: Path, dump_dir: Path
) -> None:
    # GIVEN eight regions 16 bytes apart, one 200 bytes further, and two near an unreadable page
    path, layout, _ = _dump(table_dir, dump_dir)
    loads = _loads(path)
    r0 = layout["r0"][0]
    run_end = layout["r7"][0] + 64
    # THEN the eight share one segment, exactly from the first byte of r0 to the last of r7
    assert (r0, run_end - r0) in loads
    assert not any(r0 < address < run_end for address, _ in loads)
    # the region 200 bytes away has its own; the run next to the unreadable page was split
    assert layout["far"] in loads
    assert layout["near"] in loads
    assert (layout["cut"][0], 32) in loads
    with Dump.open(path) as dump:
        by_name = {r.name: r for r in dump.meta.regions}
        for i in range(8):
            record = by_name[f"r{i}"]
            assert (record.status, record.stored) == ("ok", 64)
            assert dump.region_bytes(record) == bytes([i + 1]) * 64
        assert dump.region_bytes(by_name["far"]) == b"\x55" * 64
        assert dump.region_bytes(by_name["near"]) == b"\x66" * 64
        cut = by_name["cut"]
        assert (cut.status, cut.stored) == ("partial", 32)
        assert dump.region_bytes(cut) == b"\x77" * 32
        # the 16 bytes between two regions were never read: zeros, not the process's 0xAA
        assert dump.core.read(r0 + 64, 16) == bytes(16)
        # and the file holds no 0xAA from the process at all
    assert b"\xaa" * 16 not in path.read_bytes()


def test_regions_cut_by_max_region_are_partial_and_hold_their_first_bytes(
    table_dir: Path, dump_dir: Path
) -> None:
    # GIVEN the same regions, dumped with max_region 40: every read succeeds, but none whole
    path, layout, _ = _dump(table_dir, dump_dir, max_region=40)
    with Dump.open(path) as dump:
        by_name = {r.name: r for r in dump.meta.regions}
        for i in range(8):
            record = by_name[f"r{i}"]
            assert (record.status, record.stored, record.size) == ("partial", 40, 64)
            assert dump.region_bytes(record) == bytes([i + 1]) * 40
        assert (by_name["far"].status, dump.region_bytes(by_name["far"])) == ("partial", b"\x55" * 40)
        assert (by_name["cut"].status, by_name["cut"].stored) == ("partial", 32)
        # bytes 40..64 of a region were not asked for: zeros (a gap of the run), not the process's
        assert dump.core.read(layout["r0"][0] + 40, 24) == bytes(24)


def test_gdb_reads_the_regions_of_a_run_at_their_addresses(table_dir: Path, dump_dir: Path) -> None:
    gdb = require_tool("gdb")
    path, layout, _ = _dump(table_dir, dump_dir)
    r3, far = layout["r3"][0], layout["far"][0]
    out = subprocess.run(
        [gdb, "-batch", "-nx", "-ex", f"core-file {path}", "-ex", f"x/2xb {r3}", "-ex", f"x/2xb {far}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    assert "0x04\t0x04" in out, out
    assert "0x55\t0x55" in out, out


def _entry(entry_id: int, address: int, size: int) -> tuple[TableEntry, int]:
    return TableEntry(entry_id, entry_id, f"e{entry_id}", address, size, 1, 0), size  # type: ignore[arg-type]


def test_runs_are_planned_in_address_order_within_the_gap_and_the_span() -> None:
    items = [
        _entry(20, 0x1000 + 64 + GAP, 64),  # exactly GAP after the first: joins
        _entry(16, 0x1000, 64),
        _entry(17, 0x1000 + 64 + GAP + 64 + GAP + 1, 8),  # one byte too far: a new run
        _entry(18, 0x1020, 16),  # inside the first region: overlapping regions share the run
    ]
    runs = plan_runs(items)
    assert [(run.start, run.end) for run in runs] == [
        (0x1000, 0x1000 + 64 + GAP + 64),
        (0x1000 + 64 + GAP + 64 + GAP + 1, 0x1000 + 64 + GAP + 64 + GAP + 1 + 8),
    ]
    assert [item[0].id for item in runs[0].members] == [16, 18, 20]
    # a run never spans more than SPAN bytes, however close its regions
    chunk = SPAN // 4
    big = plan_runs([_entry(16 + i, 0x100000 + i * chunk, chunk) for i in range(9)])
    assert all(run.end - run.start <= SPAN for run in big) and len(big) == 3


def test_no_run_lays_zeros_over_bytes_a_graph_walk_stores() -> None:
    # a live object graph's walk stores real bytes between two regions (an object's pre-header, say):
    # a run across that gap would store zeros there, and a reader would take them for the bytes
    items = [_entry(16, 0x1000, 64), _entry(17, 0x1000 + 64 + 32, 64)]
    assert len(plan_runs(items)) == 1
    walked = [(0x1000 + 64 + 8, 0x1000 + 64 + 24)]
    assert [(run.start, run.end) for run in plan_runs(items, walked)] == [
        (0x1000, 0x1000 + 64),
        (0x1000 + 64 + 32, 0x1000 + 64 + 32 + 64),
    ]
    # walked bytes inside a region, or away from every gap, change nothing
    assert len(plan_runs(items, [(0x1000 + 8, 0x1000 + 16), (0x9000, 0x9010)])) == 1


def test_ten_thousand_small_allocations_take_a_handful_of_segments(table_dir: Path, dump_dir: Path) -> None:
    code = (
        "import kmemdump\n"
        "kmemdump.init(table=True, capacity=10100, pycoreinfo=False)\n"
        "bufs = [kmemdump.alloc(64) for _ in range(10000)]\n"
        "for i, b in enumerate(bufs): b[:8] = i.to_bytes(8, 'little')\n"
        "send(str(kmemdump.current_backend().path))\n"
        "block()\n"
    )
    with spawn_child(code) as child:
        table = Path(child.recv())
        pid = child.pid
        entries = read_table(table).entries
        result = dump_target(
            pid,
            process_start_time(pid),
            table,
            reason="request",
            options=DumpOptions(dump_dir, stacks=False, threads=-1),
        )
    loads = _loads(result.path)
    assert len(result.meta.regions) == len(entries) >= 10_000
    assert len(loads) < 1000  # instead of one per region
    with Dump.open(result.path) as dump:
        assert dump.meta.regions == result.meta.regions
        allocations = [r for r in dump.meta.regions if r.size == 64]
        values = sorted(int.from_bytes(dump.region_bytes(r)[:8], "little") for r in allocations)
        assert values == list(range(10_000))


# Regions either side of the size read on its own (dump._ALONE) side by side, the largest running
# into an unreadable page.
ALONE_PRODUCER = r"""
import ctypes, mmap, os
import kmemdump
kmemdump.init(table=True, pycoreinfo=False)
alone = int(os.environ["ALONE"])
page = mmap.PAGESIZE
sizes = {"tiny": 64, "below": alone - 1, "at": alone, "mib": 1 << 20}
span = sum(sizes.values()) + 4 * 16
cut_at = (span + 3 * page) // page * page  # "cut" runs past the end of the readable pages
m = mmap.mmap(-1, cut_at + page)
base = buffer_address(m)
layout, at = {}, 0
for i, (name, size) in enumerate(sizes.items()):
    m[at : at + size] = bytes([i + 1]) * size
    layout[name] = (base + at, size)
    at += size + 16  # 16 bytes apart: within a run's gap
layout["cut"] = (base + cut_at - 2 * page, 3 * page)
m[cut_at - 2 * page : cut_at] = b"\x55" * (2 * page)
for name, (address, size) in layout.items():
    kmemdump.register(address, size, name=name)
libc = ctypes.CDLL(None, use_errno=True)
assert libc.mprotect(ctypes.c_void_p(base + cut_at), page, 0) == 0
send({"layout": layout, "table": str(kmemdump.current_backend().path)})
block()
"""


def test_regions_read_on_their_own_or_in_runs_are_stored_alike(table_dir: Path, dump_dir: Path) -> None:
    import os

    from kmemdump.collector import dump as dump_module

    alone = dump_module._ALONE
    with spawn_child(ALONE_PRODUCER, env={**os.environ, "ALONE": str(alone)}) as child:
        info = child.recv()
        result = dump_target(
            child.pid,
            process_start_time(child.pid),
            Path(info["table"]),
            reason="request",
            options=DumpOptions(dump_dir, stacks=False, threads=-1),
        )
    layout = {k: tuple(v) for k, v in info["layout"].items()}
    loads = _loads(result.path)
    # the regions of at least _ALONE bytes have a segment each; the smaller ones share a run
    for name in ("at", "mib"):
        assert layout[name] in loads
    tiny, below = layout["tiny"], layout["below"]
    assert (tiny[0], below[0] + below[1] - tiny[0]) in loads
    with Dump.open(result.path) as dump:
        by_name = {r.name: r for r in dump.meta.regions}
        for i, name in enumerate(("tiny", "below", "at", "mib")):
            record = by_name[name]
            assert (record.status, record.stored) == ("ok", layout[name][1]), record
            assert dump.region_bytes(record) == bytes([i + 1]) * layout[name][1]
        cut = by_name["cut"]
        assert (cut.status, cut.stored) == ("partial", 2 * cut.size // 3)
        assert dump.region_bytes(cut) == b"\x55" * cut.stored
