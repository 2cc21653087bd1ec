"""The long reliability runs (full budget with KMEMDUMP_TEST_PROFILE=ci; a short one otherwise).

* fuzzed tables, arenas and dumps: every reader succeeds or raises a KmemdumpError, never anything else;
* collectors SIGKILLed at random points of their dumps: no target is left stopped (ptrace holds end with
  their tracer; SIGSTOP holds are undone by the next start's recovery), no file at a final name is
  truncated, and the next start leaves no temporary file behind;
* a full disk (a small tmpfs the test mounts): the dump fails cleanly, nothing partial is left, the
  target runs.

Each run is time-budgeted (tests/budget.py) and reports what it covered.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path

import pytest

from budget import FULL
from budget import seconds
from helpers_child import Child
from helpers_child import spawn_child
from kmemdump.collector.corewriter import write_core
from kmemdump.collector.dump import DumpOptions
from kmemdump.collector.dump import dump_target
from kmemdump.collector.hold import recover
from kmemdump.errors import CollectorError
from kmemdump.errors import KmemdumpError
from kmemdump.formats.arena import arena_file_size
from kmemdump.formats.arena import pack_header
from kmemdump.formats.elf import KMD_NOTE_META
from kmemdump.formats.elf import OWNER_KMEMDUMP
from kmemdump.formats.elf import Note
from kmemdump.formats.elf import Segment
from kmemdump.formats.enums import RegionKind
from kmemdump.formats.enums import TableState
from kmemdump.formats.table import TableReader
from kmemdump.formats.table import TableWriter
from kmemdump.formats.table import parse_table
from kmemdump.formats.table import table_size
from kmemdump.inspect.dumpfile import Dump
from kmemdump.memory.arena import ArenaMemory
from kmemdump.memory.core import CoreImage
from kmemdump.procinfo import process_start_time
from kmemdump.procinfo import thread_state

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    blob = bytearray(data)
    how = rng.randrange(5)
    if how == 0 and blob:  # bit flips
        for _ in range(rng.randint(1, 8)):
            blob[rng.randrange(len(blob))] ^= 1 << rng.randrange(8)
    elif how == 1 and len(blob) >= 8:  # a word overwritten with an extreme value
        at = rng.randrange(len(blob) - 7)
        blob[at : at + 8] = rng.choice([b"\xff" * 8, b"\0" * 8, b"\x7f" + b"\xff" * 7, os.urandom(8)])
    elif how == 2:  # truncated
        del blob[rng.randrange(len(blob) + 1) :]
    elif how == 3:  # garbage appended or spliced in
        at = rng.randrange(len(blob) + 1)
        blob[at:at] = os.urandom(rng.randint(1, 64))
    else:  # random bytes of a plausible length
        blob = bytearray(os.urandom(rng.choice([0, 1, 64, 128, len(blob)])))
    return bytes(blob)


def _valid_table() -> bytes:
    buf = bytearray(table_size(8))
    writer = TableWriter(buf, capacity=8, pid=4242, start_time=99, py_hexversion=sys.hexversion, created_ns=1)
    for slot in range(5):
        writer.put(
            slot, 100 + slot, f"r{slot}", 0x10000 * (slot + 1), 64 * (slot + 1), int(RegionKind.BUFFER), 0
        )
    writer.set_watchdog(10**9)
    writer.feed()
    writer.set_state(TableState.RUNNING)
    writer.release()
    return bytes(buf)


def _valid_arena() -> bytes:
    size = 4096
    buf = bytearray(arena_file_size(size))
    pack_header(buf, pid=4242, start_time=99, size=size, base=0x7F0000000000, created_ns=1)
    buf[-size:] = os.urandom(size)
    return bytes(buf)


def _valid_dump(directory: Path, compress: bool) -> bytes:
    import json

    meta = {
        "format": "kmemdump-dump", "version": 1, "reason": "hang", "pid": 4242, "start_time": 99,
        "captured_ns": 1_700_000_000 * 10**9, "host": "h", "argv": ["x"], "uid": 0,
        "py_hexversion": sys.hexversion,
        "regions": [{"id": 17, "name": "r", "kind": 1, "address": 0x1000, "size": 256, "stored": 256,
                     "status": "ok", "error": "", "source": "process"}],
        "partial": False, "stopped": True,
    }  # fmt: skip
    path = write_core(
        directory / f"seed{int(compress)}.core",
        [Segment(0x1000, os.urandom(256))],
        [Note(OWNER_KMEMDUMP, KMD_NOTE_META, json.dumps(meta).encode())],
        compress=compress,
    )
    data = path.read_bytes()
    path.unlink()
    return data


def _fuzz(seconds_budget: float, at_least: int, one: Callable[[random.Random], None]) -> int:
    rng = random.Random(0x6B6D)
    deadline = time.monotonic() + seconds_budget
    done = 0
    while time.monotonic() < deadline or done < at_least:
        one(rng)
        done += 1
    return done


def test_fuzzed_tables_arenas_and_dumps_never_crash_a_reader(tmp_path: Path, stress_report) -> None:  # type: ignore[no-untyped-def]
    table, arena = _valid_table(), _valid_arena()
    dumps = [_valid_dump(tmp_path, False), _valid_dump(tmp_path, True)]
    target = tmp_path / "case"

    def one_table(rng: random.Random) -> None:
        data = _mutate(rng, table)
        with contextlib.suppress(KmemdumpError):
            parse_table(data)
        target.write_bytes(data)
        with contextlib.suppress(KmemdumpError), TableReader(target) as reader:
            reader.snapshot(retries=2)

    def one_arena(rng: random.Random) -> None:
        target.write_bytes(_mutate(rng, arena))
        with contextlib.suppress(KmemdumpError), ArenaMemory(target, 0x7F0000000000, 4096, pid=4242) as mem:
            for _ in range(4):
                with contextlib.suppress(KmemdumpError, OSError):
                    mem.read_into(
                        rng.randrange(0x7F0000000000 - 64, 0x7F0000001100), bytearray(rng.randint(1, 512))
                    )

    def one_dump(rng: random.Random) -> None:
        name = tmp_path / f"case{rng.randrange(2)}.core"
        name.write_bytes(_mutate(rng, rng.choice(dumps)))
        with contextlib.suppress(KmemdumpError), Dump.open(name) as dump:
            dump.summary()
            for record in dump.meta.regions:
                dump.decode_region(record)
        name.unlink()

    share = seconds(90) / 3
    minimum = 10_000 if FULL else 300
    counts = [_fuzz(share, minimum, fn) for fn in (one_table, one_arena, one_dump)]
    stress_report(f"{counts[0]} fuzzed tables, {counts[1]} fuzzed arenas, {counts[2]} fuzzed dumps: no crash")
    assert min(counts) >= minimum


# --- collectors killed mid-dump ------------------------------------------------------------------------

_PRODUCER = """
import threading, time, kmemdump
kmemdump.init(table=True, pycoreinfo=False)
big = kmemdump.alloc(48 << 20, name="big")
big[::4096] = b"x" * len(big[::4096])
def spin():
    while True:
        time.sleep(0.001)
for _ in range(3):
    threading.Thread(target=spin, daemon=True).start()
send("ready")
block()
"""

_COLLECTOR = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from kmemdump.collector.dump import DumpOptions, dump_target
    pid, start, how = int(sys.argv[1]), int(sys.argv[2]), sys.argv[5]
    table, out = Path(sys.argv[3]), Path(sys.argv[4])
    compress, ptrace = how.endswith("z"), how.startswith("p")
    options = DumpOptions(out, stacks=False, threads=-1, compress=compress, ptrace=ptrace)
    print("go", flush=True)
    dump_target(pid, start, table, reason="request", options=options)
    """
)


def _running(pid: int) -> bool:
    tids = os.listdir(f"/proc/{pid}/task")
    return all(thread_state(pid, int(tid)) not in ("T", "t") for tid in tids)


def _wait(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


@pytest.fixture
def big_producer(table_dir: Path) -> Iterator[Child]:
    child = spawn_child(_PRODUCER)
    assert child.recv(timeout=60) == "ready"
    yield child
    child.kill()


def test_collectors_killed_mid_dump_leave_nothing_stopped_or_truncated(
    big_producer: Child, table_dir: Path, dump_dir: Path, stress_report
) -> None:  # type: ignore[no-untyped-def]
    pid = big_producer.pid
    start = process_start_time(pid)
    table = table_dir / f"{pid}-{start}.table"
    rng = random.Random(9)
    deadline = time.monotonic() + seconds(100)
    minimum = 200 if FULL else 20
    kills = finished = recovered = 0
    while time.monotonic() < deadline or kills < minimum:
        how = rng.choice(["p", "p", "pz", "s", "sz"])  # ptrace or SIGSTOP holds, plain or compressed
        collector = subprocess.Popen(
            [sys.executable, "-c", _COLLECTOR, str(pid), str(start), str(table), str(dump_dir), how],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert collector.stdout is not None and collector.stdout.readline().strip() == "go"
        time.sleep(rng.uniform(0, 0.08))
        collector.kill()
        if collector.wait() == 0:
            finished += 1
        else:
            kills += 1
        collector.stdout.close()
        if how.startswith("p"):  # the kernel ends a dead tracer's holds by itself
            assert _wait(lambda: _running(pid)), "a ptrace hold outlived its collector"
        recovered += sum("continued pid" in line for line in recover(dump_dir))  # the next start
        assert _wait(lambda: _running(pid)), f"target left stopped after a kill ({how})"
        for path in dump_dir.iterdir():
            assert not path.name.endswith(".tmp"), f"a temporary file outlived the restart: {path.name}"
            with CoreImage.open(path) as image:  # whole, or not there at all
                assert image.note(OWNER_KMEMDUMP, KMD_NOTE_META) is not None
            path.unlink()
    stress_report(
        f"{kills} collectors SIGKILLed mid-dump ({finished} finished first), {recovered} SIGSTOP holds "
        "undone by the next start; no target left stopped, no truncated dump, no temporary file left"
    )
    assert kills >= minimum


# --- a full disk -------------------------------------------------------------------------------------


@pytest.fixture
def small_disk() -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    where = Path(tempfile.mkdtemp(prefix="kmemdump-fulldisk-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)], check=False)
    if done.returncode != 0:
        where.rmdir()
        pytest.skip("cannot mount a tmpfs here (a container without CAP_SYS_ADMIN?)")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)
        where.rmdir()


def test_a_full_disk_fails_the_dump_cleanly_and_leaves_the_target_running(
    big_producer: Child, table_dir: Path, small_disk: Path
) -> None:
    pid = big_producer.pid
    start = process_start_time(pid)
    table = table_dir / f"{pid}-{start}.table"
    with pytest.raises(CollectorError, match="no space left"):
        dump_target(
            pid, start, table, reason="request", options=DumpOptions(small_disk, stacks=False, threads=-1)
        )
    assert list(small_disk.iterdir()) == []  # nothing partial, no temporary file
    assert _wait(lambda: _running(pid))
    # a budget that fits: the same disk takes the dump
    result = dump_target(
        pid,
        start,
        table,
        reason="request",
        options=DumpOptions(small_disk, stacks=False, threads=-1, budget=1 << 20),
    )
    assert [p.name for p in small_disk.iterdir()] == [result.path.name]
    assert _running(pid)
    os.kill(pid, signal.SIGCONT)  # harmless: it runs
