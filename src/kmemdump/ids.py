"""Region IDs: the predefined ones, the application band, and ``NO_ID``.

As in the kernel's ``enum kmemdump_uid``, 0 is never a live ID (it marks a free slot in
the shared table), the named IDs come first, then a band reserved for applications, and
IDs allocated for ``NO_ID`` requests come from above both.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported at run time: it costs milliseconds
if TYPE_CHECKING:
    from typing import Final

__all__ = [
    "BANNER_ID",
    "DYNAMIC_START",
    "MAX_ID",
    "NO_ID",
    "PREDEFINED",
    "PYCOREINFO_ID",
    "USER_END",
    "USER_START",
    "id_label",
]

# The predefined IDs (ID's values; what each is is said there). The enum is in kmemdump.idenum,
# loaded only where it is named: a reader that only passes IDs on (kmemdump dump PID) loads no enum.
BANNER_ID: Final[int] = 1
PYCOREINFO_ID: Final[int] = 2
# 3..15 are reserved for later predefined regions.
USER_START: Final[int] = 16
"""First ID of the band applications may use as they like."""
USER_END: Final[int] = 1023
"""Last ID of the application band."""

NO_ID: Final[int] = -1
"""Ask the registry to allocate the lowest free dynamic ID."""

DYNAMIC_START: Final[int] = USER_END + 1
"""First ID handed out for ``NO_ID`` requests."""

MAX_ID: Final[int] = 2**32 - 1
"""IDs are stored as unsigned 32-bit numbers in the shared table."""


PREDEFINED: Final[dict[int, str]] = {BANNER_ID: "BANNER", PYCOREINFO_ID: "PYCOREINFO"}
"""The predefined IDs by number: their names in :class:`ID`."""


def id_label(region_id: int) -> str:
    """A short human label: the predefined name, ``user+N`` or ``dyn+N``."""
    if region_id < USER_START:
        return PREDEFINED.get(region_id, f"reserved{region_id}")
    if region_id <= USER_END:
        return f"user+{region_id - USER_START}"
    return f"dyn+{region_id - DYNAMIC_START}"
