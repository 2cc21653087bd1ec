"""Small regions: copied many per system call, stored as runs that share one segment.

A segment costs a 56-byte program header, more than a small region itself. So regions that lie at
most :data:`GAP` bytes apart (a program header's size) are stored together, as one ``PT_LOAD``
covering the run from its first byte to its last: the bytes between two regions are zeros, never
read from the process, and the region records say which bytes are whose. Merging never makes the
file bigger than a segment per region would. Ten thousand 64-byte allocations 16 bytes apart
become a handful of segments.

Each batch of runs (at most :data:`SPAN` bytes) is copied with ``process_vm_readv`` straight into
one zeroed buffer laid out as the runs, then handed to the writer run by run. A run in which some
region could not be read whole is stored region by region instead (each its readable prefix), so
no segment claims bytes the process did not give.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass

from kmemdump.formats.dumpmeta import RegionRecord
from kmemdump.formats.dumpmeta import Status
from kmemdump.formats.dumpmeta import region_record
from kmemdump.formats.elf import PHDR_SIZE
from kmemdump.formats.table import TableEntry
from kmemdump.ids import ID
from kmemdump.memory.process import ProcessMemory

__all__ = ["GAP", "SPAN", "Run", "copy_runs", "plan_runs"]

GAP = PHDR_SIZE
"""Regions at most this many bytes apart share a segment."""
SPAN = 4 << 20
"""The largest run, and the largest batch copied at once (the memory a batch needs)."""

Planned = tuple[TableEntry, int]
"""A table entry and how many of its bytes to store (its size, or less under ``max_region``)."""


@dataclass(slots=True)
class Run:
    """Regions stored as one segment: ``[start, end)`` of the process's memory."""

    start: int
    end: int
    members: list[Planned]


def plan_runs(items: Sequence[Planned], avoid: Sequence[tuple[int, int]] = ()) -> list[Run]:
    """The runs of ``items`` (regions smaller than :data:`SPAN`), in address order.

    ``avoid`` lists ``[start, end)`` ranges (sorted, not overlapping) whose real bytes the dump stores
    in segments of their own (a live object graph's): no run's zero-filled gap may cover them, since
    a reader would take the zeros for the bytes.
    """
    runs: list[Run] = []
    members: list[Planned] = []
    start = end = 0
    starts = [lo for lo, _ in avoid]
    for item in sorted(items, key=_address):
        first = item[0].address
        last = first + item[1]
        if (
            members
            and first <= end + GAP
            and (last if last > end else end) - start <= SPAN
            and (first <= end or not _meets(avoid, starts, end, first))
        ):
            members.append(item)
            end = max(end, last)
            continue
        if members:
            runs.append(Run(start, end, members))
        start, end, members = first, last, [item]
    if members:
        runs.append(Run(start, end, members))
    return runs


def _meets(avoid: Sequence[tuple[int, int]], starts: list[int], lo: int, hi: int) -> bool:
    """Whether any of the sorted, disjoint ``avoid`` ranges meets ``[lo, hi)``."""
    index = bisect.bisect_left(starts, hi) - 1  # the last range starting before hi: the largest end of those
    return index >= 0 and avoid[index][1] > lo


def _address(item: Planned) -> int:
    return item[0].address


_KEPT = (ID.BANNER, ID.PYCOREINFO)
"""Regions whose bytes the collector reads itself: who the process was, and the Python layout."""


def copy_runs(
    mem: ProcessMemory,
    runs: Sequence[Run],
    add: Callable[[int, memoryview], int],
    records: list[RegionRecord],
    copied: set[int],
    *,
    kept: dict[int, bytes] | None = None,
) -> bytes | None:
    """Copy ``runs`` batch by batch, hand each stored segment to ``add(address, bytes)`` and append
    a record per region to ``records`` (its id to ``copied``). Returns the PYCOREINFO region's bytes
    when it was stored whole; with ``kept``, the banner's and the PYCOREINFO's go there too (by ID).
    A :class:`~kmemdump.errors.ProcessGoneError` leaves the batch it hit
    out of both, for the caller to record as gone."""
    pycoreinfo = None
    batch: list[Run] = []
    span = 0
    for run in runs:
        size = run.end - run.start
        if batch and span + size > SPAN:
            pycoreinfo = _copy_batch(mem, batch, span, add, records, copied, kept) or pycoreinfo
            batch, span = [], 0
        batch.append(run)
        span += size
    if batch:
        pycoreinfo = _copy_batch(mem, batch, span, add, records, copied, kept) or pycoreinfo
    return pycoreinfo


def _copy_batch(  # noqa: PLR0917 - copy_runs's arguments, passed on
    mem: ProcessMemory,
    batch: list[Run],
    span: int,
    add: Callable[[int, memoryview], int],
    records: list[RegionRecord],
    copied: set[int],
    kept: dict[int, bytes] | None,
) -> bytes | None:
    buffer = bytearray(span)
    ranges: list[tuple[int, int, int]] = []
    base = 0
    for run in batch:
        origin = base - run.start
        ranges.extend((entry.address, size, origin + entry.address) for entry, size in run.members)
        base += run.end - run.start
    done = mem.read_scattered(ranges, buffer)
    view = memoryview(buffer)
    pycoreinfo = None
    index = 0
    base = 0
    for run in batch:
        members = run.members
        got = done[index : index + len(members)]
        index += len(members)
        whole = all(g == size for g, (_, size) in zip(got, members, strict=True))
        if whole:
            add(run.start, view[base : base + run.end - run.start])
        for (entry, _), stored in zip(members, got, strict=True):
            offset = base + entry.address - run.start
            if not whole and stored:
                add(entry.address, view[offset : offset + stored])
            status: Status
            if stored == entry.size:
                status = "ok"
                if entry.id in _KEPT:
                    data = bytes(view[offset : offset + stored])
                    if entry.id == ID.PYCOREINFO:
                        pycoreinfo = data
                    if kept is not None:
                        kept[entry.id] = data
            else:
                status = "partial" if stored else "unreadable"
            records.append(
                region_record(entry.id, entry.name, entry.kind, entry.address, entry.size, stored, status)
            )
            copied.add(entry.id)
        base += run.end - run.start
    return pycoreinfo
