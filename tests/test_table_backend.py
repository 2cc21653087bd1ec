"""SharedTableBackend: the table file's life, its permissions, and what other processes see of it.

Real processes throughout; every wait is on a pipe message (``helpers_child``) or a bounded poll of a
value, never a sleep standing in for a readiness signal.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import struct
import time
from collections import defaultdict
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path

import pytest

from budget import seconds
from helpers_child import spawn_child
from kmemdump.errors import BackendError
from kmemdump.errors import InvalidRegionError
from kmemdump.errors import RegionExistsError
from kmemdump.errors import RegistryFullError
from kmemdump.formats.enums import RegionKind
from kmemdump.formats.enums import TableState
from kmemdump.formats.table import TableReader
from kmemdump.formats.table import TableSnapshot
from kmemdump.formats.table import read_table
from kmemdump.formats.table import table_size
from kmemdump.formats.table import write_collector_pid
from kmemdump.procinfo import process_start_time
from kmemdump.procinfo import self_start_time
from kmemdump.producer.backends import table as table_backend
from kmemdump.producer.backends.table import SharedTableBackend
from kmemdump.producer.region import Region


@pytest.fixture
def tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where tables go (not created yet: the backend creates it); exported as $KMEMDUMP_DIR."""
    path = tmp_path / "tables"
    monkeypatch.setenv("KMEMDUMP_DIR", str(path))
    return path


@pytest.fixture
def backend(tables: Path) -> Iterator[SharedTableBackend]:
    published = SharedTableBackend(tables, capacity=8)
    yield published
    published.close()


def region(region_id: int, name: str | None = None, kind: RegionKind = RegionKind.ADDRESS) -> Region:
    """A region whose fields all derive from its ID."""
    return Region(
        region_id, region_id * 0x1000, region_id + 7, kind, f"r{region_id}" if name is None else name
    )


def as_rows(snapshot: TableSnapshot) -> list[tuple[int, str, int, int, int]]:
    return [(e.id, e.name, e.address, e.size, int(e.kind)) for e in snapshot.entries]


def region_rows(regions: list[Region]) -> list[tuple[int, str, int, int, int]]:
    return sorted((r.id, r.name, r.address, r.size, int(r.kind)) for r in regions)


def own_table_name() -> str:
    return f"{os.getpid()}-{self_start_time()}.table"


# --- the directory and the file ----------------------------------------------------------------------


def test_private_directory_and_file_whatever_the_umask(tables: Path) -> None:
    old = os.umask(0)
    try:
        backend = SharedTableBackend(capacity=8)  # the directory comes from $KMEMDUMP_DIR
    finally:
        os.umask(old)
    try:
        assert backend.path == tables / own_table_name()
        assert stat.S_IMODE(os.lstat(tables).st_mode) == 0o700
        info = os.lstat(backend.path)
        assert stat.S_ISREG(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert info.st_size == table_size(8)
        assert os.listdir(tables) == [backend.path.name]  # the temporary name is gone
        header = read_table(backend.path).header
        assert (header.pid, header.start_time) == (os.getpid(), process_start_time(os.getpid()))
        assert header.state == TableState.RUNNING
        assert header.capacity == 8
        assert header.created_ns > 0
    finally:
        backend.close()


def _falls_back(asked: Path, why: str) -> None:
    """The table goes to a fresh private directory instead of ``asked``, which is left untouched."""
    backend = SharedTableBackend(asked)
    try:
        assert why in backend.fallback and str(backend.directory) in backend.fallback
        assert backend.directory != asked and backend.directory.parent == Path("/dev/shm")
        assert backend.directory.name.startswith(f"kmemdump-{os.geteuid()}.")
        info = os.lstat(backend.directory)
        assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
        assert info.st_uid == os.geteuid() and backend.path.parent == backend.directory
    finally:
        backend.close()
        shutil.rmtree(backend.directory, ignore_errors=True)


def test_a_group_or_world_writable_directory_is_refused_for_a_private_one(tables: Path) -> None:
    tables.mkdir(mode=0o700)
    tables.chmod(0o777)
    _falls_back(tables, "writable by group or others")
    assert os.listdir(tables) == []


def test_a_symlinked_directory_or_a_file_is_refused_for_a_private_one(tmp_path: Path, tables: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    tables.symlink_to(real)
    _falls_back(tables, "symbolic link")
    assert os.listdir(real) == []
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"")
    _falls_back(not_a_dir, "not a directory")
    _falls_back(tmp_path / "missing" / "tables", "cannot create")


def test_a_directory_of_another_user_is_refused_for_a_private_one(
    tables: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.geteuid() != 0:
        pytest.skip("gives the directory to another uid (chown)")
    tables.mkdir(mode=0o700)
    os.chown(tables, 4242, 4242)
    _falls_back(tables, "another user")


def test_a_symlink_planted_at_the_table_path_is_not_followed(tmp_path: Path, tables: Path) -> None:
    tables.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tables / own_table_name()).symlink_to(victim)
    dangling = tmp_path / "not-created"
    with pytest.raises(BackendError, match="not a stale table"):
        SharedTableBackend(tables)
    assert victim.read_bytes() == b"precious"
    (tables / own_table_name()).unlink()
    (tables / own_table_name()).symlink_to(dangling)
    with pytest.raises(BackendError, match="not a stale table"):
        SharedTableBackend(tables)
    assert not dangling.exists()
    assert sorted(os.listdir(tables)) == [own_table_name()]  # no temporary file left behind


def test_a_stale_table_of_ours_is_replaced(tables: Path) -> None:
    tables.mkdir(mode=0o700)
    stale = tables / own_table_name()
    stale.write_bytes(b"left over from an earlier boot")
    stale.chmod(0o600)
    backend = SharedTableBackend(tables, capacity=4)
    try:
        assert read_table(backend.path).header.capacity == 4
    finally:
        backend.close()


def test_a_second_live_backend_cannot_take_the_table_over(backend: SharedTableBackend, tables: Path) -> None:
    backend.register_region(region(16))
    with pytest.raises(BackendError, match="not a stale table"):
        SharedTableBackend(tables)
    assert [e.id for e in read_table(backend.path).entries] == [16]
    backend.close()
    again = SharedTableBackend(tables)
    again.close()


def test_bad_capacity_is_refused(tables: Path) -> None:
    for capacity in (0, 65537, True):
        with pytest.raises(BackendError, match="capacity"):
            SharedTableBackend(tables, capacity=capacity)


# --- registering ------------------------------------------------------------------------------------------


def test_the_table_mirrors_registrations(backend: SharedTableBackend) -> None:
    regions = [region(16), region(1, "banner", RegionKind.OBJECT), region(2**32 - 1, "top")]
    for item in regions:
        backend.register_region(item)
    snap = read_table(backend.path)
    assert as_rows(snap) == region_rows(regions)
    assert {e.id: e.slot for e in snap.entries} == {16: 0, 1: 1, 2**32 - 1: 2}  # lowest free slot first
    backend.unregister_region(regions[1])
    backend.register_region(region(40))
    snap = read_table(backend.path)
    assert {e.id: e.slot for e in snap.entries} == {16: 0, 40: 1, 2**32 - 1: 2}  # the freed slot is reused
    assert snap.header.count == 3
    assert len(backend) == 3


def test_refusals_leave_table_and_slots_intact(tables: Path) -> None:
    backend = SharedTableBackend(tables, capacity=2)
    try:
        backend.register_region(region(16))
        generation = read_table(backend.path).header.generation
        with pytest.raises(RegionExistsError):
            backend.register_region(region(16))
        with pytest.raises(InvalidRegionError, match="name"):
            backend.register_region(region(17, "x" * 40))
        with pytest.raises(InvalidRegionError, match="address space"):
            backend.register_region(Region(18, 2**64 - 4, 8, RegionKind.ADDRESS, "wraps"))
        backend.unregister_region(region(99))  # unknown: ignored
        assert read_table(backend.path).header.generation == generation
        backend.register_region(region(17))  # the refused attempts did not leak the last slot
        with pytest.raises(RegistryFullError):
            backend.register_region(region(18))
        assert [e.id for e in read_table(backend.path).entries] == [16, 17]
    finally:
        backend.close()


def test_close_marks_exiting_removes_the_file_and_refuses_more(backend: SharedTableBackend) -> None:
    backend.register_region(region(16))
    path = backend.path
    with TableReader(path) as reader:  # a reader that opened the table before it went away
        backend.close()
        assert reader.header().state == TableState.EXITING
    assert not path.exists()
    backend.close()  # idempotent
    with pytest.raises(BackendError, match="closed"):
        backend.register_region(region(17))
    with pytest.raises(BackendError, match="no table"):
        _ = backend.path
    with pytest.raises(BackendError, match="no table"):
        _ = backend.writer
    backend.unregister_region(region(16))  # harmless after close


def test_reopen_is_only_for_a_forked_child(backend: SharedTableBackend) -> None:
    with pytest.raises(BackendError, match="already publishes"):
        backend.reopen_for_child()


# --- the collector's ptrace permission ------------------------------------------------------------------


def test_grant_ptrace_follows_the_collector_pid(
    backend: SharedTableBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def record(pid: int) -> bool:
        calls.append(pid)
        return True

    monkeypatch.setattr(table_backend, "_set_ptracer", record)
    backend.register_region(region(16))
    assert calls == []  # no collector yet
    write_collector_pid(backend.path, 4242)
    backend.register_region(region(17))
    backend.register_region(region(18))
    assert calls == [4242]  # once per new pid, not per registration
    write_collector_pid(backend.path, 4243)
    backend.unregister_region(region(17))
    assert calls == [4242, 4243]
    write_collector_pid(backend.path, 4244)
    for _ in range(1024):  # exactly one of any 1024 consecutive feeds checks
        backend.writer.feed()
    assert calls == [4242, 4243, 4244]
    assert backend.granted_pid == 4244
    assert backend.grant_ptrace() is False  # nothing new
    write_collector_pid(backend.path, 4245)
    assert backend.grant_ptrace() is True
    assert calls[-1] == 4245


def test_the_real_prctl_never_raises() -> None:
    yama = Path("/proc/sys/kernel/yama/ptrace_scope").exists()
    granted = table_backend._set_ptracer(os.getppid())
    assert granted is yama or (yama and granted is False)
    if not yama:
        assert granted is False  # EINVAL without Yama, swallowed


# --- other processes ---------------------------------------------------------------------------------------

ROUND_TRIP_CHILD = r"""
from kmemdump.producer.backends.table import SharedTableBackend
from kmemdump.producer.registry import Registry

def rows(registry):
    return [[r.id, r.name, r.address, r.size, int(r.kind)] for r in registry.regions()]

registry = Registry(capacity=16)
backend = SharedTableBackend(capacity=16)
registry.backend_register(backend)
keep = [bytearray(100), bytearray(b"abc" * 10), bytearray(4096)]
registry.register(keep[0], name="first")
registry.register(keep[1], id=20, name="second")
registry.register(keep[2], id=1000, name="third")
send({"path": str(backend.path), "rows": rows(registry)})
assert recv() == "drop 20"
registry.unregister(20)
send({"rows": rows(registry)})
block()
"""


def test_round_trip_through_the_registry_of_another_process(tables: Path) -> None:
    with spawn_child(ROUND_TRIP_CHILD) as child:
        hello = child.recv()
        path = Path(hello["path"])
        assert path.parent == tables
        snap = read_table(path)
        assert as_rows(snap) == [tuple(row) for row in hello["rows"]]
        assert len(snap.entries) == 3
        assert (snap.header.pid, snap.header.start_time) == (child.pid, process_start_time(child.pid))
        child.send("drop 20")
        after = child.recv()
        snap = read_table(path)
        assert as_rows(snap) == [tuple(row) for row in after["rows"]]
        assert 20 not in {e.id for e in snap.entries}


LIFE_CHILD = r"""
from kmemdump.producer.backends.table import SharedTableBackend
from kmemdump.producer.region import Region
from kmemdump.formats.enums import RegionKind
backend = SharedTableBackend(capacity=4)
backend.register_region(Region(16, 0x1000, 8, RegionKind.ADDRESS, "x"))
send(str(backend.path))
block()
"""


def test_clean_exit_removes_the_table_and_sigkill_leaves_it(tables: Path) -> None:
    with spawn_child(LIFE_CHILD) as child:
        path = Path(child.recv())
        assert path.exists()
        child.release()
        assert child.wait() == 0
        assert not path.exists()  # atexit closed it
    with spawn_child(LIFE_CHILD) as child:
        path = Path(child.recv())
        child.kill()
        assert child.popen.returncode == -signal.SIGKILL
        assert path.exists()  # left for the collector
        assert [e.id for e in read_table(path).entries] == [16]


FORK_CHILD = r"""
import json, os
from kmemdump.producer.backends.table import SharedTableBackend
from kmemdump.formats.table import read_table
from kmemdump.producer.region import Region
from kmemdump.formats.enums import RegionKind
from kmemdump.producer.heartbeat import attach, feed

backend = SharedTableBackend(capacity=8)
backend.register_region(Region(16, 0x1000, 8, RegionKind.ADDRESS, "parent"))
attach(backend)
feed()
stale_feed = backend.writer.feed
before = read_table(backend.path).header
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    out = {"published": backend.published}
    try:
        stale_feed()
        out["stale_feed"] = "wrote"
    except (TypeError, ValueError):  # an unmapped mmap is no longer a writable buffer
        out["stale_feed"] = "refused"
    for _ in range(5000):
        feed()  # must go nowhere
    backend.register_region(Region(17, 0x2000, 8, RegionKind.ADDRESS, "child"))
    new_path = backend.reopen_for_child()
    feed()
    snap = read_table(new_path)
    out.update(path=str(new_path), pid=os.getpid(), ids=[e.id for e in snap.entries],
               heartbeat=snap.header.heartbeat, table_pid=snap.header.pid)
    os.write(w, json.dumps(out).encode())
    os.close(w)
    raise SystemExit(0)  # a normal exit: atexit closes the child's table only
os.close(w)
report = json.loads(os.read(r, 65536))
_, status = os.waitpid(pid, 0)
after = read_table(backend.path)
send({"child": report, "status": status, "parent_path": str(backend.path),
      "before": [before.heartbeat, before.generation],
      "after": [after.header.heartbeat, after.header.generation],
      "parent_ids": [e.id for e in after.entries],
      "child_table_exists": os.path.exists(report["path"])})
block()
"""


def test_a_forked_child_leaves_the_parents_table_alone(tables: Path) -> None:
    with spawn_child(FORK_CHILD) as child:
        report = child.recv()
    forked = report["child"]
    assert report["status"] == 0
    assert forked["published"] is False
    assert forked["stale_feed"] == "refused"  # the inherited mapping was unmapped in the child
    assert report["before"] == report["after"]  # 5000 feeds and a registration later: untouched
    assert report["parent_ids"] == [16]
    assert forked["path"] != report["parent_path"]
    assert Path(forked["path"]).name.startswith(f"{forked['pid']}-")
    assert forked["table_pid"] == forked["pid"]
    assert forked["ids"] == [16, 17]  # the fresh table holds every current region
    assert forked["heartbeat"] >= 1  # the watchdog followed the reopened table
    assert report["child_table_exists"] is False  # removed at the child's exit


# --- torn writes ------------------------------------------------------------------------------------------

THREADS = 3
MODULUS = 12
WINDOW = 4
TORTURE_WRITER = rf"""
import random, threading, time
from kmemdump.producer.backends.table import SharedTableBackend
from kmemdump.producer.region import Region
from kmemdump.formats.enums import RegionKind

THREADS, MODULUS, WINDOW = {THREADS}, {MODULUS}, {WINDOW}
backend = SharedTableBackend(capacity=THREADS * (WINDOW + 1))
stop = threading.Event()

def region(rid):
    return Region(rid, rid * 0x1000, rid, RegionKind.ADDRESS, "r%d" % rid)

def work(index):
    # Thread `index` owns IDs base..base+MODULUS-1 and keeps a sliding window of them live:
    # register the next one, then drop the oldest. Its live IDs are always a cyclic run.
    base = 1000 * (index + 1)
    step = 0
    rng = random.Random(index)
    while not stop.is_set():
        for _ in range(rng.randint(1, 16)):  # a burst of changes...
            backend.register_region(region(base + step % MODULUS))
            if step >= WINDOW:
                backend.unregister_region(region(base + (step - WINDOW) % MODULUS))
            step += 1
        time.sleep(0.0002)  # ...then a pause: the write rate, not synchronisation

threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
for thread in threads:
    thread.start()
send(str(backend.path))
block()
stop.set()
for thread in threads:
    thread.join()
send(backend.writer.generation)
"""


def _real_state(snapshot: TableSnapshot) -> None:
    """Fail unless ``snapshot`` is a state the torture writer can really be in."""
    owned: dict[int, set[int]] = defaultdict(set)
    for entry in snapshot.entries:
        assert (entry.address, entry.size, entry.name, entry.kind) == (
            entry.id * 0x1000,
            entry.id,
            f"r{entry.id}",
            RegionKind.ADDRESS,
        ), entry
        index, offset = divmod(entry.id, 1000)
        assert 1 <= index <= THREADS and offset < MODULUS, entry
        owned[index].add(offset)
    for index, live in owned.items():
        assert len(live) <= WINDOW + 1, (index, sorted(live))
        starts = [x for x in live if (x - 1) % MODULUS not in live]
        assert len(starts) == 1, (index, sorted(live))  # one cyclic run, not a mix of two moments


@pytest.mark.slow
def test_torn_write_torture(tables: Path, stress_report: Callable[[str], None]) -> None:
    budget = seconds(30.0)
    generations: set[int] = set()
    checked = 0
    with spawn_child(TORTURE_WRITER) as writer:
        path = Path(writer.recv())
        deadline = time.monotonic() + budget
        while time.monotonic() < deadline:
            snap = read_table(path, retries=1000)  # every one validated by parse_table
            _real_state(snap)
            generations.add(snap.header.generation)
            checked += 1
        writer.release()
        final_generation = writer.recv()
    stress_report(f"{checked} snapshots checked, {len(generations)} distinct generations, in {budget:g} s")
    # The reader really ran against a moving table: many distinct states, all of them real.
    assert len(generations) > 10
    assert final_generation >= max(generations)


BUSY_WRITER = r"""
import threading
from kmemdump.producer.backends.table import SharedTableBackend
from kmemdump.producer.region import Region
from kmemdump.formats.enums import RegionKind
from kmemdump.producer.heartbeat import attach, feed

backend = SharedTableBackend(capacity=2)
attach(backend)
feed()
stop = threading.Event()

def churn():
    region = Region(16, 0x1000, 8, RegionKind.ADDRESS, "churn")
    while not stop.is_set():
        backend.register_region(region)
        backend.unregister_region(region)

threading.Thread(target=churn).start()
threading.Thread(target=lambda: (recv(), stop.set())).start()
send(str(backend.path))
while not stop.is_set():  # the main loop feeds as fast as it can
    feed()
"""


@pytest.mark.slow
def test_header_words_are_never_seen_half_written(tables: Path) -> None:
    # struct.pack_into zero-fills before it writes, so a reader could catch a generation or a
    # last-feed time of 0 (a "hang" at boot time). The writer stores these words whole.
    with spawn_child(BUSY_WRITER) as child:
        path = Path(child.recv())
        fd = os.open(path, os.O_RDONLY)
        try:
            last_generation = 0
            for _ in range(200_000):
                data = os.pread(fd, 128, 0)
                now = time.monotonic_ns()
                generation, heartbeat, last_feed = struct.unpack_from("<QQQ", data, 40)
                assert generation >= last_generation  # a torn write would show 0
                last_generation = generation
                assert heartbeat > 0 and 0 < now - last_feed < 5 * 10**9, (heartbeat, last_feed, now)
                assert struct.unpack_from("<I", data, 76)[0] in (0, 1)
        finally:
            os.close(fd)
        child.send("stop")
    assert last_generation > 1000  # the churn really ran while we read
