"""An idle watched table costs the collector no descriptor; deaths are still seen.

The watcher keeps no pidfd per process: a producer's death is hinted by inotify (the last close of its
table, which its exit makes) or by the kernel's process events, and checked by ``(pid, start time)``
before each read of its table. Real producers, real kills; readiness through pipes only.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from helpers_child import spawn_child
from helpers_watch import WatchProcess
from helpers_watch import open_files
from helpers_watch import step_until
from kmemdump.collector.dump import DumpOptions
from kmemdump.collector.exits import ExitListener
from kmemdump.collector.watch import Watcher
from kmemdump.memory.core import CoreImage

pytestmark = pytest.mark.slow

_FORKING_PRODUCER = r"""
import ctypes, os
import kmemdump
kmemdump.init(table=True)
buf = kmemdump.alloc(64, name="words", persistent=True)
buf[:11] = b"last words!"
libc = ctypes.CDLL(None, use_errno=True)
child = libc.fork()      # libc's fork: Python's at-fork hooks do not run, the table stays mapped
if child == 0:
    while True:          # outlives its parent, until the test kills it
        libc.pause()
send({"pid": os.getpid(), "child": child})
block()
"""


@pytest.mark.parametrize("told_by", ["periodic check", "exit events"])
def test_a_death_is_seen_while_a_forked_child_keeps_the_table_mapped(
    table_dir: Path, dump_dir: Path, told_by: str
) -> None:
    # the parent's death closes nothing (its child shares the table's open file): no inotify hint. Without
    # process events the check before a periodic read (every max_sleep) must see it; with them (and no
    # periodic read within the test) the kernel's exit event must
    events_on = told_by == "exit events"
    if events_on:
        listener = ExitListener()
        listener.close()
        if listener.failure:
            pytest.skip(listener.failure)
    with spawn_child(_FORKING_PRODUCER) as producer:
        ready = producer.recv()
        pid, child = ready["pid"], ready["child"]
        try:
            with open(f"/proc/{child}/maps") as maps:
                assert f"/.{pid}-" in maps.read()  # the child maps its parent's table (under its first name)
            watcher = Watcher(
                [table_dir],
                DumpOptions(dump_dir, stacks=False),
                exit_events=events_on,
                max_sleep=3600.0 if events_on else 0.5,
            )
            try:
                assert [e.kind for e in watcher.scan()] == ["watch"]
                assert watcher.step() == []  # its first check: alive; the next comes only as the test says
                assert "anon_inode:[pidfd]" not in open_files()
                producer.kill()
                events = step_until(watcher, "death")
                os.kill(
                    child, 0
                )  # the child lives on, its parent's table still mapped: no close told of the death
                with open(f"/proc/{child}/maps") as maps:
                    assert f"/.{pid}-" in maps.read()
                deaths = [e for e in events if e.kind == "death"]
                assert [e.pid for e in deaths] == [pid], [e.line() for e in events]
                assert not [e for e in events if e.kind == "hang"]
                dump = deaths[0].dump
                assert dump is not None and dump.meta.arena == "ok"  # its persistent arena was read
                words = next(r for r in dump.meta.regions if r.name == "words")
                assert (words.status, words.source) == ("ok", "arena")
                with CoreImage.open(dump.path) as core:
                    assert core.read(words.address, 11) == b"last words!"
                assert not watcher.targets
            finally:
                watcher.close()
        finally:
            os.kill(child, signal.SIGKILL)  # not ours to reap: init or a subreaper does


_FLEET = r"""
import os, sys
import kmemdump
count = int(sys.argv[1])
hold_r, hold_w = os.pipe()
ready_r, ready_w = os.pipe()
go_r, go_w = os.pipe()
pids = []
for i in range(count + 1):
    pid = os.fork()
    if pid == 0:
        os.close(hold_w)
        os.close(ready_r)
        os.close(go_w)
        kmemdump.init(table=True)
        os.write(ready_w, b"r")
        if i == count:                 # the last one hangs when told: armed, fed once, never again
            os.read(go_r, 1)
            kmemdump.watchdog(0.5)
            os.write(ready_w, b"h")
        os.read(hold_r, 1)             # until the fleet's parent closes the pipe (it ends)
        kmemdump.shutdown()
        os._exit(0)
    pids.append(pid)
os.close(hold_r)
os.close(ready_w)
got = 0
while got < count + 1:
    got += len(os.read(ready_r, count + 1 - got))
send({"idle": pids[:-1], "hung": pids[-1]})
assert recv() == "hang"
os.write(go_w, b"g")
os.read(ready_r, 1)
send("hanging")
block()
os.close(hold_w)                       # the idle ones exit cleanly
for pid in pids:
    os.waitpid(pid, 0)
"""


def _count(lines: list[str], prefix: str) -> int:
    return sum(1 for line in lines if line.startswith(prefix))


def test_idle_tables_cost_no_descriptor_and_a_hang_is_dumped_under_a_low_limit(
    table_dir: Path, dump_dir: Path
) -> None:
    # 200 idle producers and one that hangs, watched by a real collector allowed 64 descriptors: it
    # adopts all 201 (a descriptor each would need 3 times its limit), its descriptors stay as many as
    # before the first table, and the hang is dumped
    count, limit = 200, 64
    with WatchProcess(table_dir, dump_dir, "--no-stacks", max_files=limit) as watch:
        collector = watch.popen.pid
        before = open_files(collector)
        with spawn_child(_FLEET, args=[str(count)]) as fleet:
            pids = fleet.recv(timeout=120)
            hung = pids["hung"]
            for pid in [*pids["idle"], hung]:
                watch.wait_for(f"watch pid={pid} ")
            after = open_files(collector)
            with open(f"/proc/{collector}/maps") as handle:
                claims = sum(1 for line in handle if line.rstrip().endswith(".table"))
            fleet.send("hang")
            assert fleet.recv() == "hanging"
            line = watch.wait_for(f"hang pid={hung} ")
            fleet.release()  # every producer exits cleanly
            assert fleet.wait(timeout=120) == 0
        watch.wait_for(lambda _: _count(watch.lines, "exit ") == count + 1)
    print(f"collector descriptors: {len(before)} before, {len(after)} watching {count + 1} tables")
    assert len(after) <= len(before) + 2, (before, after)  # at most a read in progress (directory, table)
    assert sum(name.endswith(".table") for name in after) <= 1  # 201 watched, at most one being read
    assert "anon_inode:[pidfd]" not in after
    assert claims == count + 1  # each claim a one-page mapping of its table, no descriptor
    dump = Path(line.split(" dump=")[1].split()[0])
    assert dump.is_file() and dump.parent == dump_dir
    assert not [text for text in watch.lines if text.startswith(("error", "death"))], watch.lines


def test_a_claim_without_a_descriptor_refuses_a_second_collector_until_the_first_is_killed(
    table_dir: Path, tmp_path: Path
) -> None:
    first_dumps, second_dumps = tmp_path / "first", tmp_path / "second"
    first_dumps.mkdir()
    second_dumps.mkdir()
    with spawn_child("import kmemdump\nsend(kmemdump.init(table=True).table)\nblock()\n") as child:
        table = child.recv()
        with WatchProcess(table_dir, first_dumps) as first:
            first.wait_for(f"watch pid={child.pid} ")
            assert table not in open_files(first.popen.pid)  # its claim holds no descriptor …
            with open(f"/proc/{first.popen.pid}/maps") as maps:
                assert table in maps.read()  # … but a mapping of the table
            with WatchProcess(table_dir, second_dumps) as second:
                skipped = second.wait_for(f"skip pid={child.pid} ")
                assert f"watched by another collector (pid {first.popen.pid})" in skipped
                first.popen.kill()  # SIGKILL: the kernel drops its lock with its mapping
                first.popen.wait()
                second.wait_for(f"watch pid={child.pid} ")
                child.kill()  # and the one that took over still sees the death
                line = second.wait_for(f"death pid={child.pid} ")
                assert " dump=" in line
    assert list(first_dumps.iterdir()) == []
    assert len(list(second_dumps.iterdir())) == 1


def test_a_table_replaced_under_its_name_is_never_read_as_the_one_adopted(
    table_dir: Path, dump_dir: Path
) -> None:
    # every read opens the table anew by its name: another file there (same name, another inode) is not
    # the one adopted; the watcher lets the old one go and adopts the new one with every check
    with spawn_child("import kmemdump\nsend(kmemdump.init(table=True).table)\nblock()\n") as child:
        table = Path(child.recv())
        watcher = Watcher([table_dir], DumpOptions(dump_dir, stacks=False), exit_events=False, max_sleep=0.5)
        try:
            assert [e.kind for e in watcher.scan()] == ["watch"]
            (target,) = watcher.targets.values()
            copy = table.with_name("copy")
            shutil.copyfile(table, copy)
            os.rename(copy, table)
            events = step_until(watcher, "watch")
            (again,) = watcher.targets.values()
            assert again is not target and again.identity == (os.stat(table).st_dev, os.stat(table).st_ino)
            assert again.identity != target.identity
            assert not [e for e in events if e.kind in ("death", "hang", "error")], [e.line() for e in events]
        finally:
            watcher.close()


def test_an_empty_fallback_table_directory_is_removed_once_no_producer_uses_it(
    tmp_path: Path, dump_dir: Path
) -> None:
    # a table directory writable by others is refused: the producer publishes in a private fallback,
    # /dev/shm/kmemdump-<uid>.<hex>, which nothing removed once its producers were gone
    refused = tmp_path / "shared"
    refused.mkdir()
    refused.chmod(0o777)
    producer_code = (
        "import sys, kmemdump\nreport = kmemdump.init(table=True, directory=sys.argv[1])\n"
        "send(report.table)\nblock()\n"
    )
    holder_code = (
        "import sys\nfrom pathlib import Path\nfrom kmemdump.producer.sharedfile import open_private_dir\n"
        "fd = open_private_dir(Path(sys.argv[1]))\nsend('holding')\nblock()\n"
    )
    fallback: Path | None = None
    try:
        with spawn_child(producer_code, args=[str(refused)]) as producer:
            fallback = Path(producer.recv()).parent
            assert fallback.parent == Path("/dev/shm") and fallback.name.startswith(
                f"kmemdump-{os.geteuid()}."
            )
            watcher = Watcher([fallback], DumpOptions(dump_dir, stacks=False), exit_events=False)
            try:
                assert [e.kind for e in watcher.scan()] == ["watch"]
                with spawn_child(holder_code, args=[str(fallback)]) as holder:
                    assert holder.recv() == "holding"  # about to publish there: its lock says so
                    producer.release()
                    assert producer.wait() == 0  # a clean exit: its files are gone
                    assert os.listdir(fallback) == []
                    assert [e.kind for e in watcher.scan()] == ["exit"]
                    assert fallback.is_dir()  # empty, but in use
                    holder.release()
                    assert holder.wait() == 0
                events = watcher.scan()
                assert [e.line() for e in events] == [
                    f"skip pid=0 fallback table directory {fallback} is empty and unused; removed it"
                ]
                assert not fallback.exists()
                assert watcher.scan() == []
            finally:
                watcher.close()
    finally:
        if fallback is not None:
            shutil.rmtree(fallback, ignore_errors=True)


def test_a_producer_removes_its_empty_fallback_directory_at_a_clean_exit(tmp_path: Path) -> None:
    refused = tmp_path / "shared"
    refused.mkdir()
    refused.chmod(0o777)  # writable by others: refused, a private fallback is made
    code = "import sys, kmemdump\nsend(kmemdump.init(table=True, directory=sys.argv[1]).table)\nblock()\n"
    fallback: Path | None = None
    try:
        with spawn_child(code, args=[str(refused)]) as producer:
            fallback = Path(producer.recv()).parent
            assert fallback.name.startswith(f"kmemdump-{os.geteuid()}.") and fallback.is_dir()
            producer.release()
            assert producer.wait() == 0
        assert not fallback.exists()  # no collector ran: the producer took it along
    finally:
        if fallback is not None:
            shutil.rmtree(fallback, ignore_errors=True)
