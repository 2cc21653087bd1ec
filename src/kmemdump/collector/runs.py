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
import operator
from collections.abc import Callable
from collections.abc import Sequence
from itertools import repeat
from operator import attrgetter
from operator import itemgetter

from kmemdump.formats.dumpmeta import RegionRecord
from kmemdump.formats.dumpmeta import Status
from kmemdump.formats.dumpmeta import region_record
from kmemdump.formats.dumpmeta import region_records
from kmemdump.formats.elf import PHDR_SIZE
from kmemdump.formats.table import TableEntry
from kmemdump.ids import BANNER_ID
from kmemdump.ids import PYCOREINFO_ID
from kmemdump.memory.process import ProcessMemory
from kmemdump.record import mutable

__all__ = ["GAP", "SPAN", "Run", "copy_runs", "plan_runs"]

GAP = PHDR_SIZE
"""Regions at most this many bytes apart share a segment."""
SPAN = 4 << 20
"""The largest run, and the largest batch copied at once (the memory a batch needs)."""

Planned = tuple[TableEntry, int]
"""A table entry and how many of its bytes to store (its size, or less under ``max_region``)."""


@mutable
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
    firsts: list[int] = list(map(_ADDRESS_OF, map(_first, items)))
    lasts: list[int] = list(map(operator.add, firsts, map(_second, items)))
    for index in sorted(range(len(firsts)), key=firsts.__getitem__):  # address order, stable
        first = firsts[index]
        last = lasts[index]
        if (
            members
            and first <= end + GAP
            and (last if last > end else end) - start <= SPAN
            and (first <= end or not avoid or not _meets(avoid, starts, end, first))
        ):
            members.append(items[index])
            end = max(end, last)
            continue
        if members:
            runs.append(Run(start, end, members))
        start, end, members = first, last, [items[index]]
    if members:
        runs.append(Run(start, end, members))
    return runs


def _meets(avoid: Sequence[tuple[int, int]], starts: list[int], lo: int, hi: int) -> bool:
    """Whether any of the sorted, disjoint ``avoid`` ranges meets ``[lo, hi)``."""
    index = bisect.bisect_left(starts, hi) - 1  # the last range starting before hi: the largest end of those
    return index >= 0 and avoid[index][1] > lo


_KEPT = (BANNER_ID, PYCOREINFO_ID)
"""Regions whose bytes the collector reads itself: who the process was, and the Python layout."""
_KEPT_IDS = frozenset(int(region_id) for region_id in _KEPT)
_first, _second = itemgetter(0), itemgetter(1)
_ID_OF, _NAME_OF, _KIND_OF = attrgetter("id"), attrgetter("name"), attrgetter("kind")
_ADDRESS_OF, _SIZE_OF = attrgetter("address"), attrgetter("size")


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
    members = [item for run in batch for item in run.members]
    entries: list[TableEntry] = list(map(_first, members))
    sizes: list[int] = list(map(_second, members))
    addresses: list[int] = list(map(_ADDRESS_OF, entries))
    origins: list[int] = []  # where each run's first byte lands in the buffer, less its address
    base = 0
    for run in batch:
        origins += repeat(base - run.start, len(run.members))
        base += run.end - run.start
    offsets = list(map(operator.add, addresses, origins))
    done = mem.read_columns(addresses, sizes, offsets, buffer)
    view = memoryview(buffer)
    if done == sizes and sizes == list(map(_SIZE_OF, entries)):
        return _all_whole(batch, view, entries, addresses, sizes, offsets, add, records, copied, kept)
    pycoreinfo = None
    index = 0
    base = 0
    for run in batch:
        got = done[index : index + len(run.members)]
        index += len(run.members)
        pycoreinfo = _store_run(run, base, got, view, add, records, copied, kept) or pycoreinfo
        base += run.end - run.start
    return pycoreinfo


def _all_whole(  # noqa: PLR0917 - _copy_batch's state, passed once
    batch: list[Run],
    view: memoryview,
    entries: list[TableEntry],
    addresses: list[int],
    sizes: list[int],
    offsets: list[int],
    add: Callable[[int, memoryview], int],
    records: list[RegionRecord],
    copied: set[int],
    kept: dict[int, bytes] | None,
) -> bytes | None:
    """The common case, every region of the batch read whole: a segment a run, and the records made
    column by column (no Python loop over the regions)."""
    base = 0
    for run in batch:
        add(run.start, view[base : base + run.end - run.start])
        base += run.end - run.start
    ids: list[int] = list(map(_ID_OF, entries))
    records += region_records(
        ids,
        map(_NAME_OF, entries),
        map(_KIND_OF, entries),
        addresses,
        sizes,
        sizes,
        repeat("ok"),
        repeat(""),
        repeat("process"),
    )
    copied.update(ids)
    pycoreinfo = None
    for region_id in _KEPT_IDS.intersection(ids):
        at = ids.index(region_id)
        data = bytes(view[offsets[at] : offsets[at] + sizes[at]])
        if region_id == PYCOREINFO_ID:
            pycoreinfo = data
        if kept is not None:
            kept[region_id] = data
    return pycoreinfo


def _store_run(  # noqa: PLR0917 - _copy_batch's state, passed once
    run: Run,
    base: int,
    got: list[int],
    view: memoryview,
    add: Callable[[int, memoryview], int],
    records: list[RegionRecord],
    copied: set[int],
    kept: dict[int, bytes] | None,
) -> bytes | None:
    """Store one run of a batch some region of which was not read whole (``got``: the bytes read of
    each member): the run as one segment when its regions were, else each region's readable prefix."""
    members = run.members
    whole = all(g == size for g, (_, size) in zip(got, members, strict=True))
    if whole:
        add(run.start, view[base : base + run.end - run.start])
    pycoreinfo = None
    for (entry, _), stored in zip(members, got, strict=True):
        offset = base + entry.address - run.start
        if not whole and stored:
            add(entry.address, view[offset : offset + stored])
        status: Status
        if stored == entry.size:
            status = "ok"
            if entry.id in _KEPT:
                data = bytes(view[offset : offset + stored])
                if entry.id == PYCOREINFO_ID:
                    pycoreinfo = data
                if kept is not None:
                    kept[entry.id] = data
        else:
            status = "partial" if stored else "unreadable"
        records.append(
            region_record(entry.id, entry.name, entry.kind, entry.address, entry.size, stored, status)
        )
        copied.add(entry.id)
    return pycoreinfo
