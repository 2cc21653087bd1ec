"""`kmemdump run` as users run it: deadlocks of unmodified programs, programs that feed their own
watchdog, and programs that `dump PID`, `ps` and `watch` must find.

The programs are real Python processes that really deadlock; they say when they are ready through a
FIFO, and `run`'s event lines are read as they come.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers_watch import KMEMDUMP
from helpers_watch import WatchProcess
from kmemdump.inspect.dumpfile import Dump

pytestmark = pytest.mark.slow

# An unmodified program: two threads take two locks in opposite orders; the main thread joins them.
DEADLOCK = r"""
import os, sys, threading, time
a, b = threading.Lock(), threading.Lock()
both = threading.Barrier(2)
blocked_at = {}
def transfer():
    with a:
        both.wait()
        blocked_at["transfer"] = sys._getframe().f_lineno + 1
        with b:
            pass
def restock():
    with b:
        both.wait()
        blocked_at["restock"] = sys._getframe().f_lineno + 1
        with a:
            pass
threads = [threading.Thread(target=transfer, name="transfer"),
           threading.Thread(target=restock, name="restock")]
for t in threads:
    t.start()
def parked():
    frames = sys._current_frames()
    return all(t.name in blocked_at and frames[t.ident].f_lineno == blocked_at[t.name] for t in threads)
while not parked():          # readiness: each thread waits on its second lock
    time.sleep(0.001)
with open(sys.argv[1], "w") as ready:
    ready.write(f"{os.getpid()}\n")
for t in threads:
    t.join()
"""

# The README's recipe: the program arms its own watchdog and feeds it from its loop, then deadlocks.
OWN_WATCHDOG = r"""
import os, sys, threading, time
import kmemdump
kmemdump.init(table=True, watchdog=float(sys.argv[2]))
lock = threading.Lock()
for _ in range(20):
    kmemdump.feed()
    time.sleep(0.01)
with open(sys.argv[1], "w") as ready:
    ready.write(f"{os.getpid()}\n")
lock.acquire()
kmemdump.feed()
lock.acquire()               # deadlocks on itself; the feeder must not hide it
"""

# An unmodified program that idles in I/O and timers: never a deadlock.
IDLE = r"""
import os, sys, threading, time
def ticker():
    while True:
        time.sleep(0.05)
threading.Thread(target=ticker, daemon=True).start()
with open(sys.argv[1], "w") as ready:
    ready.write(f"{os.getpid()}\n")
with open(sys.argv[2]) as never:
    never.read()
"""


class Run:
    """``kmemdump run [options] -- python -c CODE FIFO [args]``, its event lines read as they come."""

    def __init__(self, tmp_path: Path, dump_dir: Path, code: str, *options: str, args: tuple[str, ...] = ()):
        self.ready = tmp_path / "ready"
        os.mkfifo(self.ready)
        self.popen = subprocess.Popen(
            [*KMEMDUMP, "run", "--dir", str(dump_dir), *options, "--", sys.executable, "-c", code,
             str(self.ready), *args],
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        self.lines: list[str] = []

    def pid(self) -> int:
        with open(self.ready) as fifo:  # blocks until the program is ready: explicit readiness
            return int(fifo.readline())

    def wait_for(self, wanted: str, timeout: float = 60.0) -> str:
        assert self.popen.stderr is not None
        deadline = time.monotonic() + timeout
        for line in self.lines:
            if wanted in line:
                return line
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.popen.stderr], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            line = self.popen.stderr.readline()
            if not line:
                break
            self.lines.append(line.strip())
            if wanted in line:
                return line.strip()
        raise AssertionError(f"run printed no {wanted!r} in {timeout}s: {self.lines}")

    def lines_for(self, seconds: float) -> list[str]:
        """The lines printed within the next ``seconds`` (a time during which nothing may happen)."""
        assert self.popen.stderr is not None
        deadline = time.monotonic() + seconds
        seen: list[str] = []
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.popen.stderr], [], [], left)
            if not ready:
                break
            line = self.popen.stderr.readline()
            if not line:
                break
            seen.append(line.strip())
        self.lines.extend(seen)
        return seen

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()
        if self.popen.stderr is not None:
            self.popen.stderr.close()


def _show(dump: str) -> dict:  # type: ignore[type-arg]
    out = subprocess.run([*KMEMDUMP, "show", "--json", dump], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def _functions(shown: dict) -> set[str]:  # type: ignore[type-arg]
    return {frame["function"] for thread in shown["stacks"]["threads"] for frame in thread["frames"]}


def test_run_dumps_an_unmodified_two_lock_deadlock_once_its_timeout_passed(
    tmp_path: Path, table_dir: Path, dump_dir: Path
) -> None:
    timeout = 2.0
    run = Run(tmp_path, dump_dir, DEADLOCK, "--timeout", str(timeout), "--after-hang", "kill")
    try:
        pid = run.pid()
        line = run.wait_for(f"hang pid={pid} ")
        run.popen.wait(timeout=60)
    finally:
        run.stop()
    assert run.popen.returncode == 128 + signal.SIGKILL
    dump = line.split("dump=")[1].split()[0]
    # Not before the timeout; how soon after it is a speed figure: python -m benchmarks --only detection.
    with Dump.open(dump) as opened:
        age = opened.meta.heartbeat_age_s
    assert age is not None and age >= timeout, age
    assert {"transfer", "restock"} <= _functions(_show(dump))


def test_run_of_a_program_that_feeds_its_own_watchdog_uses_its_heartbeat_and_says_so(
    tmp_path: Path, table_dir: Path, dump_dir: Path
) -> None:
    run = Run(tmp_path, dump_dir, OWN_WATCHDOG, "--timeout", "30", "--after-hang", "kill", args=("1.0",))
    try:
        pid = run.pid()
        notice = run.wait_for("its own watchdog")
        line = run.wait_for(f"hang pid={pid} ", timeout=20)  # long before run's own 30 s
        run.popen.wait(timeout=60)
    finally:
        run.stop()
    assert "timeout 1 s" in notice and "not --timeout 30" in notice
    assert "timeout 1s" in line
    shown = _show(line.split("dump=")[1].split()[0])
    assert "<module>" in _functions(shown)


def test_run_leaves_an_idle_program_alone(tmp_path: Path, table_dir: Path, dump_dir: Path) -> None:
    never = tmp_path / "never"
    os.mkfifo(never)
    run = Run(tmp_path, dump_dir, IDLE, "--timeout", "0.5", args=(str(never),))
    try:
        pid = run.pid()
        run.wait_for(f"watch pid={pid} ")
        # four timeouts of idling in a read and in sleeps: a deadlock check must not fire
        assert not [line for line in run.lines_for(2.0) if "hang" in line]
        assert run.popen.poll() is None
        with open(never, "w") as release:
            release.write("go\n")
        run.popen.wait(timeout=60)
        assert run.popen.stderr is not None
        rest = run.popen.stderr.read()
    finally:
        run.stop()
    assert run.popen.returncode == 0
    assert "hang" not in rest and not [x for x in run.lines if x.startswith("kmemdump: hang")]
    assert list(dump_dir.iterdir()) == []


def test_dump_ps_and_watch_find_a_program_run_started(
    tmp_path: Path, table_dir: Path, dump_dir: Path
) -> None:
    never = tmp_path / "never"
    os.mkfifo(never)
    private = tmp_path / "tmp"
    private.mkdir()
    # a collector for the whole directory runs already: it must leave run's program to run
    with WatchProcess(table_dir, tmp_path) as watch:
        os.environ["TMPDIR"] = str(private)  # where a private folder would go
        try:
            run = Run(tmp_path, dump_dir, IDLE, "--timeout", "30", args=(str(never),))
        finally:
            del os.environ["TMPDIR"]
        pid = 0
        try:
            pid = run.pid()
            run.wait_for(f"watch pid={pid} ")
            assert "watched by another collector" in watch.wait_for(f"skip pid={pid} ")
            ps = subprocess.run([*KMEMDUMP, "ps", "--json"], capture_output=True, text=True, check=True)
            assert pid in [p["pid"] for p in json.loads(ps.stdout)["producers"]]
            dump = subprocess.run(
                [*KMEMDUMP, "dump", str(pid), "--json", "--dir", str(dump_dir)],
                capture_output=True,
                text=True,
                check=False,
            )
            assert dump.returncode == 0, dump.stderr
            assert json.loads(dump.stdout)["pid"] == pid
            run.popen.send_signal(signal.SIGKILL)  # the supervisor dies; its program lives on
            run.popen.wait()
            watch.wait_for(f"watch pid={pid} ")  # and the other collector takes it over
            assert list(private.iterdir()) == []  # no private folder left behind (none was made)
            os.kill(pid, signal.SIGKILL)
            watch.wait_for(f"death pid={pid} ")
        finally:
            run.stop()
            if pid and os.path.exists(f"/proc/{pid}"):
                os.kill(pid, signal.SIGKILL)
    assert not [line for line in watch.lines if line.startswith("hang")]
