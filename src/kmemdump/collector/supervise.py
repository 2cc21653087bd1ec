"""Supervising one command: start it, watch its table, dump it when it hangs or dies, return its status.

The command runs as this process's child with a private table directory. A Python program needs no
change: kmemdump starts inside it through a sitecustomize hook (:func:`autoinit_env`). With
``trace_exit`` this process also becomes the child's ptrace tracer (:mod:`kmemdump.collector.tracer`):
the child stops at its exit with its memory still mapped, whatever ends it (SIGKILL included), and
its death dump is read from that memory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from kmemdump.collector.dump import DumpOptions
from kmemdump.collector.dump import ExitHold
from kmemdump.collector.exits import waited_death
from kmemdump.collector.staging import Staging
from kmemdump.collector.tracer import ExitTracer
from kmemdump.collector.tracer import tracer_pid
from kmemdump.collector.watch import Event
from kmemdump.collector.watch import Watcher
from kmemdump.errors import AccessDeniedError
from kmemdump.errors import KmemdumpError
from kmemdump.formats.table import default_dir
from kmemdump.record import frozen

__all__ = ["SuperviseOptions", "autoinit_env", "supervise"]


@frozen
class SuperviseOptions:
    """How to supervise: the watchdog, what to do after a hang, how kmemdump gets into the command."""

    dump: DumpOptions
    timeout: float | None = 5.0
    after_hang: str = "leave"
    autoinit: bool = True
    feeder: bool = True
    deadlock_check: bool = True
    """The feeder beats only while some thread of the program gets somewhere (see producer.progress)."""
    trace_exit: bool = False


def autoinit_env(
    env: dict[str, str], table_dir: Path, timeout: float | None, feeder: bool, deadlock_check: bool = True
) -> dict[str, str]:
    """The environment that makes a Python child start kmemdump by itself."""
    package = Path(__file__).resolve().parent.parent
    hook = str(package / "autoinit")
    source = str(package.parent)
    env = dict(env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (hook, env.get("PYTHONPATH", "")) if p)
    env["KMEMDUMP_AUTOINIT"] = "1"
    env["KMEMDUMP_SRC"] = source
    env["KMEMDUMP_SUPERVISOR"] = str(os.getpid())
    env["KMEMDUMP_DIR"] = str(table_dir)
    if timeout and feeder:
        env["KMEMDUMP_WATCHDOG"] = repr(timeout)
        env["KMEMDUMP_FEEDER"] = "progress" if deadlock_check else "always"
    return env


def _exited(pid: int) -> bool:
    """Whether the child has ended, without reaping it (its pid and /proc entry stay valid)."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    return info is not None


def _start_tracer(pid: int, warn: Callable[[str], None]) -> ExitTracer | None:
    """Trace the child, or say in one line why not (and go on without)."""
    tracer = ExitTracer(pid)
    try:
        tracer.start()
    except KmemdumpError as err:
        if not _exited(pid):  # a command that ended at once needs no explanation
            hint = " (Yama ptrace_scope, a seccomp filter or a missing CAP_SYS_PTRACE)"
            why = f"{err}{hint if isinstance(err, AccessDeniedError) else ''}"
            warn(f"--trace-exit unavailable: {why}; supervising without it")
        return None
    return tracer


def _signal_sender(child: subprocess.Popen[bytes]) -> tuple[Callable[[int], None], int]:
    """Send signals through a pidfd, never ``Popen.send_signal``: that polls the child first, which
    reaps a child that just ended (the supervisor's own ``waitid`` then finds no child), and with a
    tracer, a wait from this thread would take the tracer's stop reports. The pidfd stays open as
    long as the signal handlers that use it (for the rest of the process); it is returned too, to
    wake the supervising loop when the child ends."""
    pidfd = os.pidfd_open(child.pid)

    def send(signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signum)

    return send, pidfd


def _supervise_traced(
    watcher: Watcher, tracer: ExitTracer, notice: _OwnWatchdogNotice, staging: _Reserve
) -> int | None:
    """Watch the traced child until the tracer reaps it; its wait status, or None if the tracer gave up.

    The loop sleeps in the watcher's ``poll``, which the tracer wakes the moment the child stops at
    its exit: the death dump starts within a fraction of a millisecond. After a fatal signal the
    tracer made a shadow that keeps the child's memory (:mod:`.shadow`): the child goes as soon as
    its threads and mappings are looked at, and the regions are read from the shadow. After other
    deaths the regions are copied into memory touched ahead of time, then the child goes. The file
    is written last either way.
    """
    while True:
        stop = tracer.poll_exit()
        if stop is not None:
            try:
                death = stop.death()
                why = f"process exiting ({death.describe()}); read at its exit stop"
                hold = ExitHold(
                    tracer.resume,
                    since=stop.since,
                    staging=staging.memory,
                    shadow=stop.shadow,
                    drop_shadow=tracer.drop_shadow,
                )
                watcher.dump_held(stop.pid, why, stop.registers, death=death, exit_hold=hold)
            finally:
                tracer.resume()
                tracer.drop_shadow()
        execd = tracer.poll_exec()
        if execd is not None:
            try:  # held before its new program runs: the old one's table goes before a new one comes
                watcher.program_replaced(execd.pid)
            finally:
                tracer.resume()
        if tracer.done:
            return tracer.status
        watcher.step()
        notice.check(watcher)
        staging.update(watcher)


_STAGING_LIMIT = 1 << 30
"""Staging memory kept for a child without a dump budget, at most."""


class _Reserve:
    """Keeps :class:`Staging` memory touched for as many bytes as the child registers (up to the
    dump budget), so that its death dump copies into memory that costs no page faults."""

    def __init__(self, pid: int, options: DumpOptions) -> None:
        self.pid = pid
        self.max_region = options.max_region
        self.memory = Staging(options.budget or _STAGING_LIMIT)
        self._seen: object = None

    def update(self, watcher: Watcher) -> None:
        target = next((t for t in watcher.targets.values() if t.pid == self.pid), None)
        snapshot = None if target is None else target.snapshot
        if snapshot is None or snapshot is self._seen:
            return
        self._seen = snapshot
        self.memory.reserve(sum(min(entry.size, self.max_region) for entry in snapshot.entries))


class _OwnWatchdogNotice:
    """Says once which watchdog timeout is in force when the program arms its own.

    A program that arms its own watchdog (``kmemdump.init(watchdog=S)``, ``kmemdump.watchdog(S)``)
    feeds it itself: the feeder the autoinit hook started on its behalf stops (the table's
    ``FEEDER`` flag goes), and the program's timeout replaces ``--timeout``.
    """

    def __init__(self, pid: int, timeout: float | None, warn: Callable[[str], None]) -> None:
        self.pid = pid
        self.timeout = timeout
        self.warn = warn
        self.said = False
        self._next = 0.0

    def check(self, watcher: Watcher) -> None:
        now = time.monotonic()
        if self.said or now < self._next:
            return
        self._next = now + 0.2
        target = next((t for t in watcher.targets.values() if t.pid == self.pid), None)
        if target is None:
            return
        try:
            reader = target.open()
            if reader is None:
                return
            with reader:
                header = reader.header()
        except (KmemdumpError, OSError):
            return
        if header.feeder or not header.watchdog_timeout_ns:
            return
        self.said = True
        seconds = header.watchdog_timeout_ns / 1e9
        instead = (
            "" if self.timeout is None or self.timeout == seconds else f", not --timeout {self.timeout:g}"
        )
        self.warn(
            f"pid {self.pid} arms its own watchdog and feeds it itself: its timeout {seconds:g} s is in force"
            f"{instead}"
        )


def _until_untraced(pid: int, timeout: float = 5.0) -> None:
    """After the tracer thread ended, wait (bounded) until the kernel shows the child detached: a
    wait for a child still traced by this process would report tracing stops, not its exit."""
    deadline = time.monotonic() + timeout
    while tracer_pid(pid) not in (0, None) and time.monotonic() < deadline:
        time.sleep(0.001)


def supervise(
    cmd: Sequence[str],
    options: SuperviseOptions,
    *,
    on_event: Callable[[Event], None],
    warn: Callable[[str], None],
) -> int:
    """Run ``cmd`` under a collector until it ends; its exit code (128 + N for a signal N).

    Raises ``OSError`` when the command cannot be started. SIGINT, SIGTERM and SIGHUP received
    meanwhile are passed on to the command.
    """
    table_dir = Path(default_dir())  # where `watch`, `ps` and `dump PID` find the program too
    env = dict(os.environ)
    env["KMEMDUMP_DIR"] = str(table_dir)
    if options.autoinit:
        env = autoinit_env(env, table_dir, options.timeout, options.feeder, options.deadlock_check)
    child = subprocess.Popen(list(cmd), env=env)
    tracer = _start_tracer(child.pid, warn) if options.trace_exit else None
    send, child_fd = _signal_sender(child)

    def forward(signum: int, frame: FrameType | None) -> None:
        send(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)

    watcher = Watcher(
        [table_dir],
        options.dump,
        after_hang=options.after_hang,
        on_event=on_event,
        only_pid=child.pid,
        death_of=None if tracer is not None else waited_death,
        exit_events=False,  # the parent learns the status itself
        max_sleep=0.25,  # one table, read 4 times a second: the staging reserve follows its regions
    )
    notice = _OwnWatchdogNotice(child.pid, options.timeout if options.feeder else None, warn)
    # the loop sleeps in poll, woken by the tracer (an exit stop, its end) or else by the child's end
    watcher.wake_on(tracer.fileno() if tracer is not None else child_fd)
    reserve = _Reserve(child.pid, options.dump)
    traced_status: int | None = None
    try:
        watcher.scan()
        if tracer is not None:
            traced_status = _supervise_traced(watcher, tracer, notice, reserve)
            if traced_status is None:
                warn(f"--trace-exit stopped ({tracer.failure}); supervising without it")
                _until_untraced(child.pid)
                watcher.wake_on(child_fd)
                watcher.death_of = waited_death
        if traced_status is None:
            while not _exited(child.pid):
                watcher.step()
                notice.check(watcher)
        watcher.scan()  # a table published just before the end is still seen (the child is a zombie)
        while watcher.targets:
            watcher.step()
    finally:
        if tracer is not None:
            tracer.close()
        watcher.close()
        reserve.memory.close()
    if traced_status is not None:
        child.returncode = os.waitstatus_to_exitcode(traced_status)  # the tracer reaped it
    status = child.wait()
    return status if status >= 0 else 128 - status
