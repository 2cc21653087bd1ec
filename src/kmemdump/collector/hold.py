"""Holding a target still while it is copied, by a hold that cannot outlive the collector.

The hold is a ptrace one: every thread is seized (``PTRACE_SEIZE``: no signal, no stop, job
control untouched), interrupted (``PTRACE_INTERRUPT``) and waited for until it sits in a ptrace
stop. Releasing detaches each thread, passing on any signal that arrived meanwhile. If the
collector dies while holding, SIGKILL included, the kernel detaches its tracees and they run again:
nothing is left stopped. A process that was stopped already (SIGSTOP, Ctrl-Z) stays stopped.

Where ptrace is refused (the process has a tracer already, such as the supervisor of ``kmemdump run
--trace-exit``, gdb or strace; Yama; a collector without the right) the hold falls back to SIGSTOP
and SIGCONT. A SIGSTOP survives its sender, so before sending it a *recovery record* is written in
the dump directory, a hidden empty file whose name carries the collector's and the target's
``(pid, start time)``; it is removed after the SIGCONT. :func:`recover`, run when a collector
starts, continues every target whose record was left by a collector that is no longer alive, and
removes the temporary files (``.kmemdump-*.tmp``) dead collectors left behind.

    with hold(process, records=dump_dir) as held:
        held.method              # "ptrace", "SIGSTOP", or "" (someone else's stop, left as found)
        held.tids                # the threads held
        held.ptrace_stopped(tid) # True: its registers can be read (PTRACE_GETREGS)

All ptrace requests of one hold must come from the thread that took it (the kernel's rule): take,
use and release a hold on one thread. :func:`tidy` retries the detach of threads that had not
stopped yet when their hold was released (a thread deep in an uninterruptible sleep); the watcher
calls it on every step.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable
from types import TracebackType

from kmemdump.collector.authority import ProcessHandle
from kmemdump.collector.corewriter import parse_temp_name
from kmemdump.collector.ptrace import ptrace_request
from kmemdump.errors import KmemdumpError
from kmemdump.errors import ProcessGoneError
from kmemdump.formats.dumpmeta import Held
from kmemdump.procinfo import process_start_time
from kmemdump.procinfo import self_start_time
from kmemdump.record import field
from kmemdump.record import frozen
from kmemdump.record import mutable

__all__ = [
    "RECORD_PREFIX",
    "HeldThread",
    "Hold",
    "hold",
    "not_held",
    "parse_record_name",
    "pending",
    "record_name",
    "recover",
    "tidy",
]

PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_DETACH = 17
_WALL = 0x40000000
_GONE_CODES = frozenset({os.CLD_EXITED, os.CLD_KILLED, os.CLD_DUMPED})
_STOPPED_STATES = frozenset({"T", "t", "Z", "X", None})
_SETTLE_S = 1.0
"""How long a hold waits for every thread to stop (a thread in an uninterruptible sleep stops late)."""

RECORD_PREFIX = ".kmemdump-hold."
"""Recovery records: ``.kmemdump-hold.<collector pid>-<its start>.<target pid>-<its start>``."""


@frozen
class HeldThread:
    tid: int
    ptrace_stopped: bool
    """The thread sits in a ptrace stop of this hold: its registers can be read, from the thread
    that took the hold, until :meth:`Hold.release`."""


@mutable
class _Seized:
    stopped: bool = False
    gone: bool = False
    signal: int = 0
    """A signal the thread was stopped for (a signal-delivery stop): passed on at the detach."""


@mutable
class _Straggler:
    pid: int
    parent_is_us: bool
    state: _Seized = field(default_factory=_Seized)


_stragglers: dict[int, _Straggler] = {}
"""Seized threads whose release found them not stopped yet; :func:`tidy` detaches them later."""


class Hold:
    """A process held still (or not: see :attr:`method`); release it with :meth:`release`."""

    def __init__(
        self,
        pid: int,
        method: Held,
        *,
        process: ProcessHandle | None = None,
        seized: dict[int, _Seized] | None = None,
        tids: tuple[int, ...] = (),
        record: tuple[int, str] | None = None,
        parent_is_us: bool = False,
        sent_stop: bool = False,
    ) -> None:
        self.pid = pid
        self._sent_stop = sent_stop
        self._parent_is_us = parent_is_us
        self.method: Held = method
        self._process = process
        self._seized = seized if seized is not None else {}
        self._tids = tuple(sorted(self._seized)) if seized is not None else tids
        self._record = record  # (directory fd, name) of the recovery record of a SIGSTOP hold
        self._released = False

    @property
    def threads(self) -> tuple[HeldThread, ...]:
        """Each thread of the process as the hold found it."""
        return tuple(HeldThread(tid, self.ptrace_stopped(tid)) for tid in self._tids)

    @property
    def tids(self) -> tuple[int, ...]:
        return self._tids

    @property
    def stopped(self) -> bool:
        """The process is held still (by this hold, or by an exit stop someone else holds)."""
        return self.method != ""

    def ptrace_stopped(self, tid: int) -> bool:
        state = self._seized.get(tid)
        return bool(state and state.stopped and not state.gone and not self._released)

    def release(self) -> None:
        """Let the process run again (as it was before: a process stopped before stays stopped)."""
        if self._released:
            return
        self._released = True
        if self.method == "ptrace":
            _release_all(self.pid, dict(self._seized), self._parent_is_us)
        elif (self.method == "SIGSTOP" or self._sent_stop) and self._process is not None:
            import signal  # loaded only where a signal is sent (a ptrace hold sends none)

            self._process.send_signal(signal.SIGCONT)
        if self._record is not None:
            dir_fd, name = self._record
            try:
                os.unlink(name, dir_fd=dir_fd)
            except OSError:
                pass
            os.close(dir_fd)
            self._record = None

    def __enter__(self) -> Hold:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Hold(pid={self.pid}, method={self.method!r}, threads={len(self._tids)})"


def not_held(pid: int, method: Held = "") -> Hold:
    """A hold that holds nothing: ``method`` says who does (``"exit stop"``), or nobody (``""``)."""
    return Hold(pid, method)


def hold(
    process: ProcessHandle,
    *,
    records: str | os.PathLike[str] | None = None,
    use_ptrace: bool = True,
    settle: float = _SETTLE_S,
) -> Hold:
    """Hold ``process`` still: with ptrace, else with SIGSTOP and a recovery record in ``records``.

    Raises :class:`ProcessGoneError` when the process ended before it could be held.
    """
    tidy()
    if use_ptrace:
        held = _hold_ptrace(process, settle)
        if held is not None:
            return held
    return _hold_sigstop(process, records, settle)


# --- ptrace ---------------------------------------------------------------------------------------


def _hold_ptrace(process: ProcessHandle, settle: float) -> Hold | None:
    """The ptrace hold; None when the kernel refuses it (then nothing is seized)."""
    seized: dict[int, _Seized] = {}
    deadline = time.monotonic() + settle
    parent_is_us = _parent_is_us(process)
    try:
        for _ in range(64):  # threads started meanwhile by threads not stopped yet; bounded
            new = [tid for tid in process.tids() if tid not in seized]
            if not new:
                break
            for tid in new:
                try:
                    ptrace_request(PTRACE_SEIZE, tid, 0, 0)
                except ProcessLookupError:
                    continue  # it ended
                except OSError:
                    _release_all(process.pid, seized, parent_is_us)  # traced already, or not allowed
                    return None
                seized[tid] = _Seized()
                try:
                    ptrace_request(PTRACE_INTERRUPT, tid, 0, 0)
                except ProcessLookupError:
                    pass
            _wait_for_stops(process.pid, seized, deadline)
        if not seized or not process.alive():
            raise ProcessGoneError(f"process {process.pid} is gone", pid=process.pid)
        # a tid listed just before its thread ended may since name a thread of another process
        ours = set(process.tids())
        strangers = {tid: seized.pop(tid) for tid in list(seized) if tid not in ours and not seized[tid].gone}
        _release_all(process.pid, strangers, parent_is_us)
    except BaseException:
        _release_all(process.pid, seized, parent_is_us)
        raise
    return Hold(process.pid, "ptrace", process=process, seized=seized, parent_is_us=parent_is_us)


def _wait_for_stops(pid: int, seized: dict[int, _Seized], deadline: float) -> None:
    while True:
        pending = [tid for tid, state in seized.items() if not (state.stopped or state.gone)]
        for tid in pending:
            _poll(pid, tid, seized[tid], parent_is_us=True, reap=False)
        if all(state.stopped or state.gone for state in seized.values()) or time.monotonic() >= deadline:
            return
        time.sleep(0.0002)


def _poll(pid: int, tid: int, state: _Seized, *, parent_is_us: bool, reap: bool) -> None:
    """Take one pending report of a seized thread: its stop, or its end (reaped only when ``reap``;
    see :func:`_reap`)."""
    try:
        info = os.waitid(os.P_PID, tid, os.WEXITED | os.WSTOPPED | os.WNOHANG | os.WNOWAIT | _WALL)
    except ChildProcessError:
        state.gone = True
        return
    if info is None:
        return
    if info.si_code in _GONE_CODES:
        state.gone = True
        if reap:
            _reap(pid, tid, parent_is_us)
        return
    got, status = os.waitpid(tid, os.WNOHANG | _WALL)
    if got == 0:
        return
    if os.WIFSTOPPED(status):
        state.stopped = True
        if status >> 16 == 0:  # a signal-delivery stop: the signal is passed on at the detach
            state.signal = os.WSTOPSIG(status)
    else:
        state.gone = True


def _reap(pid: int, tid: int, parent_is_us: bool) -> bool:
    """Take the end report of a traced thread that ended (a traced thread stays a zombie until its
    tracer takes it, and its process cannot end before); True once there is nothing left to take.

    The leader's end belongs to its parent when that is this process (``kmemdump run``): it is left
    for the parent's own wait.
    """
    if tid == pid and parent_is_us:
        return True
    try:
        info = os.waitid(os.P_PID, tid, os.WEXITED | os.WSTOPPED | os.WNOHANG | os.WNOWAIT | _WALL)
    except ChildProcessError:
        return True
    if info is None:
        return False
    try:
        os.waitpid(tid, os.WNOHANG | _WALL)
    except ChildProcessError:
        pass
    return info.si_code in _GONE_CODES


def _detach(pid: int, tid: int, state: _Seized, parent_is_us: bool) -> bool:
    """Let one thread go; False when it must be looked at again (it is still ending, or has not
    stopped yet and cannot be detached before it does)."""
    if not state.gone and not state.stopped:
        # a thread must sit in a ptrace stop to be detached: give a late one a moment
        deadline = time.monotonic() + _SETTLE_S
        while not (state.stopped or state.gone) and time.monotonic() < deadline:
            _poll(pid, tid, state, parent_is_us=parent_is_us, reap=False)
            if not (state.stopped or state.gone):
                time.sleep(0.0005)
        if not (state.stopped or state.gone):
            return False
    if not state.gone:
        try:
            ptrace_request(PTRACE_DETACH, tid, 0, state.signal)
        except ProcessLookupError:
            state.gone = True  # killed meanwhile (SIGKILL ends a stopped tracee): take its end below
        except OSError:
            return True
        else:
            return True
    return _reap(pid, tid, parent_is_us)


def _release_all(pid: int, seized: dict[int, _Seized], parent_is_us: bool) -> None:
    pending = [tid for tid, state in seized.items() if not _detach(pid, tid, state, parent_is_us)]
    deadline = time.monotonic() + _SETTLE_S
    while pending and time.monotonic() < deadline:
        time.sleep(0.0005)
        pending = [tid for tid in pending if not _retry(pid, tid, seized[tid], parent_is_us)]
    for tid in pending:
        _stragglers[tid] = _Straggler(pid, parent_is_us, seized[tid])
    seized.clear()


def _retry(pid: int, tid: int, state: _Seized, parent_is_us: bool) -> bool:
    if state.gone:
        return _reap(pid, tid, parent_is_us)
    _poll(pid, tid, state, parent_is_us=parent_is_us, reap=False)
    return _detach(pid, tid, state, parent_is_us) if (state.stopped or state.gone) else False


def _parent_is_us(process: ProcessHandle | None) -> bool:
    if process is None:
        return False
    try:
        stat_line = process.read(b"stat")
    except (KmemdumpError, OSError):
        return False
    fields = stat_line[stat_line.rfind(b")") + 1 :].split()
    return len(fields) > 1 and fields[1].isdigit() and int(fields[1]) == os.getpid()


def pending() -> bool:
    """Whether some release waits for :func:`tidy` (a loop calling it should not sleep long)."""
    return bool(_stragglers)


def tidy() -> None:
    """Finish the releases that could not finish at once: detach threads that have stopped since,
    take the end reports of threads that were ending."""
    for tid, straggler in list(_stragglers.items()):
        if _retry(straggler.pid, tid, straggler.state, straggler.parent_is_us):
            del _stragglers[tid]


# --- SIGSTOP, with a recovery record ------------------------------------------------------------------


def _hold_sigstop(process: ProcessHandle, records: str | os.PathLike[str] | None, settle: float) -> Hold:
    if _all_stopped(process):
        return Hold(process.pid, "", process=process, tids=tuple(process.tids()))  # someone else's stop
    import signal  # loaded only where a signal is sent (a ptrace hold sends none)

    record = _write_record(records, process) if records is not None else None
    if not process.send_signal(signal.SIGSTOP):
        if record is not None:
            try:
                os.unlink(record[1], dir_fd=record[0])
            except OSError:
                pass
            os.close(record[0])
        raise ProcessGoneError(f"process {process.pid} is gone", pid=process.pid)
    deadline = time.monotonic() + settle
    while not (stopped := _all_stopped(process)) and time.monotonic() < deadline:
        time.sleep(0.0005)  # the kernel parks the threads one by one; bounded
    # a stop that did not take (swallowed by another tracer, or a thread that never parked) holds
    # nothing: said so (method ""), and still undone at the release
    method: Held = "SIGSTOP" if stopped else ""
    return Hold(
        process.pid, method, process=process, tids=tuple(process.tids()), record=record, sent_stop=True
    )


def _all_stopped(process: ProcessHandle) -> bool:
    tids = process.tids()
    return bool(tids) and all(process.thread_state(tid) in _STOPPED_STATES for tid in tids)


def record_name(collector: tuple[int, int], target: tuple[int, int]) -> str:
    return f"{RECORD_PREFIX}{collector[0]}-{collector[1]}.{target[0]}-{target[1]}"


def parse_record_name(name: str) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """``(collector, target)``, each ``(pid, start time)``, of a recovery record's name; else None."""
    if not name.startswith(RECORD_PREFIX):
        return None
    parts = name[len(RECORD_PREFIX) :].split(".")
    if len(parts) != 2:
        return None
    collector, target = _pair(parts[0]), _pair(parts[1])
    return None if collector is None or target is None else (collector, target)


def _pair(text: str) -> tuple[int, int] | None:
    first, sep, second = text.partition("-")
    if not (sep and _digits(first, 10) and _digits(second, 20)):
        return None
    pid = int(first)
    return (pid, int(second)) if 0 < pid < 2**31 else None


def _digits(text: str, longest: int) -> bool:
    return 0 < len(text) <= longest and text.isascii() and text.isdigit()


def _write_record(records: str | os.PathLike[str], process: ProcessHandle) -> tuple[int, str] | None:
    name = record_name((os.getpid(), self_start_time()), (process.pid, process.start_time))
    try:
        dir_fd = os.open(records, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fd = os.open(
            name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd
        )
        os.close(fd)
    except OSError:
        os.close(dir_fd)
        return None  # no record (a full disk): the SIGSTOP is still released at the end of the dump
    return dir_fd, name


def _alive(ident: tuple[int, int]) -> bool:
    try:
        return process_start_time(ident[0]) == ident[1]
    except (KmemdumpError, OSError):
        return False


def recover(directory: str | os.PathLike[str]) -> list[str]:
    """Undo what dead collectors left in ``directory``: SIGCONT the targets their recovery records
    name (when still alive and stopped), remove those records and their temporary dump files.

    Only regular files owned by this user are touched, and nothing of a collector still alive.
    Returns one line per thing done, for the log.
    """
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return []
    lines: list[str] = []
    report = lines.append
    try:
        for name in os.listdir(dir_fd):
            record = parse_record_name(name)
            owner = record[0] if record is not None else parse_temp_name(name)
            if owner is None or _alive(owner) or not _ours(dir_fd, name):
                continue
            if record is not None:
                _continue_left_stopped(record[1], report)
            try:
                os.unlink(name, dir_fd=dir_fd)
            except OSError as err:
                if err.errno != errno.ENOENT:
                    report(f"cannot remove {os.path.join(directory, name)}: {err.strerror}")
                continue
            if record is None:
                report(f"removed {os.path.join(directory, name)}, left by collector {owner[0]} (gone)")
    finally:
        os.close(dir_fd)
    return lines


def _ours(dir_fd: int, name: str) -> bool:
    try:
        info = os.lstat(name, dir_fd=dir_fd)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid()


def _continue_left_stopped(target: tuple[int, int], report: Callable[[str], None]) -> None:
    import signal

    try:
        with ProcessHandle.open(*target) as process:
            if _all_stopped(process) and process.send_signal(signal.SIGCONT):
                report(f"continued pid {target[0]}, left stopped by a collector that died while dumping it")
    except (KmemdumpError, OSError):
        pass  # gone, or no longer the same process
