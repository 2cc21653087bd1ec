"""Is any thread of this process getting anywhere? What a feeder asks before it beats for a program.

A feeder thread beats the heartbeat on behalf of a program that does not call ``feed()`` itself (an
unmodified program under ``kmemdump run``). Beating unconditionally would hide a deadlock: the
feeder keeps running while every other thread waits for ever. So a feeder with a progress check
looks at the other threads of the process first, in ``/proc/self/task``: it skips the beat when
every one of them is blocked, without a timeout, waiting on a futex (a lock, a condition, an event,
a queue: what Python threads deadlock on), and none of them used CPU since the previous look. A
thread that runs, waits for I/O, sleeps, waits with a timeout or waits for a child counts as
progress; so does any CPU time spent.

A program whose every thread waits without a timeout on locks for longer than the watchdog timeout
is then dumped as a hang, which it is, unless something outside the process (another process
releasing a shared lock, a signal) will wake it.

Standard library only: the producer imports this module.
"""

from __future__ import annotations

import os
import platform
import threading

from kmemdump.producer.stopping import QUIET_THREADS

__all__ = ["FUTEX_SYSCALL", "ProgressProbe", "thread_waits_forever"]

FUTEX_SYSCALL = {"x86_64": 202, "aarch64": 98, "arm64": 98}.get(platform.machine())
"""The futex system call's number on this machine (None where we do not know it: no check)."""

_FUTEX_CMD_MASK = 0x7F  # without FUTEX_PRIVATE_FLAG (128) and FUTEX_CLOCK_REALTIME (256)
_WAITS = {0, 6, 9, 11, 13}
"""FUTEX_WAIT, FUTEX_LOCK_PI, FUTEX_WAIT_BITSET, FUTEX_WAIT_REQUEUE_PI, FUTEX_LOCK_PI2."""


def thread_waits_forever(syscall_line: bytes) -> bool:
    """Whether a ``/proc/.../task/TID/syscall`` line shows a futex wait without a timeout."""
    fields = syscall_line.split()
    if FUTEX_SYSCALL is None or len(fields) < 5 or fields[0] != str(FUTEX_SYSCALL).encode():
        return False
    try:
        op, timeout = int(fields[2], 16), int(fields[4], 16)
    except ValueError:
        return False
    return (op & _FUTEX_CMD_MASK) in _WAITS and timeout == 0


def _cpu_ticks(stat: bytes) -> int:
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)


class ProgressProbe:
    """Compares the other threads of this process between two calls of :meth:`stuck`."""

    def __init__(self) -> None:
        self._last_cpu: int | None = None
        self.available = FUTEX_SYSCALL is not None and os.path.isdir("/proc/self/task")

    def stuck(self) -> bool:
        """True when every other thread waits for ever on a futex and used no CPU since last time.

        False whenever something cannot be read (the check then never stops a beat).
        """
        if not self.available:
            return False
        me = threading.get_native_id()
        cpu = 0
        waiting = 0
        others = 0
        try:
            for name in os.listdir("/proc/self/task"):
                if int(name) == me or int(name) in QUIET_THREADS:
                    continue  # the feeder itself, and kmemdump's own idle threads
                base = f"/proc/self/task/{name}/"
                try:
                    with open(base + "syscall", "rb") as handle:
                        waits = thread_waits_forever(handle.read())
                    with open(base + "stat", "rb") as handle:
                        cpu += _cpu_ticks(handle.read())
                except FileNotFoundError:
                    continue  # the thread ended meanwhile
                others += 1
                waiting += waits
        except (OSError, ValueError, IndexError):
            self._last_cpu = None
            return False
        last, self._last_cpu = self._last_cpu, cpu
        return others > 0 and waiting == others and last == cpu
