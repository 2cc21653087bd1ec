"""Each thread's registers, read while the target is held, for the core's ``NT_PRSTATUS`` notes.

Two ways, best first:

* a thread in a ptrace stop of *this* thread (``kmemdump run --trace-exit`` holds its child at its
  exit stop; a seize-and-interrupt hold does the same for any target) gives every general
  register with ``PTRACE_GETREGSET`` (``NT_PRSTATUS``). The kernel only answers the thread that
  traces it, so call :func:`read_registers` from that thread;
* any other thread that is not running (stopped by SIGSTOP, or blocked) gives its stack pointer
  and program counter, and the system call it is in with its arguments, in
  ``/proc/PID/task/TID/syscall``, with no ptrace at all. That is all a debugger needs to unwind a
  blocked thread's stack: the frames above come from the stack memory and the unwind tables.

A thread that is running when asked (the target was not held) or gone gives nothing, and its note
says so with zero registers.
"""

from __future__ import annotations

import ctypes
import errno
import os

from kmemdump.collector.ptrace import libc_ptrace
from kmemdump.formats.corenotes import REGISTER_NAMES
from kmemdump.formats.corenotes import SYSCALL_REGISTERS
from kmemdump.formats.corenotes import pc_and_sp
from kmemdump.formats.corenotes import registers_from
from kmemdump.formats.elf import check_machine
from kmemdump.record import frozen

TYPE_CHECKING = False  # typing for mypy only (the command line starts faster without it)
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Literal

    RegisterSource = Literal["ptrace", "syscall", "none"]
    """Where a thread's registers came from: all of them by ptrace, stack pointer and program counter
    from ``/proc/PID/task/TID/syscall``, or nowhere (running, gone, refused)."""
else:
    RegisterSource = str

__all__ = [
    "RegisterSource",
    "ThreadRegisters",
    "exit_syscalls",
    "in_exec",
    "parse_syscall_file",
    "read_registers",
    "syscall_number",
    "thread_ids",
]

PTRACE_GETREGSET = 0x4204
NT_PRSTATUS = 1


@frozen
class ThreadRegisters:
    """One thread's general registers as ``pr_reg`` words (zeros where unknown)."""

    tid: int
    words: tuple[int, ...]
    source: RegisterSource
    machine: int

    @property
    def pc(self) -> int:
        return pc_and_sp(self.machine, self.words)[0]

    @property
    def sp(self) -> int:
        return pc_and_sp(self.machine, self.words)[1]

    def value(self, name: str) -> int:
        return self.words[REGISTER_NAMES[self.machine].index(name)]


_ptrace = libc_ptrace


class _Iovec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("length", ctypes.c_size_t))


def _getregset(tid: int, machine: int) -> tuple[int, ...] | None:
    """Every general register of a thread in a ptrace stop of this thread, or None if refused."""
    if _ptrace is None:
        return None
    count = len(REGISTER_NAMES[machine])
    words = (ctypes.c_uint64 * count)()
    vector = _Iovec(ctypes.addressof(words), ctypes.sizeof(words))
    if _ptrace(PTRACE_GETREGSET, tid, NT_PRSTATUS, ctypes.addressof(vector)) == -1:
        return None
    if vector.length != ctypes.sizeof(words):
        return None
    return tuple(words)


def parse_syscall_file(text: str, machine: int) -> tuple[int, ...] | None:
    """The registers ``/proc/PID/task/TID/syscall`` gives: ``NR ARG1..ARG6 SP PC`` for a thread in a
    system call, ``-1 SP PC`` for one blocked outside any; None for ``running`` or anything else."""
    fields = text.split()
    try:
        numbers = [int(field, 0) for field in fields]
    except ValueError:
        return None
    pc_name, sp_name = ("rip", "rsp") if machine == 62 else ("pc", "sp")
    if len(numbers) == 3 and numbers[0] == -1:
        return registers_from(machine, {sp_name: numbers[1], pc_name: numbers[2]})
    if len(numbers) == 9 and numbers[0] >= 0:
        values = dict(zip(SYSCALL_REGISTERS[machine], numbers[:7], strict=True))
        values[sp_name], values[pc_name] = numbers[7], numbers[8]
        return registers_from(machine, values)
    return None


def _from_procfs(pid: int, tid: int, machine: int) -> tuple[int, ...] | None:
    try:
        with open(f"/proc/{pid}/task/{tid}/syscall", "rb") as handle:
            text = handle.read(512).decode("ascii", "replace")
    except OSError:
        return None
    return parse_syscall_file(text, machine)


def read_registers(
    pid: int, tids: Iterable[int], *, ptrace_stopped: Iterable[int] = (), machine: int | None = None
) -> dict[int, ThreadRegisters]:
    """The registers of each thread ``tids`` of ``pid``, in the order given.

    Threads in ``ptrace_stopped`` are in a ptrace stop whose tracer is the calling thread; the
    others are read through ``/proc`` (which works for a thread that is not running).
    """
    machine = check_machine(machine)
    traced = set(ptrace_stopped)
    out: dict[int, ThreadRegisters] = {}
    for tid in tids:
        words: tuple[int, ...] | None = None
        source: RegisterSource = "none"
        if tid in traced:
            words = _getregset(tid, machine)
            source = "ptrace"
        if words is None:
            words = _from_procfs(pid, tid, machine)
            source = "syscall"
        if words is None:
            words, source = (0,) * len(REGISTER_NAMES[machine]), "none"
        out[tid] = ThreadRegisters(tid, words, source, machine)
    return out


# (exit, exit_group) and (execve, execveat) per e_machine: arch/x86/entry/syscalls/syscall_64.tbl,
# include/uapi/asm-generic/unistd.h
_EXIT = {62: (60, 231), 183: (93, 94)}
_EXEC = {62: (59, 322), 183: (221, 281)}
_RUNNING_TRIES = 64


def exit_syscalls(machine: int) -> tuple[int, int]:
    """The numbers of ``exit`` (one thread) and ``exit_group`` (the process) on ``machine``."""
    return _EXIT.get(machine, (-2, -2))


def _syscall_of(pid: int, tid: int) -> int | None:
    """The system call a stopped or blocked thread is in (-1: none), from ``/proc``; None when it is
    running or gone."""
    try:
        with open(f"/proc/{pid}/task/{tid}/syscall", "rb") as handle:
            first = handle.read(64).split(maxsplit=1)
    except OSError:
        return None
    try:
        return int(first[0], 0) if first else None
    except ValueError:
        return None  # "running"


def syscall_number(pid: int, registers: ThreadRegisters) -> int | None:
    """The system call a thread was in when it entered the kernel (-1: it entered by a fault or an
    interrupt): ``orig_rax`` of registers read by ptrace on x86_64, ``/proc`` otherwise."""
    if registers.source == "ptrace" and registers.machine == 62:
        number = registers.value("orig_rax")
        return number - (1 << 64) if number >= 1 << 63 else number
    return _syscall_of(pid, registers.tid)


def in_exec(pid: int, tids: Iterable[int], machine: int | None = None) -> bool:
    """Whether one of the threads ``tids`` is in ``execve``: it then waits, blocked, for the others to
    die (and, if it is not the main thread, for the main thread to be released from its exit stop).
    A thread caught running (on its way to that wait) is looked at again, a bounded number of times."""
    numbers = _EXEC.get(check_machine(machine), ())
    for tid in tids:
        for _ in range(_RUNNING_TRIES):
            number = _syscall_of(pid, tid)
            if number is not None or not os.path.exists(f"/proc/{pid}/task/{tid}"):
                break
            os.sched_yield()
        if number in numbers:
            return True
    return False


def thread_ids(pid: int) -> list[int]:
    """The threads of ``pid``, the leader first; empty when it is gone."""
    try:
        tids = sorted(int(name) for name in os.listdir(f"/proc/{pid}/task") if name.isdigit())
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ESRCH):
            return []
        raise
    if pid in tids:
        tids.remove(pid)
        tids.insert(0, pid)
    return tids
