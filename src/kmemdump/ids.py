"""Region IDs: the predefined ones, the application band, and ``NO_ID``.

As in the kernel's ``enum kmemdump_uid``, 0 is never a live ID (it marks a free slot in
the shared table), the named IDs come first, then a band reserved for applications, and
IDs allocated for ``NO_ID`` requests come from above both.
"""

from __future__ import annotations

import enum

TYPE_CHECKING = False  # typing is not imported at run time: it costs milliseconds
if TYPE_CHECKING:
    from typing import Final

__all__ = ["DYNAMIC_START", "ID", "MAX_ID", "NO_ID", "id_label"]


class ID(enum.IntEnum):
    """Predefined region IDs. Names are what the inspector shows for the region."""

    BANNER = 1
    """The process banner: Python version, executable, argv (registered by ``init()``)."""
    PYCOREINFO = 2
    """The Python layout description the inspector decodes objects with."""
    # 3..15 are reserved for later predefined regions.
    USER_START = 16
    """First ID of the band applications may use as they like."""
    USER_END = 1023
    """Last ID of the application band."""


NO_ID: Final[int] = -1
"""Ask the registry to allocate the lowest free dynamic ID."""

DYNAMIC_START: Final[int] = ID.USER_END + 1
"""First ID handed out for ``NO_ID`` requests."""

MAX_ID: Final[int] = 2**32 - 1
"""IDs are stored as unsigned 32-bit numbers in the shared table."""


def id_label(region_id: int) -> str:
    """A short human label: the predefined name, ``user+N`` or ``dyn+N``."""
    if region_id < ID.USER_START:
        try:
            return ID(region_id).name
        except ValueError:
            return f"reserved{region_id}"
    if region_id <= ID.USER_END:
        return f"user+{region_id - ID.USER_START}"
    return f"dyn+{region_id - DYNAMIC_START}"
