"""Persistent regions survive the death of the process: the collector reads them from the arena.

Real producers allocate persistent buffers (and a plain one), write known bytes, and are
SIGKILLed. A watching collector, and a collector started only after the death, must store the
persistent regions exactly (checked with our reader, pyelftools' view through CoreImage and gdb)
and report the plain one as gone. Hostile arena files (a link, another owner, truncated, lying
headers) are refused with typed errors, and the collector goes on.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import require_tool
from helpers_child import Child
from helpers_child import spawn_child
from kmemdump.collector.dump import DumpOptions
from kmemdump.collector.dump import dump_target
from kmemdump.collector.watch import Event
from kmemdump.collector.watch import Watcher
from kmemdump.errors import ForeignTableError
from kmemdump.errors import KmemdumpError
from kmemdump.errors import TableFormatError
from kmemdump.errors import UnreadableMemoryError
from kmemdump.formats import arena as afmt
from kmemdump.formats.dumpmeta import DumpMeta
from kmemdump.formats.dumpmeta import RegionRecord
from kmemdump.formats.dumpmeta import decode_meta
from kmemdump.formats.dumpmeta import encode_meta
from kmemdump.formats.table import read_table
from kmemdump.memory.arena import ArenaMemory
from kmemdump.memory.core import CoreImage
from kmemdump.procinfo import process_start_time

pytestmark = pytest.mark.slow

BIG = (5 << 20) + 123
"""Larger than the collector's 4 MiB copy chunk, so the arena is also read chunk by chunk."""
JOURNAL = b"journal: order 1001 paid, order 1002 pending\0"
NOTE = b"persistent note \xe2\x9c\x93\0"

PRODUCER = r"""
import os, sys
import kmemdump
BIG, JOURNAL, NOTE = int(sys.argv[1]), bytes.fromhex(sys.argv[2]), bytes.fromhex(sys.argv[3])
report = kmemdump.init(table=True, arena_size=8 << 20, pycoreinfo=False)
journal = kmemdump.alloc(64, name="journal", persistent=True)
journal[: len(JOURNAL)] = JOURNAL
note = kmemdump.alloc(len(NOTE), name="note", persistent=True)
note[:] = NOTE
big = kmemdump.alloc(BIG, name="big", persistent=True)
pattern = bytes(range(251))
big[:] = (pattern * (BIG // len(pattern) + 1))[:BIG]
plain = kmemdump.alloc(32, name="plain")
plain[:5] = b"plain"
regions = {r.name: [r.id, r.address, r.size, int(r.flags)] for r in kmemdump.regions()}
send({"table": report.table, "regions": regions, "pid": os.getpid()})
block()
"""


def big_bytes() -> bytes:
    pattern = bytes(range(251))
    return (pattern * (BIG // len(pattern) + 1))[:BIG]


def start() -> tuple[Child, dict[str, Any]]:
    child = spawn_child(PRODUCER, args=[str(BIG), JOURNAL.hex(), NOTE.hex()])
    return child, child.recv()


def kill(child: Child) -> None:
    os.kill(child.pid, signal.SIGKILL)
    child.popen.wait()


def collect(watcher: Watcher, seconds: float, *, until_dump: bool = True) -> list[Event]:
    events = watcher.scan()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = watcher.step()
        events.extend(got)
        if until_dump and any(e.dump is not None for e in got):
            break
    return events


def check_recovered(meta: DumpMeta, path: Path, info: dict[str, Any]) -> None:
    """The three persistent regions are stored exactly, from the arena; the plain one is gone."""
    by_name = {r.name: r for r in meta.regions}
    expected = {"journal": JOURNAL.ljust(64, b"\0"), "note": NOTE, "big": big_bytes()}
    with CoreImage.open(path) as core:
        for name, data in expected.items():
            rid, address, size, flags = info["regions"][name]
            record = by_name[name]
            assert flags == 1 and (record.id, record.address, record.size) == (rid, address, size)
            assert (record.status, record.source, record.stored) == ("ok", "arena", size), record
            assert core.read(address, size) == data
    assert (by_name["plain"].status, by_name["plain"].stored, by_name["plain"].source) == (
        "gone",
        0,
        "process",
    )
    # init(table=True) put the banner in the arena: even a death dump says who died
    assert (by_name["banner"].status, by_name["banner"].source) == ("ok", "arena")
    assert meta.reason == "death" and meta.partial and meta.arena == "ok"


def test_sigkilled_process_keeps_its_persistent_regions(table_dir: Path, dump_dir: Path) -> None:
    # GIVEN a watched producer with persistent buffers and a plain one
    child, info = start()
    table = Path(info["table"])
    arena = afmt.arena_path_of(table)
    with child:
        watcher = Watcher([table_dir], DumpOptions(dump_dir))
        assert [e.kind for e in watcher.scan()] == ["watch"]
        assert arena.exists()
        # WHEN it is SIGKILLed
        kill(child)
        events = collect(watcher, 10)
        watcher.close()
    # THEN one death dump holds the persistent regions exactly, and both files are gone
    deaths = [e for e in events if e.kind == "death" and e.dump is not None]
    assert len(deaths) == 1 and deaths[0].pid == info["pid"], [e.line() for e in events]
    result = deaths[0].dump
    assert result is not None
    check_recovered(result.meta, result.path, info)
    assert not [e for e in events if e.kind == "error"]
    assert not table.exists() and not arena.exists()
    # gdb, independently of our reader, sees the journal's text at its address
    gdb = require_tool("gdb")
    address = info["regions"]["journal"][1]
    out = subprocess.run(
        [gdb, "-nx", "-batch", "-c", str(result.path), "-ex", f"x/s {address:#x}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    assert JOURNAL.rstrip(b"\0").decode() in out


def test_collector_started_after_the_death_still_recovers_them(table_dir: Path, dump_dir: Path) -> None:
    # GIVEN a producer that died before any collector ran
    child, info = start()
    with child:
        kill(child)
    table = Path(info["table"])
    arena = afmt.arena_path_of(table)
    assert table.exists() and arena.exists()
    # WHEN a collector starts and scans
    events: list[Event] = []
    watcher = Watcher([table_dir], DumpOptions(dump_dir), on_event=events.append)
    watcher.scan()
    later = watcher.scan()
    watcher.close()
    # THEN exactly one death dump, made from the arena; the table and the arena are removed
    assert [e.kind for e in events] == ["death"] and later == []
    result = events[0].dump
    assert result is not None and result.meta.pid == info["pid"]
    assert result.meta.stacks == "process gone"
    # /proc had nothing left to say: the command line and executable come from its own banner
    assert result.meta.argv[0] == "<child>" and result.meta.exe == sys.executable
    check_recovered(result.meta, result.path, info)
    assert not table.exists() and not arena.exists()
    assert list(dump_dir.iterdir()) == [result.path]


def test_kmemdump_show_names_the_source(
    table_dir: Path, dump_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kmemdump.cli.main import main

    child, _ = start()
    with child:
        kill(child)
    watcher = Watcher([table_dir], DumpOptions(dump_dir), on_event=lambda e: None)
    watcher.scan()
    watcher.close()
    (path,) = dump_dir.iterdir()
    assert main(["show", str(path), "--plain"]) == 0
    out = capsys.readouterr().out
    table = out.split("\nRegions\n", 1)[1].split("\nDecoded\n", 1)[0]
    header, *rows = table.strip("-\n").splitlines()
    assert header.split()[7:9] == ["SOURCE", "STATUS"]
    sources = {row.split()[2]: row.split()[7:9] for row in rows}
    assert sources["journal"] == ["arena", "ok"] and sources["plain"][0] == "process"
    assert "Arena" in out and "read from the arena file the process left behind" in out
    assert re.search(r"^Stopped:\s+no: the process was gone", out, re.M)
    assert "journal: order 1001 paid" in out.split("\nDecoded\n", 1)[1]
    assert main(["show", str(path), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert {r["name"]: r["source"] for r in document["regions"]}["note"] == "arena"
    assert document["dump"]["arena"] == "ok"


def test_a_live_process_is_read_from_its_memory(table_dir: Path, dump_dir: Path) -> None:
    child, info = start()
    with child:
        result = dump_target(
            child.pid,
            process_start_time(child.pid),
            Path(info["table"]),
            reason="request",
            options=DumpOptions(dump_dir, stacks=False),
        )
    by_name = {r.name: r for r in result.meta.regions}
    assert {by_name[n].source for n in ("journal", "big", "plain")} == {"process"}
    assert all(r.status == "ok" for r in result.meta.regions)
    assert result.meta.arena == "unused" and not result.meta.partial
    with CoreImage.open(result.path) as core:
        assert core.read(info["regions"]["note"][1], len(NOTE)) == NOTE


# --- hostile arenas ----------------------------------------------------------------------------------


def stale_producer() -> tuple[dict[str, Any], Path, Path]:
    child, info = start()
    with child:
        kill(child)
    table = Path(info["table"])
    return info, table, afmt.arena_path_of(table)


def recover_with_watcher(table_dir: Path, dump_dir: Path) -> tuple[list[Event], Watcher]:
    events: list[Event] = []
    watcher = Watcher([table_dir], DumpOptions(dump_dir), on_event=events.append)
    watcher.scan()
    return events, watcher


def test_truncated_arena_is_refused_and_the_collector_goes_on(table_dir: Path, dump_dir: Path) -> None:
    _, table, arena = stale_producer()
    os.truncate(arena, 4096)
    with spawn_child("send('up'); block()") as bystander:
        assert bystander.recv() == "up"
        other = table_dir / f"{bystander.pid}-{process_start_time(bystander.pid)}.table"
        other.write_bytes(b"KMDTABLE" + bytes(200))  # and a corrupt table beside it
        other.chmod(0o600)
        events, watcher = recover_with_watcher(table_dir, dump_dir)
        watcher.close()
    kinds = sorted(e.kind for e in events)
    assert kinds == ["death", "error", "error"], [e.line() for e in events]
    death = next(e for e in events if e.kind == "death")
    assert death.dump is not None
    meta = death.dump.meta
    assert "truncated" in meta.arena
    persistent = [r for r in meta.regions if r.source == "arena"]
    assert {r.name for r in persistent} == {"banner", "journal", "note", "big"}
    assert all(r.status == "unreadable" and r.stored == 0 and "truncated" in r.error for r in persistent)
    assert any("persistent regions not recovered" in e.message for e in events if e.kind == "error")
    assert not table.exists() and not arena.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give the arena file to another user")
def test_arena_of_another_user_is_refused_even_for_root(table_dir: Path, dump_dir: Path) -> None:
    _, table, arena = stale_producer()
    os.chown(arena, 65534, 65534)
    header = read_table(table).header
    with pytest.raises(ForeignTableError, match="another user than its table"):
        ArenaMemory(arena, header.arena_base, header.arena_size, owner=table.stat().st_uid)
    events, watcher = recover_with_watcher(table_dir, dump_dir)
    watcher.close()
    death = next(e for e in events if e.kind == "death")
    assert death.dump is not None and "another user" in death.dump.meta.arena
    assert all(r.stored == 0 for r in death.dump.meta.regions)


def test_symlinked_arena_is_refused(table_dir: Path, dump_dir: Path, tmp_path: Path) -> None:
    _, table, arena = stale_producer()
    copy = tmp_path / "copy.arena"
    copy.write_bytes(arena.read_bytes())
    copy.chmod(0o600)
    arena.unlink()
    arena.symlink_to(copy)
    header = read_table(table).header
    with pytest.raises(ForeignTableError, match="symbolic link"):
        ArenaMemory(arena, header.arena_base, header.arena_size)
    events, watcher = recover_with_watcher(table_dir, dump_dir)
    watcher.close()
    death = next(e for e in events if e.kind == "death")
    assert death.dump is not None and "symbolic link" in death.dump.meta.arena
    assert copy.exists()  # the link is removed, never what it points to


def test_missing_arena_is_reported(table_dir: Path, dump_dir: Path) -> None:
    _, table, arena = stale_producer()
    child, live = start()
    with child:
        watcher = Watcher([table_dir], DumpOptions(dump_dir), on_event=lambda e: None)
        watcher.scan()
        afmt.arena_path_of(Path(live["table"])).unlink()  # gone while the process runs
        kill(child)
        events = collect(watcher, 10)
        watcher.close()
    death = next(e for e in events if e.kind == "death" and e.pid == live["pid"])
    assert death.dump is not None and "missing" in death.dump.meta.arena
    assert not table.exists() and not arena.exists()  # the first one was recovered by the first scan


def write_arena(
    path: Path, *, base: int, size: int, pid: int = 7, start_time: int = 9, body: bytes = b""
) -> None:
    data = bytearray(afmt.HEADER_SIZE + size)
    afmt.pack_header(data, pid=pid, start_time=start_time, size=size, base=base, created_ns=1)
    data[afmt.HEADER_SIZE : afmt.HEADER_SIZE + len(body)] = body
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, bytes(data))
    finally:
        os.close(fd)


def test_arena_memory_reads_only_inside_the_arena(tmp_path: Path) -> None:
    path = tmp_path / "7-9.arena"
    base = 0x7F00_0000_0000
    write_arena(path, base=base, size=64, body=bytes(range(64)))
    with ArenaMemory(path, base, 64, pid=7, start_time=9) as mem:
        assert mem.read(base + 10, 4) == bytes([10, 11, 12, 13])
        assert mem.read(base, 64) == bytes(range(64))
        with pytest.raises(UnreadableMemoryError) as info:
            mem.read(base + 60, 8)
        assert info.value.context["readable"] == 4
        for address in (base - 1, base + 64, 0, 2**64 - 1):
            with pytest.raises(UnreadableMemoryError) as info:
                mem.read(address, 1)
            assert info.value.context["readable"] == 0
        view = memoryview(bytearray(16))
        assert mem.read_into(base + 56, view) == 8 and bytes(view[:8]) == bytes(range(56, 64))
        os.truncate(path, afmt.HEADER_SIZE + 32)  # cut short after it was opened: a short read
        assert mem.read_into(base + 16, memoryview(bytearray(32))) == 16
        with pytest.raises(UnreadableMemoryError):
            mem.read(base + 40, 4)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"base": 0x2000, "size": 64}, "another range"),
        ({"base": 0x1000, "size": 32}, "another range"),
        ({"base": 0x1000, "size": 64, "pid": 8}, "another process"),
        ({"base": 0x1000, "size": 64, "start_time": 10}, "another process"),
        ({"base": 0, "size": 0}, "names no arena"),
    ],
)
def test_arena_header_must_agree_with_the_table(tmp_path: Path, args: dict[str, int], message: str) -> None:
    path = tmp_path / "7-9.arena"
    write_arena(path, base=0x1000, size=64)
    with pytest.raises(TableFormatError, match=message):
        ArenaMemory(
            path, args["base"], args["size"], pid=args.get("pid", 7), start_time=args.get("start_time", 9)
        )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b[:40], "shorter than its 64-byte header"),
        (lambda b: b"KMDAREN!" + b[8:], "bad magic"),
        (lambda b: b[:8] + b"\x02\x00" + b[10:], "version 2"),
        (lambda b: b[:10] + b"\x20\x00" + b[12:], "header_size"),
        (lambda b: b[:-1], "truncated"),
    ],
)
def test_damaged_arena_files_are_refused(tmp_path: Path, change: Any, message: str) -> None:
    good = tmp_path / "good"
    write_arena(good, base=0x1000, size=64)
    path = tmp_path / "7-9.arena"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, change(good.read_bytes()))
    os.close(fd)
    with pytest.raises(TableFormatError, match=message):
        ArenaMemory(path, 0x1000, 64)


def test_a_fifo_at_the_arena_path_does_not_block(tmp_path: Path) -> None:
    path = tmp_path / "7-9.arena"
    os.mkfifo(path, 0o600)
    with pytest.raises(ForeignTableError, match="not a regular file"):
        ArenaMemory(path, 0x1000, 64)


def test_orphan_arena_of_a_dead_process_is_removed(table_dir: Path, dump_dir: Path) -> None:
    info, table, arena = stale_producer()
    table.unlink()  # the table went, the arena stayed
    with spawn_child("send('up'); block()") as alive:
        assert alive.recv() == "up"
        living = table_dir / f"{alive.pid}-{process_start_time(alive.pid)}.arena"
        write_arena(living, base=0x1000, size=16)  # a live process's arena without a table (yet)
        events, watcher = recover_with_watcher(table_dir, dump_dir)
        watcher.close()
        assert living.exists()
    assert [(e.kind, e.pid) for e in events] == [("skip", info["pid"])]
    assert not arena.exists()


def test_old_dumps_without_source_read_as_process() -> None:
    record = RegionRecord(16, "x", 1, 0x1000, 8, 8, "ok", source="arena")
    meta = DumpMeta("death", 1, 2, 3, "h", (), None, 0, 0, (record,), True, False, arena="ok")
    body = json.loads(encode_meta(meta))
    assert body["regions"][0]["source"] == "arena" and body["arena"] == "ok"
    assert decode_meta(encode_meta(meta)) == meta
    del body["regions"][0]["source"]
    del body["arena"]
    old = decode_meta(json.dumps(body).encode())
    assert old.regions[0].source == "process" and old.arena == "none"
    body["regions"][0]["source"] = "elsewhere"
    with pytest.raises(KmemdumpError, match="unknown region source"):
        decode_meta(json.dumps(body).encode())
