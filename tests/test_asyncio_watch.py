"""``kmemdump.asyncio.watch_loop``: the loop feeds the watchdog; a blocked loop is dumped, naming its blocker.

A real asyncio server whose request handler calls ``time.sleep`` is dumped by a real ``kmemdump
watch`` once its loop stops turning; the dump names the task, the coroutine and the function that
hold the loop, and where every other task waits. A busy but healthy loop is never dumped, and a
loop that ended leaves no armed watchdog behind.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from helpers_child import spawn_child
from helpers_watch import WatchProcess
from kmemdump.cli.main import main
from kmemdump.errors import InvalidRegionError
from kmemdump.formats.enums import RegionKind
from kmemdump.formats.table import read_table
from kmemdump.inspect.dumpfile import Dump

pytestmark = pytest.mark.slow

SERVER = r"""
import asyncio, os, time
import kmemdump
import kmemdump.asyncio


async def slow_lookup(key):
    time.sleep(120)  # the bug: a blocking call inside a coroutine holds the whole loop
    return key


async def handle_client(reader, writer):
    line = await reader.readline()
    if line.strip() == b"block":
        await slow_lookup(line)
    writer.write(b"ok\n")
    await writer.drain()
    writer.close()


async def idle_worker():
    await asyncio.sleep(3600)


async def main():
    report = kmemdump.init(table=True, pycoreinfo=False)
    watch = kmemdump.asyncio.watch_loop(timeout=1.0)
    server = await asyncio.start_server(handle_client, "127.0.0.1", 0)
    asyncio.create_task(idle_worker(), name="idle-worker")
    while watch.turns < 2:  # the loop fed its watchdog: it is armed
        await asyncio.sleep(0.01)
    send({"port": server.sockets[0].getsockname()[1], "pid": os.getpid()})
    async with server:
        await server.serve_forever()


asyncio.run(main())
"""


def _newest(value: dict[str, Any]) -> dict[str, Any]:
    snapshots = [r["snapshot"] for r in value["records"] if isinstance(r.get("snapshot"), dict)]
    assert snapshots, value
    return snapshots[-1]


def test_a_server_blocked_by_time_sleep_is_dumped_naming_the_coroutine(
    table_dir: Path, dump_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a watched asyncio server that serves (the handler answers "ok")
    with WatchProcess(table_dir, dump_dir) as watch, spawn_child(SERVER) as child:
        info = child.recv()
        watch.wait_for(f"watch pid={info['pid']} ")
        with socket.create_connection(("127.0.0.1", info["port"]), timeout=30) as ok:
            ok.sendall(b"hello\n")
            assert ok.recv(16) == b"ok\n"
        # WHEN a request makes a coroutine call time.sleep
        with socket.create_connection(("127.0.0.1", info["port"]), timeout=30) as bad:
            bad.sendall(b"block\n")
            line = watch.wait_for(f"hang pid={info['pid']} ")
        child.kill()
        lines = watch.stop()
    # THEN one hang dump names the task, its coroutine and the blocking function
    assert len([x for x in lines if x.startswith("hang ")]) == 1, lines
    path = Path(re.search(r" dump=(\S+)", line).group(1))  # type: ignore[union-attr]
    with Dump.open(path) as dump:
        (record,) = [r for r in dump.meta.regions if r.kind == RegionKind.RING and r.name == "asyncio"]
        decoded = dump.decode_region(record)
        stacks = dump.stacks
    assert decoded.type_name == "ring:asyncio" and decoded.complete
    snapshot = _newest(decoded.value)
    assert snapshot["blocked"] is True and snapshot["loop_age_s"] >= 0.5
    current = snapshot["current"]
    assert current["coro"] == "handle_client" and current["state"] == "running"
    assert current["stack"][-1]["function"] == "slow_lookup"
    assert [f["function"] for f in current["stack"]][-2:] == ["handle_client", "slow_lookup"]
    tasks = {t["name"]: t for t in snapshot["tasks"]}
    assert snapshot["tasks"][0]["coro"] == "handle_client"  # the blocker first
    assert tasks["idle-worker"]["coro"] == "idle_worker" and tasks["idle-worker"]["state"] == "pending"
    assert tasks["idle-worker"]["awaiting"][0]["function"] == "idle_worker"
    assert snapshot["task_count"] == len(snapshot["tasks"]) >= 3
    if stacks is not None:  # py-spy, independently, sees the same function on the main thread
        assert any(f.function.endswith("slow_lookup") for t in stacks.threads for f in t.frames)
    assert main(["show", "--plain", str(path)]) == 0
    out = capsys.readouterr().out
    section = out[out.index("Event loop") :]
    assert "loop blocked" in section
    assert re.search(r"blocking the loop: task \S+: coroutine handle_client \(running\)", section)
    assert "in slow_lookup" in section and "task idle-worker: coroutine idle_worker (pending)" in section
    assert main(["show", "--json", str(path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    (region,) = [r for r in doc["regions"] if r["name"] == "asyncio"]
    assert _newest(region["decoded"]["value"])["current"]["coro"] == "handle_client"


GIL_HOLDER = r"""
import asyncio, os
import kmemdump
import kmemdump.asyncio


def crunch():
    return sum(range(10**15))  # one C call that never lets the GIL go: the monitor thread cannot run


async def parse_batch():
    crunch()


async def main():
    kmemdump.init(table=True, pycoreinfo=False)
    watch = kmemdump.asyncio.watch_loop(timeout=1.0)
    while watch.turns < 2:
        await asyncio.sleep(0.01)
    send({"pid": os.getpid()})
    await parse_batch()


asyncio.run(main())
"""


def test_a_loop_held_in_c_is_dumped_and_show_says_its_snapshot_is_stale(
    table_dir: Path, dump_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a watched loop whose coroutine makes a C call that holds the GIL (no snapshot can say so)
    with WatchProcess(table_dir, dump_dir) as watch, spawn_child(GIL_HOLDER) as child:
        info = child.recv()
        line = watch.wait_for(f"hang pid={info['pid']} ")
        child.kill()
        watch.stop()
    path = Path(re.search(r" dump=(\S+)", line).group(1))  # type: ignore[union-attr]
    # THEN show does not pass the last snapshot (of a loop still turning) off as the state at the hang
    assert main(["show", "--plain", str(path)]) == 0
    out = capsys.readouterr().out
    section = out[out.index("Event loop") :]
    age = re.search(r"snapshot at .* UTC \((\d+\.\d+) s before the dump\): loop running", section)
    assert age and float(age.group(1)) >= 0.5, section
    assert "the loop did not turn after it, and nothing recorded what held it" in section
    with Dump.open(path) as dump:
        stacks = dump.stacks
    if stacks is not None:  # where the stacks are taken, they name the coroutine that holds the loop
        functions = {f.function.rsplit(".", 1)[-1] for t in stacks.threads for f in t.frames}
        assert {"parse_batch", "crunch"} <= functions


CROWDED = r"""
import asyncio, os, time
import kmemdump
import kmemdump.asyncio


async def idle(n):
    await asyncio.sleep(3600)


async def flush_cache():
    time.sleep(120)  # blocks the loop that 10,000 other tasks wait on


async def main():
    kmemdump.init(table=True, pycoreinfo=False)
    tasks = [asyncio.create_task(idle(n), name=f"idle-{n}") for n in range(10_000)]
    watch = kmemdump.asyncio.watch_loop(timeout=1.0)
    while watch.turns < 2:
        await asyncio.sleep(0.01)
    send({"pid": os.getpid()})
    await asyncio.create_task(flush_cache(), name="flusher")


asyncio.run(main())
"""


def test_a_blocked_loop_among_10000_tasks_names_its_blocker_first(table_dir: Path, dump_dir: Path) -> None:
    with WatchProcess(table_dir, dump_dir) as watch, spawn_child(CROWDED) as child:
        info = child.recv(timeout=60)
        line = watch.wait_for(f"hang pid={info['pid']} ")
        child.kill()
        watch.stop()
    path = Path(re.search(r" dump=(\S+)", line).group(1))  # type: ignore[union-attr]
    with Dump.open(path) as dump:
        (record,) = [r for r in dump.meta.regions if r.kind == RegionKind.RING and r.name == "asyncio"]
        snapshot = _newest(dump.decode_region(record).value)
    # the snapshot fits its slot: the blocker named and listed first, the rest listed up to max_tasks, counted
    assert snapshot["blocked"] is True and snapshot["current"]["name"] == "flusher"
    assert snapshot["current"]["stack"][-1]["function"] == "flush_cache"
    assert snapshot["task_count"] >= 10_001 and snapshot["tasks"][0]["name"] == "flusher"
    assert len(snapshot["tasks"]) + snapshot["omitted"] == snapshot["task_count"]
    assert 0 < len(snapshot["tasks"]) <= 100


BUSY = r"""
import asyncio, os, time
import kmemdump
import kmemdump.asyncio


async def chatty(n):
    while True:
        sum(range(20000))  # a little work, then back to the loop
        await asyncio.sleep(0.001)


async def main():
    report = kmemdump.init(table=True, pycoreinfo=False)
    watch = kmemdump.asyncio.watch_loop(timeout=0.5)
    workers = [asyncio.create_task(chatty(n)) for n in range(50)]
    send({"pid": os.getpid(), "table": report.table})
    while watch.turns < 16:  # 4 s of turns, every timeout / 4
        await asyncio.sleep(0.05)
    for task in workers:
        task.cancel()
    return watch.turns


turns = asyncio.run(main())
send({"turns": turns})
block()  # outside the loop now: no watchdog may be left armed
"""


def test_a_busy_healthy_loop_is_never_dumped_and_an_ended_loop_disarms(
    table_dir: Path, dump_dir: Path
) -> None:
    with WatchProcess(table_dir, dump_dir) as watch, spawn_child(BUSY) as child:
        info = child.recv()
        watch.wait_for(f"watch pid={info['pid']} ")
        assert child.recv(timeout=60)["turns"] >= 16
        deadline = time.monotonic() + 10
        while read_table(info["table"]).header.watchdog_timeout_ns and time.monotonic() < deadline:
            time.sleep(0.05)  # the monitor thread disarms within timeout / 8 of the loop's end
        assert read_table(info["table"]).header.watchdog_timeout_ns == 0
        child.release()
        child.wait()
        lines = watch.stop()
    assert not [x for x in lines if x.startswith(("hang ", "death ", "error "))], lines
    assert list(dump_dir.iterdir()) == []


def test_watch_loop_refuses_what_it_cannot_watch(table_dir: Path) -> None:
    import kmemdump.asyncio

    with pytest.raises(InvalidRegionError, match="no running event loop"):
        kmemdump.asyncio.watch_loop()
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(InvalidRegionError, match="timeout"):
            kmemdump.asyncio.watch_loop(loop, timeout=0)
    finally:
        loop.close()
    code = r"""
import asyncio, threading
import kmemdump, kmemdump.asyncio
kmemdump.init(table=True, pycoreinfo=False)

async def main():
    first = kmemdump.asyncio.watch_loop(timeout=2.0)
    again = kmemdump.asyncio.watch_loop(timeout=2.0)
    other = asyncio.new_event_loop()
    try:
        kmemdump.asyncio.watch_loop(other)
        refused = None
    except kmemdump.InvalidRegionError as err:
        refused = str(err)
    first.stop()
    other.close()
    return first is again, refused

send(asyncio.run(main()))
"""
    with spawn_child(code) as child:
        same, refused = child.recv()
    assert same and "another event loop is watched already" in refused


def test_a_program_may_run_one_watched_loop_after_another(table_dir: Path) -> None:
    # GIVEN a program that calls asyncio.run() five times, watching each loop (a CLI, a test suite)
    code = r"""
import asyncio
import kmemdump, kmemdump.asyncio
kmemdump.init(table=True, pycoreinfo=False)

async def main():
    watch = kmemdump.asyncio.watch_loop(timeout=2.0)
    while not watch.turns:
        await asyncio.sleep(0.01)
    return watch.armed

armed = [asyncio.run(main()) for _ in range(5)]
rings = [r.name for r in kmemdump.default_registry().regions() if r.name == "asyncio"]
send({"armed": armed, "rings": rings})
"""
    with spawn_child(code) as child:
        out = child.recv()
    # THEN each run is watched (its loop fed and armed the watchdog), and they share one ring
    assert out == {"armed": [True] * 5, "rings": ["asyncio"]}
