"""The vocabulary of a region that both sides store and read: its kind, its flags, its name's size.

Each is a u16 (or a byte count) in the shared table's entries and a field of the dump's metadata.
Standard library only.
"""

from __future__ import annotations

import enum

TYPE_CHECKING = False  # no typing at run time: import kmemdump loads this module
if TYPE_CHECKING:
    from typing import Final

__all__ = [
    "GRAPH_DEPTH_MASK",
    "GRAPH_ROOT",
    "MAX_GRAPH_DEPTH",
    "NAME_MAX",
    "RegionFlags",
    "RegionKind",
    "graph_word",
]

NAME_MAX = 31
"""Longest region name in UTF-8 bytes (the shared table stores 32 bytes, NUL-terminated)."""


class RegionKind(enum.IntEnum):
    """How the region's bytes should be read back. Stored as a u16 in the shared table."""

    BUFFER = 1
    """Raw bytes of a buffer (bytearray, bytes data, mmap, array, numpy …)."""
    OBJECT = 2
    """A whole CPython object, header included, at ``id(obj)``; decodable with PYCOREINFO."""
    CTYPES = 3
    """A ctypes instance's storage."""
    ADDRESS = 4
    """A raw address and size given by the caller."""
    PYCOREINFO = 5
    """The Python layout description (JSON) the inspector decodes objects with."""
    RING = 6
    """A ring of records (:mod:`kmemdump.formats.ring`): log records, uncaught exceptions, event-loop
    snapshots; whole records are told from torn ones without a lock."""


GRAPH_ROOT: Final[int] = 1 << 31
"""In an entry's graph word: the region is a Python object (kind OBJECT) whose object graph the collector
walks in the live process at dump time, to the depth in the word's low bits."""
GRAPH_DEPTH_MASK: Final[int] = 0xFF
MAX_GRAPH_DEPTH: Final[int] = 64
"""The deepest graph a producer may ask for."""


def graph_word(depth: int | None) -> int:
    """The graph word of an entry: 0 for an ordinary region, ``GRAPH_ROOT | depth`` for a graph root."""
    if depth is None:
        return 0
    if not 0 <= depth <= MAX_GRAPH_DEPTH:
        raise ValueError(f"graph depth {depth} is outside 0..{MAX_GRAPH_DEPTH}")
    return GRAPH_ROOT | depth


class RegionFlags(enum.IntFlag):
    """Facts about a region besides its kind. Stored as a u16 in the shared table's entry."""

    PERSISTENT = 1
    """The region lies in this process's persistent arena (a shared file that outlives the process),
    so a collector can still read it after the process died."""
