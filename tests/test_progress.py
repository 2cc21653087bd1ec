"""The feeder's progress check, against real threads in a real process, and the feeder run starts.

Each case runs in a spawned Python process whose threads really block (on locks, in reads, in sleeps)
or spin; the probe runs in a thread of that process, as the feeder does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers_child import spawn_child
from kmemdump.producer.progress import FUTEX_SYSCALL
from kmemdump.producer.progress import thread_waits_forever

pytestmark = pytest.mark.skipif(
    FUTEX_SYSCALL is None, reason="the futex system call number of this CPU is unknown"
)

PROBE = r"""
import os, sys, threading, time
from kmemdump.producer.progress import ProgressProbe
mode = sys.argv[1]
if mode == "deadlock":
    a, b = threading.Lock(), threading.Lock()
    both = threading.Barrier(2)
    def one(x, y):
        with x:
            both.wait()
            with y:
                pass
    threads = [threading.Thread(target=one, args=(a, b), daemon=True),
               threading.Thread(target=one, args=(b, a), daemon=True)]
elif mode == "sleep":
    threads = [threading.Thread(target=lambda: [time.sleep(0.01) for _ in iter(int, 1)], daemon=True)]
elif mode == "read":
    r, w = os.pipe()
    threads = [threading.Thread(target=lambda: os.read(r, 1), daemon=True)]
elif mode == "spin":
    threads = [threading.Thread(target=lambda: [None for _ in iter(int, 1)], daemon=True)]
elif mode == "timed":
    never = threading.Event()
    threads = [threading.Thread(target=lambda: [never.wait(5) for _ in iter(int, 1)], daemon=True)]
for t in threads:
    t.start()
time.sleep(0)
result = {}
def probe():
    p = ProgressProbe()
    deadline = time.monotonic() + 5
    answers = []
    while time.monotonic() < deadline and len(answers) < 30:
        answers.append(p.stuck())
        time.sleep(0.05)
    result["answers"] = answers
checker = threading.Thread(target=probe)
checker.start()
checker.join()                  # the main thread waits without a timeout too, as in a real deadlock
send(result)
"""


@pytest.mark.parametrize(
    ("mode", "stuck"),
    [("deadlock", True), ("sleep", False), ("read", False), ("spin", False), ("timed", False)],
)
def test_the_probe_sees_a_deadlock_and_nothing_else(mode: str, stuck: bool) -> None:
    with spawn_child(PROBE, args=[mode]) as child:
        answers = child.recv(timeout=60)["answers"]
    if stuck:
        assert answers[-1] is True and answers[0] is False  # the first look has nothing to compare with
    else:
        assert not any(answers), answers


def test_a_futex_wait_without_a_timeout_is_told_from_other_system_calls() -> None:
    nr = str(FUTEX_SYSCALL)
    assert thread_waits_forever(f"{nr} 0x7f00 0x189 0x0 0x0 0x0 0xffffffff 0x7ffd 0x7f12".encode())
    assert thread_waits_forever(f"{nr} 0x7f00 0x80 0x2 0x0 0x0 0x0 0x7ffd 0x7f12".encode())
    assert not thread_waits_forever(
        f"{nr} 0x7f00 0x189 0x0 0x7ffc0000 0x0 0x0 0x7ffd 0x7f12".encode()
    )  # timeout
    assert not thread_waits_forever(f"{nr} 0x7f00 0x81 0x1 0x0 0x0 0x0 0x7ffd 0x7f12".encode())  # FUTEX_WAKE
    assert not thread_waits_forever(b"0 0x3 0x7f00 0x1000 0x0 0x0 0x0 0x7ffd 0x7f12")  # read
    assert not thread_waits_forever(b"running")
    assert not thread_waits_forever(b"")


def test_a_feeder_started_on_a_programs_behalf_stops_when_it_arms_its_own_watchdog(table_dir: Path) -> None:
    code = r"""
import kmemdump
from kmemdump.formats.table import read_table
report = kmemdump.init(table=True, watchdog=5.0)
feeder = kmemdump.start_feeder(check_progress=True, on_behalf=True)
before = read_table(report.table).header
kmemdump.watchdog(2.0)               # the program's own
feeder.join(10)
after = read_table(report.table).header
mine = kmemdump.start_feeder()       # a feeder the program starts itself is its own
kmemdump.watchdog(3.0)
send({"before": [before.feeder, before.watchdog_timeout_ns],
      "after": [after.feeder, after.watchdog_timeout_ns], "stopped": not feeder.is_alive(),
      "mine_alive": mine.is_alive(),
      "mine_flag": read_table(report.table).header.feeder})
"""
    with spawn_child(code) as child:
        report = child.recv()
    assert report["before"] == [True, 5_000_000_000]
    assert report["after"] == [False, 2_000_000_000]
    assert report["stopped"] is True
    assert report["mine_alive"] is True and report["mine_flag"] is True
