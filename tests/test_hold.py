"""The hold (collector/hold.py): ptrace stops that end with the collector, SIGSTOP with a recovery record.

Real processes throughout: a multi-threaded Python target, and a "collector" child that takes the hold
and is then SIGKILLed, as a collector that crashes mid-dump would be.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers_child import Child
from helpers_child import spawn_child
from kmemdump.collector.authority import ProcessHandle
from kmemdump.collector.corewriter import parse_temp_name
from kmemdump.collector.corewriter import temp_name
from kmemdump.collector.hold import hold
from kmemdump.collector.hold import parse_record_name
from kmemdump.collector.hold import record_name
from kmemdump.collector.hold import recover
from kmemdump.collector.tracer import ptrace_request
from kmemdump.procinfo import process_start_time
from kmemdump.procinfo import thread_state

pytestmark = pytest.mark.timeout(60)

_THREADS = """
import threading, time
go = threading.Event()
def spin():
    while True:
        time.sleep(0.001)
for _ in range(3):
    threading.Thread(target=spin, daemon=True).start()
send("ready")
block()
"""


def _states(pid: int) -> dict[int, str | None]:
    return {int(tid): thread_state(pid, int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


def _wait_for(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def _running(pid: int) -> bool:
    return all(state not in ("T", "t") for state in _states(pid).values())


@pytest.fixture
def target() -> Child:
    child = spawn_child(_THREADS)
    assert child.recv() == "ready"
    yield child
    child.kill()


def test_a_ptrace_hold_stops_every_thread_and_lets_them_go(target: Child) -> None:
    with ProcessHandle.open(target.pid, process_start_time(target.pid)) as process:
        held = hold(process)
        try:
            assert held.method == "ptrace" and held.stopped
            assert set(held.tids) == set(_states(target.pid)) and len(held.tids) == 4
            assert all(t.ptrace_stopped for t in held.threads)
            assert set(_states(target.pid).values()) == {"t"}  # tracing stops, not a group-stop
            # the registers of a held thread can be read (what the ELF notes of issue 12 need)
            regs = (ctypes.c_ulonglong * 27)()
            assert ptrace_request(12, held.tids[0], 0, ctypes.addressof(regs)) == 0  # PTRACE_GETREGS
            assert any(regs)
        finally:
            held.release()
        assert not any(t.ptrace_stopped for t in held.threads)
    _wait_for(lambda: _running(target.pid), "the threads to run again")
    target.send("ping")  # and it still answers: block() returns only on "exit"; prove it reads
    assert target.popen.poll() is None


def test_a_process_stopped_before_the_hold_stays_stopped(target: Child) -> None:
    os.kill(target.pid, signal.SIGSTOP)
    _wait_for(lambda: set(_states(target.pid).values()) == {"T"}, "the group-stop")
    with ProcessHandle.open(target.pid, process_start_time(target.pid)) as process, hold(process) as held:
        assert held.method == "ptrace"
    time.sleep(0.05)  # nothing to wait for: it must simply still be stopped
    assert set(_states(target.pid).values()) == {"T"}
    os.kill(target.pid, signal.SIGCONT)
    _wait_for(lambda: _running(target.pid), "SIGCONT")


_HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from kmemdump.collector.authority import ProcessHandle
    from kmemdump.collector.hold import hold
    from kmemdump.procinfo import process_start_time
    pid, records, ptrace = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "ptrace"
    process = ProcessHandle.open(pid, process_start_time(pid))
    held = hold(process, records=records, use_ptrace=ptrace)
    print(held.method, flush=True)
    sys.stdin.read()  # hold until killed
    """
)


def _holder(pid: int, records: Path, how: str) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(pid), str(records), how],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    return holder


def _end(holder: subprocess.Popen[str]) -> None:
    holder.kill()
    holder.communicate()


def test_a_collector_killed_while_holding_leaves_the_target_running(target: Child, tmp_path: Path) -> None:
    holder = _holder(target.pid, tmp_path, "ptrace")
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ptrace"
        assert set(_states(target.pid).values()) == {"t"}
        holder.kill()  # SIGKILL: no clean-up of its own at all
        holder.wait()
        _wait_for(lambda: _running(target.pid), "the kernel to detach the dead tracer's tracees")
        assert list(tmp_path.iterdir()) == []  # a ptrace hold needs no recovery record
    finally:
        _end(holder)


def test_a_sigstop_hold_left_by_a_dead_collector_is_undone_by_the_next_start(
    target: Child, tmp_path: Path
) -> None:
    holder = _holder(target.pid, tmp_path, "sigstop")
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "SIGSTOP"
        (record,) = [p.name for p in tmp_path.iterdir()]
        collector, held = parse_record_name(record)  # type: ignore[misc]
        assert collector[0] == holder.pid and held == (target.pid, process_start_time(target.pid))
        holder.kill()
        holder.wait()
    finally:
        _end(holder)
    # a dead collector's temporary dump, and a live one's (ours) that must be left alone
    dead = f".kmemdump-1-2-hang-x.core.{holder.pid}-{collector[1]}.{'ab' * 6}.tmp"
    (tmp_path / dead).write_bytes(b"half a dump")
    live = tmp_path / temp_name("kmemdump-3-4-hang-y.core")
    live.write_bytes(b"being written")
    time.sleep(0.05)
    assert set(_states(target.pid).values()) == {"T"}  # SIGSTOP outlives its sender ...
    lines = recover(tmp_path)
    _wait_for(lambda: _running(target.pid), "the recovery's SIGCONT")  # ... until the next start
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name]
    assert any("continued pid" in line for line in lines) and any(dead in line for line in lines)


def test_recovery_names_are_parsed_strictly() -> None:
    assert parse_record_name(record_name((12, 34), (56, 78))) == ((12, 34), (56, 78))
    for bad in (
        ".kmemdump-hold.1-2.3-٣",
        ".kmemdump-hold.1-2.3-4.5",
        ".kmemdump-hold.0-2.3-4",
        ".kmemdump-hold.+1-2.3-4",
    ):
        assert parse_record_name(bad) is None
    assert parse_temp_name(temp_name("kmemdump-1-2-hang-x.core")) == (
        os.getpid(),
        process_start_time(os.getpid()),
    )
    for bad in (
        ".kmemdump-x.core.1-².aaaaaaaaaaaa.tmp",
        ".kmemdump-x.core.1-2.short.tmp",
        ".other.1-2.aaaaaaaaaaaa.tmp",
    ):
        assert parse_temp_name(bad) is None
