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
* lets exiting threads go at once, except the thread-group leader: its exit stop is taken for the
  process's exit and handed to the caller (:meth:`ExitTracer.poll_exit`), who dumps the memory,
  still mapped, and then calls :meth:`ExitTracer.resume`. (A main thread that ends alone with
  ``pthread_exit``, or one killed by another thread's ``exec``, stops there too and is taken for
  a death: Python programs do neither unless a C extension does);
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
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import queue
import signal
import struct
import threading
import time
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

from kmemdump.collector.exits import death_from_siginfo
from kmemdump.collector.registers import ThreadRegisters
from kmemdump.collector.registers import read_registers
from kmemdump.collector.shadow import Shadow
from kmemdump.collector.shadow import fatal_by_default
from kmemdump.collector.shadow import make_shadow
from kmemdump.errors import AccessDeniedError
from kmemdump.errors import CollectorError
from kmemdump.errors import ProcessGoneError
from kmemdump.formats.dumpmeta import Death

__all__ = [
    "TRACE_OPTIONS",
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

_STOP_SIGNALS = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})

_Ptrace = Callable[[int, int, int | None, int | None], int]


def _load_ptrace() -> _Ptrace | None:
    try:
        func = ctypes.CDLL(None, use_errno=True).ptrace
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    func.restype = ctypes.c_long
    call: _Ptrace = func
    return call


_ptrace = _load_ptrace()


def _request(request: int, tid: int, addr: int | None = None, data: int | None = None) -> int:
    if _ptrace is None:
        raise OSError(errno.ENOSYS, "ptrace is not available from this Python (no libc ptrace)")
    result = _ptrace(request, tid, addr, data)
    if result == -1:
        err = ctypes.get_errno()
        if err:
            raise OSError(err, os.strerror(err))
    return result


ptrace_request = _request
"""``ptrace(request, tid, addr, data)``; :class:`OSError` with the kernel's errno when it fails."""


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


@dataclass(frozen=True, slots=True)
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
    shadow: int | None = None
    """A process sharing the dying process's memory (:mod:`.shadow`), made when a fatal signal was
    delivered: read the regions there after :meth:`ExitTracer.resume`, then
    :meth:`ExitTracer.drop_shadow`. None for other deaths (SIGKILL, ``exit``) or where none was made."""

    def describe(self) -> str:
        return describe_status(self.status)

    def death(self) -> Death:
        """How the process ended: the status and, for a signal, its ``siginfo``."""
        return death_from_siginfo(self.status, self.siginfo)


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
        self._exits: queue.SimpleQueue[ExitStop] = queue.SimpleQueue()
        self._go = threading.Event()
        self._attached = threading.Event()
        self._attach_error: BaseException | None = None
        self._done = threading.Event()
        self._closed = False
        self._tids: set[int] = set()
        self._signals: dict[int, bytes] = {}
        """The ``siginfo`` of the last delivery of each signal (the one that kills is among them)."""
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

    def poll_exit(self) -> ExitStop | None:
        """The child's exit stop waiting for :meth:`resume`, if it reached one."""
        with contextlib.suppress(OSError):
            os.read(self._wake_r, 64)
        try:
            return self._exits.get_nowait()
        except queue.Empty:
            return None

    def resume(self) -> None:
        """Let a child held at its exit stop finish exiting."""
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
            if tid == self.pid:
                self._hold_exit(tid)
            _cont(tid)
        elif event == PTRACE_EVENT_CLONE:
            self._tids.add(_event_message(tid))
            _cont(tid)
        elif event == PTRACE_EVENT_EXEC:
            former = _event_message(tid)  # the thread that exec'd now carries the leader's id
            if former != tid:
                self._tids.discard(former)
            _cont(tid)
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
        if kept is not None and _kernel_fault(kept) and _sent_by(info) == self.pid:
            return info
        self._signals[sig] = info
        return info

    def _hold_exit(self, tid: int) -> None:
        try:
            code = _event_message(tid)
        except ProcessLookupError:
            return  # SIGKILLed out of the stop already: nothing left to hold
        since = time.perf_counter()
        fatal = os.WTERMSIG(code) if os.WIFSIGNALED(code) else 0
        self._go.clear()
        registers = read_registers(self.pid, [tid], ptrace_stopped=[tid])
        siginfo = self._signals.get(fatal) if fatal else None
        shadow = self._shadow.pid if self._shadow is not None and not self._shadow_gone else None
        self._exits.put(
            ExitStop(self.pid, code, registers=registers, siginfo=siginfo, since=since, shadow=shadow)
        )
        self._wake()
        if not self._closed:  # nobody would resume it
            self._go.wait()
