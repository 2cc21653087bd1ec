"""Memory a dying process's regions are copied into while it is held, touched before it is needed.

At ``run --trace-exit``'s exit stop the crashing process waits, its memory still mapped, until the
collector lets it go: the time it waits is the time its crash is held up, and a supervisor cannot
restart it meanwhile. So the death dump copies the regions into memory first, lets the process go,
and only then writes the file (:func:`kmemdump.collector.dump.dump_target` with ``release``).

Memory the collector has never touched costs a page fault per page when first written (on our
development VMs about 150 ms per 64 MiB, most of a death dump). :class:`Staging` maps and touches it
ahead of time: the supervisor reserves as many bytes as the process registers (up to the dump
budget) while the process runs, and the copy at its death goes there. An image bigger than the
reserve still works; the rest is mapped as it is needed.
"""

from __future__ import annotations

import contextlib
import mmap
from types import TracebackType

TYPE_CHECKING = False  # typing for mypy only (the command line starts faster without it)
if TYPE_CHECKING:
    from typing import Any
    from typing import Protocol

__all__ = ["CHUNK", "StagedImage", "Staging"]

CHUNK = 8 << 20
"""Staging memory is mapped in pieces of this size."""
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


def _touched_chunk() -> mmap.mmap:
    """An anonymous private mapping of :data:`CHUNK` bytes, every page already faulted in."""
    if _POPULATE:
        return mmap.mmap(-1, CHUNK, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _POPULATE)
    chunk = mmap.mmap(-1, CHUNK)
    page = mmap.PAGESIZE
    for offset in range(0, CHUNK, page):  # one write a page is enough to fault it in
        chunk[offset] = 0
    return chunk


class Staging:
    """Touched memory for up to ``limit`` bytes, reserved ahead of time and reused dump after dump."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._chunks: list[mmap.mmap] = []

    @property
    def capacity(self) -> int:
        """Bytes mapped and touched now."""
        return len(self._chunks) * CHUNK

    def reserve(self, size: int) -> int:
        """Map and touch memory until ``min(size, limit)`` bytes are ready (it never shrinks);
        returns the capacity. Meant for a quiet moment: touching 64 MiB takes tens of milliseconds."""
        want = min(size, self.limit)
        while self.capacity < want:
            self._chunks.append(_touched_chunk())
        return self.capacity

    def image(self) -> StagedImage:
        """An empty image laid out in this memory (the previous image's bytes are overwritten)."""
        return StagedImage(self._chunks)

    def close(self) -> None:
        for chunk in self._chunks:
            with contextlib.suppress(BufferError):  # a view still held elsewhere frees it later
                chunk.close()
        self._chunks = []

    def __enter__(self) -> Staging:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


if TYPE_CHECKING:

    class _Writer(Protocol):
        def begin(self, address: int) -> None: ...
        def write(self, data: Any) -> None: ...
        def end(self) -> int: ...


class StagedImage:
    """Segments copied into staging memory: the same ``begin``/``space``/``commit``/``write``/``end``/
    ``add`` as :class:`~kmemdump.collector.corewriter.CoreWriter`, then :meth:`replay` into one."""

    def __init__(self, chunks: list[mmap.mmap]) -> None:
        self._chunks = chunks  # shared with the Staging: a chunk mapped here stays for the next image
        self._index = 0
        self._used = 0
        self.segments: list[tuple[int, list[memoryview]]] = []
        self._open: tuple[int, list[memoryview]] | None = None

    @property
    def bytes_stored(self) -> int:
        return sum(piece.nbytes for _, pieces in self.segments for piece in pieces)

    def begin(self, address: int) -> None:
        if self._open is not None:
            raise ValueError("a segment is already open; call end() first")
        self._open = (address, [])

    def space(self, wanted: int) -> memoryview:
        """Room for up to ``wanted`` bytes of the open segment (at least one byte)."""
        if self._open is None:
            raise ValueError("no segment is open; call begin() first")
        if self._used == CHUNK:
            self._index += 1
            self._used = 0
        if self._index == len(self._chunks):
            self._chunks.append(_touched_chunk())  # past the reserve: mapped now, at its cost
        room = min(CHUNK - self._used, max(1, wanted))
        return memoryview(self._chunks[self._index])[self._used : self._used + room]

    def commit(self, count: int) -> None:
        """``count`` bytes were put in the last :meth:`space`."""
        if self._open is None:
            raise ValueError("no segment is open; call begin() first")
        if not 0 <= count <= CHUNK - self._used:
            raise ValueError(f"{count} bytes do not fit the space that was given")
        if count:
            pieces = self._open[1]
            chunk = memoryview(self._chunks[self._index])
            pieces.append(chunk[self._used : self._used + count])
            self._used += count

    def write(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        while view.nbytes:
            room = self.space(view.nbytes)
            take = room.nbytes
            room[:] = view[:take]
            self.commit(take)
            view = view[take:]

    def end(self) -> int:
        if self._open is None:
            raise ValueError("no segment is open")
        segment, self._open = self._open, None
        size = sum(piece.nbytes for piece in segment[1])
        if size:
            self.segments.append(segment)
        return size

    def add(self, address: int, data: Any) -> int:
        self.begin(address)
        self.write(data)
        return self.end()

    def replay(self, out: _Writer) -> None:
        """Write every segment, in the order it was copied, into ``out``."""
        for address, pieces in self.segments:
            out.begin(address)
            for piece in pieces:
                out.write(piece)
            out.end()

    def release(self) -> None:
        """Drop the views into the staging memory (so that it can be unmapped)."""
        for _, pieces in self.segments:
            for piece in pieces:
                piece.release()
        self.segments = []
