"""Whether a watched process still lives, asked without holding anything open for it.

The watcher keeps no pidfd per watched process (an idle table costs no descriptor): it asks
:func:`liveness` when something hints at a death (inotify saw a table, arena or fault file closed
after writing, the kernel's process events reported an exit), before a stale heartbeat is taken for
a hang, and at least once every quiet period (a child that inherited the table hides the close).
``/proc/PID/stat`` answers for the common case in one read: the pid is gone, or now names a process
with another start time (ours ended and the pid was reused), or it is ours and running. Only a
process whose main thread ended or is ending (state ``Z``/``X``, or the kernel's ``PF_EXITING``
flag) needs more: a pidfd opened then, checked against the start time once open (so it names our
process, not a later holder of the pid), says whether the whole process has ended; it is closed
before returning.

A producer's last close of its table comes from inside its exit, just before the kernel makes it a
zombie, so a check right after that hint may find it ``"dying"``: the caller looks again a moment
later.
"""

from __future__ import annotations

import contextlib
import os
import select
from typing import Literal

from kmemdump.errors import KmemdumpError
from kmemdump.errors import ProcessGoneError
from kmemdump.procinfo import parse_start_time
from kmemdump.procinfo import process_start_time
from kmemdump.procinfo import read_proc
from kmemdump.procinfo import stat_fields

__all__ = ["Liveness", "liveness"]

Liveness = Literal["alive", "dying", "ended"]
"""Running; its main thread is ending (or ended while other threads run): ask again; ended."""

_PF_EXITING = 0x00000004
"""The kernel's task flag for a thread inside ``exit``: field 9 (flags) of ``/proc/PID/stat``."""
_FLAGS_INDEX = 9 - 3
"""Field 9 counted from field 3 (state), as :func:`stat_fields` splits the line."""


def liveness(pid: int, start_time: int) -> Liveness:
    """Whether the process ``(pid, start_time)`` (pid as this collector sees it) still lives.

    Something that cannot be read is taken for life: a false death would dump a live process's
    table as a death and remove it; a missed one is caught at the next check.
    """
    try:
        stat = read_proc(pid, "stat")
    except ProcessGoneError:
        return "ended"
    except KmemdumpError:
        return "alive"
    if not stat:
        return "ended"  # a reaped process's last moment
    try:
        if parse_start_time(stat) != start_time:
            return "ended"
        fields = stat_fields(stat)
        state = fields[0][:1]
        flags = int(fields[_FLAGS_INDEX]) if fields[_FLAGS_INDEX].isdigit() else 0
    except (ValueError, IndexError):
        return "alive"
    if state not in (b"Z", b"X") and not flags & _PF_EXITING:
        return "alive"
    return _by_pidfd(pid, start_time)


def _by_pidfd(pid: int, start_time: int) -> Liveness:
    """The main thread is ending or ended: the pidfd says whether the whole process has."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return "ended"
    except OSError:
        return "dying"  # out of descriptors, or a leader without a thread group any more: ask again
    try:
        try:
            if process_start_time(pid) != start_time:
                return "ended"  # the pidfd names a later holder of the pid: ours was reaped
        except ProcessGoneError:
            return "ended"
        except KmemdumpError:
            return "dying"
        with contextlib.suppress(OSError, ValueError):
            if select.select([pidfd], [], [], 0)[0]:
                return "ended"
        return "dying"
    finally:
        os.close(pidfd)
