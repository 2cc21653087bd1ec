"""The persistent arena file, format v1: a small header, then the arena's bytes.

A producer that allocates persistent buffers (``kmemdump.alloc(n, persistent=True)``) keeps them
in one shared file per process, ``<pid>-<start_time>.arena`` beside its table, mapped
``MAP_SHARED``. The table's header says where the arena's bytes lie in the producer's address
space (``arena_base``, ``arena_size``); the file holds the same bytes at ``HEADER_SIZE + (address
- arena_base)``, so a collector can still read them after the process died. ``docs/formats.md``
describes the bytes.

Standard library only: the producer imports this module.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path
from typing import Final

from kmemdump.errors import InvalidRegionError
from kmemdump.errors import TableFormatError
from kmemdump.record import frozen

__all__ = [
    "ALIGNMENT",
    "ARENA_SUFFIX",
    "DEFAULT_ARENA_SIZE",
    "HEADER_SIZE",
    "HEADER_STRUCT",
    "MAGIC",
    "MAX_ARENA_SIZE",
    "OFF_BASE",
    "OFF_CREATED_NS",
    "OFF_HEADER_SIZE",
    "OFF_MAGIC",
    "OFF_PID",
    "OFF_SIZE",
    "OFF_START_TIME",
    "OFF_VERSION",
    "VERSION",
    "ArenaHeader",
    "arena_file_size",
    "arena_path",
    "arena_path_of",
    "check_arena_size",
    "pack_header",
    "parse_arena_header",
]

MAGIC: Final = b"KMDARENA"
VERSION: Final = 1
HEADER_SIZE: Final = 64
ARENA_SUFFIX: Final = ".arena"
ALIGNMENT: Final = 16
"""Every block starts at a multiple of this many bytes from the arena's base."""
DEFAULT_ARENA_SIZE: Final = 1 << 20
MAX_ARENA_SIZE: Final = 1 << 40

OFF_MAGIC: Final = 0
OFF_VERSION: Final = 8
OFF_HEADER_SIZE: Final = 10
OFF_PID: Final = 16
OFF_START_TIME: Final = 24
OFF_SIZE: Final = 32
OFF_BASE: Final = 40
OFF_CREATED_NS: Final = 48

HEADER_STRUCT: Final = struct.Struct("<8sHH4xI4xQQQQ8x")
"""magic, version, header_size, pid, start_time, size, base, created_ns (reserved bytes are zero)."""

assert HEADER_STRUCT.size == HEADER_SIZE


@frozen
class ArenaHeader:
    """The arena file's header, checked as far as the header alone allows."""

    pid: int
    start_time: int
    size: int
    """Bytes of arena after the header."""
    base: int
    """The address of the arena's first byte in the producer."""
    created_ns: int

    @property
    def end(self) -> int:
        return self.base + self.size


def check_arena_size(size: int) -> int:
    """``size`` rounded up to :data:`ALIGNMENT`; :class:`InvalidRegionError` unless in 1..2**40."""
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_ARENA_SIZE:
        raise InvalidRegionError(
            f"arena_size must be an int of bytes in 1..{MAX_ARENA_SIZE}", arena_size=size
        )
    return -(-size // ALIGNMENT) * ALIGNMENT


def arena_file_size(size: int) -> int:
    """Bytes in the arena file of an arena of ``size`` bytes."""
    return HEADER_SIZE + size


def arena_path(directory: str | os.PathLike[str], pid: int, start_time: int) -> Path:
    """Where the process ``(pid, start_time)`` keeps its arena inside ``directory``."""
    return Path(directory) / f"{pid}-{start_time}{ARENA_SUFFIX}"


def arena_path_of(table: str | os.PathLike[str]) -> Path:
    """The arena file beside the table at ``table`` (``N-S.table`` -> ``N-S.arena``)."""
    path = Path(table)
    stem = path.name.removesuffix(".table")
    return path.with_name(stem + ARENA_SUFFIX)


def pack_header(
    buf: bytearray | memoryview | mmap.mmap,
    *,
    pid: int,
    start_time: int,
    size: int,
    base: int,
    created_ns: int,
) -> None:
    """Write the header at the start of ``buf`` (a writable buffer such as the arena's mmap)."""
    try:
        HEADER_STRUCT.pack_into(buf, 0, MAGIC, VERSION, HEADER_SIZE, pid, start_time, size, base, created_ns)
    except struct.error as err:
        raise InvalidRegionError(f"arena header value out of range: {err}") from err


def parse_arena_header(data: bytes) -> ArenaHeader:
    """Decode and check the 64-byte header at the start of ``data``; :class:`TableFormatError` if bad."""
    if len(data) < HEADER_SIZE:
        raise TableFormatError(f"arena file is shorter than its {HEADER_SIZE}-byte header", length=len(data))
    magic, version, header_size, pid, start_time, size, base, created_ns = HEADER_STRUCT.unpack_from(data, 0)
    if magic != MAGIC:
        raise TableFormatError("not a kmemdump arena (bad magic)", offset=OFF_MAGIC)
    if version != VERSION:
        raise TableFormatError(
            f"unsupported arena format version {version} (this reader knows {VERSION})", offset=OFF_VERSION
        )
    if header_size != HEADER_SIZE:
        raise TableFormatError(
            f"arena header_size is {header_size}, format v{VERSION} has {HEADER_SIZE}", offset=OFF_HEADER_SIZE
        )
    if size == 0 or base == 0 or base + size > 2**64:
        raise TableFormatError("arena base and size do not describe a range of memory", base=base, size=size)
    return ArenaHeader(pid, start_time, size, base, created_ns)
