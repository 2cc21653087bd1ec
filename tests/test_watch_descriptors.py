"""An idle watched table costs the collector no descriptor; deaths are still seen.

The watcher keeps no pidfd per process: a producer's death is hinted by inotify (the last close of its
table, which its exit makes) or by the kernel's process events, and checked by ``(pid, start time)``
before each read of its table. Real producers, real kills; readiness through pipes only.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from helpers_child import spawn_child
from helpers_watch import open_files
from kmemdump.collector.dump import DumpOptions
from kmemdump.collector.exits import ExitListener
from kmemdump.collector.watch import Event
from kmemdump.collector.watch import Watcher
from kmemdump.memory.core import CoreImage

pytestmark = pytest.mark.slow

_FORKING_PRODUCER = r"""
import ctypes, os
import kmemdump
kmemdump.init(table=True)
buf = kmemdump.alloc(64, name="words", persistent=True)
buf[:11] = b"last words!"
r, w = os.pipe()
libc = ctypes.CDLL(None, use_errno=True)
child = libc.fork()      # libc's fork: Python's at-fork hooks do not run, the table stays mapped
if child == 0:
    os.close(w)
    os.read(r, 1)        # until the test lets it go (it closes the pipe by killing the parent)
    os._exit(0)
os.close(r)
send({"pid": os.getpid(), "child": child})
block()
"""


def _until(watcher: Watcher, done: str, guard: float = 60.0) -> list[Event]:
    events: list[Event] = []
    end = time.monotonic() + guard
    while not any(e.kind == done for e in events):
        assert time.monotonic() < end, f"no {done!r} event within {guard}s: {[e.line() for e in events]}"
        events.extend(watcher.step())
    return events


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
                assert "anon_inode:[pidfd]" not in open_files()
                producer.kill()
                events = _until(watcher, "death")
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
