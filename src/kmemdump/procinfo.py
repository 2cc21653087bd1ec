"""What the producer needs to know about a process from ``/proc``: its start time.

A pid alone is recycled; ``(pid, start_time)`` names one process for the life of the boot. The
start time is field 22 of ``/proc/PID/stat``, in clock ticks since boot. Standard library only.
"""

from __future__ import annotations

import os

from .errors import KmemdumpError
from .errors import ProcessGoneError

__all__ = ["parse_start_time", "self_start_time", "start_time"]

_START_TIME_FIELD = 22
# Fields after the ")" that closes the command name start at field 3 (state).
_INDEX_AFTER_COMM = _START_TIME_FIELD - 3

_cache: dict[int, int] = {}  # pid -> start time, for this process only


def parse_start_time(stat: bytes) -> int:
    """The start time in the text of a ``/proc/PID/stat`` file.

    The command name (field 2) may hold spaces and parentheses, so the fields are split after the
    last ``)``. Raises :class:`KmemdumpError` when the text is not a stat line.
    """
    close = stat.rfind(b")")
    fields = stat[close + 1 :].split() if close >= 0 else []
    try:
        return int(fields[_INDEX_AFTER_COMM])
    except (IndexError, ValueError):
        raise KmemdumpError("not a /proc/PID/stat line", text=stat[:80]) from None


def start_time(pid: int) -> int:
    """The start time of ``pid`` in clock ticks after boot; :class:`ProcessGoneError` if none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessGoneError(f"process {pid} is gone", pid=pid) from None
    return parse_start_time(stat)


def self_start_time() -> int:
    """This process's start time (cached; a forked child looks its own up)."""
    pid = os.getpid()
    value = _cache.get(pid)
    if value is None:
        value = start_time(pid)
        _cache.clear()
        _cache[pid] = value
    return value
