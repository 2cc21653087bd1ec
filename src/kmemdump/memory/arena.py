"""Reading a producer's persistent arena file: the memory that outlives the process.

:class:`ArenaMemory` is the :class:`kmemdump.memory.MemorySource` of an arena file
(``<pid>-<start_time>.arena`` beside the table): addresses in ``[base, base + size)`` of the
producer's address space map to the file's bytes after its 64-byte header. The file is opened
like a table (no symbolic link, no FIFO, a regular file of the right owner), its header must name
the same process, base and size as the table, and every read is a bounds-checked ``pread``, so a
hostile or truncated file gives typed errors, never a crash or a read outside the arena.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

from kmemdump.errors import TableFormatError
from kmemdump.errors import UnreadableMemoryError
from kmemdump.formats.arena import HEADER_SIZE
from kmemdump.formats.arena import ArenaHeader
from kmemdump.formats.arena import arena_file_size
from kmemdump.formats.arena import parse_arena_header
from kmemdump.formats.table import open_owned_file

__all__ = ["ArenaMemory"]


class ArenaMemory:
    """An arena file opened read-only; use as a context manager.

    ``base`` and ``size`` are the table's ``arena_base`` and ``arena_size``. ``pid`` and
    ``start_time``, when given, must match the file's header; ``owner``, when given, is the uid the
    file must belong to (the table's owner), even for root. Raises :class:`ForeignTableError`
    (a link, not a regular file, another owner), :class:`TableFormatError` (bad header, a header
    that disagrees with the table, a file shorter than the arena) or :class:`FileNotFoundError`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        base: int,
        size: int,
        *,
        pid: int | None = None,
        start_time: int | None = None,
        owner: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.base = base
        self.size = size
        self._fd = open_owned_file(path, os.O_RDONLY, what="arena", owner=owner)
        try:
            self.header = self._check(pid, start_time)
        except BaseException:
            self.close()
            raise

    def _check(self, pid: int | None, start_time: int | None) -> ArenaHeader:
        where = str(self.path)
        if self.size <= 0 or self.base <= 0:
            raise TableFormatError("the table names no arena", path=where, base=self.base, size=self.size)
        header = parse_arena_header(os.pread(self._fd, HEADER_SIZE, 0))
        if (header.base, header.size) != (self.base, self.size):
            raise TableFormatError(
                "the arena file describes another range than its table",
                path=where,
                base=header.base,
                size=header.size,
            )
        if (pid is not None and header.pid != pid) or (
            start_time is not None and header.start_time != start_time
        ):
            raise TableFormatError(
                "the arena file names another process than its table",
                path=where,
                pid=header.pid,
                start_time=header.start_time,
            )
        length = os.fstat(self._fd).st_size
        if length < arena_file_size(self.size):
            raise TableFormatError(
                "the arena file is truncated", path=where, length=length, needed=arena_file_size(self.size)
            )
        return header

    @property
    def end(self) -> int:
        return self.base + self.size

    def contains(self, address: int, size: int) -> bool:
        return self.base <= address and address + size <= self.end

    def read(self, address: int, size: int) -> bytes:
        """Exactly ``size`` bytes at ``address``; :class:`UnreadableMemoryError` for any byte missing."""
        if size < 0:
            raise UnreadableMemoryError("negative size", address=address, size=size, readable=0)
        buf = bytearray(self._available(address, size))
        got = self.read_into(address, memoryview(buf)) if buf else 0
        if got < size:
            raise UnreadableMemoryError(
                "range is not (all) inside the arena file", address=address, size=size, readable=got
            )
        return bytes(buf)

    def read_into(self, address: int, view: memoryview) -> int:
        """Copy up to ``len(view)`` bytes from ``address`` into ``view``; returns how many (the
        readable prefix: 0 outside the arena, fewer when the range leaves it or the file shrank)."""
        want = self._available(address, len(view))
        if want == 0:
            return 0
        if self._fd < 0:
            raise ValueError("arena reader is closed")
        offset = HEADER_SIZE + (address - self.base)
        done = 0
        while done < want:
            got = os.preadv(self._fd, [view[done:want]], offset + done)
            if got <= 0:
                break  # the file was cut short after it was opened
            done += got
        return done

    def _available(self, address: int, size: int) -> int:
        """How many of ``size`` bytes from ``address`` lie inside the arena."""
        if size <= 0 or not self.base <= address < self.end:
            return 0
        return min(size, self.end - address)

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ArenaMemory:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ArenaMemory({str(self.path)!r}, base={self.base:#x}, size={self.size})"
