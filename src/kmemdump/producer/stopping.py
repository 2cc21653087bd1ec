"""A graceful stop is not a death: removing the table when the process is asked to stop.

systemd, Kubernetes, gunicorn's arbiter and ``multiprocessing.Pool.terminate()`` stop a process with
SIGTERM. Under the default disposition the kernel ends it at once: no ``atexit`` hook runs, the
table stays, and a collector would take the stop for a death. So when a process publishes a table,
:func:`install` puts a handler on SIGTERM and SIGINT, but only where the disposition is still the
default (``SIG_DFL``): a handler the application installed (before or after) is left alone, and an
application that handles the signal itself exits through ``atexit`` anyway. The handler removes
the table and the arena, restores ``SIG_DFL`` and raises the signal again, so the process ends as
before, "killed by SIGTERM" (status 143 in a shell), only without leaving a table behind.

A crash is still a death: SIGKILL, SIGSEGV, SIGABRT … are not touched.

A Python-level handler runs only when the main thread next executes Python code. A signal that
arrives just before the main thread blocks in a call that is not interrupted again (a
``multiprocessing`` lock's ``sem_wait``) would then leave the process blocked, no longer ended by
SIGTERM. A ``multiprocessing`` worker is exactly that: idle on its pool's lock, terminated with
SIGTERM by a parent that then waits for it. So in a ``multiprocessing`` child :func:`install` also
takes the interpreter's wakeup fd (``signal.set_wakeup_fd``, unless the application has), to which
the C-level handler writes every signal at once, and a small thread ("kmemdump-stop") reads it:
when a stop signal of ours is not acted on by the main thread within :data:`BACKSTOP_S`, that
thread removes the table and the arena itself, restores the default disposition and sends the
signal again. Other processes get no extra thread; there, a stop signal that finds the main thread
blocked in C is acted on when it returns to Python (or the service manager's SIGKILL ends it).

Ending a process with ``os._exit`` skips ``atexit`` too. A ``multiprocessing`` child (the workers of
a ``Pool`` and a ``ProcessPoolExecutor``, with the fork and the spawn start methods alike) always
ends that way; :func:`at_process_end` hooks the cleanup into the end of such a child. Any other
program calls :func:`kmemdump.shutdown` before ``os._exit``.

Standard library only: the producer imports this module.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

__all__ = [
    "BACKSTOP_S",
    "QUIET_THREADS",
    "STOP_SIGNALS",
    "at_process_end",
    "install",
    "installed",
    "leave_signals_to_the_program",
]

log = logging.getLogger("kmemdump")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
BACKSTOP_S = 0.5
"""Seconds the backstop thread leaves the main thread to act on a stop signal itself."""
QUIET_THREADS: set[int] = set()
"""Native ids of kmemdump's own idle threads (the backstop), which the feeder's progress check skips."""
_backstop: list[int] = []
"""``[read_fd, write_fd]`` of the wakeup pipe this process owns, once the backstop runs."""

_cleanup: list[Callable[[], None]] = []
_installed: set[int] = set()
_mp_hooked: set[int] = set()
"""Pids in which :func:`at_process_end` hooked the cleanup already."""


_SYNCHRONOUS = frozenset(
    [
        signal.SIGSEGV,
        signal.SIGBUS,
        signal.SIGFPE,
        signal.SIGILL,
        signal.SIGTRAP,
        signal.SIGABRT,
        signal.SIGSYS,
    ]
)
"""Signals a thread raises itself (a fault, ``abort``): never blocked, or faulthandler would not run."""


def leave_signals_to_the_program() -> None:
    """Block, in the calling thread (one of kmemdump's own), every signal sent to the process as a whole.

    The kernel gives such a signal to any thread that does not block it. Python's C-level handler only
    notes it, and the Python handler runs when the *main* thread next executes Python code; a signal
    taken by one of our threads (the feeder, in its timed wait) while the main thread sleeps in C (a
    deadlocked ``lock.acquire()``) wakes nothing. Seen: a program that deadlocked, was dumped for its hang
    and then got SIGTERM now and then did not end, its main thread still waiting on its lock (about 1 run
    in 60 under load; the likely moment is a stop that arrives while the dump holds every thread, taken by
    the feeder when it wakes first at the release). Blocked here, such a signal goes to a thread of the
    program's, the main thread first.
    """
    with contextlib.suppress(ValueError, OSError, AttributeError):
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals() - _SYNCHRONOUS)


def installed() -> tuple[signal.Signals, ...]:
    """The stop signals whose handler is ours right now."""
    return tuple(
        signal.Signals(signum) for signum in sorted(_installed) if signal.getsignal(signum) is _on_stop
    )


def install(cleanup: Callable[[], None]) -> tuple[signal.Signals, ...]:
    """Handle SIGTERM and SIGINT where their disposition is ``SIG_DFL``; returns those handled now.

    Only the main thread may set signal handlers: called from another thread, it does nothing
    (the stop then goes on being a death, as without kmemdump).
    """
    _cleanup[:] = [cleanup]
    if threading.current_thread() is not threading.main_thread():
        log.debug("kmemdump.init() ran outside the main thread: no SIGTERM/SIGINT handler installed")
        return installed()
    for signum in STOP_SIGNALS:
        try:
            if signal.getsignal(signum) is signal.SIG_DFL:
                signal.signal(signum, _on_stop)
                _installed.add(int(signum))
        except (OSError, ValueError, RuntimeError) as err:
            log.debug("no handler for %s: %s", signum, err)
    if installed() and _in_multiprocessing_child():
        _start_backstop()
    return installed()


def _start_backstop() -> None:
    """Take the wakeup fd (if nobody has) and start the thread that reads it. Main thread only."""
    if _backstop:
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    try:
        old = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except (ValueError, OSError) as err:
        log.debug("no wakeup fd for the stop backstop: %s", err)
        old = -2
    if old != -1:  # the application's (or unavailable): leave it alone
        if old >= 0:
            signal.set_wakeup_fd(old)
        os.close(read_fd)
        os.close(write_fd)
        return
    _backstop[:] = [read_fd, write_fd]
    threading.Thread(target=_watch_wakeups, args=(read_fd,), name="kmemdump-stop", daemon=True).start()


def _watch_wakeups(read_fd: int) -> None:
    leave_signals_to_the_program()
    QUIET_THREADS.add(threading.get_native_id())
    while True:
        try:
            data = os.read(read_fd, 64)
        except OSError:
            return
        if not data:
            return
        for signum in data:
            if signum in _installed and signal.getsignal(signum) is _on_stop:
                time.sleep(BACKSTOP_S)  # the main thread normally ends the process meanwhile
                _stop_from_backstop(signum)


def _stop_from_backstop(signum: int) -> None:
    """The main thread did not act on the stop signal: do what its handler would have done."""
    try:
        for cleanup in _cleanup:
            cleanup()
    except Exception:
        log.debug("cleanup on signal %d failed", signum, exc_info=True)
    try:
        import ctypes  # signal.signal() is for the main thread only; the C library's is not

        libc = ctypes.CDLL(None, use_errno=True)
        libc.signal.restype = ctypes.c_void_p
        libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
        libc.signal(signum, 0)  # SIG_DFL
        os.kill(os.getpid(), signum)
        time.sleep(1.0)  # blocked in every thread: end all the same
    finally:
        os._exit(128 + signum)


def _after_fork_in_child() -> None:
    # A forked child publishes nothing until it calls kmemdump.init(table=True), which installs the
    # handlers again: until then the stop signals end it as they would without kmemdump. The wakeup
    # pipe is the parent's (a signal to either would reach both readers): the child lets it go.
    for signum in list(_installed):
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            if signal.getsignal(signum) is _on_stop:
                signal.signal(signum, signal.SIG_DFL)
    _installed.clear()
    inherited, _backstop[:] = list(_backstop), []
    QUIET_THREADS.clear()
    if not inherited:
        return
    with contextlib.suppress(ValueError, OSError):
        signal.set_wakeup_fd(-1)
    for fd in inherited:
        os.close(fd)


def _on_stop(signum: int, frame: FrameType | None) -> None:
    """Remove the table and the arena, then die of the same signal under its default disposition."""
    try:
        for cleanup in _cleanup:
            cleanup()
    except BaseException:
        log.debug("cleanup on signal %d failed", signum, exc_info=True)
    finally:
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)
        # still here: the application blocks the signal in this thread; end all the same
        os._exit(128 + signum)


def at_process_end(cleanup: Callable[[], None]) -> bool:
    """In a ``multiprocessing`` child, run ``cleanup`` when the child's work is done.

    Such a child ends with ``os._exit`` after its target returns, so ``atexit`` hooks never run;
    ``threading``'s exit hooks do (``multiprocessing`` runs them just before ``os._exit``, with the
    fork and the spawn start methods). Returns True when the hook is (already) in place here.
    Nothing is done in other processes, whose clean exit runs ``atexit``.
    """
    pid = os.getpid()
    if pid in _mp_hooked:
        return True
    if not _in_multiprocessing_child():
        return False
    register = getattr(threading, "_register_atexit", None)
    if not callable(register):
        return False
    try:
        register(cleanup)
    except RuntimeError:  # the interpreter is shutting down already
        return False
    _mp_hooked.add(pid)
    return True


def _in_multiprocessing_child() -> bool:
    process = sys.modules.get("multiprocessing.process")
    if process is None:
        return False
    try:
        if process.parent_process() is not None:
            return True
        # a spawned child importing the main module has no parent_process() yet
        return bool(getattr(process.current_process(), "_inheriting", False))
    except Exception:
        return False


os.register_at_fork(after_in_child=_after_fork_in_child)
