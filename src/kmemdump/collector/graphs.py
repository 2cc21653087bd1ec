"""Walking registered object graphs out of the held target: the values at the moment of the freeze.

A Python object registered with ``register_object(obj, depth=N)`` is published in the table as a
*graph root* (its entry's graph word holds the depth). At dump time, with the target held, the
collector decodes each root out of process with the decoder of :mod:`kmemdump.inspect.cpython`,
over the target's live memory and with the layout from the target's own PYCOREINFO region, and
stores exactly the bytes that decoding read. Reading the dump back later decodes the same bytes
to the same values: a counter bumped, a list grown, a dict value replaced after registration all
show as they were at the freeze.

The walk is bounded like every decode: ``depth`` levels, a number of objects, a number of bytes
(the dump's budget included), a time (the target is held meanwhile), cycles cut; and it runs in
*checked* mode, where every object pointer must be aligned and readable and its type pointer must be
a type the PYCOREINFO names or a type object whose own header checks out. Garbage ends one branch of
the walk, never the walk.
"""

from __future__ import annotations

from operator import itemgetter

from kmemdump.errors import UnreadableMemoryError
from kmemdump.formats.dumpmeta import GraphRecord
from kmemdump.formats.pycoreinfo import PyCoreInfo
from kmemdump.formats.table import TableEntry
from kmemdump.inspect.cpython import decode
from kmemdump.memory.process import ProcessMemory
from kmemdump.record import frozen

__all__ = ["GraphLimits", "LiveReader", "walk_graph"]

_PAGE = 4096
_CACHE_PAGES = 8192
"""Pages kept at once (32 MiB): a syscall saver, dropped whole when full."""
_DIRECT = 64 * 1024
"""Reads at least this large go to the process directly, not through the page cache."""
_GAP = 64
"""Recorded ranges closer than this are stored as one segment (the gap bytes are read too)."""


@frozen
class GraphLimits:
    """How far one walk may go."""

    objects: int
    max_bytes: int
    deadline: float | None = None
    """A :func:`time.monotonic` value: past it the walk decodes no more objects (the target is held)."""


class LiveReader:
    """A :class:`~kmemdump.memory.MemorySource` over a live process that remembers what was read.

    Small reads go through a page cache (one ``process_vm_readv`` per 4 KiB page touched, however many
    fields of it the decoder reads); every range asked for is recorded with its bytes.
    """

    def __init__(self, mem: ProcessMemory) -> None:
        self.mem = mem
        self._pages: dict[int, bytes] = {}
        self.recorded: list[tuple[int, bytes]] = []

    def _page(self, base: int) -> bytes:
        page = self._pages.get(base)
        if page is None:
            if len(self._pages) >= _CACHE_PAGES:
                self._pages.clear()
            page = self._pages[base] = self.mem.read_upto(base, _PAGE)
        return page

    def _readable(self, address: int, size: int) -> bytes:
        if size >= _DIRECT:
            return self.mem.read_upto(address, size)
        parts = []
        at, end = address, address + size
        while at < end:
            base = at - at % _PAGE
            page = self._page(base)
            piece = page[at - base : min(end - base, len(page))]
            parts.append(piece)
            at += len(piece)
            if len(page) < _PAGE and at < end:
                break  # the rest of this page is not readable
            if not piece:
                break
        return b"".join(parts)

    def read(self, address: int, size: int) -> bytes:
        data = self._readable(address, size) if size > 0 else b""
        if len(data) != size:
            raise UnreadableMemoryError(
                f"cannot read {size} bytes at {address:#x} in process {self.mem.pid}",
                address=address,
                size=size,
                readable=len(data),
            )
        if data:
            self.recorded.append((address, data))
        return data

    def segments(self, limit: int) -> list[tuple[int, bytes]]:
        """The recorded ranges merged into segments, at most ``limit`` bytes in all.

        Overlapping and touching ranges become one; ranges less than a few bytes apart are joined
        too when the gap's bytes are still in the page cache and the limit allows.
        """
        merged: list[tuple[int, bytes]] = []
        first = 0  # the open segment: its start, where it ends, and its pieces
        end = -1
        pieces: list[bytes] = []
        total = 0
        for address, data in sorted(self.recorded, key=itemgetter(0)):
            stop = address + len(data)
            if stop <= end:
                continue  # read again (a header, a type), or inside what is held already
            if address <= end:
                extra = data[end - address :]
                if total + len(extra) <= limit:
                    pieces.append(extra)
                    total += len(extra)
                    end = stop
                continue
            gap = address - end
            if pieces and gap <= _GAP and total + gap + len(data) <= limit:
                filler = self._cached(end, gap)
                if filler is not None:
                    pieces += (filler, data)
                    total += gap + len(data)
                    end = stop
                    continue
            if total + len(data) > limit:
                continue
            if pieces:
                merged.append((first, b"".join(pieces)))
            first, end, pieces = address, stop, [data]
            total += len(data)
        if pieces:
            merged.append((first, b"".join(pieces)))
        return merged

    def _cached(self, address: int, size: int) -> bytes | None:
        base = address - address % _PAGE
        page = self._pages.get(base)
        if page is None or address + size > base + len(page):
            return None
        return page[address - base : address - base + size]


def walk_graph(
    mem: ProcessMemory, entry: TableEntry, info: PyCoreInfo, limits: GraphLimits
) -> tuple[GraphRecord, list[tuple[int, bytes]]]:
    """Decode the root ``entry`` in the live process; say how it went, and return the segments
    (``(address, bytes)``, in address order) that hold everything the decoding read."""
    depth = entry.graph_depth or 0
    reader = LiveReader(mem)
    decoded = decode(
        reader,
        entry.address,
        info,
        max_depth=depth,
        max_items=limits.objects,
        max_bytes=limits.max_bytes,
        checked=True,
        deadline=limits.deadline,
    )
    segments = reader.segments(limits.max_bytes)
    problems = decoded.missing
    record = GraphRecord(
        id=entry.id,
        name=entry.name,
        address=entry.address,
        depth=depth,
        status="ok" if decoded.complete else "partial",
        objects=decoded.objects,
        stored=sum(len(data) for _, data in segments),
        # a walk the time limit ended is read back to the objects it visited, and no further
        max_objects=decoded.objects if decoded.timed_out else limits.objects,
        max_bytes=limits.max_bytes,
        error=_error(problems, decoded.objects if decoded.timed_out else None),
    )
    return record, segments


def _error(problems: tuple[str, ...], timed_out_after: int | None) -> str:
    """What the walk left out, in one line (the dump's reader decodes the graph again for the rest)."""
    if not problems:
        return ""
    why = (
        ""
        if timed_out_after is None
        else f"the time limit ran out after {_count(timed_out_after, 'object')}; "
    )
    return f"{why}{_count(len(problems), 'piece')} not decoded; first: {problems[0]}"


def _count(count: int, word: str) -> str:
    return f"{count:,} {word}" if count == 1 else f"{count:,} {word}s"
