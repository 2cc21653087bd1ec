"""The vocabulary of a region that both sides store and read: its kind, its flags, its name's size.

Each is a u16 (or a byte count) in the shared table's entries and a field of the dump's metadata.
Standard library only.
"""

from __future__ import annotations

import enum

__all__ = ["NAME_MAX", "RegionFlags", "RegionKind"]

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


class RegionFlags(enum.IntFlag):
    """Facts about a region besides its kind. Stored as a u16 in the shared table's entry."""

    PERSISTENT = 1
    """The region lies in this process's persistent arena (a shared file that outlives the process),
    so a collector can still read it after the process died."""
