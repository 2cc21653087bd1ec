"""Run a command under a collector: dump it when it hangs or dies; exit with its exit code.

A Python program needs no change: kmemdump starts inside it through a sitecustomize hook
(registering the banner and the Python layout, publishing a table, and feeding the watchdog from
a background thread). That thread keeps beating while Python code runs, so an unmodified program
is dumped on whole-process stalls (SIGSTOP, a native call that holds the GIL, a deadlock of every
thread, a crash) but not on a pure-Python livelock; a program that calls kmemdump.feed() from its
main loop (with --no-feeder) is dumped on any application hang.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import FrameType

from kmemdump.collector.watch import AFTER_HANG
from kmemdump.collector.watch import Event
from kmemdump.collector.watch import Watcher

from .options import add_dump_options
from .options import dump_options

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
    parser.add_argument("--quiet", "-q", action="store_true", help="log only dumps and errors")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...")


def autoinit_env(env: dict[str, str], table_dir: Path, timeout: float | None, feeder: bool) -> dict[str, str]:
    """The environment that makes a Python child start kmemdump by itself."""
    import kmemdump

    hook = str(Path(__file__).resolve().parent.parent / "autoinit")
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

        def forward(signum: int, frame: FrameType | None) -> None:
            child.send_signal(signum)

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
        try:
            watcher.scan()
            while not _exited(child.pid):
                watcher.step()
            watcher.scan()  # a table published just before the end is still seen (the child is a zombie)
            while watcher.targets:
                watcher.step()
        finally:
            watcher.close()
        status = child.wait()
    return status if status >= 0 else 128 - status
