"""The predefined region IDs as an enum: :class:`ID` (``kmemdump.ID``), named in the inspector.

The numbers themselves are plain ints in :mod:`kmemdump.ids`: readers that only pass IDs on
(``kmemdump dump PID``) never load ``enum``.
"""

from __future__ import annotations

import enum

from kmemdump.ids import BANNER_ID
from kmemdump.ids import PYCOREINFO_ID
from kmemdump.ids import USER_END
from kmemdump.ids import USER_START

__all__ = ["ID"]


class ID(enum.IntEnum):
    """Predefined region IDs. Names are what the inspector shows for the region."""

    BANNER = BANNER_ID
    """The process banner: Python version, executable, argv (registered by ``init()``)."""
    PYCOREINFO = PYCOREINFO_ID
    """The Python layout description the inspector decodes objects with."""
    # 3..15 are reserved for later predefined regions.
    USER_START = USER_START
    """First ID of the band applications may use as they like."""
    USER_END = USER_END
    """Last ID of the application band."""
