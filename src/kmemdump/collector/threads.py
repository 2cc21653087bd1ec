"""Each thread's scheduler state, read from ``/proc`` before the target is held.

Once a process is stopped every thread looks alike ("stopped"), and py-spy can only guess which
was busy. So the collector reads, for every thread and before it holds the target: the state
letter of ``/proc/PID/task/TID/stat`` (R running, S sleeping, D in uninterruptible I/O …), its
``wchan`` (the kernel function it sleeps in), the system call it is blocked in (``syscall``: the
number, or "running") and its CPU time over a short window (``schedstat``, nanoseconds on the CPU).
A thread that spins in a loop is "R" with a full window of CPU time; one blocked on a lock sleeps in
``futex``. Reading ``syscall`` needs the same right as reading memory (the owner, or root); what
cannot be read is left empty. Bounded: at most :data:`MAX_THREADS` threads, small reads.
"""

from __future__ import annotations

import os
import time

from kmemdump.formats.dumpmeta import ThreadState
from kmemdump.record import frozen

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["MAX_THREADS", "SYSCALL_NAMES", "CpuSample", "sample_cpu", "syscall_name", "thread_states"]

MAX_THREADS = 4096
"""Threads read at most (a process with more gets the first ones, by thread id)."""
_READ_MAX = 512

# The system calls a blocked Python thread is usually found in, by number, per machine
# (arch/x86/entry/syscalls/syscall_64.tbl, include/uapi/asm-generic/unistd.h for aarch64).
SYSCALL_NAMES: Mapping[str, Mapping[int, str]] = {
    "x86_64": {
        0: "read", 1: "write", 7: "poll", 16: "ioctl", 23: "select", 24: "sched_yield", 34: "pause",
        35: "nanosleep", 42: "connect", 43: "accept", 44: "sendto", 45: "recvfrom", 46: "sendmsg",
        47: "recvmsg", 61: "wait4", 72: "fcntl", 73: "flock", 128: "rt_sigtimedwait",
        130: "rt_sigsuspend", 202: "futex", 230: "clock_nanosleep", 232: "epoll_wait",
        247: "waitid", 257: "openat", 270: "pselect6", 271: "ppoll", 281: "epoll_pwait",
        288: "accept4", 441: "epoll_pwait2", 449: "futex_waitv",
    },
    "aarch64": {
        22: "epoll_pwait", 25: "fcntl", 29: "ioctl", 32: "flock", 56: "openat", 63: "read",
        64: "write", 72: "pselect6", 73: "ppoll", 95: "waitid", 98: "futex", 101: "nanosleep",
        115: "clock_nanosleep", 124: "sched_yield", 133: "rt_sigsuspend", 137: "rt_sigtimedwait",
        202: "accept", 203: "connect", 206: "sendto", 207: "recvfrom", 211: "sendmsg",
        212: "recvmsg", 242: "accept4", 260: "wait4", 441: "epoll_pwait2", 449: "futex_waitv",
    },
}  # fmt: skip
_MACHINES = {"amd64": "x86_64", "arm64": "aarch64"}


def syscall_name(number: int, machine: str | None = None) -> str:
    """The name of system call ``number`` on ``machine`` (this one by default), or ``syscall N``."""
    arch = (machine or os.uname().machine).lower()  # platform.machine(), without platform
    table = SYSCALL_NAMES.get(_MACHINES.get(arch, arch), {})
    return table.get(number, f"syscall {number}")


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb", buffering=0) as handle:
            return handle.read(_READ_MAX)
    except OSError:
        return None


def _on_cpu_ns(pid: int, tid: int) -> int | None:
    raw = _read(f"/proc/{pid}/task/{tid}/schedstat")
    try:
        return int(raw.split()[0]) if raw else None
    except (ValueError, IndexError):
        return None


def _one(pid: int, tid: int) -> ThreadState | None:
    base = f"/proc/{pid}/task/{tid}"
    stat = _read(f"{base}/stat")
    if not stat:
        return None  # ended meanwhile
    open_at, close_at = stat.find(b"("), stat.rfind(b")")
    if open_at < 0 or close_at < open_at:
        return None
    name = stat[open_at + 1 : close_at].decode(errors="replace")
    rest = stat[close_at + 1 :].split()
    state = rest[0][:1].decode("ascii", "replace") if rest else "?"
    wchan_raw = _read(f"{base}/wchan") or b""
    wchan = wchan_raw.strip(b"\0\n ").decode("ascii", "replace")
    if wchan == "0":
        wchan = ""
    syscall: int | None = None
    args: tuple[int, ...] = ()
    raw = _read(f"{base}/syscall")
    if raw:
        fields = raw.split()
        if fields and fields[0] != b"running":
            try:
                syscall = int(fields[0])
                args = tuple(int(field, 16) for field in fields[1:7]) if syscall >= 0 else ()
            except ValueError:
                syscall = None
    return ThreadState(
        tid=tid,
        name=name,
        state=state,
        wchan=wchan,
        syscall=syscall,
        syscall_name=syscall_name(syscall) if syscall is not None and syscall >= 0 else "",
        syscall_args=args,
    )


@frozen
class CpuSample:
    """Each thread's CPU time at the start of a sampling window (:func:`sample_cpu`)."""

    pid: int
    started: float
    """:func:`time.monotonic` when the window began."""
    on_cpu_ns: dict[int, int | None]
    """Nanoseconds on a CPU so far, by thread id (None: not readable)."""


def _tids(pid: int) -> list[int] | None:
    try:
        tids = sorted(int(name) for name in os.listdir(f"/proc/{pid}/task") if name.isdigit())
    except OSError:
        return None
    return tids[:MAX_THREADS]


def sample_cpu(pid: int) -> CpuSample | None:
    """Open a sampling window on ``pid`` now (None when its threads cannot be listed): a caller with
    work to do before the threads are read (loading the dump's machinery) does it during the window
    instead of sleeping through it, and passes the sample to :func:`thread_states`. Only
    ``schedstat`` is read, which every user may read."""
    started = time.monotonic()
    tids = _tids(pid)
    if tids is None:
        return None
    return CpuSample(pid, started, {tid: _on_cpu_ns(pid, tid) for tid in tids})


def thread_states(
    pid: int, *, window: float = 0.02, sample: CpuSample | None = None
) -> tuple[ThreadState, ...]:
    """The state of every thread of ``pid`` now (empty when it is gone or cannot be read).

    With ``window`` > 0 the CPU time of each thread is read twice, at least ``window`` seconds apart,
    and the difference recorded in :attr:`ThreadState.cpu_ms` with the time between the reads
    (:attr:`ThreadState.window_ms`). The first read is ``sample``'s when given (a window opened
    earlier by :func:`sample_cpu`: only what is left of ``window`` is slept); a thread started
    since is read without its CPU time.
    """
    tids = _tids(pid)
    if tids is None:
        return ()
    before: dict[int, int | None] = {}
    if window > 0:
        if sample is not None and sample.pid == pid:
            started, before = sample.started, sample.on_cpu_ns
            left = window - (time.monotonic() - started)
            if left > 0:
                time.sleep(left)
        else:
            started = time.monotonic()
            before = {tid: _on_cpu_ns(pid, tid) for tid in tids}
            time.sleep(window)
    states = []
    for tid in tids:
        found = _one(pid, tid)
        if found is None:
            continue
        first, last = before.get(tid), _on_cpu_ns(pid, tid) if window > 0 else None
        if first is not None and last is not None:
            elapsed = max(time.monotonic() - started, window)
            found = found.with_cpu((last - first) / 1e6, elapsed * 1000)
        states.append(found)
    return tuple(states)
