"""How a watched process ended, as a collector that is not its parent learns it.

The producer is a real process publishing a table; the collector is a :class:`Watcher` in this
process. Its parent is either this test (which leaves it a zombie: ``/proc/PID/stat`` tells), or
another process that reaps it at once (only the kernel's process-events connector tells, where the
kernel lets the collector listen).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from helpers_child import spawn_child
from kmemdump.collector.dump import DumpOptions
from kmemdump.collector.exits import ExitListener
from kmemdump.collector.watch import Event
from kmemdump.collector.watch import Watcher

pytestmark = pytest.mark.slow

PRODUCER = r"""
import os, sys
import kmemdump
report = kmemdump.init(table=True)
send({"pid": os.getpid(), "table": report.table})
if recv() == "exit7":
    os._exit(7)
block()
"""

# A parent that starts the producer, passes its messages on, and reaps it the moment it ends.
REAPING_PARENT = r"""
import json, os, subprocess, sys
producer = subprocess.Popen(
    [sys.executable, "-c", sys.argv[1]], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
)
send(json.loads(producer.stdout.readline()))
producer.wait()
send({"reaped": producer.returncode})
block()
"""
STANDALONE = r"""
import json, os, sys
def send(obj):
    print(json.dumps(obj), flush=True)
def recv():
    return sys.stdin.readline().strip()
def block():
    sys.stdin.read()
""" + PRODUCER.split("\n", 1)[1]


def _death_event(watcher: Watcher) -> Event:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for event in watcher.step():
            if event.kind == "death":
                return event
    raise AssertionError("no death dump within 30 s")


def test_a_zombie_tells_its_exit_code(table_dir: Path, dump_dir: Path) -> None:
    with spawn_child(PRODUCER) as child:
        ready = child.recv()
        watcher = Watcher([table_dir], DumpOptions(dump_dir), on_event=lambda e: None, exit_events=False)
        try:
            watcher.scan()
            child.send("exit7")
            event = _death_event(watcher)  # this test is its parent and has not reaped it: a zombie
        finally:
            watcher.close()
        assert child.popen.poll() == 7
    assert event.dump is not None and event.dump.meta.death is not None
    death = event.dump.meta.death
    assert (death.exit_code, death.source) == (7, "proc stat")
    assert "process died (exit code 7)" in event.message
    assert ready["pid"] == event.pid


def _reaped_elsewhere(table_dir: Path, dump_dir: Path, *, exit_events: bool) -> Event:
    """Start the producer under a parent that reaps it, end it, and let the watcher see it only then."""
    with spawn_child(REAPING_PARENT, args=[STANDALONE]) as parent:
        ready = parent.recv()
        watcher = Watcher(
            [table_dir], DumpOptions(dump_dir), on_event=lambda e: None, exit_events=exit_events
        )
        try:
            watcher.scan()
            assert [t.pid for t in watcher.targets.values()] == [ready["pid"]]
            os.kill(ready["pid"], signal.SIGKILL)
            reaped = parent.recv()["reaped"]  # gone for good: no zombie is left to read
            assert reaped == -signal.SIGKILL
            return _death_event(watcher)
        finally:
            watcher.close()


def test_the_process_events_connector_tells_a_collector_that_is_not_the_parent(
    table_dir: Path, dump_dir: Path
) -> None:
    listener = ExitListener()
    listener.close()
    if listener.failure:
        pytest.skip(f"this kernel does not let us hear process events: {listener.failure}")
    event = _reaped_elsewhere(table_dir, dump_dir, exit_events=True)
    assert event.dump is not None and event.dump.meta.death is not None
    death = event.dump.meta.death
    assert (death.signal, death.signal_name, death.source) == (signal.SIGKILL, "SIGKILL", "proc connector")
    assert "killed by SIGKILL" in event.message


def test_without_a_source_the_cause_is_unknown_and_says_why(table_dir: Path, dump_dir: Path) -> None:
    event = _reaped_elsewhere(table_dir, dump_dir, exit_events=False)
    assert event.dump is not None and event.dump.meta.death is not None
    death = event.dump.meta.death
    assert not death.known and death.source == ""
    assert "reaped it before the collector could read its exit status" in death.detail
    assert death.describe().startswith("unknown (")
