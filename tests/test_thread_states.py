"""Each thread's scheduler state is read before the hold: a spinning thread is told from a blocked one."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from helpers_child import spawn_child
from helpers_interpreters import request_dump
from kmemdump.collector import dump as dump_module
from kmemdump.collector.dump import DumpOptions
from kmemdump.collector.threads import CpuSample
from kmemdump.collector.threads import sample_cpu
from kmemdump.collector.threads import syscall_name
from kmemdump.collector.threads import thread_states
from kmemdump.formats.dumpmeta import ThreadState
from kmemdump.procinfo import process_start_time

pytestmark = pytest.mark.slow

# A spinning thread beside one blocked on a lock the main thread holds; the main thread says where
# both are once the blocked one sits in lock.acquire() and the spinner has turned its loop.
SPIN_AND_BLOCK = r"""
import os, sys, threading, time
import kmemdump
report = kmemdump.init(table=True)
lock = threading.Lock()
lock.acquire()
spinning = threading.Event()
at = {}
def spin():
    turns = 0
    while True:
        turns += 1
        if turns == 100_000:
            spinning.set()
def blocked():
    at["line"] = sys._getframe().f_lineno + 1
    lock.acquire()
spinner = threading.Thread(target=spin, name="spinner", daemon=True)
waiter = threading.Thread(target=blocked, name="waiter", daemon=True)
spinner.start(); waiter.start()
spinning.wait()
deadline = time.monotonic() + 30
def in_futex():  # inside acquire() is not yet inside its system call: look for that too
    with open(f"/proc/self/task/{waiter.native_id}/syscall") as handle:
        return handle.read().split()[0] in ("202", "98")  # futex on x86_64, aarch64
while time.monotonic() < deadline:
    frame = sys._current_frames().get(waiter.ident)
    if "line" in at and frame is not None and frame.f_lineno == at["line"] and in_futex():
        break
    time.sleep(0.001)
send({"table": report.table, "spinner": spinner.native_id, "waiter": waiter.native_id})
block()
"""


def test_the_dump_tells_a_spinning_thread_from_a_blocked_one(
    table_dir: Path, dump_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kmemdump.cli.main import main

    with spawn_child(SPIN_AND_BLOCK) as child:
        ready = child.recv()
        result = request_dump(child.pid, ready["table"], dump_dir)
    meta = result.meta
    assert meta.threads_taken == "before the hold"
    by_tid = {t.tid: t for t in meta.threads}
    spinner, waiter = by_tid[ready["spinner"]], by_tid[ready["waiter"]]
    # the spinner runs in user space: state R and no system call; the waiter sleeps in futex
    assert spinner.state == "R" and spinner.syscall is None, spinner
    assert waiter.state == "S" and waiter.syscall_name == "futex", waiter
    assert waiter.cpu_ms is not None and waiter.window_ms is not None and waiter.cpu_ms < waiter.window_ms / 2
    assert spinner.describe().startswith("running")
    assert "waiting on a lock" in waiter.describe()

    assert main(["show", str(result.path), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    states = {t["tid"]: t for t in document["dump"]["threads"]}
    assert states[ready["spinner"]]["state"] == "R"
    assert states[ready["waiter"]]["syscall_name"] == "futex"
    assert main(["show", str(result.path), "--plain"]) == 0
    text = capsys.readouterr().out
    stacks = text.split("Python stacks (most recent call last)", 1)[1]
    if document["stacks"]["state"] == "ok":  # py-spy installed: the states sit under each stack
        spin_block = stacks.split('"spinner"', 1)[1].split("\nThread ", 1)[0]
        wait_block = stacks.split('"waiter"', 1)[1].split("\nThread ", 1)[0]
        assert "before the hold: running" in spin_block and "idle" not in spin_block.splitlines()[0]
        assert "before the hold: sleeping in futex" in wait_block
    else:
        assert f"Thread {ready['spinner']} " in stacks and "running" in stacks


def test_thread_states_of_this_process_and_of_a_gone_one() -> None:
    stop = threading.Event()
    sleeper = threading.Thread(target=stop.wait, name="sleeper")
    sleeper.start()
    try:
        # the thread reaches its futex wait a moment after it starts: look until it is there (bounded)
        deadline = time.monotonic() + 10
        while True:
            states = {t.tid: t for t in thread_states(os.getpid(), window=0)}
            seen = states.get(sleeper.native_id)
            if (seen is not None and seen.syscall_name == "futex") or time.monotonic() > deadline:
                break
            time.sleep(0.001)
    finally:
        stop.set()
        sleeper.join()
    assert seen is not None and seen.state == "S" and seen.syscall_name == "futex", seen
    assert seen.cpu_ms is None  # no window: not measured
    assert thread_states(2**22 + 12345) == ()  # no such process


def test_syscall_names_and_descriptions() -> None:
    assert syscall_name(202, "x86_64") == "futex"
    assert syscall_name(98, "aarch64") == "futex"
    assert syscall_name(9999, "x86_64") == "syscall 9999"
    sleeping = ThreadState(1, "t", "S", "hrtimer_nanosleep", 230, "clock_nanosleep", (1, 1, 0, 0, 0, 0))
    assert (
        sleeping.describe() == "sleeping in clock_nanosleep: sleeping (time.sleep) (wchan hrtimer_nanosleep)"
    )
    wake = ThreadState(2, "t", "S", "", 202, "futex", (0x1000, 1, 0, 0, 0, 0))  # FUTEX_WAKE: not a wait
    assert wake.describe() == "sleeping in futex"
    busy = ThreadState(3, "t", "R").with_cpu(19.5, 20.0)
    assert busy.busy and busy.describe() == "running (19.5 of 20 ms on a CPU)"


def test_the_states_of_a_process_that_is_not_the_one_dumped_are_dropped() -> None:
    # The states are read by pid before the hold: if that pid names another process by the time they
    # are read (the target died and its pid was reused), they are not the target's and are not kept.
    def job(start_time: int) -> dump_module._Job:
        return dump_module._Job(
            pid=os.getpid(),
            start_time=start_time,
            table=Path("/nonexistent.table"),
            reason="request",
            argv=(),
            exe=None,
            gone=False,
            captured_ns=0,
            held="",
            uid=os.getuid(),
            dir_fd=None,
            death=None,
        )

    options = DumpOptions(Path("/nonexistent"), threads=0)
    states, taken = dump_module._threads(job(process_start_time(os.getpid())), options)
    assert taken == "before the hold" and threading.get_native_id() in {t.tid for t in states}
    assert dump_module._threads(job(process_start_time(os.getpid()) + 1), options) == ((), "process gone")


def test_a_window_opened_earlier_counts_from_its_sample() -> None:
    """``sample_cpu`` opens the window (the CLI loads the dump's machinery meanwhile): the CPU time and
    window recorded count from the sample, and a thread started after it is read without CPU time."""
    stop = threading.Event()
    spins = [0]

    def spin() -> None:
        while not stop.is_set():
            spins[0] += 1

    spinner = threading.Thread(target=spin, name="spinner")
    spinner.start()
    late = None
    try:
        sample = sample_cpu(os.getpid())
        assert sample is not None and spinner.native_id in sample.on_cpu_ns
        late = threading.Thread(target=stop.wait, name="late")
        late.start()
        time.sleep(0.03)  # work done during the window: longer than the window itself
        states = {t.tid: t for t in thread_states(os.getpid(), window=0.005, sample=sample)}
    finally:
        stop.set()
        spinner.join()
        if late is not None:
            late.join()
    spun = states[spinner.native_id]
    assert spun.window_ms is not None and spun.window_ms >= 30  # from the sample, not a new 5 ms
    assert spun.cpu_ms is not None and spun.cpu_ms > 0
    assert late.native_id is not None and states[late.native_id].cpu_ms is None  # started since
    other = sample_cpu(2**22 + 12345)
    assert other is None  # no such process
    mine = {t.tid: t for t in thread_states(os.getpid(), window=0.001, sample=CpuSample(1, 0.0, {}))}
    assert mine[threading.get_native_id()].window_ms is not None  # another pid's sample: a window of its own


def test_kmemdump_dump_measures_the_threads_over_the_window_it_opened(tmp_path: Path) -> None:
    """The command line opens the window before loading the dump's machinery: a spinning thread is
    still told from a blocked one, and the window recorded is at least the 5 ms asked for."""
    import subprocess
    import sys

    from kmemdump.inspect.dumpfile import Dump

    with spawn_child(SPIN_AND_BLOCK) as child:
        ready = child.recv()
        tables = str(Path(ready["table"]).parent)
        command = [sys.executable, "-m", "kmemdump.cli", "dump", str(child.pid), "--no-stacks"]
        command += ["--tables", tables, "--dir", str(tmp_path), "--json"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    with Dump.open(json.loads(done.stdout)["path"]) as dump:
        meta = dump.meta
    by_tid = {t.tid: t for t in meta.threads}
    spinner, waiter = by_tid[ready["spinner"]], by_tid[ready["waiter"]]
    assert spinner.window_ms is not None and spinner.window_ms >= 5
    assert spinner.state == "R" and spinner.cpu_ms is not None and spinner.cpu_ms > 0, spinner
    assert waiter.cpu_ms is not None and waiter.window_ms is not None and not waiter.busy, waiter
