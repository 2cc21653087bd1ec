"""The process banner: our ``linux_banner``, registered as ``ID.BANNER`` by ``init()``."""

from __future__ import annotations

import os
import platform
import shlex
import sys

__all__ = ["BANNER_MAX", "make_banner"]

BANNER_MAX = 4096


def make_banner() -> bytearray:
    """A NUL-terminated, human-readable description of this process.

    ``gdb`` prints it with ``x/s ADDRESS``; the inspector shows it first.
    """
    argv = shlex.join(sys.argv) if sys.argv else "?"
    text = (
        f"kmemdump banner: {platform.python_implementation()} {sys.version.splitlines()[0]}\n"
        f"executable: {sys.executable}\n"
        f"argv: {argv}\n"
        f"pid: {os.getpid()}  host: {platform.node()}  platform: {sys.platform}-{platform.machine()}\n"
    )
    data = text.encode("utf-8", errors="replace")[: BANNER_MAX - 1]
    return bytearray(data + b"\0")
