"""Helpers of the fleet tests: a collector subprocess whose log lines the test waits on."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["HUNG_PRODUCER", "KMEMDUMP", "Collector", "dump_files"]

KMEMDUMP = [sys.executable, "-m", "kmemdump.cli"]

HUNG_PRODUCER = r"""
import sys
import threading
import kmemdump

def wait_for_work(lock):
    with lock:
        pass

def serve(lock):
    lock.acquire()
    send({"ready": True})
    wait_for_work(lock)  # never returns: the lock is ours already

kmemdump.init(table=True, watchdog=float(sys.argv[1]))
orders = kmemdump.alloc(64, name="orders")
orders[:16] = b"order#1001 paid;"
kmemdump.feed()
serve(threading.Lock())
"""
"""A producer that deadlocks on its own lock in ``wait_for_work`` (called from ``serve``) after
feeding its watchdog once; argv[1] is the watchdog timeout."""


class Collector:
    """``kmemdump watch ...`` with stderr read line by line; killed on exit."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [*KMEMDUMP, "watch", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.lines: list[str] = []
        self._pending = b""

    def wait_for(self, text: str, timeout: float = 60.0, count: int = 1) -> list[str]:
        """Read the log until ``count`` lines (in all) contain ``text``; return them."""
        deadline = time.monotonic() + timeout
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        while len(found := [line for line in self.lines if text in line]) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"no {count} lines with {text!r} within {timeout} s:\n" + "\n".join(self.lines)
                )
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                self.proc.wait(timeout=10)
                raise AssertionError(
                    f"the collector exited ({self.proc.returncode}) before {text!r}:\n"
                    + "\n".join(self.lines)
                )
            self._pending += chunk
            *complete, self._pending = self._pending.split(b"\n")
            self.lines.extend(line.decode(errors="replace") for line in complete)
        return found

    def stop(self) -> int:
        """SIGTERM, then the rest of the log; returns the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        _, rest = self.proc.communicate(timeout=60)
        text = (self._pending + rest).decode(errors="replace")
        self.lines.extend(line for line in text.splitlines() if line)
        self._pending = b""
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        self.proc.wait(timeout=30)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def dump_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith((".core", ".core.zst")))
