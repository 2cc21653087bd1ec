"""One way to read memory, whatever holds it: a live process, a shared arena, a dump.

Decoders take a :class:`MemorySource` and never learn which one they hold.
"""

from __future__ import annotations

from typing import Protocol
from typing import runtime_checkable

__all__ = ["MemorySource"]


@runtime_checkable
class MemorySource(Protocol):
    """Anything that can copy bytes out of an address space."""

    def read(self, address: int, size: int) -> bytes:
        """Return exactly ``size`` bytes at ``address``.

        Raises :class:`kmemdump.errors.UnreadableMemoryError` (with ``readable=`` the number
        of leading bytes that were available) when any of the range is missing.
        """
        ...
