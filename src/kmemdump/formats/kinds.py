"""The vocabulary of a region that both sides store and read: its kind, its flags, its name's size.

Each is a u16 (or a byte count) in the shared table's entries and a field of the dump's metadata.
Standard library only. The values are plain ints here; their enums, ``RegionKind`` and ``RegionFlags``,
are in :mod:`kmemdump.formats.enums`, loaded only where they are named: the ``enum`` module and the
classes cost a reader that only passes the numbers on (``kmemdump dump PID``) about 2 ms.
"""

from __future__ import annotations

TYPE_CHECKING = False  # no typing at run time: import kmemdump loads this module
if TYPE_CHECKING:
    from typing import Final

__all__ = [
    "FLAG_PERSISTENT",
    "GRAPH_DEPTH_MASK",
    "GRAPH_ROOT",
    "KINDS",
    "KIND_ADDRESS",
    "KIND_BUFFER",
    "KIND_CTYPES",
    "KIND_OBJECT",
    "KIND_PYCOREINFO",
    "KIND_RING",
    "MAX_GRAPH_DEPTH",
    "NAME_MAX",
    "graph_word",
]

NAME_MAX = 31
"""Longest region name in UTF-8 bytes (the shared table stores 32 bytes, NUL-terminated)."""

# The kinds (RegionKind's values; what each means is said there).
KIND_BUFFER: Final[int] = 1
KIND_OBJECT: Final[int] = 2
KIND_CTYPES: Final[int] = 3
KIND_ADDRESS: Final[int] = 4
KIND_PYCOREINFO: Final[int] = 5
KIND_RING: Final[int] = 6
KINDS: Final[frozenset[int]] = frozenset(range(KIND_BUFFER, KIND_RING + 1))
"""Every kind a table entry or a dump's region may have."""

FLAG_PERSISTENT: Final[int] = 1
"""RegionFlags.PERSISTENT's value."""


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
