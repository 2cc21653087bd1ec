"""The idle collector: a table read only when its deadline may have passed, inotify, deaths without pidfds.

Real producers (child processes) and a real :class:`Watcher`. Where a test must show that something
woke the watcher, the watcher is given ``max_sleep=3600``: its slow timer then never fires within the
test, so the wake-up can only have come from what the test names (inotify, a deadline). No
assertion is about speed: counts of reads are upper bounds that a slow machine only lowers.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers_child import Child
from helpers_child import spawn_child
from helpers_watch import open_files
from helpers_watch import step_until
from kmemdump.collector.dirwatch import DirWatch
from kmemdump.collector.dump import DumpOptions
from kmemdump.collector.watch import Watcher

pytestmark = pytest.mark.slow

_NEVER = 3600.0
"""A max_sleep the test never reaches: the watcher's slow timer plays no part."""

_PRODUCER = r"""
import os, sys
import kmemdump
timeout = float(sys.argv[1])
if timeout:
    kmemdump.init(table=True, watchdog=timeout, feeder=True)
else:
    kmemdump.init(table=True)
send({"pid": os.getpid()})
while True:
    msg = recv()
    if msg is None or msg == "exit":
        break
    if msg == "churn":                         # arm and disarm as fast as it can (a watchdog per request)
        send("churning")
        while True:
            kmemdump.watchdog(5.0)
            kmemdump.watchdog(None)
    if msg == "arm-and-hang":                  # arm a short watchdog, feed it once, never again
        kmemdump.watchdog(0.5)
        send("armed")
        block()
        break
"""


def _producer(timeout: float) -> Child:
    return spawn_child(_PRODUCER, args=[str(timeout)])


@pytest.fixture
def inotify() -> None:
    if DirWatch.open() is None:
        pytest.skip("inotify cannot be had here (no instances left for this user, or refused)")


def test_fed_table_is_read_only_when_its_deadline_may_pass(
    table_dir: Path, dump_dir: Path, inotify: None
) -> None:
    # a 3 s watchdog fed every 0.375 s: once read, the table's next deadline is >= 2.6 s away, so in
    # the 2 s that follow it is read at most once more (a read batched a little early), never at every
    # wake-up as a poller does (8 times at 0.25 s).
    with _producer(3.0) as child:
        child.recv()
        watcher = Watcher([table_dir], DumpOptions(dump_dir, stacks=False), exit_events=False)
        try:
            assert [e.kind for e in watcher.scan()] == ["watch"]
            watcher.step()  # the first read of a new table is at once
            first, steps = watcher.header_reads, 0
            assert first == 1
            end = time.monotonic() + 2.0
            while time.monotonic() < end:
                assert not [e for e in watcher.step() if e.kind in ("hang", "error")]
                steps += 1
            assert watcher.header_reads - first <= 1, (watcher.header_reads, steps)
            assert steps <= 3, steps  # it slept until something was due, it did not poll
        finally:
            watcher.close()


def test_hang_is_dumped_at_its_deadline_with_few_reads(
    table_dir: Path, dump_dir: Path, inotify: None
) -> None:
    with _producer(1.0) as child:
        pid = child.recv()["pid"]
        watcher = Watcher(
            [table_dir], DumpOptions(dump_dir, stacks=False), exit_events=False, max_sleep=_NEVER
        )
        try:
            watcher.scan()
            watcher.step()
            os.kill(pid, signal.SIGSTOP)  # the feeder thread stops with the rest: a whole-process stall
            events = step_until(watcher, "hang")
            hang = next(e for e in events if e.kind == "hang")
            assert hang.pid == pid and hang.dump is not None and hang.dump.path.exists()
            # read once at adoption, then at (or batched just before) each deadline it saw: a handful
            assert watcher.header_reads <= 6, watcher.header_reads
        finally:
            os.kill(pid, signal.SIGCONT)
            watcher.close()


def test_new_table_is_picked_up_through_inotify(table_dir: Path, dump_dir: Path, inotify: None) -> None:
    watcher = Watcher([table_dir], DumpOptions(dump_dir, stacks=False), exit_events=False, max_sleep=_NEVER)
    try:
        assert watcher.scan() == []  # an empty directory, now watched; the next listing would be in an hour
        with _producer(0) as child:
            pid = child.recv()["pid"]
            events = step_until(watcher, "watch")
            assert [e.pid for e in events if e.kind == "watch"] == [pid]
    finally:
        watcher.close()


def test_watchdog_armed_later_is_read_at_once(table_dir: Path, dump_dir: Path, inotify: None) -> None:
    # no watchdog at adoption: the table is not due for an hour. Arming touches the file; inotify has
    # it read, and its hang is dumped.
    with _producer(0) as child:
        pid = child.recv()["pid"]
        watcher = Watcher(
            [table_dir], DumpOptions(dump_dir, stacks=False), exit_events=False, max_sleep=_NEVER
        )
        try:
            watcher.scan()
            watcher.step()
            before = watcher.header_reads
            child.send("arm-and-hang")
            assert child.recv() == "armed"
            events = step_until(watcher, "hang")
            assert [e.pid for e in events if e.kind == "hang"] == [pid]
            assert watcher.header_reads > before
        finally:
            watcher.close()


def test_watchdogs_armed_per_request_wake_the_watcher_a_bounded_number_of_times(
    table_dir: Path, dump_dir: Path, inotify: None
) -> None:
    # each arming touches the table; however fast they come, inotify is read at most once in 50 ms
    with _producer(0) as child:
        child.recv()
        watcher = Watcher(
            [table_dir], DumpOptions(dump_dir, stacks=False), exit_events=False, max_sleep=_NEVER
        )
        try:
            watcher.scan()
            watcher.step()
            child.send("churn")
            assert child.recv() == "churning"
            steps, reads, start = 0, watcher.header_reads, time.monotonic()
            while time.monotonic() - start < 1.0:
                watcher.step()
                steps += 1
            elapsed = time.monotonic() - start
            assert steps >= 2  # it was woken: the touches arrive
            assert steps <= 2 * elapsed / 0.05 + 4, (steps, elapsed)  # a read, then a wake to listen again
            assert watcher.header_reads - reads <= steps
        finally:
            watcher.close()


def test_death_is_seen_through_inotify_without_a_pidfd(
    table_dir: Path, dump_dir: Path, inotify: None
) -> None:
    # no watchdog, no timer, no process events: only inotify (the dead producer's last close of its
    # table) can end the step's wait; the watcher holds no pidfd for it
    with _producer(0) as child:
        pid = child.recv()["pid"]
        watcher = Watcher(
            [table_dir], DumpOptions(dump_dir, stacks=False), exit_events=False, max_sleep=_NEVER
        )
        try:
            watcher.scan()
            watcher.step()
            reads = watcher.header_reads
            assert "anon_inode:[pidfd]" not in open_files()
            child.kill()
            events = step_until(watcher, "death")  # each step ends only on an inotify event or a recheck
            deaths = [e for e in events if e.kind == "death"]
            assert [e.pid for e in deaths] == [pid], [e.line() for e in events]
            assert deaths[0].dump is not None and deaths[0].dump.path.exists()
            assert watcher.header_reads == reads  # the death needed no polling of the table
            assert not watcher.targets
        finally:
            watcher.close()


_NO_INOTIFY = r"""
import ctypes, json, os, sys, time
from pathlib import Path
import kmemdump
from kmemdump.collector.dirwatch import DirWatch
from kmemdump.collector.dump import DumpOptions
from kmemdump.collector.watch import Watcher
stranger, tables, dumps = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
libc = ctypes.CDLL(None, use_errno=True)
os.seteuid(stranger)  # inotify instances are counted per (effective) user: take all of this one's
held = []
while len(held) < 100_000:
    fd = libc.inotify_init1(os.O_CLOEXEC)
    if fd < 0:
        break
    held.append(fd)
report = {"instances": len(held), "refused": os.strerror(ctypes.get_errno())}
watcher = Watcher([tables], DumpOptions(dumps, stacks=False), exit_events=False, max_sleep=3600)
os.seteuid(0)
report["watcher_inotify"] = watcher._dirwatch is not None
report["inotify_as_root"] = DirWatch.open() is not None  # only the watcher went without
report["first"] = [e.kind for e in watcher.scan()]
ready_r, ready_w = os.pipe()
go_r, go_w = os.pipe()
child = os.fork()
if child == 0:
    os.close(ready_r)
    os.close(go_w)
    kmemdump.init(table=True, directory=str(tables))
    os.write(ready_w, b"r")
    os.read(go_r, 1)
    os._exit(0)
os.close(ready_w)
os.close(go_r)
os.read(ready_r, 1)
kinds = []
end = time.monotonic() + 60
while "watch" not in kinds and time.monotonic() < end:
    kinds += [e.kind for e in watcher.step()]
report["then"] = kinds
os.close(go_w)
os.waitpid(child, 0)
watcher.close()
print(json.dumps(report))
"""


def _unused_uid() -> int:
    for _ in range(100):
        uid = random.randrange(2_000_000, 3_000_000)
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    pytest.skip("no unused uid found")


@pytest.mark.skipif(os.geteuid() != 0, reason="taking another uid's inotify instances needs root (seteuid)")
def test_without_inotify_new_tables_are_found_on_the_timer(table_dir: Path, dump_dir: Path) -> None:
    # the watcher is made while its effective user has no inotify instance left (an unused uid: the
    # kernel counts instances per uid, no account needed), then carries on as root
    out = subprocess.run(
        [sys.executable, "-c", _NO_INOTIFY, str(_unused_uid()), str(table_dir), str(dump_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.splitlines()[-1])
    assert report["instances"] < 100_000 and report["refused"] == os.strerror(errno.EMFILE), report
    assert report["watcher_inotify"] is False and report["inotify_as_root"] is True, report
    assert report["first"] == []
    assert report["then"].count("watch") == 1, report  # found by listing on the short timer
