"""A shadow of a crashing process: its memory kept alive so that the process itself can die at once.

A death dump must read the memory of a process that is dying. Holding it at its ptrace exit stop
while the regions are copied works for every kind of death, but the crash is held up meanwhile: a
supervisor cannot restart the service until the copy is over (65 MiB take tens of milliseconds).

For a death by a signal there is a better moment. When the fatal signal is about to be delivered,
the thread that takes it sits in a ptrace signal-delivery stop, in user space's registers, before
the process has started to exit. There the tracer makes that thread run one system call of its own
choosing: ``clone(CLONE_VM | CLONE_PARENT)``, with no exit signal, so that the new process is traced
at once (``PTRACE_O_TRACECLONE``) and never runs a line of the program. It shares the crashing
process's address space, so the memory lives on as long as it does; it closes the descriptors it
got a copy of (``close_range``), so it keeps no socket, pipe or lock of the program's open; and its
registers are left pointing at an ``exit_group(0)`` system call, so that if it ever runs (the
collector died and the kernel let its tracees go) it ends at once. Then the crashing thread gets
its registers and its ``siginfo`` back and the signal is delivered as it would have been: the
kernel's default action, the exit status the parent sees and every thread's exit stop are as
without the shadow.

The process can then go as soon as the collector has looked at what needs it whole (its threads'
registers, its mappings), and is gone within a millisecond of its crash; the regions are copied
from the shadow afterwards, and the shadow is killed, which releases the memory.

x86_64 only, and only where nothing forbids it: a process under a seccomp filter (which might kill
it for the ``clone``) or in any step that fails gets no shadow, and its death dump holds it at its
exit stop instead. Everything here runs on the tracer's thread, the only one the kernel answers.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal

from kmemdump.collector.ptrace import libc_ptrace
from kmemdump.record import frozen

__all__ = ["FATAL_BY_DEFAULT", "Shadow", "fatal_by_default", "make_shadow"]

# <linux/ptrace.h>, x86_64 <asm/unistd_64.h>, <linux/sched.h>
_PTRACE_SINGLESTEP = 9
_PTRACE_GETREGS = 12
_PTRACE_SETREGS = 13
_PTRACE_GETEVENTMSG = 0x4201
_PTRACE_SETSIGINFO = 0x4203
_PTRACE_EVENT_CLONE = 3
_PTRACE_EVENT_STOP = 128
_SYS_CLOSE = 3
_SYS_CLONE = 56
_SYS_EXIT_GROUP = 231
_SYS_CLOSE_RANGE = 436
_CLONE_VM = 0x00000100
_CLONE_PARENT = 0x00008000
_WALL = 0x40000000
_REGISTERS = (  # struct user_regs_struct, <sys/user.h>
    "r15",
    "r14",
    "r13",
    "r12",
    "rbp",
    "rbx",
    "r11",
    "r10",
    "r9",
    "r8",
    "rax",
    "rcx",
    "rdx",
    "rsi",
    "rdi",
    "orig_rax",
    "rip",
    "cs",
    "eflags",
    "rsp",
    "ss",
    "fs_base",
    "gs_base",
    "ds",
    "es",
    "fs",
    "gs",
)
_ARGUMENTS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")
_M64 = (1 << 64) - 1

FATAL_BY_DEFAULT = frozenset(
    int(s)
    for s in (
        signal.SIGHUP,
        signal.SIGINT,
        signal.SIGQUIT,
        signal.SIGILL,
        signal.SIGTRAP,
        signal.SIGABRT,
        signal.SIGBUS,
        signal.SIGFPE,
        signal.SIGUSR1,
        signal.SIGSEGV,
        signal.SIGUSR2,
        signal.SIGPIPE,
        signal.SIGALRM,
        signal.SIGTERM,
        signal.SIGXCPU,
        signal.SIGXFSZ,
        signal.SIGVTALRM,
        signal.SIGPROF,
        signal.SIGIO,
        signal.SIGPWR,
        signal.SIGSYS,
    )
) | frozenset(range(int(signal.SIGRTMIN), int(signal.SIGRTMAX) + 1))
"""Signals whose default action ends the process (with or without a core)."""


class _Regs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_ulonglong) for name in _REGISTERS]


_ptrace = libc_ptrace if os.uname().machine == "x86_64" else None


class _Failed(Exception):
    """A step of the shadow's making went wrong (the caller falls back to holding the process)."""


def _request(request: int, tid: int, addr: int = 0, data: int = 0) -> None:
    assert _ptrace is not None
    if _ptrace(request, tid, addr, data) == -1:
        err = ctypes.get_errno()
        if err:
            raise _Failed(f"ptrace {request} on {tid}: {os.strerror(err)}")


def _get(tid: int) -> _Regs:
    regs = _Regs()
    _request(_PTRACE_GETREGS, tid, 0, ctypes.addressof(regs))
    return regs


def _set(tid: int, regs: _Regs) -> None:
    _request(_PTRACE_SETREGS, tid, 0, ctypes.addressof(regs))


@frozen
class Shadow:
    """The process that keeps a dead process's memory: read it by ``pid``, end it with :meth:`kill`."""

    pid: int
    pidfd: int

    def kill(self) -> None:
        """SIGKILL it (through its pidfd: its pid cannot have been reused); harmless when it is gone."""
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.pidfd)


def fatal_by_default(pid: int, sig: int) -> bool:
    """Whether delivering ``sig`` ends the process: it is fatal by default and neither caught nor
    ignored (``/proc/PID/status``); False when that cannot be told."""
    if sig not in FATAL_BY_DEFAULT:
        return False
    try:
        with open(f"/proc/{pid}/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
        caught = int(fields["SigCgt"], 16) | int(fields["SigIgn"], 16)
    except (OSError, KeyError, ValueError):
        return False
    return not caught & (1 << (sig - 1))


def _eligible(pid: int) -> bool:
    """x86_64, and no seccomp filter (which might answer the ``clone`` by killing the process)."""
    if _ptrace is None:
        return False
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("Seccomp:"):
                    return line.split()[1] == "0"
    except OSError:
        return False
    return False


def _syscall_instruction(pid: int) -> int:
    """The address of a ``syscall`` instruction (``0f 05``) in the process: in its vDSO."""
    try:
        with open(f"/proc/{pid}/maps") as maps:
            for line in maps:
                if line.rstrip().endswith("[vdso]"):
                    low, high = (int(part, 16) for part in line.split()[0].split("-"))
                    break
            else:
                raise _Failed("the process has no vDSO")
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            code = os.pread(mem.fileno(), min(high - low, 1 << 16), low)
    except OSError as err:
        raise _Failed(f"cannot read the vDSO: {err}") from err
    found = code.find(b"\x0f\x05")
    if found < 0:
        raise _Failed("no syscall instruction in the vDSO")
    return low + found


def _wait(tid: int) -> int:
    """The next stop or end of ``tid`` (one of this thread's tracees)."""
    while True:
        try:
            _, status = os.waitpid(tid, _WALL)
        except InterruptedError:
            continue
        except ChildProcessError as err:
            raise _Failed(f"{tid} is gone") from err
        return status


def _trapped(status: int) -> bool:
    return os.WIFSTOPPED(status) and status >> 16 == 0 and os.WSTOPSIG(status) == signal.SIGTRAP


def _step_syscall(tid: int, at: int, number: int, *args: int) -> tuple[int, int]:
    """Point ``tid`` (in a ptrace stop) at the ``syscall`` instruction with ``number`` and ``args`` and
    single-step it; returns the stop status that follows (a SIGTRAP after the call, or an event)."""
    regs = _get(tid)
    regs.rip = at
    regs.rax = number
    regs.orig_rax = _M64  # not in a system call: nothing to restart
    for name, value in zip(_ARGUMENTS, args, strict=False):
        setattr(regs, name, value & _M64)
    _set(tid, regs)
    _request(_PTRACE_SINGLESTEP, tid)
    return tid, _wait(tid)


def _result(tid: int) -> int:
    value = int(_get(tid).rax)
    return value - (1 << 64) if value >> 63 else value


def make_shadow(pid: int, tid: int, siginfo: bytes | None) -> tuple[Shadow | None, list[tuple[int, int]]]:
    """Give the process ``pid`` a shadow, from its thread ``tid`` that sits in the signal-delivery
    stop of a fatal signal (the caller continues it with that signal afterwards, as from any such
    stop: its registers and ``siginfo`` are put back here).

    Returns the shadow (None when none could be made: the process is then held at its exit stop as
    before) and the stops of ``tid`` seen here that were not the ones expected, for the caller's
    loop to handle (a SIGKILL that came meanwhile, say).
    """
    if not _eligible(pid):
        return None, []
    unexpected: list[tuple[int, int]] = []
    child: int | None = None
    saved: _Regs | None = None
    try:
        at = _syscall_instruction(pid)
        saved = _get(tid)
        # the crashing thread runs clone(CLONE_VM | CLONE_PARENT): exit signal 0, a "clone" to ptrace,
        # so PTRACE_O_TRACECLONE traces the child before it runs anything
        _, status = _step_syscall(tid, at, _SYS_CLONE, _CLONE_VM | _CLONE_PARENT, 0, 0, 0, 0)
        while not _trapped(status):
            if os.WIFSTOPPED(status) and status >> 16 == _PTRACE_EVENT_CLONE:
                message = ctypes.c_ulong(0)
                _request(_PTRACE_GETEVENTMSG, tid, 0, ctypes.addressof(message))
                child = int(message.value)
                _request(_PTRACE_SINGLESTEP, tid)
                status = _wait(tid)
                continue
            unexpected.append((tid, status))
            raise _Failed(f"the crashing thread stopped otherwise ({status:#x})")
        if child is None or _result(tid) != child:
            raise _Failed(f"clone failed: {os.strerror(-_result(tid)) if _result(tid) < 0 else _result(tid)}")
        first = _wait(child)
        if not (os.WIFSTOPPED(first) and first >> 16 == _PTRACE_EVENT_STOP):
            raise _Failed(f"the shadow started otherwise ({first:#x})")
        _close_descriptors(child, at)
        # if it ever runs (the collector died and the kernel let it go), it ends at once
        parked = _get(child)
        parked.rip, parked.rax, parked.rdi, parked.orig_rax = at, _SYS_EXIT_GROUP, 0, _M64
        _set(child, parked)
        pidfd = os.pidfd_open(child)
    except (_Failed, OSError):
        if child is not None:
            with contextlib.suppress(OSError):
                os.kill(child, signal.SIGKILL)  # stopped, traced: it dies without running anything
        if saved is not None:
            with contextlib.suppress(_Failed):
                _restore(tid, saved, siginfo)
        return None, unexpected
    _restore(tid, saved, siginfo)
    return Shadow(child, pidfd), unexpected


def _restore(tid: int, saved: _Regs, siginfo: bytes | None) -> None:
    _set(tid, saved)
    if siginfo is not None:
        buffer = ctypes.create_string_buffer(siginfo, 128)
        _request(_PTRACE_SETSIGINFO, tid, 0, ctypes.addressof(buffer))


def _close_descriptors(child: int, at: int) -> None:
    """Close every descriptor the shadow got a copy of: ``close_range``, else one ``close`` each."""
    _, status = _step_syscall(child, at, _SYS_CLOSE_RANGE, 0, 0xFFFFFFFF, 0)
    if not _trapped(status):
        raise _Failed(f"the shadow stopped otherwise ({status:#x})")
    result = _result(child)
    if result == 0:
        return
    if result != -errno.ENOSYS:
        raise _Failed(f"close_range failed: {os.strerror(-result)}")
    try:
        descriptors = [int(name) for name in os.listdir(f"/proc/{child}/fd")]
    except OSError as err:
        raise _Failed(f"cannot list the shadow's descriptors: {err}") from err
    for fd in descriptors:
        _, status = _step_syscall(child, at, _SYS_CLOSE, fd)
        if not _trapped(status):
            raise _Failed(f"the shadow stopped otherwise ({status:#x})")
