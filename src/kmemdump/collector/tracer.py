"""Holding a child at its exit so its memory can still be read: a small ptrace layer.

A process that dies takes its heap with it; by the time its parent learns of the death there is
nothing left to copy. The one way to read it afterwards is to be its ptrace *tracer* with
``PTRACE_O_TRACEEXIT``: every thread of the tracee then stops at ``PTRACE_EVENT_EXIT``, inside the
kernel's exit path but before its address space is released, whatever the cause of the exit
(``exit()``, ``os._exit``, an uncaught fatal signal, ``abort()``, SIGSEGV and, on the kernels we
measured (Linux 6.18), even SIGKILL). The tracer reads the memory there, then lets the exit go on.

:class:`ExitTracer` does this for one child of ``kmemdump run --trace-exit``. It attaches with
``PTRACE_SEIZE`` (which, unlike ``PTRACE_ATTACH``, does not stop the child and keeps job control
intact), follows threads created later (``PTRACE_O_TRACECLONE``) and seizes the threads that exist
already. All ptrace requests come from one dedicated thread, the one that attached, as the kernel
requires. That thread:

* re-injects every signal the child receives (``PTRACE_CONT`` with the signal): tracing never
  swallows a signal, nor delays it beyond a round trip through this thread. Injected, a stop
  signal keeps the kernel's job-control rules: one that a SIGCONT overtook while the tracer held it
  (Ctrl-Z stops the supervisor and the program together, ``fg`` continues both) is dropped by the
  kernel, as a pending stop signal would be;
* keeps group-stops working: a stopped tracee is left stopped with ``PTRACE_LISTEN`` until a
  SIGCONT, so SIGSTOP, Ctrl-Z, ``kill -CONT`` and the collector's own SIGSTOP-while-copying behave
  as without a tracer;
* holds every thread of a dying process at its exit stop. A process that dies of a fatal signal,
  or calls ``exit_group`` with a non-zero status, sends every thread through ``PTRACE_EVENT_EXIT``
  with that status: the first to arrive makes the death known to the caller
  (:meth:`ExitTracer.poll_exit`, which waits a short bound, :data:`GATHER_BOUND`, for the others),
  each is held there with all its registers read, and all are let go together when the caller,
  having dumped the memory, calls :meth:`ExitTracer.resume`. The thread that took the fatal signal
  (or called ``exit``) is named, so that its registers come first in the core, as in a kernel
  core. A thread that ends alone (status 0, not the leader) goes at once. The leader's status-0
  exit stop is a death (``exit(0)`` that left its table behind, or a main thread that ended
  alone) unless another thread is in ``execve``: ``exec`` from a thread kills the leader first;
* treats an ``exec`` as the end of one program and the start of the next, not as a death: the
  caller learns of it (:meth:`ExitTracer.poll_exec`) while the new program is held at its very
  start, forgets the old program's table, and resumes it;
* reaps the child at the end and keeps its wait status (:attr:`ExitTracer.status`): the caller
  must not wait for the child itself.

What tracing costs the user: while the child is traced nothing else can trace it, so gdb, strace,
gcore and ``py-spy dump``/``record`` without ``--nonblocking`` cannot attach to it (``py-spy dump
--nonblocking``, which the collector uses for stacks, and ``kmemdump dump`` still work: they only
read memory). Each signal the child receives costs a round trip through the tracer thread, and so
does each thread it creates; a dying child waits at its exit while its memory is looked at (a few
milliseconds after a fatal signal, when a shadow keeps the memory: :mod:`.shadow`). The
program's own child processes are not traced. Whether SIGKILL stops at ``PTRACE_EVENT_EXIT``
depends on the kernel (it does on 6.18); where it does not, a SIGKILL is recorded as before, without
the memory.

If anything goes wrong inside the tracer, it detaches (``PTRACE_DETACH``, passing on the signal it
was holding) and ends its thread, which makes the kernel detach every other tracee: the child is
never left stopped. :attr:`ExitTracer.failure` then says why, and the caller supervises the child
without it.

Why one module of this size: it is one state machine run by one thread (the kernel takes every
ptrace request of a tracee from the thread that attached), and the signal, group-stop, exit and
exec cases above share that thread's per-tracee state; split, each part would need the others'.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import signal
import struct
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from kmemdump.collector.exits import death_from_siginfo
from kmemdump.collector.ptrace import ptrace_request
from kmemdump.collector.registers import ThreadRegisters
from kmemdump.collector.registers import exit_syscalls
from kmemdump.collector.registers import in_exec
from kmemdump.collector.registers import read_registers
from kmemdump.collector.registers import syscall_number
from kmemdump.collector.shadow import Shadow
from kmemdump.collector.shadow import fatal_by_default
from kmemdump.collector.shadow import make_shadow
from kmemdump.errors import AccessDeniedError
from kmemdump.errors import CollectorError
from kmemdump.errors import ProcessGoneError
from kmemdump.formats.dumpmeta import Death
from kmemdump.record import field
from kmemdump.record import frozen
from kmemdump.record import replace

__all__ = [
    "GATHER_BOUND",
    "TRACE_OPTIONS",
    "ExecStop",
    "ExitStop",
    "ExitTracer",
    "describe_status",
    "ptrace_request",
    "seize",
    "tracer_pid",
]

# <linux/ptrace.h>
PTRACE_CONT = 7
PTRACE_DETACH = 17
PTRACE_GETEVENTMSG = 0x4201
PTRACE_GETSIGINFO = 0x4202
PTRACE_SEIZE = 0x4206
PTRACE_LISTEN = 0x4208

PTRACE_O_TRACECLONE = 0x08
PTRACE_O_TRACEEXEC = 0x10
PTRACE_O_TRACEEXIT = 0x40

PTRACE_EVENT_CLONE = 3
PTRACE_EVENT_EXEC = 4
PTRACE_EVENT_EXIT = 6
PTRACE_EVENT_STOP = 128

# <linux/wait.h>: wait for threads as well as processes; only this thread's children and tracees
_WALL = 0x40000000
_WNOTHREAD = 0x20000000

TRACE_OPTIONS = PTRACE_O_TRACEEXIT | PTRACE_O_TRACECLONE | PTRACE_O_TRACEEXEC
"""Stop at every thread's exit, follow new threads, and learn of exec (which renames threads)."""

GATHER_BOUND = 0.25
"""Seconds :meth:`ExitTracer.poll_exit` waits for every thread of a dying process to reach its exit
stop (they arrive within microseconds; one in an uninterruptible sleep may not): the dump is then
taken with the threads that arrived, and the others are named in its death record."""

_STOP_SIGNALS = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})

_request = ptrace_request  # (kmemdump.collector.ptrace: the hold needs it without this module)


def seize(tid: int, options: int = TRACE_OPTIONS) -> None:
    """``PTRACE_SEIZE`` one thread with ``options``; raises :class:`OSError` as the kernel answers."""
    _request(PTRACE_SEIZE, tid, 0, options)


def _event_message(tid: int) -> int:
    value = ctypes.c_ulong(0)
    _request(PTRACE_GETEVENTMSG, tid, 0, ctypes.addressof(value))
    return value.value


_SIGINFO_SIZE = 128


def _siginfo(tid: int) -> bytes | None:
    """The ``siginfo_t`` of the signal a thread is stopped for (its signal-delivery stop)."""
    buffer = ctypes.create_string_buffer(_SIGINFO_SIZE)
    try:
        _request(PTRACE_GETSIGINFO, tid, 0, ctypes.addressof(buffer))
    except OSError:
        return None
    return buffer.raw


def _kernel_fault(siginfo: bytes) -> bool:
    """A signal the kernel raised for a fault (``si_code > 0``: SEGV_MAPERR …), not one a process sent."""
    code: int = struct.unpack_from("<i", siginfo, 8)[0]
    return 0 < code < 0x80


def _sent_by(siginfo: bytes) -> int | None:
    """The pid that sent a signal with kill/tkill/sigqueue (``si_code <= 0``), else None."""
    code, pid = struct.unpack_from("<i4xi", siginfo, 8)
    return int(pid) if code <= 0 else None


def _cont(tid: int, sig: int = 0) -> None:
    """Restart a stopped tracee; a tracee SIGKILLed out of its stop meanwhile is not an error."""
    with contextlib.suppress(ProcessLookupError):
        _request(PTRACE_CONT, tid, 0, sig)


def _listen(tid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        _request(PTRACE_LISTEN, tid, 0, 0)


def _detach(tid: int, sig: int = 0) -> None:
    with contextlib.suppress(OSError):
        _request(PTRACE_DETACH, tid, 0, sig)


def tracer_pid(tid: int) -> int | None:
    """The ``TracerPid`` of a thread (0: not traced), or None when it is gone."""
    try:
        text = Path(f"/proc/{tid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("TracerPid:"):
            return int(line.split()[1])
    return None


def describe_status(status: int) -> str:
    """A wait status in words: ``exit code 3``, ``killed by SIGKILL``, ``killed by SIGSEGV (core dumped)``."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"killed by {name}" + (" (core dumped)" if os.WCOREDUMP(status) else "")
    if os.WIFEXITED(status):
        return f"exit code {os.WEXITSTATUS(status)}"
    return f"status {status:#x}"


@frozen
class ExitStop:
    """The child's main thread stopped at its exit, memory still mapped, until :meth:`ExitTracer.resume`."""

    pid: int
    status: int
    """The exit status it is about to report, in :func:`os.waitpid` form (see :func:`describe_status`)."""
    registers: Mapping[int, ThreadRegisters] = field(default_factory=dict)
    """The registers of the threads held at their exit stop, read by the tracer (only it can)."""
    siginfo: bytes | None = None
    """The ``siginfo_t`` of the fatal signal as it was delivered, when one was (never for SIGKILL)."""
    since: float = 0.0
    """When the tracer saw the stop (:func:`time.perf_counter`): the hold began then."""
    first_tid: int | None = None
    """The thread that took the fatal signal, or called ``exit``: a debugger starts there."""
    late: tuple[int, ...] = ()
    """Threads that had not reached their exit stop within :data:`GATHER_BOUND` (not held)."""
    shadow: int | None = None
    """A process sharing the dying process's memory (:mod:`.shadow`), made when a fatal signal was
    delivered: read the regions there after :meth:`ExitTracer.resume`, then
    :meth:`ExitTracer.drop_shadow`. None for other deaths (SIGKILL, ``exit``) or where none was made."""

    def describe(self) -> str:
        return describe_status(self.status)

    def death(self) -> Death:
        """How the process ended: the status and, for a signal, its ``siginfo``; which thread."""
        return replace(death_from_siginfo(self.status, self.siginfo), tid=self.first_tid, late=self.late)


@frozen
class ExecStop:
    """The child after an ``execve``, held before the new program runs, until :meth:`ExitTracer.resume`."""

    pid: int
    former_tid: int
    """The thread that called ``execve`` (it now carries the process's id)."""


class _Dying:
    """A death being gathered by the tracer thread: which threads are held at their exit stop."""

    def __init__(self, status: int, since: float, signal_tid: int | None, expected: set[int]) -> None:
        self.status = status
        self.since = since
        self.signal_tid = signal_tid
        self.expected = expected
        """The threads that will come through their exit stop (those traced and not ended)."""
        self.arrived: list[int] = []
        self.registers: dict[int, ThreadRegisters] = {}
        self.caller: int | None = None
        """The thread that called ``exit_group``, when one did."""
        self.lock = threading.Lock()
        self.complete = threading.Event()
        self.published = False

    def arrive(self, tid: int, registers: Mapping[int, ThreadRegisters], *, caller: bool = False) -> None:
        with self.lock:
            self.arrived.append(tid)
            if caller and self.caller is None:
                self.caller = tid
            self.registers.update(registers)
            self._check()

    def gone(self, tid: int) -> None:
        with self.lock:
            self.expected.discard(tid)
            self._check()

    def expect(self, tid: int) -> None:
        with self.lock:
            if tid not in self.arrived:
                self.expected.add(tid)
                self.complete.clear()

    def _check(self) -> None:
        if self.expected <= set(self.arrived):
            self.complete.set()

    def stop(self, pid: int, siginfo: bytes | None, shadow: int | None) -> ExitStop:
        """What the caller gets: the threads held so far, the crashing one first."""
        with self.lock:
            registers = dict(self.registers)
            late = tuple(sorted(self.expected - set(self.arrived)))
            # the thread the fatal signal was delivered to, or that called exit; else (SIGKILL, which
            # is never delivered to a tracer) the main thread, as the kernel's own choice would be
            candidates = (self.signal_tid, self.caller, pid, *self.arrived)
            first = next((tid for tid in candidates if tid in registers), None)
        return ExitStop(
            pid,
            self.status,
            registers=registers,
            siginfo=siginfo,
            since=self.since,
            first_tid=first,
            late=late,
            shadow=shadow,
        )


class ExitTracer:
    """Trace the child ``pid`` from a dedicated thread, holding its main thread at its exit.

    Call :meth:`start` once, right after starting the child. Then, from the supervising loop: take
    exit stops with :meth:`poll_exit` and release each with :meth:`resume` (always; a dump that
    fails must still resume); stop looping when :attr:`status` (the reaped child's wait status) or
    :attr:`failure` is set. :meth:`fileno` is readable whenever there is something to look at (an
    exit stop, the end of the tracer): a loop blocks in ``poll`` on it instead of polling. Never
    wait for the child with ``waitpid``/``Popen.poll`` meanwhile: a wait from any thread of this
    process would take the tracer's stop reports.
    """

    def __init__(self, pid: int, *, shadow: bool = True) -> None:
        self.pid = pid
        self.shadows = shadow
        """Give the process a shadow when a fatal signal is delivered (:mod:`.shadow`)."""
        self._shadow: Shadow | None = None
        self._shadow_gone = False
        self.status: int | None = None
        """The child's wait status once the tracer reaped it."""
        self.failure: str | None = None
        """Why the tracer gave up (it has detached), or None."""
        self._exits: queue.SimpleQueue[_Dying] = queue.SimpleQueue()
        self._execs: queue.SimpleQueue[ExecStop] = queue.SimpleQueue()
        self._dying: _Dying | None = None
        """The death being gathered or held, until its threads are let go."""
        self._held: list[int] = []
        """Threads this thread keeps at a stop until :meth:`resume` (exit stops, an exec stop)."""
        self._ended: set[int] = set()
        """Threads that went through their exit stop (they will not come again)."""
        self._dead = False
        """A death of the whole program was handed over: later exit stops are its threads going."""
        self._go = threading.Event()
        self._attached = threading.Event()
        self._attach_error: BaseException | None = None
        self._done = threading.Event()
        self._closed = False
        self._tids: set[int] = set()
        self._signals: dict[int, tuple[bytes, int]] = {}
        """The ``siginfo`` of the last delivery of each signal (the one that kills is among them), and
        the thread it was delivered to."""
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._main, name=f"kmemdump-tracer-{pid}", daemon=True)

    # --- the caller's side -------------------------------------------------------------------

    def start(self) -> None:
        """Seize the child and its threads; raise if the kernel refuses (nothing is traced then).

        :class:`AccessDeniedError` when ptrace is not allowed (Yama ``ptrace_scope`` 2 or 3, a seccomp
        filter, a container without the right to trace), :class:`ProcessGoneError` when the child is
        already gone, :class:`CollectorError` otherwise.
        """
        try:
            self._thread.start()
        except RuntimeError as err:  # no thread to trace from: nothing was seized
            raise CollectorError(f"cannot start the tracer thread: {err}", pid=self.pid) from err
        self._attached.wait()
        refused = self._attach_error
        if refused is None:
            return
        self._thread.join()
        if isinstance(refused, PermissionError):
            raise AccessDeniedError(f"ptrace refused: {refused.strerror}", pid=self.pid) from refused
        if isinstance(refused, ProcessLookupError):
            raise ProcessGoneError("the process is gone", pid=self.pid) from refused
        raise CollectorError(f"cannot trace the process: {refused}", pid=self.pid) from refused

    def fileno(self) -> int:
        """A descriptor that polls readable when an exit stop waits or the tracer has ended (read by
        :meth:`poll_exit`)."""
        return self._wake_r

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (the loop has not looked yet) or closed: awake already
            os.write(self._wake_w, b"!")

    def poll_exit(self, bound: float = GATHER_BOUND) -> ExitStop | None:
        """The child's death, its threads held at their exit stop until :meth:`resume`, if it reached one.

        The first thread's arrival makes it known; this waits up to ``bound`` seconds (an event set
        by the tracer thread, no polling) for the others, which the kernel sends through their exit
        stops at once unless one is in an uninterruptible sleep. Those that had not arrived are named
        in :attr:`ExitStop.late`.
        """
        with contextlib.suppress(OSError):
            os.read(self._wake_r, 64)
        try:
            dying = self._exits.get_nowait()
        except queue.Empty:
            return None
        dying.complete.wait(bound)
        fatal = os.WTERMSIG(dying.status) if os.WIFSIGNALED(dying.status) else 0
        kept = self._signals.get(fatal) if fatal else None
        if kept is not None and dying.signal_tid is None:
            dying.signal_tid = kept[1]
        shadow = self._shadow.pid if self._shadow is not None and not self._shadow_gone else None
        return dying.stop(self.pid, kept[0] if kept is not None else None, shadow)

    def poll_exec(self) -> ExecStop | None:
        """The child after an ``execve``, held before its new program runs, until :meth:`resume`."""
        try:
            return self._execs.get_nowait()
        except queue.Empty:
            return None

    def resume(self) -> None:
        """Let a child held at its exit stop finish exiting (every thread held there), or one held
        after an ``exec`` run its new program."""
        self._go.set()

    @property
    def done(self) -> bool:
        """The tracer thread has ended: :attr:`status` or :attr:`failure` is set."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the tracer thread ends; False on timeout."""
        return self._done.wait(timeout)

    def drop_shadow(self) -> None:
        """End the shadow, if there is one: the dead process's memory is released (any thread)."""
        shadow = self._shadow
        if shadow is not None:
            shadow.kill()

    def close(self) -> None:
        """Release an exit stop still held, and any later one (the supervisor is bailing out)."""
        self._closed = True
        self._go.set()
        self.drop_shadow()
        if self._done.is_set():
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wake_r = self._wake_w = -1

    # --- the tracer thread ---------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._attach()
        except BaseException as err:
            self._attach_error = err
            self._attached.set()
            self._done.set()
            self._wake()
            return
        self._attached.set()
        try:
            self._serve()
        except BaseException as err:
            self.failure = f"{type(err).__name__}: {err}"
            # Leaving this thread makes the kernel detach every tracee it still holds.
        finally:
            self._done.set()
            self._wake()

    def _attach(self) -> None:
        """Seize the leader (an error here means nothing is traced), then the threads it has."""
        seize(self.pid)
        self._tids.add(self.pid)
        # Threads started before the seize are not followed by PTRACE_O_TRACECLONE: seize each,
        # until a listing shows no new one (a thread seized meanwhile brings its own children).
        me = threading.get_native_id()
        while True:
            try:
                listing = {int(name) for name in os.listdir(f"/proc/{self.pid}/task")}
            except OSError:
                return  # gone: its exit is reported by waitpid
            new = listing - self._tids
            if not new:
                return
            for tid in new:
                try:
                    seize(tid)
                except PermissionError:
                    if tracer_pid(tid) != me:  # not one we follow already through its parent
                        continue
                except OSError:
                    continue  # it ended (ESRCH); a thread that cannot be seized is left untraced
                self._tids.add(tid)

    def _serve(self) -> None:
        while True:
            try:
                tid, status = os.waitpid(-1, _WALL | _WNOTHREAD)
            except ChildProcessError:
                raise CollectorError("the traced process vanished without an exit status") from None
            if os.WIFSTOPPED(status):
                try:
                    self._on_stop(tid, status)
                except BaseException:
                    # hand the stopped thread back to the kernel with the signal it was stopped for
                    event = status >> 16
                    _detach(tid, os.WSTOPSIG(status) if event == 0 else 0)
                    raise
            elif self._shadow is not None and tid == self._shadow.pid:
                self._shadow_gone = True  # reaped: this process is its parent (CLONE_PARENT)
                self._shadow.close()
                if self.status is not None:
                    return
            elif tid == self.pid:
                self.status = status
                if self._shadow is None or self._shadow_gone:
                    return
                if self._closed:
                    self._shadow.kill()  # nobody will read it
            else:
                self._tids.discard(tid)
                self._ended.add(tid)
                if self._dying is not None:
                    self._dying.gone(tid)
                    if self._dying.complete.is_set() and self._held:
                        self._wait_and_release()
            if self._held and self._go.is_set():
                self._release()  # resumed while this thread waited for a late thread of a death

    def _on_stop(self, tid: int, status: int) -> None:
        sig = os.WSTOPSIG(status)
        event = status >> 16
        if self._shadow is not None and tid == self._shadow.pid:
            if event == PTRACE_EVENT_EXIT:
                _cont(tid)  # killed: let it end
            return  # otherwise it stays stopped: it never runs a line of the program
        self._tids.add(tid)
        if event == 0:  # signal-delivery stop: note what it says, pass the signal on
            info = self._note_signal(tid, sig)
            if self.shadows and self._shadow is None and not self._closed and fatal_by_default(self.pid, sig):
                shadow, unexpected = make_shadow(self.pid, tid, info)
                self._shadow = shadow
                if unexpected:  # the thread stopped for something else meanwhile: handle that instead
                    for other, other_status in unexpected:
                        self._on_stop(other, other_status)
                    return
            _cont(tid, sig)
        elif event == PTRACE_EVENT_STOP:
            if sig in _STOP_SIGNALS:
                _listen(tid)  # group-stop: stay stopped until SIGCONT, as without a tracer
            else:
                _cont(tid)  # a new thread's first stop, or the wake-up after a SIGCONT
        elif event == PTRACE_EVENT_EXIT:
            self._on_exit(tid)
        elif event == PTRACE_EVENT_CLONE:
            new = _event_message(tid)
            self._tids.add(new)
            if self._dying is not None:
                self._dying.expect(new)  # created as the process died: it comes through too
            _cont(tid)
        elif event == PTRACE_EVENT_EXEC:
            self._on_exec(tid)
        else:
            _cont(tid)

    def _note_signal(self, tid: int, sig: int) -> bytes | None:
        """Keep the ``siginfo`` of a signal being delivered: should it kill the process, it says how.

        A handler that catches a fault and raises it again (faulthandler does) sends the same signal
        from the process itself; the kernel's fault, with its address, is the one worth keeping.
        """
        info = _siginfo(tid)
        if info is None or not 0 < sig < 128:
            return info
        kept = self._signals.get(sig)
        if kept is not None and _kernel_fault(kept[0]) and _sent_by(info) == self.pid:
            return info
        self._signals[sig] = (info, tid)
        return info

    def _on_exit(self, tid: int) -> None:
        """A thread at its exit stop: part of a death (held, its registers read), or let go."""
        try:
            code = _event_message(tid)
        except ProcessLookupError:
            return  # SIGKILLed out of the stop already: nothing left to hold
        since = time.perf_counter()
        self._ended.add(tid)
        dying = self._dying
        if dying is None:
            if self._dead:
                _cont(tid)  # a thread of a death already handed over
                return
            registers = read_registers(self.pid, [tid], ptrace_stopped=[tid])
            number = syscall_number(self.pid, registers[tid])
            whole = self._whole_death(tid, code, registers[tid].machine, number)
            if whole is None:
                _cont(tid)  # a thread ending alone, or killed by another thread's exec
                return
            expected = (self._tids - self._ended) | {tid} if whole else {tid}
            dying = _Dying(code, since, None, expected)
            self._dying, self._dead = dying, whole
            dying.arrive(tid, registers, caller=number == exit_syscalls(registers[tid].machine)[1])
            self._go.clear()
            self._held.append(tid)
            self._exits.put(dying)
            self._wake()
        elif self._go.is_set() and not self._held:
            _cont(tid)  # arrived after its death was dumped and let go
            return
        else:
            registers = read_registers(self.pid, [tid], ptrace_stopped=[tid])
            number = syscall_number(self.pid, registers[tid])
            dying.arrive(tid, registers, caller=number == exit_syscalls(registers[tid].machine)[1])
            self._held.append(tid)
        if dying.complete.is_set():
            self._wait_and_release()

    def _whole_death(self, tid: int, code: int, machine: int, number: int | None) -> bool | None:
        """Whether this exit stop (system call ``number`` when the thread entered the kernel) is the
        whole process dying (True: every thread comes through), the main thread ending alone (False:
        a death, the others live on), or neither (None)."""
        if os.WIFSIGNALED(code):
            return True  # a fatal signal kills every thread
        exit_nr, exit_group_nr = exit_syscalls(machine)
        if number == exit_group_nr:
            return True  # this thread called exit_group: every other thread is killed
        if number == exit_nr:
            return False if tid == self.pid else None  # it ended alone (pthread_exit)
        if os.WEXITSTATUS(code) != 0:
            return True  # killed by another thread's exit_group(n)
        if tid != self.pid:
            return None  # status 0, killed by exit_group(0) or by an exec: either way not held
        # The main thread killed with status 0: by another thread's exit_group(0), or by its exec.
        return None if in_exec(self.pid, self._tids - self._ended) else False

    def _wait_and_release(self) -> None:
        """Every thread of the death is held: wait for the caller's :meth:`resume`, then let them go."""
        if not self._closed:  # nobody would resume it
            self._go.wait()
        self._release()

    def _release(self) -> None:
        for held in self._held:
            _cont(held)
        self._held.clear()
        if self._dying is not None and self._dying.complete.is_set():
            self._dying = None

    def _on_exec(self, tid: int) -> None:
        """The process runs a new program: whatever it published before is gone; it is a new start."""
        former = _event_message(tid)  # the thread that exec'd now carries the leader's id
        self._tids = {tid}
        self._ended.clear()
        self._signals.clear()
        self._dead = False
        if self._dying is not None:  # a death taken for one: the exec went on after it
            self._dying = None
        self._held = [tid]
        self._go.clear()
        self._execs.put(ExecStop(self.pid, former))
        self._wake()
        self._wait_and_release()
