"""The collector at rest and at work: its CPU while N processes are fine, then how late a hang is dumped.

A real ``kmemdump watch`` serves N processes in one table directory: N-1 producers with 5 s
watchdogs and feeder threads (forked from one parent that imported kmemdump, so that 500 of them
share their memory), and one "hanger" with a 1 s watchdog and 1 MiB registered, fed from its main
loop. Once the collector has adopted all N, its CPU time is read from ``/proc`` (the sum of its
threads' ``schedstat`` run times) over an idle window. Then the hanger stalls a few times: it
notes the time, feeds once, stops feeding, and goes on only once the hang dump is at its final
name (inotify); the lateness is the dump's arrival minus (the last feed + 1 s).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.mcd import IN_MOVED_TO
from benchmarks.mcd import Inotify
from benchmarks.procs import bench_env
from benchmarks.procs import kmemdump_command
from benchmarks.procs import tmpdir
from benchmarks.rows import Row
from benchmarks.timing import Config
from benchmarks.timing import median

__all__ = ["idle_collector"]

_HANG_TIMEOUT = 1.0
_SPAWNER = r"""
import os, sys
import kmemdump
n = int(sys.argv[1])
ready_r, ready_w = os.pipe()
hold_r, hold_w = os.pipe()
children = []
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.close(hold_w)
            kmemdump.init(table=True, watchdog=5.0, feeder=True)
            os.write(ready_w, b"r")
            os.read(hold_r, 1)  # end of file once the spawner closes its end
        finally:
            os._exit(0)
    children.append(pid)
os.close(ready_w)
os.close(hold_r)
got = 0
while got < n:
    chunk = os.read(ready_r, n - got)
    if not chunk:
        break
    got += len(chunk)
print("ready", got, flush=True)
sys.stdin.readline()
os.close(hold_w)
for pid in children:
    os.waitpid(pid, 0)
"""
_HANGER = r"""
import os, select, sys, time
import kmemdump
timeout = float(sys.argv[1])
kmemdump.init(table=True, watchdog=timeout, feeder=False)
buf = kmemdump.alloc(1 << 20, name="payload")
buf[:] = os.urandom(1 << 20)
kmemdump.feed()
print("ready", os.getpid(), flush=True)
while True:
    if select.select([0], [], [], timeout / 4)[0]:
        command = os.read(0, 1)
        if command != b"h":
            break
        stamp = time.monotonic_ns()
        kmemdump.feed()
        print(stamp, flush=True)
        if os.read(0, 1) != b"g":  # blocked, not feeding, until the dump is in
            break
    kmemdump.feed()
"""


def idle_collector(config: Config) -> list[Row]:
    counts = (100,) if config.quick else (100, 500)
    window = 5.0 if config.quick else 20.0
    stalls = config.pick(full=10, quick=3)
    rows: list[Row] = []
    for count in counts:
        rows.extend(_one(count, window, stalls))
    return rows


class _Collector:
    """``kmemdump watch`` with its log read by a thread: adoptions counted, lines kept."""

    def __init__(self, tables: Path, dumps: Path, count: int) -> None:
        argv = [
            *kmemdump_command(),
            "watch",
            "--tables",
            str(tables),
            "--dir",
            str(dumps),
            "--max-dumps",
            "100000",
            "--max-per-user",
            str(count + 16),  # every table is one user's here (the default quota would leave some out)
        ]
        self.proc = subprocess.Popen(
            argv, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=bench_env()
        )
        self.adopted = 0
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip())
                if line.startswith("watch pid="):
                    self.adopted += 1
                self._changed.notify_all()

    def wait_adopted(self, count: int, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(
                lambda: self.adopted >= count or self.proc.poll() is not None, timeout
            )

    def cpu_ns(self) -> int:
        total = 0
        for task in os.listdir(f"/proc/{self.proc.pid}/task"):
            with open(f"/proc/{self.proc.pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        return total

    def wakeups(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches:"):
                    return int(line.split()[1])
        return 0

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)


def _one(count: int, window: float, stalls: int) -> list[Row]:
    with tmpdir("kmd-bench-") as tables, tmpdir("kmd-bench-idle-", disk=True) as dumps:
        env = bench_env(KMEMDUMP_DIR=str(tables))
        spawner = subprocess.Popen(
            [sys.executable, "-c", _SPAWNER, str(count - 1)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        hanger = subprocess.Popen(
            [sys.executable, "-c", _HANGER, str(_HANG_TIMEOUT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            bufsize=0,
        )
        collector = None
        try:
            assert spawner.stdout is not None and hanger.stdout is not None and hanger.stdin is not None
            if spawner.stdout.readline().split() != ["ready", str(count - 1)]:
                raise RuntimeError("the producers did not all start")
            hanger_pid = int(hanger.stdout.readline().split()[1])
            collector = _Collector(tables, dumps, count)
            if not collector.wait_adopted(count, 120.0):
                raise RuntimeError(f"the collector adopted {collector.adopted} of {count} tables")
            time.sleep(2.0)  # let the start-up settle (the measured window is what follows)
            cpu0, wake0, t0 = collector.cpu_ns(), collector.wakeups(), time.monotonic_ns()
            time.sleep(window)
            cpu1, wake1, t1 = collector.cpu_ns(), collector.wakeups(), time.monotonic_ns()
            share = (cpu1 - cpu0) / (t1 - t0) * 100
            wakeups = (wake1 - wake0) / ((t1 - t0) / 1e9)
            lateness = _stalls(hanger, hanger_pid, dumps, stalls)
            others = [n for n in os.listdir(dumps) if f"-{hanger_pid}-" not in n]
        finally:
            if collector is not None:
                collector.stop()
            for proc in (hanger, spawner):
                assert proc.stdin is not None
                try:
                    proc.stdin.close()
                    proc.wait(timeout=30)
                except (OSError, subprocess.TimeoutExpired):
                    proc.kill()
                    proc.wait()
    late = sorted(lateness)
    worst = late[-1] if late else float("nan")
    return [
        Row(
            f"idle collector watching {count} processes (5 s watchdogs): CPU of one core",
            share,
            "%",
            None,
            "",
            None,
            "≤ 1 %",
            share <= 1.0,
            f"{window:g} s window, {wakeups:.1f} wake-ups/s",
        ),
        Row(
            f"a hang among {count}: dumped after its deadline (median of {len(late)})",
            median(late) or float("nan"),
            "ns",
            _HANG_TIMEOUT * 1e9,
            "the 1 s watchdog",
            None,
            "≤ timeout + 50 ms",
            bool(late) and (median(late) or 1e18) <= 50e6,
            f"worst {worst / 1e6:.1f} ms; {len(others)} dumps of other processes",
        ),
    ]


def _stalls(hanger: subprocess.Popen[bytes], pid: int, dumps: Path, stalls: int) -> list[float]:
    assert hanger.stdin is not None and hanger.stdout is not None
    inotify = Inotify()
    inotify.add(dumps, IN_MOVED_TO)
    lateness = []
    try:
        for number in range(1 + stalls):
            hanger.stdin.write(b"h")
            stamp = int(hanger.stdout.readline())
            arrived = None
            deadline = time.monotonic() + 30
            while arrived is None and time.monotonic() < deadline:
                if not select.select([inotify.fd], [], [], 1.0)[0]:
                    continue
                now = time.monotonic_ns()
                for _, _, name in inotify.read():
                    if f"-{pid}-" in name and "-hang-" in name and not name.startswith("."):
                        arrived = now
            if arrived is None:
                raise RuntimeError("the hang was not dumped within 30 s")
            if number:  # the first stall warms the collector's dump path up
                lateness.append(arrived - (stamp + _HANG_TIMEOUT * 1e9))
            hanger.stdin.write(b"g")
    finally:
        inotify.close()
    return lateness
