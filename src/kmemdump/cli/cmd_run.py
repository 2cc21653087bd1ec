"""Run a command under a collector: dump it when it hangs or dies; exit with its exit code.

A Python program needs no change: kmemdump starts inside it through a start-up hook that run puts on
the command's PYTHONPATH (registering the banner and the Python layout, publishing a table, and
feeding the watchdog from a background thread). That thread beats only while some other thread of
the program gets somewhere, so an unmodified program is dumped when every thread is stuck waiting on
a lock (a deadlock), on whole-process stalls (SIGSTOP, a native call that holds the GIL) and on
crashes; not on a pure-Python livelock. A program that arms its own watchdog
(kmemdump.init(watchdog=S)) and calls kmemdump.feed() from its main loop is judged by its own
heartbeat and timeout: the feeder stops, and run says which timeout is in force. The program's table
is in the default table directory, where `kmemdump dump PID`, `ps` and `watch` find it (a `watch`
leaves it to run).

With --trace-exit the supervisor also traces the command (ptrace): the command stops at its exit
with its memory still mapped, whatever ends it (SIGKILL included), and its death dump is read from
that memory instead of recording the ordinary regions as gone.

Options go before '--'.
"""

from __future__ import annotations

import argparse
import os
import sys

from kmemdump.cli.options import add_dump_options
from kmemdump.cli.options import dump_options
from kmemdump.cli.options import seconds
from kmemdump.collector.watch import AFTER_HANG
from kmemdump.collector.watch import Event

__all__ = ["EPILOG", "prepare", "run"]

EPILOG = """\
exit status: the command's (128 + N when signal N ended it); 127 the command cannot be started;
1 kmemdump cannot watch it (e.g. the dump directory cannot be made); 2 bad usage
"""


def _capacity(text: str) -> int:
    from kmemdump.formats.table import MAX_CAPACITY

    if not (text.isascii() and text.isdigit()) or not 0 < int(text) <= MAX_CAPACITY:
        raise argparse.ArgumentTypeError(f"not a number of slots between 1 and {MAX_CAPACITY}: {text!r}")
    return int(text)


def prepare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=seconds,
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
        help="start kmemdump inside the command without the feeder thread: the program feeds the "
        "watchdog itself",
    )
    parser.add_argument(
        "--no-deadlock-check",
        dest="deadlock_check",
        action="store_false",
        help="the feeder beats even while every thread of the program waits on a lock (catches only "
        "whole-process stalls; for a program that idles waiting on locks for longer than --timeout)",
    )
    parser.add_argument(
        "--trace-exit",
        action="store_true",
        help="trace the command (ptrace) so that it stops at its exit with its memory still mapped: a "
        "death dump (even after SIGKILL) then holds every region; gdb, strace and blocking py-spy "
        "cannot attach meanwhile",
    )
    parser.add_argument(
        "--faulthandler",
        action="store_true",
        help="start kmemdump inside the command with init(faulthandler=True): a crash's Python "
        "traceback goes into the dump",
    )
    parser.add_argument(
        "--excepthook",
        action="store_true",
        help="start kmemdump inside the command with init(excepthook=True): an uncaught exception is "
        "recorded, and run says why the command exited with status 1",
    )
    parser.add_argument(
        "--capacity",
        type=_capacity,
        default=None,
        metavar="N",
        help="start kmemdump inside the command with init(capacity=N): the registry's slots (default "
        "201); a program that calls kmemdump.init(capacity=N) itself needs the same N here (its init "
        "raises otherwise)",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="log only dumps and errors")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...")


def run(args: argparse.Namespace) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        print("kmemdump run: no command given (kmemdump run [options] -- CMD ...)", file=sys.stderr)
        return 2
    from kmemdump.collector.supervise import SuperviseOptions
    from kmemdump.collector.supervise import supervise

    for wanted, variable in (
        (args.faulthandler, "KMEMDUMP_FAULTHANDLER"),
        (args.excepthook, "KMEMDUMP_EXCEPTHOOK"),
    ):
        if wanted:  # read by the start-up hook in the command (docs/integrations.md)
            os.environ[variable] = "1"
    if args.capacity is not None:
        os.environ["KMEMDUMP_CAPACITY"] = str(args.capacity)

    options = SuperviseOptions(
        dump=dump_options(args),
        timeout=args.timeout,
        after_hang=args.after_hang,
        autoinit=args.autoinit,
        feeder=args.feeder,
        deadlock_check=args.deadlock_check,
        trace_exit=args.trace_exit,
    )

    def on_event(event: Event) -> None:
        if not args.quiet or event.kind in ("hang", "death", "error"):
            print(f"kmemdump: {event.line()}", file=sys.stderr, flush=True)
        if event.kind == "death" and event.dump is not None:
            from kmemdump.cli.records import death_summary

            for line in death_summary(event.dump.path):  # why, in the program's own words
                print(f"kmemdump: {line}", file=sys.stderr, flush=True)

    def warn(message: str) -> None:
        print(f"kmemdump run: {message}", file=sys.stderr)

    try:
        return supervise(cmd, options, on_event=on_event, warn=warn)
    except OSError as err:
        print(f"kmemdump run: cannot start {cmd[0]}: {err}", file=sys.stderr)
        return 127
