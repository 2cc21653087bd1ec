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


def plan_runs(items: Sequence[Planned]) -> list[Run]:
    """The runs of ``items`` (regions smaller than :data:`SPAN`), in address order."""
    runs: list[Run] = []
    members: list[Planned] = []
    start = end = 0
    for item in sorted(items, key=_address):
        first = item[0].address
        last = first + item[1]
        if members and first <= end + GAP and (last if last > end else end) - start <= SPAN:
            members.append(item)
            end = max(end, last)
            continue
        if members:
            runs.append(Run(start, end, members))
        start, end, members = first, last, [item]
    if members:
        runs.append(Run(start, end, members))
    return runs


def _address(item: Planned) -> int:
    return item[0].address


def copy_runs(
    mem: ProcessMemory,
    runs: Sequence[Run],
    add: Callable[[int, memoryview], int],
    records: list[RegionRecord],
    copied: set[int],
) -> bytes | None:
    """Copy ``runs`` batch by batch, hand each stored segment to ``add(address, bytes)`` and append
    a record per region to ``records`` (its id to ``copied``). Returns the PYCOREINFO region's bytes
    when it was stored whole. A :class:`~kmemdump.errors.ProcessGoneError` leaves the batch it hit
    out of both, for the caller to record as gone."""
    pycoreinfo = None
    batch: list[Run] = []
    span = 0
    for run in runs:
        size = run.end - run.start
        if batch and span + size > SPAN:
            pycoreinfo = _copy_batch(mem, batch, span, add, records, copied) or pycoreinfo
            batch, span = [], 0
        batch.append(run)
        span += size
    if batch:
        pycoreinfo = _copy_batch(mem, batch, span, add, records, copied) or pycoreinfo
    return pycoreinfo


def _copy_batch(  # noqa: PLR0917 - copy_runs's arguments, passed on
    mem: ProcessMemory,
    batch: list[Run],
    span: int,
    add: Callable[[int, memoryview], int],
    records: list[RegionRecord],
    copied: set[int],
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
                if entry.id == ID.PYCOREINFO:
                    pycoreinfo = bytes(view[offset : offset + stored])
            else:
                status = "partial" if stored else "unreadable"
            records.append(
                region_record(entry.id, entry.name, entry.kind, entry.address, entry.size, stored, status)
            )
            copied.add(entry.id)
        base += run.end - run.start
    return pycoreinfo
