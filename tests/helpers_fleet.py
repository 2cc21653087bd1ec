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

__all__ = ["HUNG_PRODUCER", "KMEMDUMP", "Collector", "dump_files", "write_dump"]

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


def write_dump(
    directory: Path,
    *,
    host: str,
    pid: int,
    reason: str,
    captured_ns: int,
    threads: Sequence[tuple[str | None, bool, Sequence[tuple[str, str, int]]]] = (),
    death_signal: int | None = None,
    argv: Sequence[str] = ("/usr/bin/python3", "/srv/app/worker.py"),
) -> Path:
    """A dump written with the collector's own writer, as a host named ``host`` would have taken it.

    ``threads``: (name, owns_gil, frames innermost first as (function, file, line)); the first thread
    is the main one (its native id is the pid). No threads: a dump without stacks.
    """
    from datetime import datetime
    from datetime import timezone

    from kmemdump.collector.corewriter import write_core
    from kmemdump.formats.dumpmeta import Death
    from kmemdump.formats.dumpmeta import DumpMeta
    from kmemdump.formats.dumpmeta import RegionRecord
    from kmemdump.formats.dumpmeta import encode_meta
    from kmemdump.formats.elf import KMD_NOTE_META
    from kmemdump.formats.elf import KMD_NOTE_STACKS
    from kmemdump.formats.elf import Note
    from kmemdump.formats.elf import Segment
    from kmemdump.formats.stacks import Frame
    from kmemdump.formats.stacks import Stacks
    from kmemdump.formats.stacks import ThreadStack
    from kmemdump.formats.stacks import encode_stacks

    data = f"state of {host} pid {pid}".encode()
    address = 0x7F0000001000 + pid * 0x1000
    death = None
    if death_signal is not None:
        death = Death.from_wait_status(death_signal, "wait status")
    meta = DumpMeta(
        reason=reason,  # type: ignore[arg-type]
        pid=pid,
        start_time=pid * 7,
        captured_ns=captured_ns,
        host=host,
        argv=tuple(argv),
        exe="/usr/bin/python3.11",
        uid=1000,
        py_hexversion=0x030B07F0,
        regions=(RegionRecord(16, "state", 0, address, len(data), len(data), "ok"),),
        partial=reason == "death",
        stopped=reason != "death",
        stacks="ok" if threads else "process gone",
        death=death,
    )
    notes = [Note("KMEMDUMP", KMD_NOTE_META, encode_meta(meta))]
    if threads:
        stacks = Stacks(
            "test",
            tuple(
                ThreadStack(
                    1000 + i,
                    name,
                    pid if i == 0 else pid + i,
                    False,
                    gil,
                    tuple(Frame(f, file, line) for f, file, line in frames),
                )
                for i, (name, gil, frames) in enumerate(threads)
            ),
        )
        notes.append(Note("KMEMDUMP", KMD_NOTE_STACKS, encode_stacks(stacks)))
    stamp = datetime.fromtimestamp(captured_ns / 1e9, tz=timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    path = directory / f"kmemdump-{pid}-{pid * 7}-{reason}-{stamp}.core"
    return write_core(path, [Segment(address, data)], notes)
