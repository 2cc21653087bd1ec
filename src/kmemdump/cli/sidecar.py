"""``python -m kmemdump.cli.sidecar``: a collector for one process, reporting to it on a pipe.

The pytest plugin (:mod:`kmemdump.pytest_plugin`) starts it as its own child to watch the pytest
process: a dump must be taken from outside, since the process that hangs may be one whose every
thread is stuck. It watches the one table directory it is given for the one pid, dumps that process
when it stops feeding its watchdog (each stall once) or dies, and prints each event as one JSON line
on stdout: ``{"kind": "watch"|"hang"|"death"|"exit"|"error"|"skip", "pid": N, "message": "...",
"dump": PATH or null, "beat": N or null, "stacks": "ok" or why not, or null}``. A death is also
written to stderr, where a person sees it when the process that started it is gone, and so is a
hang dump that its process did not acknowledge (an ``ack`` line on stdin) within 10 s: a process
whose every thread is stuck cannot report it.

It ends when the process is gone, or when its stdin closes after a ``bye`` line (the process is done
with it). A stdin that closes without ``bye`` means the process that started it died (SIGKILL, a
crash, a CI's job timeout): the sidecar then waits up to :data:`DEATH_GRACE` seconds for that death,
dumps it and removes the table and arena as ``watch`` does, then ends; with ``--remove-tables-dir``
it also removes the table directory if that is left empty. Its stdout may be gone by then: events
it cannot print there are lost, the death still goes to stderr.

Dump options are ``kmemdump watch``'s (``--dir``, ``--budget``, ``--compress``, ``--no-stacks`` …).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import sys
import time
from pathlib import Path

from kmemdump.cli.options import add_dump_options
from kmemdump.cli.options import dump_options
from kmemdump.cli.options import pid_number
from kmemdump.collector.watch import Event
from kmemdump.collector.watch import Watcher
from kmemdump.errors import KmemdumpError

__all__ = ["main"]

ADOPT_TIMEOUT = 30.0
"""Seconds to wait for the process's table to appear before giving up."""
UNANSWERED = 10.0
"""Seconds after a hang dump without an ``ack`` on stdin before the dump is announced on stderr."""
DEATH_GRACE = 10.0
"""Seconds to wait for the process's death (and dump it) once stdin closed without ``bye``."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kmemdump.cli.sidecar", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--pid", type=pid_number, required=True, help="the one process to watch")
    parser.add_argument("--tables", type=Path, required=True, metavar="DIR", help="its table directory")
    parser.add_argument(
        "--remove-tables-dir",
        action="store_true",
        help="at the end, remove the table directory if it is empty (one made for this process alone)",
    )
    add_dump_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        options = dump_options(args)
    except KmemdumpError as err:
        print(f"kmemdump sidecar: {err}", file=sys.stderr)
        return 1

    def emit(event: Event) -> None:
        meta = event.dump.meta if event.dump is not None else None
        line = {
            "kind": event.kind,
            "pid": event.pid,
            "message": event.message,
            "dump": None if event.dump is None else str(event.dump.path),
            "beat": None if meta is None else meta.heartbeat,
            "stacks": None if meta is None else meta.stacks,
        }
        _say(json.dumps(line))
        if event.kind == "death":
            print(f"kmemdump: {event.line()}", file=sys.stderr, flush=True)

    hangs: list[tuple[float, str]] = []

    def emit_and_track(event: Event) -> None:
        emit(event)
        if event.kind == "hang" and event.dump is not None:
            hangs.append((time.monotonic(), event.line()))

    watcher = Watcher(
        [args.tables], options, on_event=emit_and_track, only_pid=args.pid, max_sleep=0.05, max_dumps=None
    )
    adopted = False
    started = time.monotonic()
    stdin = _Stdin(sys.stdin.fileno())
    orphaned_at: float | None = None
    try:
        watcher.scan()
        while True:
            closed, acks = stdin.poll()
            del hangs[:acks]
            if hangs and time.monotonic() - hangs[0][0] > UNANSWERED:
                # the process did not take the news (every thread stuck, the GIL held): say it here
                print(f"kmemdump: {hangs.pop(0)[1]} (unanswered)", file=sys.stderr, flush=True)
            if closed and stdin.bye:
                return 0
            if closed and orphaned_at is None:
                # no goodbye: the process that started us died (or is dying); dump its death
                orphaned_at = time.monotonic()
            if orphaned_at is not None and time.monotonic() - orphaned_at > DEATH_GRACE:
                return 0
            if watcher.targets:
                adopted = True
            elif adopted or orphaned_at is not None or time.monotonic() - started > ADOPT_TIMEOUT:
                return 0  # the process is gone (and dumped if it died), or never published
            watcher.step()
    finally:
        watcher.close()
        if args.remove_tables_dir:
            with contextlib.suppress(OSError):  # not empty: a live process's table, or not ours
                os.rmdir(args.tables)


def _say(line: str) -> None:
    """One line on stdout; once the reader is gone (it died), stdout is dropped, not an error."""
    if sys.stdout is None:
        return
    try:
        print(line, flush=True)
    except (BrokenPipeError, ValueError):
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.stdout = None


class _Stdin:
    """Our stdin: ``ack`` lines from whoever started us, and its end."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pending = b""
        self.bye = False
        """A ``bye`` line came: the process is done with us (a close after it is no death)."""

    def poll(self) -> tuple[bool, int]:
        """(closed, number of ``ack`` lines received since the last poll), without blocking."""
        acks = 0
        while select.select([self.fd], [], [], 0)[0]:
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:
                return True, acks
            if not chunk:
                return True, acks
            self.pending = (self.pending + chunk)[-4096:]  # bounded: only short lines mean anything
            *lines, self.pending = self.pending.split(b"\n")
            words = [line.strip() for line in lines]
            acks += words.count(b"ack")
            self.bye = self.bye or b"bye" in words
        return False, acks


if __name__ == "__main__":
    raise SystemExit(main())
