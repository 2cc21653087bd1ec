"""A table claimed by one collector, without a descriptor held for it.

The claim is an exclusive ``flock`` on the table file: the kernel drops it when the collector dies,
and another collector takes over. A ``flock`` belongs to the open file description, not to the
descriptor, and lasts until the last reference to that description goes. :class:`Claim` keeps the
reference in a one-page ``PROT_NONE`` shared mapping of the file and lets the descriptor be closed:
an idle watched table then costs a mapping (an entry in ``/proc/PID/maps``, bounded by
``vm.max_map_count``), not a descriptor. The mapping is never read: ``PROT_NONE`` makes any access
fault, so a table its owner truncates can never raise ``SIGBUS`` in the collector. Unmapping it
drops the reference, hence the lock; so does the collector's death.

Where the file cannot be mapped (a file system without ``mmap``, no memory left for the mapping) the
claim keeps a duplicate of the descriptor instead: correct, only not free.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import mmap
import os
from collections.abc import Callable

__all__ = ["Claim", "try_claim"]

_PAGE = mmap.PAGESIZE
_PROT_NONE = 0
_MAP_FAILED = ctypes.c_void_p(-1).value


_Map = Callable[[None, int, int, int, int, int], "int | None"]
_Unmap = Callable[[int, int], int]


def _load() -> tuple[_Map, _Unmap] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        map_, unmap = libc.mmap, libc.munmap
    except (OSError, AttributeError):
        return None
    map_.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    map_.restype = ctypes.c_void_p
    unmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    unmap.restype = ctypes.c_int
    return map_, unmap


_calls = _load()


class Claim:
    """This collector's exclusive ``flock`` on one table, kept without a descriptor (see the module)."""

    __slots__ = ("_address", "_fd")

    def __init__(self, address: int | None, fd: int) -> None:
        self._address = address
        self._fd = fd

    @classmethod
    def hold(cls, fd: int) -> Claim:
        """Keep the lock taken on ``fd`` (whose open file description it belongs to) once the caller
        closes ``fd``. ``OSError`` when neither a mapping nor a duplicate descriptor can be had."""
        if _calls is not None:
            address = _calls[0](None, _PAGE, _PROT_NONE, mmap.MAP_SHARED, fd, 0)
            if address is not None and address != _MAP_FAILED:
                return cls(address, -1)
        return cls(None, os.dup(fd))

    @property
    def holds_descriptor(self) -> bool:
        """Whether the fallback (a duplicate descriptor) keeps this claim."""
        return self._fd >= 0

    def release(self) -> None:
        """Let the table go (idempotent): another collector may take it from now on."""
        if self._address is not None and _calls is not None:
            _calls[1](self._address, _PAGE)
            self._address = None
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1


def try_claim(fd: int) -> bool:
    """Take the exclusive ``flock`` on the open table ``fd`` without waiting; False when another
    collector holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
