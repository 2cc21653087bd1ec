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
    "ns_pids",
    "parse_start_time",
    "parse_state",
    "pid_namespace",
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


def read_proc(pid: int | str, name: str) -> bytes:
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


def process_start_time(pid: int | str) -> int:
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
        # /proc/self, not /proc/<pid>: in a pid namespace whose /proc was not remounted (unshare
        # --pid without --mount-proc) our pid names another process in that /proc
        value = process_start_time("self")
        _cache.clear()
        _cache[pid] = value
    return value


def pid_namespace(pid: int | str = "self") -> tuple[int, int]:
    """``(st_dev, st_ino)`` of the pid namespace of ``pid`` (``"self"``: this process's own).

    Two processes are in the same pid namespace exactly when these are equal. Reading another
    process's needs the right to ptrace-read it (:class:`AccessDeniedError` otherwise).
    """
    path = f"/proc/{pid}/ns/pid"
    try:
        info = os.stat(path)
    except (FileNotFoundError, ProcessLookupError) as err:
        raise ProcessGoneError(f"process {pid} is gone", pid=pid) from err
    except PermissionError as err:
        raise AccessDeniedError(f"cannot read {path}", pid=pid) from err
    except OSError as err:
        raise CollectorError(f"cannot read {path}: {err.strerror}", pid=pid, errno=err.errno) from err
    return info.st_dev, info.st_ino


def ns_pids(pid: int) -> tuple[int, ...]:
    """The pids of ``pid`` in each pid namespace it belongs to, outermost (as seen here) first.

    The ``NSpid`` line of ``/proc/PID/status``; the last value is its pid in its own namespace. A
    kernel without that line (before 4.1) gives ``(pid,)``.
    """
    for line in read_proc(pid, "status").splitlines():
        if line.startswith(b"NSpid:"):
            values = line[6:].split()
            if values and all(v.isdigit() for v in values):
                return tuple(int(v) for v in values)
            break
    return (pid,)
