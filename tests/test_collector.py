"""The collector against real processes that freeze, stop feeding, get stopped or killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from elftools.elf.elffile import ELFFile

from conftest import require_tool
from helpers_child import Child
from helpers_child import spawn_child
from kmemdump.collector.dump import DumpOptions
from kmemdump.collector.dump import dump_target
from kmemdump.collector.watch import Event
from kmemdump.collector.watch import Watcher
from kmemdump.errors import ProcessGoneError
from kmemdump.formats.dumpmeta import decode_meta
from kmemdump.formats.elf import KMD_NOTE_META
from kmemdump.idenum import ID
from kmemdump.memory.core import CoreImage
from kmemdump.procinfo import process_start_time
from kmemdump.procinfo import thread_state

pytestmark = pytest.mark.slow

# A producer that registers a few regions, reports where they are, then does what it is told.
PRODUCER = r"""
import os, sys, threading, time
import kmemdump
timeout = float(sys.argv[1])
report = kmemdump.init(table=True, watchdog=timeout)
secret = kmemdump.alloc(32, name="secret")
secret[:11] = b"hello there"
regions = {r.name: [r.id, r.address, r.size] for r in kmemdump.regions()}
kmemdump.feed()
send({"table": report.table, "regions": regions, "pid": os.getpid()})
mode = recv()
if mode == "deadlock":
    a, b = threading.Lock(), threading.Lock()
    both = threading.Barrier(2)
    blocked_at = {}
    def worker(mine, theirs):
        with mine:
            both.wait()
            blocked_at[threading.get_ident()] = sys._getframe().f_lineno + 1
            with theirs:
                pass
    ts = [threading.Thread(target=worker, args=(a, b), name="left"),
          threading.Thread(target=worker, args=(b, a), name="right")]
    for t in ts: t.start()
    # readiness: both threads are parked on their second lock (bounded polling of their frames)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        frames = sys._current_frames()
        if all(t.ident in blocked_at and frames[t.ident].f_lineno == blocked_at[t.ident] for t in ts):
            break
        time.sleep(0.001)
    send("deadlocked?")
    for t in ts: t.join()
elif mode == "feed-then-stop":
    while True:
        kmemdump.feed()
        msg = recv()            # the parent paces the loop: one message, one beat
        if msg == "stop":
            send("stopped")
            block()             # stuck: no more feeding
            break
        send("fed")
elif mode == "feeder":
    kmemdump.start_feeder(timeout / 8)
    send("feeding")
    block()
elif mode == "keep-feeding":
    send("feeding")
    while True:
        kmemdump.feed()
        time.sleep(timeout / 20)
"""


def start_producer(timeout: float, mode: str) -> tuple[Child, dict[str, Any]]:
    child = spawn_child(PRODUCER, args=[str(timeout)])
    info = child.recv()
    child.send(mode)
    return child, info


def collect(watcher: Watcher, until: float, stop_after_first: bool = False) -> list[Event]:
    events: list[Event] = watcher.scan()
    while time.monotonic() < until:
        got = watcher.step()
        events.extend(got)
        if stop_after_first and any(e.dump is not None for e in got):
            break
    return events


def dumps_of(events: list[Event], kind: str) -> list[Event]:
    return [e for e in events if e.kind == kind and e.dump is not None]


@pytest.mark.parametrize("mode", ["deadlock", "feed-then-stop", "sigstop"])
def test_frozen_process_dumped_exactly_once(mode: str, table_dir: Path, dump_dir: Path) -> None:
    # GIVEN a producer with a 0.5 s watchdog that freezes in one of three ways
    timeout = 0.5
    child, info = start_producer(timeout, "feeder" if mode == "sigstop" else mode)
    with child:
        if mode == "deadlock":
            assert child.recv() == "deadlocked?"
        elif mode == "feed-then-stop":
            for _ in range(3):
                child.send("go")
                assert child.recv() == "fed"
            child.send("stop")
            assert child.recv() == "stopped"
        else:
            assert child.recv() == "feeding"
            os.kill(child.pid, signal.SIGSTOP)
        watcher = Watcher([table_dir], DumpOptions(dump_dir))
        # WHEN the collector watches for a while
        first = collect(watcher, time.monotonic() + timeout + 10, stop_after_first=True)
        later = collect(watcher, time.monotonic() + 3 * timeout)
        watcher.close()
        if mode == "sigstop":
            os.kill(child.pid, signal.SIGCONT)
    # THEN exactly one hang dump, taken soon after the deadline
    hangs = dumps_of(first + later, "hang")
    assert len(hangs) == 1, [e.line() for e in first + later]
    meta = hangs[0].dump.meta  # type: ignore[union-attr]
    assert meta.reason == "hang" and meta.pid == info["pid"]
    # not before the deadline; how soon after it is a speed figure: python -m benchmarks --only detection
    assert meta.heartbeat_age_s is not None and meta.heartbeat_age_s >= timeout
    assert len(list(dump_dir.iterdir())) == 1
    name, (rid, address, size) = "secret", info["regions"]["secret"]
    with CoreImage.open(hangs[0].dump.path) as core:  # type: ignore[union-attr]
        assert core.read(address, 11) == b"hello there"
        assert any(r.id == rid and r.status == "ok" and r.stored == size for r in meta.regions), name


def test_process_that_keeps_feeding_is_never_dumped(table_dir: Path, dump_dir: Path) -> None:
    timeout = 0.4
    child, _ = start_producer(timeout, "keep-feeding")
    with child:
        assert child.recv() == "feeding"
        watcher = Watcher([table_dir], DumpOptions(dump_dir))
        events = collect(watcher, time.monotonic() + 5 * timeout)
        assert any(e.kind == "watch" for e in events), "the collector never saw the table"
        watcher.close()
    assert not [e for e in events if e.dump is not None]
    assert list(dump_dir.iterdir()) == []


def test_dump_opens_in_pyelftools_readelf_and_gdb(table_dir: Path, dump_dir: Path) -> None:
    child, info = start_producer(5.0, "deadlock")
    with child:
        assert child.recv() == "deadlocked?"
        start = process_start_time(child.pid)
        result = dump_target(
            child.pid, start, Path(info["table"]), reason="request", options=DumpOptions(dump_dir)
        )
    meta = result.meta
    readable = [r for r in meta.regions if r.stored]
    assert {r.id for r in readable} >= {ID.BANNER, info["regions"]["secret"][0]}
    # pyelftools, independently of our reader
    with open(result.path, "rb") as f:
        elf = ELFFile(f)
        assert elf["e_type"] == "ET_CORE"
        loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        notes = [n for s in elf.iter_segments() if s["p_type"] == "PT_NOTE" for n in s.iter_notes()]
        # one segment per stored region, and the ELF headers of the files the process maps
        headers = [s for s in loads if s.data()[:4] == b"\x7fELF"]
        regions = [s for s in loads if s.data()[:4] != b"\x7fELF"]
    assert len(regions) == len(readable)
    assert {(s["p_vaddr"], s["p_filesz"]) for s in regions} == {(r.address, r.stored) for r in readable}
    assert headers and all(s["p_filesz"] <= 4096 and s["p_vaddr"] % 4096 == 0 for s in headers)
    assert all(s["p_filesz"] == s["p_memsz"] for s in loads)
    owners = {n["n_name"] for n in notes}
    assert {"CORE", "KMEMDUMP"} <= owners
    # readelf
    readelf = require_tool("readelf")
    out = subprocess.run(
        [readelf, "-lnW", str(result.path)], capture_output=True, text=True, check=True
    ).stdout
    assert out.count("LOAD ") == len(loads)
    assert "KMEMDUMP" in out and "NT_PRPSINFO" in out
    # gdb prints the banner at its registered address
    gdb = require_tool("gdb")
    banner = next(r for r in meta.regions if r.id == ID.BANNER)
    out = subprocess.run(
        [gdb, "-nx", "-batch", "-c", str(result.path), "-ex", f"x/s {banner.address:#x}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    assert "kmemdump banner:" in out and sys.executable in out


def test_sigkilled_process_gives_death_dump_and_collector_goes_on(table_dir: Path, dump_dir: Path) -> None:
    victim, _ = start_producer(30.0, "feeder")
    survivor, sinfo = start_producer(0.5, "feed-then-stop")
    with victim, survivor:
        assert victim.recv() == "feeding"
        watcher = Watcher([table_dir], DumpOptions(dump_dir))
        watcher.scan()
        assert len(watcher.targets) == 2
        victim.popen.send_signal(signal.SIGKILL)
        events = collect(watcher, time.monotonic() + 10, stop_after_first=True)
        deaths = dumps_of(events, "death")
        assert len(deaths) == 1 and deaths[0].pid == victim.pid
        dmeta = deaths[0].dump.meta  # type: ignore[union-attr]
        assert dmeta.partial
        # the heap died with the process; the banner, kept in the persistent arena, did not
        assert all(r.status in ("gone", "unreadable") for r in dmeta.regions if r.id != ID.BANNER)
        banner = next(r for r in dmeta.regions if r.id == ID.BANNER)
        assert (banner.status, banner.source) == ("ok", "arena")
        # the other target is still served
        survivor.send("stop")
        assert survivor.recv() == "stopped"
        events = collect(watcher, time.monotonic() + 10, stop_after_first=True)
        watcher.close()
    assert [e.pid for e in dumps_of(events, "hang")] == [sinfo["pid"]]
    for path in dump_dir.iterdir():  # every file at a final path is a whole core
        with CoreImage.open(path) as core:
            assert core.note("KMEMDUMP", KMD_NOTE_META) is not None


def _all_zombies(pid: int) -> bool:
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True
    return all(thread_state(pid, int(tid)) in ("Z", "X", None) for tid in tids)


def test_target_killed_mid_copy_never_leaves_truncated_file(
    table_dir: Path, dump_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kmemdump.memory import process as procmem

    child, info = start_producer(30.0, "feeder")
    with child:
        assert child.recv() == "feeding"
        start = process_start_time(child.pid)
        real = procmem.ProcessMemory.read_many
        killed: list[bool] = []

        def kill_then_read(self: procmem.ProcessMemory, ranges: Any) -> Any:
            if not killed:
                killed.append(True)
                os.kill(child.pid, signal.SIGKILL)
            # every thread has left its memory behind (a zombie); the collector holding it with
            # ptrace is its tracer and takes the threads' ends when it lets go, so no wait here
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not _all_zombies(child.pid):
                time.sleep(0.001)
            return real(self, ranges)

        monkeypatch.setattr(procmem.ProcessMemory, "read_many", kill_then_read)
        try:
            result = dump_target(
                child.pid,
                start,
                Path(info["table"]),
                reason="request",
                options=DumpOptions(dump_dir, stacks=False),
            )
        except ProcessGoneError:
            result = None
    files = list(dump_dir.iterdir())
    if result is None:
        assert files == []
    else:
        assert files == [result.path]
        assert result.meta.partial
        with CoreImage.open(result.path) as core:
            meta = decode_meta(core.note("KMEMDUMP", KMD_NOTE_META).desc)  # type: ignore[union-attr]
        assert meta.partial and all(r.stored == 0 for r in meta.regions if r.source == "process")
        assert {r.id for r in meta.regions if r.stored} <= {ID.BANNER}  # only the arena's survived


def test_recycled_pid_is_never_dumped(table_dir: Path, dump_dir: Path) -> None:
    # GIVEN a table whose name carries a live pid but another start time (the pid was recycled)
    child, info = start_producer(0.3, "feed-then-stop")
    with child:
        real = Path(info["table"])
        start = process_start_time(child.pid)
        fake = table_dir / f"{child.pid}-{start + 12345}.table"
        fake.write_bytes(real.read_bytes())
        real.unlink()  # only the impostor is left
        child.send("stop")
        assert child.recv() == "stopped"
        events: list[Event] = []
        watcher = Watcher([table_dir], DumpOptions(dump_dir), on_event=events.append)
        collect(watcher, time.monotonic() + 2)
        watcher.close()
        with pytest.raises(ProcessGoneError):
            dump_target(child.pid, start + 12345, fake, reason="request", options=DumpOptions(dump_dir))
    assert not [e for e in events if e.dump is not None]
    assert any(e.kind == "skip" and e.pid == child.pid for e in events)
    assert list(dump_dir.iterdir()) == []


def test_corrupt_table_is_skipped_with_a_logged_error(table_dir: Path, dump_dir: Path) -> None:
    child, info = start_producer(0.4, "feed-then-stop")
    with child, spawn_child("send('up'); block()") as other:
        assert other.recv() == "up"
        hostile = table_dir / f"{other.pid}-{process_start_time(other.pid)}.table"
        hostile.write_bytes(b"KMDTABLE" + os.urandom(300))
        hostile.chmod(0o600)
        events: list[Event] = []
        watcher = Watcher([table_dir], DumpOptions(dump_dir), on_event=events.append)
        watcher.scan()
        child.send("stop")
        assert child.recv() == "stopped"
        collect(watcher, time.monotonic() + 10, stop_after_first=True)
        watcher.close()
    errors = [e for e in events if e.kind == "error" and e.pid == other.pid]
    assert len(errors) == 1 and "skipping table" in errors[0].message
    assert [e.pid for e in events if e.dump is not None] == [info["pid"]]


def test_dump_command_on_request(table_dir: Path, dump_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kmemdump.cli.main import main

    child, info = start_producer(30.0, "feeder")
    with child:
        assert child.recv() == "feeding"
        code = main(["dump", str(child.pid), "--dir", str(dump_dir), "--json"])
        # the target was released afterwards: it still answers
        child.send("ping")
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pid"] == child.pid and out["stored_bytes"] > 0 and not out["partial"]
    with CoreImage.open(Path(out["path"])) as core:
        meta = decode_meta(core.note("KMEMDUMP", KMD_NOTE_META).desc)  # type: ignore[union-attr]
    assert meta.reason == "request" and meta.stopped and meta.stacks == "ok"
    secret = info["regions"]["secret"]
    with CoreImage.open(Path(out["path"])) as core:
        assert core.read(secret[1], 11) == b"hello there"


def test_dump_command_without_table_says_what_to_do(
    table_dir: Path, dump_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kmemdump.cli.main import main

    with spawn_child("send('up'); block()") as child:
        assert child.recv() == "up"
        code = main(["dump", str(child.pid), "--dir", str(dump_dir)])
    assert code == 1
    err = capsys.readouterr().err
    assert "publishes no kmemdump table" in err and "kmemdump run" in err


def test_stacks_name_the_deadlocked_function(table_dir: Path, dump_dir: Path) -> None:
    from kmemdump.formats.elf import KMD_NOTE_STACKS
    from kmemdump.formats.stacks import decode_stacks

    child, info = start_producer(30.0, "deadlock")
    with child:
        assert child.recv() == "deadlocked?"
        start = process_start_time(child.pid)
        result = dump_target(
            child.pid, start, Path(info["table"]), reason="request", options=DumpOptions(dump_dir)
        )
    with CoreImage.open(result.path) as core:
        note = core.note("KMEMDUMP", KMD_NOTE_STACKS)
    assert note is not None, result.meta.stacks
    stacks = decode_stacks(note.desc)
    by_name = {t.name: t for t in stacks.threads}
    for name in ("left", "right"):
        frames = by_name[name].frames
        assert frames[0].function == "worker" and frames[0].filename == "<child>"
        # the innermost frame is the inner `with theirs:` line of PRODUCER, where each thread waits
        assert "with theirs:" in PRODUCER.splitlines()[frames[0].line - 1]


def test_each_stall_is_dumped_once_up_to_the_limit(table_dir: Path, dump_dir: Path) -> None:
    # GIVEN a producer that stalls, recovers, stalls again ... three times, and a limit of two dumps
    timeout = 0.3
    child, _ = start_producer(timeout, "feed-then-stop")
    events: list[Event] = []
    with child:
        watcher = Watcher(
            [table_dir], DumpOptions(dump_dir, stacks=False), on_event=events.append, max_dumps=2
        )
        watcher.scan()
        for stall in range(3):
            child.send("go")  # one beat: the previous stall is over
            assert child.recv() == "fed"
            handled = len([e for e in events if e.kind in ("hang", "skip")])
            deadline = time.monotonic() + 10
            while len([e for e in events if e.kind in ("hang", "skip")]) == handled:
                assert time.monotonic() < deadline, f"stall {stall} not noticed"
                watcher.step()
        watcher.close()
    # THEN two dumps, then one "skip" line saying why, and nothing more
    assert [e.kind for e in events if e.kind in ("hang", "skip")] == ["hang", "hang", "skip"]
    assert "2 hang dumps of it already" in events[-1].message
    assert len(list(dump_dir.iterdir())) == 2
