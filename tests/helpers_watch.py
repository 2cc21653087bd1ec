"""A real `kmemdump watch` for tests: started as a user starts it, its event lines read as they come.

    with WatchProcess(table_dir, dump_dir) as watch:
        ...
        watch.wait_for(f"watch pid={pid} ")      # explicit readiness: the collector adopted the table
    watch.lines                                  # every event line it printed, once stopped

Lines are read by a thread into a queue, so waiting for one is bounded and never polls the disk.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kmemdump.collector.watch import Event
    from kmemdump.collector.watch import Watcher

__all__ = ["KMEMDUMP", "WatchProcess", "open_files", "step_until"]

KMEMDUMP = [sys.executable, "-m", "kmemdump.cli"]
_LIMITED = (
    "import os, resource, sys; n = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"
)
"""Runs the rest of its arguments under Python in its own process (exec), allowed only ``argv[1]``
descriptors, soft and hard (``watch`` cannot raise them)."""


class WatchProcess:
    """``kmemdump watch --tables DIR --dir DUMPS`` running beside the test."""

    def __init__(
        self,
        tables: Path | Sequence[Path],
        dumps: Path,
        *extra: str,
        prefix: Sequence[str] = (),
        max_files: int | None = None,
    ) -> None:
        """``max_files``: the collector's descriptor limit (soft and hard), when given."""
        dirs = [tables] if isinstance(tables, Path) else list(tables)
        args = [arg for d in dirs for arg in ("--tables", str(d))]
        command = (
            KMEMDUMP if max_files is None else [sys.executable, "-c", _LIMITED, str(max_files), *KMEMDUMP[1:]]
        )
        self.popen = subprocess.Popen(
            [*prefix, *command, "watch", *args, "--dir", str(dumps), *extra],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.prefixed = bool(prefix)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_for("watching ")  # it printed its start line: it is scanning

    def _read(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, wanted: str | Callable[[str], bool], timeout: float = 60.0) -> str:
        """The first line (from now on, or already seen) containing ``wanted`` or matching it."""
        match = wanted if callable(wanted) else (lambda line: wanted in line)
        for line in self.lines:
            if match(line):
                return line
        while True:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(
                    f"no {wanted!r} from the collector in {timeout}s: {self.lines}"
                ) from None
            if line is None:
                raise AssertionError(f"the collector exited before printing {wanted!r}: {self.lines}")
            self.lines.append(line)
            if match(line):
                return line

    def stop(self) -> list[str]:
        """SIGTERM it, wait for it, and return every line it printed."""
        if self.popen.poll() is None:
            for pid in self._collectors():
                os.kill(pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=60)
        finally:
            if self.popen.poll() is None:
                self.popen.kill()
                self.popen.wait()
        self._reader.join(timeout=10)
        if self.popen.stderr is not None:
            self.popen.stderr.close()
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return self.lines

    def _collectors(self) -> list[int]:
        """The collector itself: the command's child when a prefix (``unshare --fork``, which ignores
        SIGTERM while it waits) runs it."""
        if not self.prefixed:
            return [self.popen.pid]
        try:
            with open(f"/proc/{self.popen.pid}/task/{self.popen.pid}/children") as handle:
                return [int(pid) for pid in handle.read().split()]
        except OSError:
            return []

    def __enter__(self) -> WatchProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def open_files(pid: int | str = "self") -> list[str]:
    """What each descriptor of ``pid`` names (``/proc/PID/fd``): a path, ``anon_inode:[pidfd]`` …; a
    descriptor closed while it is listed is left out."""
    names: list[str] = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            names.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            continue
    return names


def step_until(watcher: Watcher, done: str, guard: float = 60.0) -> list[Event]:
    """Step an in-process :class:`Watcher` until an event of kind ``done`` (the guard only ends a hung
    test); the events seen on the way."""
    events: list[Event] = []
    end = time.monotonic() + guard
    while not any(e.kind == done for e in events):
        assert time.monotonic() < end, f"no {done!r} event within {guard}s: {[e.line() for e in events]}"
        events.extend(watcher.step())
    return events
