"""Persistent buffers: memory in a shared file that outlives the process.

The memory of a process is gone once it exits, so a collector that learns of a death (even a
SIGKILL) can only report it. Buffers allocated here are different: they live in one file per
process, ``<pid>-<start_time>.arena`` beside the process's table (tmpfs by default), mapped
``MAP_SHARED``. Every store into such a buffer lands in the file's pages, which stay when the
process dies, so the collector reads them from the file afterwards, even a collector started
after the death. They do not survive a reboot (tmpfs), and a buffer has a fixed size.

:class:`Arena` owns the file and hands out 16-byte aligned blocks with a first-fit allocator
(:class:`FirstFit`); the blocks are ``memoryview`` slices of the mapping. One arena per process,
created on the first persistent allocation (:func:`ensure`) with the size :func:`configure` set
(``kmemdump.init(arena_size=...)``, 1 MiB by default). A clean exit removes the file, after the
table (:func:`kmemdump.producer.sharedfile.on_exit` runs the tables' hooks first). A forked child
leaves the parent's arena alone: it gets its own on its first persistent allocation.

Standard library only; ``ctypes`` is imported when the arena is created (to learn its address).
"""

from __future__ import annotations

import bisect
import logging
import mmap
import os
import threading
import time
from pathlib import Path
from typing import Any

from kmemdump.errors import BackendError
from kmemdump.errors import InvalidRegionError
from kmemdump.errors import RegistryFullError
from kmemdump.formats.arena import ALIGNMENT
from kmemdump.formats.arena import DEFAULT_ARENA_SIZE
from kmemdump.formats.arena import HEADER_SIZE
from kmemdump.formats.arena import arena_file_size
from kmemdump.formats.arena import arena_path
from kmemdump.formats.arena import check_arena_size
from kmemdump.formats.arena import pack_header
from kmemdump.formats.table import LIVE_LOCK_BYTE
from kmemdump.formats.table import lock_byte
from kmemdump.producer.forksafe import fork_safe_lock
from kmemdump.producer.sharedfile import ARENAS_STAGE
from kmemdump.producer.sharedfile import create_mapped
from kmemdump.producer.sharedfile import live_paths
from kmemdump.producer.sharedfile import on_exit
from kmemdump.producer.sharedfile import open_table_dir

__all__ = ["DEFAULT_ARENA_SIZE", "Arena", "Block", "FirstFit", "configure", "current", "ensure"]

log = logging.getLogger("kmemdump")

"""Arena files this process keeps right now."""


def _round_up(size: int) -> int:
    return -(-size // ALIGNMENT) * ALIGNMENT


class FirstFit:
    """A first-fit allocator over offsets ``[0, size)``: 16-byte aligned blocks, coalescing free list.

    Free space is a sorted list of disjoint, non-adjacent extents (``_starts``/``_ends``).
    :meth:`allocate` takes the lowest extent that fits (a scan of the free extents); :meth:`release`
    finds the neighbours by bisection and merges with them, so freed space never stays split.
    Not thread-safe: :class:`Arena` holds a lock around it.
    """

    __slots__ = ("_ends", "_starts", "_used", "size")

    def __init__(self, size: int) -> None:
        if size <= 0 or size % ALIGNMENT:
            raise InvalidRegionError(f"allocator size must be a positive multiple of {ALIGNMENT}", size=size)
        self.size = size
        self._starts: list[int] = [0]
        self._ends: list[int] = [size]
        self._used: dict[int, int] = {}  # offset -> rounded length

    def allocate(self, size: int) -> int | None:
        """The offset of a new block of at least ``size`` bytes, or None when no free extent fits."""
        need = _round_up(size)
        starts, ends = self._starts, self._ends
        for index, (start, end) in enumerate(zip(starts, ends, strict=True)):
            if end - start >= need:
                if end - start == need:
                    del starts[index]
                    del ends[index]
                else:
                    starts[index] = start + need
                self._used[start] = need
                return start
        return None

    def release(self, offset: int) -> int:
        """Give the block at ``offset`` back; returns its (rounded) length. KeyError if not allocated."""
        length = self._used.pop(offset)
        end = offset + length
        starts, ends = self._starts, self._ends
        index = bisect.bisect_left(starts, offset)
        joins_before = index > 0 and ends[index - 1] == offset
        joins_after = index < len(starts) and starts[index] == end
        if joins_before and joins_after:
            ends[index - 1] = ends[index]
            del starts[index]
            del ends[index]
        elif joins_before:
            ends[index - 1] = end
        elif joins_after:
            starts[index] = offset
        else:
            starts.insert(index, offset)
            ends.insert(index, end)
        return length

    def length(self, offset: int) -> int | None:
        """The rounded length of the block at ``offset``, or None when no block starts there."""
        return self._used.get(offset)

    @property
    def used(self) -> dict[int, int]:
        """A copy of the allocated blocks: offset -> rounded length."""
        return dict(self._used)

    @property
    def free_extents(self) -> list[tuple[int, int]]:
        """The free extents as ``(start, end)`` pairs, in address order."""
        return list(zip(self._starts, self._ends, strict=True))

    @property
    def free_bytes(self) -> int:
        return sum(end - start for start, end in zip(self._starts, self._ends, strict=True))

    @property
    def largest_free(self) -> int:
        return max((end - start for start, end in zip(self._starts, self._ends, strict=True)), default=0)


class Block:
    """One persistent allocation: where it is in the arena and the view handed out for it."""

    __slots__ = ("address", "offset", "size", "view")

    def __init__(self, offset: int, size: int, address: int, view: memoryview) -> None:
        self.offset = offset
        self.size = size
        """The size asked for (the view's length); the allocator may have rounded it up."""
        self.address = address
        self.view = view

    @property
    def end(self) -> int:
        return self.address + self.size

    def __repr__(self) -> str:
        return f"Block(offset={self.offset}, size={self.size}, address={self.address:#x})"


class Arena:
    """This process's arena file, mapped shared, and the blocks allocated in it.

    ``directory`` defaults to the table directory (:func:`kmemdump.formats.table.default_dir`) and
    gets the same checks; the file is created as the table is (a temporary name opened
    ``O_CREAT|O_EXCL|O_NOFOLLOW`` with mode 0600, then hard-linked to its final name), sized
    ``64 + size`` bytes and mapped ``MAP_SHARED``. ``size`` is rounded up to 16 bytes.
    """

    def __init__(
        self, directory: str | os.PathLike[str] | None = None, size: int = DEFAULT_ARENA_SIZE
    ) -> None:
        from kmemdump.formats.table import default_dir
        from kmemdump.procinfo import self_start_time

        self.size = check_arena_size(size)
        self.directory = Path(directory if directory is not None else default_dir())
        self._lock = fork_safe_lock()
        self._alloc = FirstFit(self.size)
        self._blocks: dict[int, Block] = {}  # offset -> block
        self._by_view: dict[int, int] = {}  # id(view) -> offset
        self.owner_pid = os.getpid()
        self.start_time = self_start_time()
        self._live_fd = -1
        """Holds a lock on the arena file while this process lives (a collector then never removes it)."""
        dir_fd, self.directory, _ = open_table_dir(self.directory)  # beside the table, fallback included
        try:
            info = os.fstat(dir_fd)
            self.directory_identity = (info.st_dev, info.st_ino)
            """(st_dev, st_ino) of the directory: a table beside it publishes the arena."""
            self._mm, self.base = self._create(dir_fd)
        finally:
            os.close(dir_fd)
        self.path = arena_path(self.directory, self.owner_pid, self.start_time)
        live_paths.add(str(self.path))
        self._data = memoryview(self._mm)[HEADER_SIZE : HEADER_SIZE + self.size]

    def __repr__(self) -> str:
        return f"Arena({str(self.path)!r}, size={self.size}, base={self.base:#x}, blocks={len(self._blocks)})"

    # --- the file ------------------------------------------------------------------------------

    def _create(self, dir_fd: int) -> tuple[mmap.mmap, int]:
        """Build the arena file under a temporary name, map it, then link it into place."""
        from kmemdump.producer.region import buffer_address

        pid, start = self.owner_pid, self.start_time

        def fill(mm: mmap.mmap) -> int:
            with memoryview(mm) as whole:
                base = buffer_address(whole) + HEADER_SIZE
            pack_header(mm, pid=pid, start_time=start, size=self.size, base=base, created_ns=time.time_ns())
            return base

        final = arena_path(self.directory, pid, start).name
        return create_mapped(
            dir_fd,
            self.directory,
            final,
            arena_file_size(self.size),
            what="arena",
            fill=fill,
            prepare=self._hold_live_lock,
        )

    def _hold_live_lock(self, fd: int, base: int) -> None:
        """Hold a shared lock on byte 0 of the file for as long as this process lives (as the table does)."""
        held = os.dup(fd)
        try:
            locked = lock_byte(held, LIVE_LOCK_BYTE, exclusive=False)
        except OSError:
            locked = False
        if locked:
            self._live_fd = held
        else:
            os.close(held)

    def drop_lock(self) -> None:
        """Let the arena's liveness lock go (a clean exit; in a forked child, its copy of the descriptor)."""
        fd, self._live_fd = self._live_fd, -1
        if fd >= 0:
            os.close(fd)

    @property
    def inherited(self) -> bool:
        """True in a forked child: the arena (and its file) belongs to the parent."""
        return self.owner_pid != os.getpid()

    def remove_file(self) -> None:
        """Remove the arena file (a clean exit). The mapping, and every buffer, stays usable."""
        if self.inherited:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass  # removed by a collector
        except OSError as err:
            log.warning("could not remove the arena %s: %s", self.path, err)
        live_paths.discard(str(self.path))
        self.drop_lock()

    # --- blocks --------------------------------------------------------------------------------

    @property
    def end(self) -> int:
        return self.base + self.size

    def contains(self, address: int, size: int) -> bool:
        return self.base <= address and address + size <= self.base + self.size

    def allocate(self, size: int) -> Block:
        """A new zeroed block of exactly ``size`` bytes (its view is writable, format ``B``).

        :class:`RegistryFullError` when no free extent is large enough.
        """
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise InvalidRegionError("size must be a positive int", size=size)
        with self._lock:
            if self.inherited:
                raise BackendError("this arena belongs to the parent process", path=str(self.path))
            offset = self._alloc.allocate(size)
            if offset is None:
                raise RegistryFullError(
                    f"the persistent arena has no free block of {size} bytes; "
                    "call kmemdump.init(arena_size=N) with a larger N before the first persistent allocation",
                    size=size,
                    arena_size=self.size,
                    free=self._alloc.free_bytes,
                    largest=self._alloc.largest_free,
                )
            view = self._data[offset : offset + size]
            block = Block(offset, size, self.base + offset, view)
            self._blocks[offset] = block
            self._by_view[id(view)] = offset
            return block

    def release(self, block: Block) -> None:
        """Return ``block`` to the free list and zero its bytes (in a forked child: forget it only)."""
        with self._lock:
            self.release_locked(block)

    def release_locked(self, block: Block) -> None:
        """:meth:`release`, for a caller that holds :attr:`lock` already."""
        if self._blocks.get(block.offset) is not block:
            raise InvalidRegionError("block is not allocated in this arena", offset=block.offset)
        del self._blocks[block.offset]
        del self._by_view[id(block.view)]
        length = self._alloc.release(block.offset)
        if not self.inherited:  # the parent's file: its bytes are not ours to clear
            self._data[block.offset : block.offset + length] = bytes(length)

    def block_at(self, address: int) -> Block | None:
        """The block starting at ``address``, if one does."""
        return self._blocks.get(address - self.base)

    def block_of(self, view: Any) -> Block | None:
        """The block whose handed-out view is ``view`` (that very object), if any."""
        offset = self._by_view.get(id(view))
        if offset is None:
            return None
        block = self._blocks.get(offset)
        return block if block is not None and block.view is view else None

    def blocks(self) -> list[Block]:
        """The live blocks, in address order."""
        with self._lock:
            return sorted(self._blocks.values(), key=lambda b: b.offset)

    @property
    def free_bytes(self) -> int:
        return self._alloc.free_bytes

    @property
    def lock(self) -> threading.Lock:
        """Held by :func:`kmemdump.free` across unregistering and releasing a block."""
        return self._lock


# --- the process's arena ----------------------------------------------------------------------------


class _State:
    """The configured size and directory, and the arena once created; changed under ``lock``."""

    __slots__ = ("arena", "directory", "lock", "size")

    def __init__(self) -> None:
        self.lock = fork_safe_lock()
        self.size = DEFAULT_ARENA_SIZE
        self.directory: Path | None = None
        self.arena: Arena | None = None


_state = _State()


def configure(*, size: int | None = None, directory: str | os.PathLike[str] | None = None) -> None:
    """Set the size and directory of the arena this process will create.

    Once the arena exists its size cannot change (:class:`InvalidRegionError` for another size);
    a new directory is ignored then (the arena stays where it is).
    """
    with _state.lock:
        if size is not None:
            rounded = check_arena_size(size)
            arena = _state.arena
            if arena is not None and rounded != arena.size:
                raise InvalidRegionError(
                    "arena_size can only be set before the first persistent allocation",
                    arena_size=size,
                    current=arena.size,
                )
            _state.size = rounded
        if directory is not None and _state.arena is None:
            _state.directory = Path(directory)


def current() -> Arena | None:
    """This process's arena, or None before the first persistent allocation (or in a fresh fork)."""
    return _state.arena


def ensure() -> Arena:
    """This process's arena, created now if needed."""
    arena = _state.arena
    if arena is not None:
        return arena
    with _state.lock:
        if _state.arena is None:
            _state.arena = Arena(_state.directory, _state.size)
        return _state.arena


def _at_exit() -> None:
    arena = _state.arena
    if arena is not None:
        arena.remove_file()


def _after_fork_in_child() -> None:
    # The inherited arena maps the parent's file: the child must neither allocate in it nor remove
    # it. Its first persistent allocation creates an arena of its own.
    inherited, _state.arena = _state.arena, None
    if inherited is not None:
        inherited.drop_lock()  # the parent's lock stays held through its own descriptor
    live_paths.clear()


on_exit(ARENAS_STAGE, _at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
