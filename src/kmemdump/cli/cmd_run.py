"""Run a command under a collector: dump it when it hangs or dies; exit with its exit code.

A Python program needs no change: kmemdump starts inside it through a sitecustomize hook
(registering the banner and the Python layout, publishing a table, and feeding the watchdog from
a background thread). That thread keeps beating while Python code runs, so an unmodified program
is dumped on whole-process stalls (SIGSTOP, a native call that holds the GIL, a deadlock of every
thread, a crash) but not on a pure-Python livelock; a program that calls kmemdump.feed() from its
main loop (with --no-feeder) is dumped on any application hang.

With --trace-exit the supervisor also becomes the command's ptrace tracer
(:mod:`kmemdump.collector.tracer`): the command stops at its exit with its memory still mapped,
whatever ends it (SIGKILL included), and its death dump is read from that memory instead of
recording the ordinary regions as gone.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from kmemdump.cli.options import add_dump_options
from kmemdump.cli.options import dump_options
from kmemdump.collector.tracer import ExitTracer
from kmemdump.collector.tracer import tracer_pid
from kmemdump.collector.watch import AFTER_HANG
from kmemdump.collector.watch import Event
from kmemdump.collector.watch import Watcher
from kmemdump.errors import AccessDeniedError
from kmemdump.errors import KmemdumpError

__all__ = ["autoinit_env", "prepare", "run"]


def prepare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="watchdog timeout in seconds (default: %(default)s)",
    )
    add_dump_options(parser)
    parser.add_argument(
        "--after-hang",
        choices=AFTER_HANG,
        default="leave",
        help="what to do with the command once its hang is dumped (default: leave)",
    )
    parser.add_argument(
        "--no-autoinit",
        dest="autoinit",
        action="store_false",
        help="do not start kmemdump inside the command (it calls kmemdump.init itself)",
    )
    parser.add_argument(
        "--no-feeder",
        dest="feeder",
        action="store_false",
        help="autoinit without the feeder thread: the program feeds the watchdog itself",
    )
    parser.add_argument(
        "--trace-exit",
        action="store_true",
        help="trace the command (ptrace) so that it stops at its exit with its memory still mapped: a "
        "death dump (even after SIGKILL) then holds every region; gdb, strace and blocking py-spy "
        "cannot attach meanwhile",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="log only dumps and errors")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...")


def autoinit_env(env: dict[str, str], table_dir: Path, timeout: float | None, feeder: bool) -> dict[str, str]:
    """The environment that makes a Python child start kmemdump by itself."""
    import kmemdump

    hook = str(Path(__file__).resolve().parent.parent / "producer" / "autoinit")
    source = str(Path(kmemdump.__file__).resolve().parent.parent)
    env = dict(env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (hook, env.get("PYTHONPATH", "")) if p)
    env["KMEMDUMP_AUTOINIT"] = "1"
    env["KMEMDUMP_SRC"] = source
    env["KMEMDUMP_DIR"] = str(table_dir)
    if timeout and feeder:
        env["KMEMDUMP_WATCHDOG"] = repr(timeout)
    return env


def _exited(pid: int) -> bool:
    """Whether the child has ended, without reaping it (its pid and /proc entry stay valid)."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    return info is not None


def _start_tracer(pid: int) -> ExitTracer | None:
    """Trace the child, or say in one line why not (and go on without)."""
    tracer = ExitTracer(pid)
    try:
        tracer.start()
    except KmemdumpError as err:
        if not _exited(pid):  # a command that ended at once needs no explanation
            hint = " (Yama ptrace_scope, a seccomp filter or a missing CAP_SYS_PTRACE)"
            why = f"{err}{hint if isinstance(err, AccessDeniedError) else ''}"
            print(f"kmemdump run: --trace-exit unavailable: {why}; supervising without it", file=sys.stderr)
        return None
    return tracer


def _signal_sender(child: subprocess.Popen[bytes]) -> Callable[[int], None]:
    """Send signals through a pidfd: ``Popen.send_signal`` waits for the child first, and a wait
    from this thread would take the tracer's stop reports. The pidfd stays open as long as the
    signal handlers that use it (for the rest of the process)."""
    pidfd = os.pidfd_open(child.pid)

    def send(signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signum)

    return send


def _supervise_traced(watcher: Watcher, tracer: ExitTracer) -> int | None:
    """Watch the traced child until the tracer reaps it; its wait status, or None if the tracer gave up."""
    while True:
        stop = tracer.poll_exit()
        if stop is not None:
            try:
                watcher.dump_held(stop.pid, f"process exiting ({stop.describe()}); read at its exit stop")
            finally:
                tracer.resume()
        if tracer.done:
            return tracer.status
        watcher.step()


def _until_untraced(pid: int, timeout: float = 5.0) -> None:
    """After the tracer thread ended, wait (bounded) until the kernel shows the child detached: a
    wait for a child still traced by this process would report tracing stops, not its exit."""
    deadline = time.monotonic() + timeout
    while tracer_pid(pid) not in (0, None) and time.monotonic() < deadline:
        time.sleep(0.001)


def run(args: argparse.Namespace) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        print("kmemdump run: no command given (kmemdump run [options] -- CMD ...)", file=sys.stderr)
        return 2
    options = dump_options(args)
    with tempfile.TemporaryDirectory(prefix="kmemdump-run-") as tables:
        table_dir = Path(tables)
        table_dir.chmod(0o700)
        env = dict(os.environ)
        env["KMEMDUMP_DIR"] = str(table_dir)
        if args.autoinit:
            env = autoinit_env(env, table_dir, args.timeout, args.feeder)
        try:
            child = subprocess.Popen(cmd, env=env)
        except OSError as err:
            print(f"kmemdump run: cannot start {cmd[0]}: {err}", file=sys.stderr)
            return 127
        tracer = _start_tracer(child.pid) if args.trace_exit else None
        send = _signal_sender(child) if tracer is not None else child.send_signal

        def forward(signum: int, frame: FrameType | None) -> None:
            send(signum)

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, forward)

        def on_event(event: Event) -> None:
            if not args.quiet or event.kind in ("hang", "death", "error"):
                print(f"kmemdump: {event.line()}", file=sys.stderr, flush=True)

        watcher = Watcher(
            [table_dir],
            options,
            after_hang=args.after_hang,
            on_event=on_event,
            only_pid=child.pid,
            max_sleep=0.05,
        )
        traced_status: int | None = None
        try:
            watcher.scan()
            if tracer is not None:
                traced_status = _supervise_traced(watcher, tracer)
                if traced_status is None:
                    print(
                        f"kmemdump run: --trace-exit stopped ({tracer.failure}); supervising without it",
                        file=sys.stderr,
                    )
                    _until_untraced(child.pid)
            if traced_status is None:
                while not _exited(child.pid):
                    watcher.step()
            watcher.scan()  # a table published just before the end is still seen (the child is a zombie)
            while watcher.targets:
                watcher.step()
        finally:
            if tracer is not None:
                tracer.close()
            watcher.close()
        if traced_status is not None:
            child.returncode = os.waitstatus_to_exitcode(traced_status)  # the tracer reaped it
        status = child.wait()
    return status if status >= 0 else 128 - status
