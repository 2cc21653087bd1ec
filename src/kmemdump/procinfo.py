"""A process's identity and state, read from ``/proc``; used by the producer and the collector alike.

A pid alone is recycled; ``(pid, start_time)`` names one process for the life of the boot. The
start time is field 22 of ``/proc/PID/stat``, in clock ticks since boot. Standard library only.
"""

from __future__ import annotations

import errno
import os

from kmemdump.errors import AccessDeniedError
from kmemdump.errors import CollectorError
from kmemdump.errors import ProcessGoneError

__all__ = [
    "parse_start_time",
    "parse_state",
    "process_cmdline",
    "process_exe",
    "process_start_time",
    "read_proc",
    "self_start_time",
    "stat_fields",
    "thread_state",
]

_START_TIME_FIELD = 22
# Fields after the ")" that closes the command name start at field 3 (state).
_INDEX_AFTER_COMM = _START_TIME_FIELD - 3

_cache: dict[int, int] = {}  # pid -> start time, for this process only


def stat_fields(stat: bytes) -> list[bytes]:
    """The fields of a ``/proc/PID/stat`` line from field 3 (state) on.

    The command name (field 2) may hold spaces and parentheses, so the line is split after its
    *last* ``)``. ``ValueError`` when no ``)`` closes a command name.
    """
    close = stat.rfind(b")")
    if close < 0:
        raise ValueError("no ')' closes the command name")
    return stat[close + 1 :].split()


def parse_start_time(stat: bytes) -> int:
    """Field 22 (``starttime``) of a ``/proc/PID/stat`` line; ``ValueError`` if it is not one."""
    fields = stat_fields(stat)
    if len(fields) <= _INDEX_AFTER_COMM:
        raise ValueError(f"only {len(fields) + 2} fields")
    text = fields[_INDEX_AFTER_COMM]
    if not text.isdigit():  # bytes.isdigit: ASCII digits only
        raise ValueError(f"start time {text[:24]!r} is not a number")
    return int(text)


def parse_state(stat: bytes) -> str:
    """Field 3 (the one-letter state: R, S, D, T, t, Z, X …) of a ``/proc/PID/stat`` line."""
    fields = stat_fields(stat)
    if not fields:
        raise ValueError("no state field")
    return fields[0][:1].decode("ascii", "replace")


def read_proc(pid: int, name: str) -> bytes:
    """The bytes of ``/proc/PID/NAME``: :class:`ProcessGoneError`, :class:`AccessDeniedError` or
    :class:`CollectorError` when it cannot be read."""
    path = f"/proc/{pid}/{name}"
    try:
        with open(path, "rb", buffering=0) as handle:
            return handle.read()
    except (FileNotFoundError, ProcessLookupError) as err:
        raise ProcessGoneError(f"process {pid} is gone", pid=pid) from err
    except PermissionError as err:
        raise AccessDeniedError(f"cannot read {path}", pid=pid) from err
    except OSError as err:
        if err.errno == errno.ESRCH:
            raise ProcessGoneError(f"process {pid} is gone", pid=pid) from err
        raise CollectorError(f"cannot read {path}: {err.strerror}", pid=pid, errno=err.errno) from err


def process_start_time(pid: int) -> int:
    """The start time of ``pid`` in clock ticks after boot (identifies it with the pid)."""
    stat = read_proc(pid, "stat")
    if not stat:
        raise ProcessGoneError(f"process {pid} is gone", pid=pid)
    try:
        return parse_start_time(stat)
    except ValueError as err:
        raise CollectorError(f"cannot parse /proc/{pid}/stat: {err}", pid=pid) from err


def thread_state(pid: int, tid: int) -> str | None:
    """The state letter of thread ``tid`` of ``pid``; None when it cannot be read (gone)."""
    try:
        with open(f"/proc/{pid}/task/{tid}/stat", "rb") as handle:
            return parse_state(handle.read())
    except (OSError, ValueError):
        return None


def process_cmdline(pid: int) -> list[str]:
    """The arguments of ``pid`` (empty for a zombie or a kernel thread)."""
    raw = read_proc(pid, "cmdline")
    if raw.endswith(b"\0"):
        raw = raw[:-1]
    return [os.fsdecode(arg) for arg in raw.split(b"\0")] if raw else []


def process_exe(pid: int) -> str | None:
    """The executable of ``pid``, or ``None`` when it cannot be read."""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def self_start_time() -> int:
    """This process's start time (cached; a forked child looks its own up)."""
    pid = os.getpid()
    value = _cache.get(pid)
    if value is None:
        value = process_start_time(pid)
        _cache.clear()
        _cache[pid] = value
    return value
