"""Collect dumps for every process that publishes a kmemdump table.

Runs until interrupted (SIGINT/SIGTERM). One log line per event on stderr. Under systemd
(Type=notify) it reports readiness through $NOTIFY_SOCKET; see contrib/kmemdump-watch.service.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from types import FrameType

from kmemdump.cli.options import add_dump_options
from kmemdump.cli.options import add_retention_options
from kmemdump.cli.options import add_tables_option
from kmemdump.cli.options import check_table_dirs
from kmemdump.cli.options import dump_options
from kmemdump.cli.options import retention_policy
from kmemdump.cli.options import table_dirs
from kmemdump.cli.ship import add_ship_options
from kmemdump.cli.ship import start_shipper
from kmemdump.collector.watch import AFTER_HANG
from kmemdump.collector.watch import DEFAULT_MAX_DUMPS
from kmemdump.collector.watch import DEFAULT_MAX_PER_USER
from kmemdump.collector.watch import Event
from kmemdump.collector.watch import Watcher

__all__ = ["EPILOG", "prepare", "run", "sd_notify"]

EPILOG = """\
exit status: 0 after SIGINT or SIGTERM; 1 it could not start (the dump directory cannot be made);
2 bad usage (a --tables that is not a readable directory)
"""

log = logging.getLogger("kmemdump.collector")


def prepare(parser: argparse.ArgumentParser) -> None:
    add_dump_options(parser)
    add_tables_option(parser, "watch")
    parser.add_argument(
        "--after-hang",
        choices=AFTER_HANG,
        default="leave",
        help="what to do with a process once its hang is dumped (default: leave)",
    )
    parser.add_argument(
        "--max-dumps",
        type=int,
        default=DEFAULT_MAX_DUMPS,
        metavar="N",
        help="hang dumps of one process before its later stalls are only logged (default: %(default)s)",
    )
    parser.add_argument(
        "--max-per-user",
        type=int,
        default=DEFAULT_MAX_PER_USER,
        metavar="N",
        help="tables of one user watched at once; more wait their turn (default: %(default)s)",
    )
    add_retention_options(
        parser,
        count=DEFAULT_KEEP,
        size=DEFAULT_KEEP_SIZE,
        total=DEFAULT_KEEP_TOTAL_SIZE,
        hard=DEFAULT_HARD_TOTAL_SIZE,
    )
    add_ship_options(parser)


DEFAULT_KEEP = 50
DEFAULT_KEEP_SIZE = 4 << 30
DEFAULT_KEEP_TOTAL_SIZE = 16 << 30
DEFAULT_HARD_TOTAL_SIZE = 32 << 30
"""Past this, even dumps not shipped yet are removed (oldest first) in a directory that ships."""


def _raise_descriptor_limit() -> None:
    """Take the whole hard limit of descriptors (systemd's soft default is 1024): each watched table
    needs two, and the per-user limit keeps one user from taking them all."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def sd_notify(message: str) -> bool:
    """Send ``message`` to systemd's notify socket, if there is one."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError:
            return False
    return True


def run(args: argparse.Namespace) -> int:
    if args.tables:
        check_table_dirs(args.tables)
    options = dump_options(args)
    dirs = args.tables or table_dirs(all_users=os.geteuid() == 0)
    stopping = False
    # the watcher may sleep for seconds when nothing is due: a signal ends its wait through this pipe
    woken, wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        with contextlib.suppress(OSError):
            os.write(wake, b"s")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def log_line(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def on_event(event: Event) -> None:
        log_line(event.line())
        if shipper is not None and event.dump is not None:
            shipper.submit(event.dump.path)

    if args.max_dumps < 1:
        print("kmemdump watch: --max-dumps must be at least 1", file=sys.stderr)
        return 2
    shipper = start_shipper(args, Path(options.directory), log_line)
    _raise_descriptor_limit()
    watcher = Watcher(
        dirs,
        options,
        after_hang=args.after_hang,
        on_event=on_event,
        max_dumps=args.max_dumps,
        max_per_user=args.max_per_user,
        retention=retention_policy(args),
        rediscover=None if args.tables else (lambda: table_dirs(all_users=os.geteuid() == 0)),
    )
    print(
        f"watching {', '.join(str(d) for d in dirs)}; dumps go to {options.directory}",
        file=sys.stderr,
        flush=True,
    )
    watcher.wake_on(woken)
    sd_notify("READY=1\nSTATUS=watching")

    def should_stop() -> bool:  # between two steps of the watcher
        if shipper is not None and shipper.take_shipped():
            watcher.retain()  # shipped dumps may be removed now, to bring the directory within its limits
        return stopping

    try:
        watcher.run(should_stop)
    finally:
        sd_notify("STOPPING=1")
        watcher.close()
        os.close(woken)
        os.close(wake)
        if shipper is not None:
            shipper.stop()
    return 0
