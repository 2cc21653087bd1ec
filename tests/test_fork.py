"""Fork is a first-class case: a child re-arms kmemdump for itself, or publishes nothing at all.

Each test forks inside a real spawned Python process (the test process itself never forks) and
reads the tables both sides publish from outside, as a collector would.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from helpers_child import spawn_child

pytestmark = pytest.mark.slow

# The parent publishes a table with a watchdog and a persistent banner; the child reports what
# its own init() gave it. The pipe is the child's only way to talk; the parent waits for it.
CHILD_INITS = r"""
import ctypes, json, os, sys
import kmemdump
from kmemdump.formats.table import read_table

def banner():
    region = kmemdump.default_registry().get(kmemdump.ID.BANNER)
    return ctypes.string_at(region.address, region.size).split(b"\0")[0].decode()

parent = kmemdump.init(table=True, watchdog=30.0)
kmemdump.feed()
before = read_table(parent.table).header
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    sys.argv = ["worker", "--role", "child"]          # as a prefork server renames its workers
    report = kmemdump.init(table=True, watchdog=7.0)
    journal = kmemdump.alloc(64, name="journal", persistent=True)
    for _ in range(2000):
        kmemdump.feed()
    snap = read_table(report.table)
    out = {"pid": os.getpid(), "table": report.table, "header_pid": snap.header.pid,
           "timeout_ns": snap.header.watchdog_timeout_ns, "heartbeat": snap.header.heartbeat,
           "banner": banner(), "ids": sorted(e.id for e in snap.entries),
           "persistent": sorted(e.name for e in snap.entries if e.persistent),
           "arena": snap.header.arena_size}
    os.write(w, json.dumps(out).encode())
    os.close(w)
    sys.exit(0)                                     # a normal exit: atexit removes the child's files
os.close(w)
child = json.loads(os.read(r, 65536))
_, status = os.waitpid(pid, 0)
after = read_table(parent.table).header
send({"child": child, "status": status, "parent_pid": os.getpid(), "parent_table": parent.table,
      "parent_banner": banner(), "before": [before.heartbeat, before.generation, before.watchdog_timeout_ns],
      "after": [after.heartbeat, after.generation, after.watchdog_timeout_ns],
      "left": sorted(os.listdir(os.path.dirname(parent.table)))})
block()
"""


def test_a_child_that_calls_init_gets_its_own_table_banner_and_watchdog(table_dir: Path) -> None:
    with spawn_child(CHILD_INITS) as parent:
        report = parent.recv()
    child = report["child"]
    assert report["status"] == 0
    # its own table, under its own pid, with its own watchdog and a banner made for it
    assert Path(child["table"]).name.startswith(f"{child['pid']}-")
    assert child["header_pid"] == child["pid"] != report["parent_pid"]
    assert child["timeout_ns"] == 7_000_000_000
    assert child["heartbeat"] >= 2000
    assert f"pid: {child['pid']} " in child["banner"]
    assert "argv: worker --role child" in child["banner"]
    assert child["ids"][:2] == [1, 2]  # banner, PYCOREINFO
    assert child["persistent"] == ["banner", "journal"]  # in the child's own arena
    assert child["arena"] > 0
    # the parent's table and banner were not touched by anything the child did
    assert report["before"] == report["after"]
    assert f"pid: {report['parent_pid']} " in report["parent_banner"]
    parent_name = Path(report["parent_table"]).name
    assert report["left"] == sorted([parent_name, parent_name.replace(".table", ".arena")])


CHILD_STAYS_QUIET = r"""
import json, os
import kmemdump
from kmemdump.formats.table import read_table

parent = kmemdump.init(table=True, watchdog=30.0)
kmemdump.start_feeder(0.01)
kmemdump.stop_feeder()
kmemdump.feed()
before = read_table(parent.table)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    for _ in range(5000):
        kmemdump.feed()                             # goes nowhere: the child published no table
    buf = kmemdump.alloc(32, name="child-only")    # kept in the child's registry, published nowhere
    os.write(w, json.dumps({"backend_published": kmemdump.current_backend().published}).encode())
    os.close(w)
    os._exit(0)                                     # as a multiprocessing child ends
os.close(w)
child = json.loads(os.read(r, 65536))
os.waitpid(pid, 0)
after = read_table(parent.table)
send({"child": child, "same_header": [before.header.heartbeat, before.header.generation]
      == [after.header.heartbeat, after.header.generation],
      "names": [e.name for e in after.entries], "files": sorted(os.listdir(os.path.dirname(parent.table)))})
block()
"""


def test_a_child_that_does_not_call_init_publishes_nothing_and_disturbs_nothing(table_dir: Path) -> None:
    with spawn_child(CHILD_STAYS_QUIET) as parent:
        report = parent.recv()
        files = sorted(p.name for p in table_dir.iterdir())
        assert [name.split("-")[0] for name in files] == [str(parent.pid)] * 2  # the parent's table, arena
    assert report["child"] == {"backend_published": False}
    assert report["same_header"] is True
    assert "child-only" not in report["names"]


# Another thread holds each producer lock across the fork, for longer than a fork waits for it.
LOCK_HELD_AT_FORK = r"""
import json, os, signal, threading, time
import kmemdump
from kmemdump.producer import heartbeat
from kmemdump.producer.python.pyinfo import publisher

kmemdump.init(table=True, watchdog=30.0)
locks = {"registry": kmemdump.default_registry()._lock, "heartbeat": heartbeat._state.lock,
         "pycoreinfo": publisher._lock}
held, release = threading.Event(), threading.Event()
def hold():
    for lock in locks.values():
        lock.acquire()
    held.set()
    release.wait()
    for lock in locks.values():
        lock.release()
thread = threading.Thread(target=hold)
thread.start()
held.wait()
r, w = os.pipe()
pid = os.fork()                                     # waits a bounded time for the registry lock
if pid == 0:
    os.close(r)
    signal.alarm(20)                                # a deadlock becomes a SIGALRM death, not a hang
    report = kmemdump.init(table=True, watchdog=5.0)
    rid = kmemdump.register_object({"k": "v"}, depth=1)   # registry, table and PYCOREINFO locks
    kmemdump.watchdog(6.0)                          # the heartbeat lock
    kmemdump.unregister(rid)
    os.write(w, json.dumps({"table": report.table}).encode())
    os.close(w)
    os._exit(0)
os.close(w)
release.set()
thread.join()
child = json.loads(os.read(r, 65536) or b"null")
_, status = os.waitpid(pid, 0)
send({"child": child, "status": status})
block()
"""


def test_a_lock_held_by_another_thread_at_fork_does_not_deadlock_the_child(table_dir: Path) -> None:
    with spawn_child(LOCK_HELD_AT_FORK) as parent:
        report = parent.recv(timeout=60)
    assert report["status"] == 0, f"child ended with wait status {report['status']} (SIGALRM = deadlock)"
    assert report["child"]["table"]


CHILD_SHUTS_DOWN = r"""
import json, os, sys
import kmemdump
kmemdump.init(table=True)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    report = kmemdump.init(table=True, watchdog=5.0)
    kmemdump.alloc(16, persistent=True)
    os.write(w, (json.dumps({"table": report.table}) + "\n").encode())
    if sys.argv[1] == "shutdown":
        kmemdump.shutdown()                         # the documented way to end without a death
    os._exit(0)
os.close(w)
child = json.loads(os.fdopen(r).readline())
_, status = os.waitpid(pid, 0)
send({"child": child, "files": sorted(os.listdir(os.path.dirname(child["table"])))})
block()
"""


@pytest.mark.parametrize("how", ["shutdown", "bare"])
def test_shutdown_before_os_exit_leaves_nothing_behind(table_dir: Path, how: str) -> None:
    with spawn_child(CHILD_SHUTS_DOWN, args=[how]) as parent:
        report = parent.recv()
        child_name = Path(report["child"]["table"]).name
        child_files = [f for f in report["files"] if f.startswith(child_name.split(".")[0] + ".")]
        if how == "shutdown":
            assert child_files == []
        else:  # os._exit alone skips atexit: the table and arena stay, and a collector sees a death
            assert sorted(child_files) == sorted([child_name, child_name.replace(".table", ".arena")])
        assert any(f.startswith(f"{parent.pid}-") for f in report["files"])  # the parent's own


def test_a_forked_child_that_publishes_removes_only_its_own_table_on_sigterm(table_dir: Path) -> None:
    code = r"""
import json, os, signal, time
import kmemdump
kmemdump.init(table=True)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    report = kmemdump.init(table=True)
    os.write(w, (json.dumps({"table": report.table}) + "\n").encode())
    while True:
        time.sleep(1)
os.close(w)
child = json.loads(os.fdopen(r).readline())
os.kill(pid, signal.SIGTERM)
_, status = os.waitpid(pid, 0)
send({"child": child, "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
      "files": sorted(os.listdir(os.path.dirname(child["table"])))})
block()
"""
    with spawn_child(code) as parent:
        report = parent.recv()
    assert report["signal"] == signal.SIGTERM  # it still dies of the signal
    assert all(f.startswith(f"{parent.pid}-") for f in report["files"]), report["files"]
    assert len(report["files"]) == 2  # the parent's table and arena stay
    assert not os.path.exists(report["child"]["table"])


def test_a_child_does_not_inherit_the_parents_watchdog(table_dir: Path) -> None:
    code = r"""
import json, os
import kmemdump
from kmemdump.formats.table import read_table
kmemdump.init(table=True, watchdog=30.0)
kmemdump.start_feeder(0.05)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    report = kmemdump.init(table=True)             # no watchdog asked for: none armed
    header = read_table(report.table).header
    os.write(w, json.dumps({"timeout": header.watchdog_timeout_ns, "feeder": header.feeder,
                            "threads": [t.name for t in __import__("threading").enumerate()]}).encode())
    os.close(w)
    os._exit(0)
os.close(w)
send(json.loads(os.read(r, 65536)))
os.waitpid(pid, 0)
block()
"""
    with spawn_child(code) as parent:
        child = parent.recv()
    # nothing in the child feeds a watchdog yet: its table must not look hung the moment it appears
    assert (child["timeout"], child["feeder"]) == (0, False)
    assert "kmemdump-feeder" not in child["threads"]


def test_a_child_without_a_table_gets_the_default_stop_signals_back(table_dir: Path) -> None:
    code = r"""
import json, os, signal
import kmemdump
kmemdump.init(table=True)
parent = signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    before = signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    kmemdump.init(table=True)
    after = signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    os.write(w, json.dumps({"default_before_init": before, "default_after_init": after}).encode())
    os._exit(0)
os.close(w)
send({"parent_handles": parent, **json.loads(os.read(r, 4096))})
os.waitpid(pid, 0)
block()
"""
    with spawn_child(code) as parent:
        report = parent.recv()
    assert report == {"parent_handles": True, "default_before_init": True, "default_after_init": False}
