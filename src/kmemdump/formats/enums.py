"""The enums of the formats' numbers: a region's kind and flags, a table's state.

:mod:`kmemdump.formats.kinds` and :mod:`kmemdump.formats.table` hold the numbers as plain ints; these
classes name them for those that show or take them (the producer's API, ``kmemdump.RegionKind``, the
inspector): readers that only pass the numbers on (``kmemdump dump PID``) never load ``enum``.
"""

from __future__ import annotations

import enum

from kmemdump.formats.kinds import FLAG_PERSISTENT
from kmemdump.formats.kinds import KIND_ADDRESS
from kmemdump.formats.kinds import KIND_BUFFER
from kmemdump.formats.kinds import KIND_CTYPES
from kmemdump.formats.kinds import KIND_OBJECT
from kmemdump.formats.kinds import KIND_PYCOREINFO
from kmemdump.formats.kinds import KIND_RING

__all__ = ["RegionFlags", "RegionKind", "TableState"]


class RegionKind(enum.IntEnum):
    """How the region's bytes should be read back. Stored as a u16 in the shared table."""

    BUFFER = KIND_BUFFER
    """Raw bytes of a buffer (bytearray, bytes data, mmap, array, numpy …)."""
    OBJECT = KIND_OBJECT
    """A whole CPython object, header included, at ``id(obj)``; decodable with PYCOREINFO."""
    CTYPES = KIND_CTYPES
    """A ctypes instance's storage."""
    ADDRESS = KIND_ADDRESS
    """A raw address and size given by the caller."""
    PYCOREINFO = KIND_PYCOREINFO
    """The Python layout description (JSON) the inspector decodes objects with."""
    RING = KIND_RING
    """A ring of records (:mod:`kmemdump.formats.ring`): log records, uncaught exceptions, event-loop
    snapshots; whole records are told from torn ones without a lock."""


class RegionFlags(enum.IntFlag):
    """Facts about a region besides its kind. Stored as a u16 in the shared table's entry."""

    PERSISTENT = FLAG_PERSISTENT
    """The region lies in this process's persistent arena (a shared file that outlives the process),
    so a collector can still read it after the process died."""


class TableState(enum.IntEnum):
    """The producer's life cycle, as published in the header (:data:`kmemdump.formats.table.STATES`)."""

    STARTING = 0
    """The table is being set up; entries may be missing."""
    RUNNING = 1
    """The producer is live and keeps the table current."""
    EXITING = 2
    """The producer is shutting down cleanly; the file is about to be removed."""
