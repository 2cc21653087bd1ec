"""The C library's ``ptrace(2)`` through ctypes, bound once for the modules that make ptrace requests.

:data:`libc_ptrace` is ``ptrace(request, tid, addr, data) -> long`` with ``errno`` kept for
:func:`ctypes.get_errno`, or ``None`` where this Python cannot reach a C library that has it. The
register reader (:mod:`.registers`), the exit tracer (:mod:`.tracer`) and the shadow (:mod:`.shadow`)
each check for ``None`` and say, in their own terms, what they cannot do without it.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable

__all__ = ["Ptrace", "libc_ptrace", "load_ptrace", "ptrace_request"]

Ptrace = Callable[[int, int, int | None, int | None], int]
"""``ptrace(request, tid, addr, data)``: -1 on failure, with the error in :func:`ctypes.get_errno`."""


def load_ptrace() -> Ptrace | None:
    """The C library's ``ptrace``, typed for ctypes, or None where it cannot be loaded."""
    try:
        func = ctypes.CDLL(None, use_errno=True).ptrace
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    func.restype = ctypes.c_long
    call: Ptrace = func
    return call


libc_ptrace = load_ptrace()
"""Loaded once at import; None where the C library has no ``ptrace``."""


def ptrace_request(request: int, tid: int, addr: int | None = None, data: int | None = None) -> int:
    """``ptrace(request, tid, addr, data)``; :class:`OSError` with the kernel's errno when it fails."""
    if libc_ptrace is None:
        raise OSError(errno.ENOSYS, "ptrace is not available from this Python (no libc ptrace)")
    result = libc_ptrace(request, tid, addr, data)
    if result == -1:
        err = ctypes.get_errno()
        if err:
            raise OSError(err, os.strerror(err))
    return result
