"""Crashes and uncaught exceptions, written where the collector finds them after the process is gone.

``kmemdump.init(faulthandler=True)`` (:func:`enable_faulthandler`) points :mod:`faulthandler` at a
file beside the table (``<pid>-<start_time>.fault``, format :mod:`kmemdump.formats.faults`): the
Python traceback of every thread on a SIGSEGV, SIGFPE, SIGABRT, SIGBUS or SIGILL lands there, and
so does each ``faulthandler.dump_traceback_later`` timeout given :func:`fault_file`. The file
outlives the process; the collector copies it into the process's dumps and removes it with the
table. A clean exit removes it.

``kmemdump.init(excepthook=True)`` (:func:`install_excepthook`) chains a ``sys.excepthook`` and a
``threading.excepthook`` in front of the ones in place: each uncaught exception's traceback text is
recorded in a persistent ring (role ``EXCEPTIONS``) before the previous hook runs. An uncaught
exception that ends the program (not a ``KeyboardInterrupt``, not at an interactive prompt) also
leaves the table and arena in place at exit, so the collector writes a death dump saying why the
program exited with status 1.

Fork: a child stops writing to its parent's fault file at once (faulthandler goes back to what it
was before, stderr or off); ``init(faulthandler=True)`` in the child gives it a file of its own.

Standard library only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO
from typing import Any

from kmemdump.formats.faults import FAULT_SUFFIX
from kmemdump.formats.ring import SLOT_HEADER
from kmemdump.formats.ring import RingRole
from kmemdump.formats.table import LIVE_LOCK_BYTE
from kmemdump.formats.table import lock_byte
from kmemdump.producer.forksafe import fork_safe_lock
from kmemdump.producer.rings import PersistentRing
from kmemdump.producer.rings import RingHost
from kmemdump.producer.sharedfile import ARENAS_STAGE
from kmemdump.producer.sharedfile import keep_at_exit
from kmemdump.producer.sharedfile import link_into_place
from kmemdump.producer.sharedfile import live_paths
from kmemdump.producer.sharedfile import on_exit
from kmemdump.producer.sharedfile import open_private_dir
from kmemdump.producer.sharedfile import open_temporary
from kmemdump.producer.sharedfile import remove_temporary
from kmemdump.producer.sharedfile import temporary_name

__all__ = [
    "EXCEPTIONS_CAPACITY",
    "EXCEPTIONS_RECORD_SIZE",
    "enable_faulthandler",
    "exceptions_ring",
    "fault_file",
    "install_excepthook",
    "remove_file",
]

log = logging.getLogger("kmemdump")

EXCEPTIONS_CAPACITY = 8
EXCEPTIONS_RECORD_SIZE = 8192
"""Up to 8 uncaught exceptions of about 8 KiB of traceback each (64 KiB of the arena)."""


class _State:
    __slots__ = ("file", "lock", "owner", "path", "previous", "ring")

    def __init__(self) -> None:
        self.lock = fork_safe_lock()
        self.file: IO[bytes] | None = None
        self.path: Path | None = None
        self.owner = 0
        self.previous = False
        """faulthandler was enabled (to stderr, we assume) before we took it over."""
        self.ring: PersistentRing | None = None


_state = _State()


# --- faulthandler ---------------------------------------------------------------------------------


def enable_faulthandler(directory: Path) -> Path:
    """Point faulthandler (all threads) at this process's fault file in ``directory``; its path.

    Safe to call again: the file is made once per process. :class:`~kmemdump.errors.BackendError`
    when the file cannot be created (the directory is checked as the table's is).
    """
    import faulthandler

    with _state.lock:
        pid = os.getpid()
        if _state.file is not None and _state.owner == pid and _state.path is not None:
            return _state.path
        from kmemdump.procinfo import self_start_time

        start = self_start_time()
        final = f"{pid}-{start}{FAULT_SUFFIX}"
        dir_fd = open_private_dir(directory)
        try:
            temp = temporary_name(pid, start, "f")
            fd = open_temporary(dir_fd, directory, temp, "fault file")
            try:
                _hold_live_lock(fd)
                link_into_place(dir_fd, directory, temp, final, "fault file")
            except BaseException:
                os.close(fd)
                raise
            finally:
                remove_temporary(dir_fd, directory, temp, "fault file")
        finally:
            os.close(dir_fd)
        file = open(fd, "wb", buffering=0)  # noqa: SIM115 - kept open for the life of the process
        if _state.owner != pid:
            _state.previous = faulthandler.is_enabled()
        faulthandler.enable(file=file, all_threads=True)
        _state.file, _state.path, _state.owner = file, directory / final, pid
        live_paths.add(str(_state.path))
        on_exit(ARENAS_STAGE, remove_file)
        return _state.path


def _hold_live_lock(fd: int) -> None:
    """A shared lock on byte 0 for as long as this process lives, as on the table and the arena: a
    collector in another PID namespace tells a live process's file from a dead one's by it."""
    try:
        lock_byte(fd, LIVE_LOCK_BYTE, exclusive=False)
    except OSError:
        log.debug("no liveness lock on the fault file", exc_info=True)


def fault_file() -> IO[bytes] | None:
    """The file faulthandler writes to (for ``faulthandler.dump_traceback_later(..., file=...)``),
    or None before ``init(faulthandler=True)``."""
    return _state.file if _state.owner == os.getpid() else None


def _restore_faulthandler() -> None:
    import faulthandler

    if _state.previous:
        faulthandler.enable(file=sys.__stderr__ or sys.stderr, all_threads=True)
    else:
        faulthandler.disable()


def remove_file() -> None:
    """Give faulthandler back (to stderr if it was on before) and remove the fault file: a clean
    exit, :func:`kmemdump.shutdown` or a stop signal. Takes no lock."""
    if _state.file is None or _state.owner != os.getpid():
        return
    _restore_faulthandler()
    path, file = _state.path, _state.file
    _state.file = _state.path = None
    with contextlib.suppress(OSError):
        file.close()
    if path is not None:
        with contextlib.suppress(FileNotFoundError):  # removed by a collector
            os.unlink(path)
        live_paths.discard(str(path))


# --- uncaught exceptions --------------------------------------------------------------------------


def exceptions_ring() -> PersistentRing | None:
    """The ring uncaught exceptions go to, once :func:`install_excepthook` ran."""
    return _state.ring


def install_excepthook(host: RingHost) -> PersistentRing:
    """Chain our ``sys.excepthook`` and ``threading.excepthook`` before the current ones (once); the
    exceptions go into a ring allocated from ``host``."""
    with _state.lock:
        if _state.ring is not None:
            return _state.ring
        ring = PersistentRing(
            EXCEPTIONS_CAPACITY, EXCEPTIONS_RECORD_SIZE, RingRole.EXCEPTIONS, "exceptions", host=host
        )
        previous_sys = sys.excepthook
        previous_thread = threading.excepthook

        def excepthook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
            fatal = not issubclass(exc_type, KeyboardInterrupt) and not _interactive()
            _record(ring, (exc_type, exc, tb), "", 50)
            if fatal:
                keep_at_exit()  # the collector dumps the death: the arena holds why
            previous_sys(exc_type, exc, tb)

        def thread_excepthook(args: Any) -> None:
            if args.exc_type is not SystemExit:
                thread = args.thread
                name = thread.name if thread is not None else str(threading.get_ident())
                exc = (args.exc_type, args.exc_value, args.exc_traceback)
                _record(ring, exc, f"Exception in thread {name}:\n", 40)
            previous_thread(args)

        sys.excepthook = excepthook
        threading.excepthook = thread_excepthook
        _state.ring = ring
        return ring


def _interactive() -> bool:
    return hasattr(sys, "ps1") or bool(sys.flags.interactive)


def _record(
    ring: PersistentRing,
    exc: tuple[type[BaseException], BaseException | None, TracebackType | None],
    head: str,
    level: int,
) -> None:
    try:
        import traceback

        text = head + "".join(traceback.format_exception(*exc))
        ring.write(_fit(text, ring.record_size - SLOT_HEADER), level, time.time())
    except Exception:  # the previous hook still runs: never lose the user's traceback to ours
        log.debug("could not record the uncaught exception", exc_info=True)


def _fit(text: str, room: int) -> str:
    """``text`` in at most ``room`` UTF-8 bytes: a traceback too long for its record keeps its first
    lines and, above all, its last ones (the exception itself, where it was raised), with the middle
    left out and said so. (The ring would keep only the start.)"""
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= room:
        return text
    head = data[: room // 4]
    head = head[: head.rfind(b"\n") + 1] or head
    tail = data[len(data) - (room - len(head) - 64) :]
    newline = tail.find(b"\n")
    if 0 <= newline < len(tail) - 1:
        tail = tail[newline + 1 :]
    note = f"  ... ({len(data) - len(head) - len(tail)} bytes of the traceback left out) ...\n"
    return head.decode("utf-8", "ignore") + note + tail.decode("utf-8", "ignore")


def _after_fork_in_child() -> None:
    if _state.file is not None:
        _restore_faulthandler()  # never the parent's file
        with contextlib.suppress(OSError):
            _state.file.close()
        _state.file = _state.path = None


os.register_at_fork(after_in_child=_after_fork_in_child)
