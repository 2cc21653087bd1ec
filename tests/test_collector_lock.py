"""Only one collector acts on a process at a time, and a second one says so.

Two real `kmemdump watch` processes over the same table directory (the host's service and one started
by hand): one adopts the table, the other logs that it is watched by another collector; a hang is
dumped once; when the first collector ends, the second takes over.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from helpers_child import spawn_child
from helpers_watch import KMEMDUMP
from helpers_watch import WatchProcess
from kmemdump.collector.dump import acting_on
from kmemdump.errors import CollectorError

pytestmark = pytest.mark.slow

PRODUCER = r"""
import kmemdump
report = kmemdump.init(table=True, watchdog=60.0)
send(report.table)
while (msg := recv()) == "feed":
    kmemdump.feed()
    send("fed")
kmemdump.watchdog(0.5)          # armed, then never fed again: a hang
send("stalling")
block()
"""


def test_two_collectors_never_both_act_on_one_process(table_dir: Path, tmp_path: Path) -> None:
    first_dumps, second_dumps = tmp_path / "first", tmp_path / "second"
    first_dumps.mkdir()
    second_dumps.mkdir()
    with spawn_child(PRODUCER) as child:
        child.recv()
        first = WatchProcess(table_dir, first_dumps)
        try:
            first.wait_for(f"watch pid={child.pid} ")
            with WatchProcess(table_dir, second_dumps) as second:
                skipped = second.wait_for(f"skip pid={child.pid} ")
                assert f"watched by another collector (pid {first.popen.pid})" in skipped
                child.send("stall")
                assert child.recv() == "stalling"
                first.wait_for(f"hang pid={child.pid} ")
                assert list(second_dumps.iterdir()) == []  # the stall was dumped once, by the first
                first.stop()  # the first collector goes: the second takes over the table
                second.wait_for(f"watch pid={child.pid} ")
                # the new watcher dumps the stall it inherits once more: it cannot know of the old dump
                second.wait_for(f"hang pid={child.pid} ")
        finally:
            first.stop()
    assert len(list(first_dumps.iterdir())) == 1
    assert len(list(second_dumps.iterdir())) == 1
    hang_lines = [i for i, line in enumerate(second.lines) if line.startswith("hang")]
    watch_line = next(i for i, line in enumerate(second.lines) if line.startswith(f"watch pid={child.pid} "))
    assert hang_lines and min(hang_lines) > watch_line  # only after it took over
    assert sum(1 for line in second.lines if line.startswith(f"skip pid={child.pid} ")) == 1  # said once


def test_a_dump_waits_for_another_dump_of_the_same_process(table_dir: Path, dump_dir: Path) -> None:
    with spawn_child(PRODUCER) as child:
        table = Path(child.recv())
        with acting_on(table, child.pid):  # another collector is dumping it right now
            refused = pytest.raises(CollectorError, match="another collector is dumping this process")
            with refused, acting_on(table, child.pid, wait=0.2):
                pass
            busy = subprocess.Popen(
                [*KMEMDUMP, "dump", str(child.pid), "--dir", str(dump_dir)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            with pytest.raises(subprocess.TimeoutExpired):
                busy.wait(timeout=1.0)  # it waits for the first dump instead of overlapping it
        _out, err = busy.communicate(timeout=60)  # released: it goes on
        assert busy.returncode == 0, err
        assert len(list(dump_dir.iterdir())) == 1
