"""Real processes for the benchmarks: Python producers with regions registered, in-process dumps of them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "MiB",
    "Producer",
    "bench_env",
    "dump_in_process",
    "has_option",
    "kmemdump_command",
    "producer",
    "tmpdir",
]

MiB = 1024 * 1024

_PRODUCER = r"""
import json, os, sys, time
import kmemdump
size, timeout, small, heap = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
kmemdump.init(table=True, watchdog=timeout or None, capacity=small + 64)
if size:
    buf = kmemdump.alloc(size, name="payload")
    chunk = os.urandom(1 << 20)
    for off in range(0, size, len(chunk)):
        buf[off:off + len(chunk)] = chunk[: size - off]
smalls = [kmemdump.alloc(64) for _ in range(small)]
for i, s in enumerate(smalls):
    s[:8] = i.to_bytes(8, "little")
big = bytearray(os.urandom(1 << 20)) * (heap >> 20) if heap else None
kmemdump.feed()
print(json.dumps({"pid": os.getpid(), "table": kmemdump.current_backend().path.as_posix(),
                  "last_feed": time.monotonic_ns()}), flush=True)
sys.stdin.readline()
"""


@contextmanager
def tmpdir(prefix: str, *, disk: bool = False) -> Iterator[Path]:
    """A private temporary directory: on tmpfs (``/dev/shm``) for tables, on disk (here) for dumps."""
    where = Path.cwd() if disk else Path("/dev/shm") if os.path.isdir("/dev/shm") else None
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=where))
    path.chmod(0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Producer:
    """A running producer: its pid, table and the monotonic time of its last feed."""

    def __init__(self, info: dict[str, Any], proc: subprocess.Popen[str]) -> None:
        self.pid = int(info["pid"])
        self.table = Path(info["table"])
        self.last_feed_ns = int(info["last_feed"])
        self.proc = proc


@contextmanager
def producer(
    tables: Path, size: int = 0, *, timeout: float = 0.0, small: int = 0, heap: int = 0
) -> Iterator[Producer]:
    """A Python process with ``size`` bytes registered (random), ``small`` 64-byte regions and an
    unregistered ``heap``; killed on leaving."""
    env = bench_env(KMEMDUMP_DIR=str(tables))
    args = [sys.executable, "-c", _PRODUCER, str(size), str(timeout), str(small), str(heap)]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # readiness: the producer says where its table is
        if not line:
            raise RuntimeError("the producer ended before it was ready")
        yield Producer(json.loads(line), proc)
    finally:
        proc.kill()
        proc.wait()


def dump_in_process(target: Producer, directory: Path, **options: Any) -> tuple[float, Any]:
    """``dump_target`` of ``target`` from this process: (ns, DumpResult). Options this version of
    DumpOptions does not have are left out (the caller checks :func:`has_option`)."""
    from kmemdump.collector.dump import DumpOptions
    from kmemdump.collector.dump import dump_target
    from kmemdump.procinfo import process_start_time

    known = _option_names()
    chosen = {k: v for k, v in options.items() if k in known}
    start_time = process_start_time(target.pid)
    t0 = time.perf_counter_ns()
    result = dump_target(
        target.pid, start_time, target.table, reason="request", options=DumpOptions(directory, **chosen)
    )
    return time.perf_counter_ns() - t0, result


def has_option(name: str) -> bool:
    return name in _option_names()


def _option_names() -> set[str]:
    """The fields of this version's DumpOptions (a record class; a dataclass in older checkouts)."""
    from kmemdump.collector.dump import DumpOptions

    try:
        from kmemdump.record import fields
    except ImportError:
        from dataclasses import fields  # type: ignore[assignment]
    return {f.name for f in fields(DumpOptions)}


def bench_env(**extra: str) -> dict[str, str]:
    """This environment for the processes a benchmark times, as a user's would be: bytecode cached
    (``PYTHONDONTWRITEBYTECODE`` dropped, so that start-up is not timed compiling every module)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(extra)
    return env


def kmemdump_command() -> list[str]:
    """The ``kmemdump`` command of this environment."""
    script = Path(sys.executable).parent / "kmemdump"
    return [str(script)] if script.exists() else [sys.executable, "-m", "kmemdump"]
