"""Live object graphs: a registered object is walked in the held process at dump time.

A producer registers its state once, then changes it (counters bumped, values replaced, keys added, a
list grown) and deadlocks; the dump holds the values of the freeze, on every interpreter. A walk over
memory that lies (a cycle, a huge list, pointers corrupted with ctypes) stays within its bounds and
reports what it left out. A process already gone says which graphs could not be walked.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from budget import seconds
from helpers_child import spawn_child
from helpers_interpreters import EACH_INTERPRETER
from helpers_interpreters import producer_env
from helpers_interpreters import request_dump
from kmemdump.cli.main import main
from kmemdump.collector.corewriter import write_core
from kmemdump.collector.dump import DumpOptions
from kmemdump.collector.dump import dump_target
from kmemdump.collector.watch import Watcher
from kmemdump.formats import dumpmeta
from kmemdump.formats.dumpmeta import DumpMeta
from kmemdump.formats.dumpmeta import GraphRecord
from kmemdump.formats.dumpmeta import RegionRecord
from kmemdump.formats.dumpmeta import encode_meta
from kmemdump.formats.elf import KMD_NOTE_META
from kmemdump.formats.elf import PYCOREINFO_NOTE
from kmemdump.formats.elf import Note
from kmemdump.formats.elf import Segment
from kmemdump.formats.enums import RegionKind
from kmemdump.inspect.dumpfile import Dump
from kmemdump.procinfo import process_start_time
from kmemdump.producer.python.live import probe
from kmemdump.producer.python.objgraph import object_regions

pytestmark = pytest.mark.slow

# Two threads deadlock on two locks; the main thread waits for them. Readiness: both are parked on
# their second lock before the producer reports.
DEADLOCK = r"""
import sys, threading, time
def deadlock(report):
    a, b = threading.Lock(), threading.Lock()
    both = threading.Barrier(2)
    parked = {}
    def worker(mine, theirs):
        with mine:
            both.wait()
            parked[threading.get_ident()] = sys._getframe().f_lineno + 1
            with theirs:
                pass
    threads = [threading.Thread(target=worker, args=(a, b), name="left"),
               threading.Thread(target=worker, args=(b, a), name="right")]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        frames = sys._current_frames()
        if all(t.ident in parked and frames[t.ident].f_lineno == parked[t.ident] for t in threads):
            break
        time.sleep(0.001)
    send(report)
    for t in threads:
        t.join()
"""

CHANGING_STATE = (
    DEADLOCK
    + r"""
import kmemdump
report = kmemdump.init(table=True)
state = {"processed": 0, "last_order": None, "workers": ["w1"], "healthy": True,
         "limits": {"max": 10}}
rid = kmemdump.register_object(state, name="state", depth=3)
# after registration: every value below lives in objects that did not exist when it was registered
for n in range(1, 1001):
    state["processed"] += 1                       # a new int object each time, above the small-int cache
state["last_order"] = "order#" + str(4711)        # None replaced by a new str
state["workers"].extend(f"w{i}" for i in range(2, 40))   # the list's item array is reallocated
state["limits"]["max"] = 2 ** 80                  # a value in a nested dict replaced by a big int
state["healthy"] = False
for i in range(30):                               # new keys: the dict's keys table is reallocated
    state[f"key{i}"] = (i, str(i) * 3, float(i) / 4)
deadlock({"rid": rid, "table": report.table, "final": repr(state)})
"""
)


@pytest.mark.parametrize("python", EACH_INTERPRETER)
def test_the_dump_holds_the_values_of_the_freeze(
    python: str, table_dir: Path, dump_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a dict registered once, changed every way afterwards, in a deadlocked process
    with spawn_child(CHANGING_STATE, python=python, env=producer_env(table_dir)) as child:
        info = child.recv(timeout=60)
        # WHEN the collector dumps it
        result = request_dump(child.pid, info["table"], dump_dir)
    # THEN show --json gives exactly the final values
    capsys.readouterr()
    assert main(["show", str(result.path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    region = next(r for r in shown["regions"] if r["id"] == info["rid"])
    decoded = region["decoded"]
    final = eval(info["final"])
    assert decoded["complete"], decoded["missing"]
    assert decoded["value"] == {
        **final,
        **{k: {"$tuple": list(v)} for k, v in final.items() if k.startswith("key")},
    }
    (graph,) = shown["dump"]["graphs"]
    assert (graph["id"], graph["status"], graph["depth"]) == (info["rid"], "ok", 3)
    assert graph["objects"] > 100 and graph["stored"] > 0
    assert not shown["dump"]["partial"] and shown["dump"]["missing"] == []
    # AND the registry published the root alone: the walk found everything at dump time
    assert [r["name"] for r in shown["regions"]] == ["banner", "pycoreinfo", "state"]
    assert main(["show", str(result.path), "--plain"]) == 0
    text = capsys.readouterr().out
    assert "state: dict (walked at the freeze, depth 3:" in text
    assert "'processed': 1000" in text and "'last_order': 'order#4711'" in text


HOSTILE = r"""
import ctypes, gc, os, sys
gc.disable()                                     # its garbage collector must never meet the garbage below
import kmemdump
report = kmemdump.init(table=True)
cyclic = {"name": "loop"}
cyclic["self"] = cyclic                          # a cycle
huge = list(range(10_000))                       # 10,000 items
liar = ["ok-before", "victim-1", "victim-2", "victim-3", "victim-4", "ok-after"]
garbage = bytearray(b"\x41" * 256)               # not an object: its bytes say 0x4141414141414141
fake = bytearray(64)                             # a fake object: an aligned, readable type pointer to junk
ctypes.memmove(ctypes.addressof(ctypes.c_char.from_buffer(fake)) + 8,
               (ctypes.c_uint64 * 1)(ctypes.addressof(ctypes.c_char.from_buffer(garbage))), 8)
items = ctypes.cast(ctypes.c_void_p.from_address(id(liar) + 24).value, ctypes.POINTER(ctypes.c_uint64))
items[1] = ctypes.addressof(ctypes.c_char.from_buffer(garbage))   # an object whose type pointer is junk
items[2] = id(liar[0]) + 3                                        # a misaligned pointer
items[3] = 0x10                                                   # unmapped memory
items[4] = ctypes.addressof(ctypes.c_char.from_buffer(fake))      # a type pointer to a non-type
lying_str = "x" * 16
ctypes.c_int64.from_address(id(lying_str) + 16).value = 1 << 40   # a str that claims 1 TiB
class Chained(Exception):
    pass
chain = [Chained() for _ in range(3000)]
for this, after in zip(chain, chain[1:]):                          # each __dict__ slot: the next instance
    ctypes.c_void_p.from_address(id(this) + Chained.__dictoffset__).value = id(after)
root = {"big": 10 ** 5000 + 1, "cyclic": cyclic, "huge": huge, "liar": liar, "lying_str": lying_str,
        "chain": chain[0]}
rid = kmemdump.register_object(root, name="hostile", depth=4)
send({"rid": rid, "table": report.table})
block()
"""


def test_a_hostile_graph_is_walked_within_its_bounds(
    table_dir: Path, dump_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with spawn_child(HOSTILE) as child:
        info = child.recv()
        start = process_start_time(child.pid)
        started = time.monotonic()
        result = dump_target(  # (time enough on any machine: the bounds under test are objects and bytes)
            child.pid,
            start,
            Path(info["table"]),
            reason="request",
            options=DumpOptions(dump_dir, graph_seconds=120),
        )
        took = time.monotonic() - started
        bounded = dump_target(
            child.pid,
            start,
            Path(info["table"]),
            reason="request",
            options=DumpOptions(dump_dir, graph_objects=500, graph_bytes=64 * 1024),
        )
        os.kill(child.pid, signal.SIGKILL)  # its corrupted objects must never be freed
    (graph,) = result.meta.graphs
    assert graph.status == "partial" and graph.id == info["rid"]
    assert graph.objects > 10_000 and graph.stored < 2 * 1024 * 1024, graph
    assert took < 60  # a hang guard, not a speed target
    with Dump.open(result.path) as dump:
        decoded = dump.decode_region(next(r for r in dump.meta.regions if r.id == info["rid"]))
    value = decoded.value
    assert value["cyclic"] == {"name": "loop", "self": {"$cycle": value["cyclic"]["self"]["$cycle"]}}
    assert value["huge"] == list(range(10_000))
    liar = value["liar"]
    assert liar[0] == "ok-before" and liar[5] == "ok-after"
    reasons = [item["reason"] for item in liar[1:5]]
    assert "implausible type pointer 0x4141414141414141" in reasons[0]
    assert "misaligned" in reasons[1]
    assert "not in dump" in reasons[2] or "not readable" in reasons[2]
    assert "does not point at a type object" in reasons[3]
    # the str claiming a terabyte: at most the byte budget is tried, and what is not there is missing
    assert "characters" in value["lying_str"]["reason"]
    assert any("lying_str" in line and "max_bytes" in line for line in decoded.missing)
    # an instance whose __dict__ slot holds another instance (and so on, 3,000 deep) is not followed
    assert value["chain"]["type"] == "Chained"
    assert "has type Chained, not dict" in value["chain"]["attrs"]["reason"]
    # an int too long for str() comes in hex, and show prints it
    assert value["big"] == {"$int": hex(10**5000 + 1)}
    assert "object graph" in result.meta.missing[-1] and result.meta.partial
    capsys.readouterr()
    assert main(["show", str(result.path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    region = next(r for r in shown["regions"] if r["id"] == info["rid"])
    assert region["decoded"]["value"]["big"] == {"$int": hex(10**5000 + 1)}
    assert main(["show", str(result.path), "--plain"]) == 0
    assert "{'big': <int of 16,610 bits: 0x" in capsys.readouterr().out
    # the same walk with tighter bounds stops at them
    (small,) = bounded.meta.graphs
    assert small.status == "partial" and small.objects <= 500 and small.stored <= 64 * 1024
    with Dump.open(bounded.path) as dump:
        decoded = dump.decode_region(next(r for r in dump.meta.regions if r.id == info["rid"]))
    assert any("max_items" in line or "max_bytes" in line for line in decoded.missing)


CHURN = r"""
import random, threading
import kmemdump
report = kmemdump.init(table=True)
state = {"log": [], "index": {}}
rid = kmemdump.register_object(state, name="state", depth=4)
def churn():
    rng = random.Random(7)
    while True:  # keys come and go, lists grow and are cut, whole dicts are replaced
        key = f"k{rng.randrange(2000)}"
        if rng.random() < 0.5:
            state["index"][key] = [str(rng.random())] * rng.randrange(8)
        else:
            state["index"].pop(key, None)
        state["log"].append(rng.random() * 1e6)
        if len(state["log"]) > 4000:
            del state["log"][: rng.randrange(4000)]
        if rng.random() < 0.005:
            state["index"] = {}
threading.Thread(target=churn, daemon=True).start()
send({"rid": rid, "table": report.table})
block()
"""


def test_a_graph_changing_under_a_walk_that_does_not_hold_it(
    table_dir: Path, dump_dir: Path, stress_report: Callable[[str], None], capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a process that changes its registered graph all the time
    dumps = objects = 0
    with spawn_child(CHURN) as child:
        info = child.recv()
        start = process_start_time(child.pid)
        options = DumpOptions(dump_dir, stop=False, stacks=False, threads=-1)
        deadline = time.monotonic() + seconds(20)
        while time.monotonic() < deadline or dumps < 3:
            # WHEN it is dumped without being held: the walk reads memory that is being freed and reused
            result = dump_target(child.pid, start, Path(info["table"]), reason="request", options=options)
            (graph,) = result.meta.graphs
            # THEN every walk ends within its bounds, and the dump reads back
            assert graph.status in ("ok", "partial") and graph.objects >= 1, graph
            with Dump.open(result.path) as dump:
                decoded = dump.decode_region(next(r for r in dump.meta.regions if r.id == info["rid"]))
            assert decoded.error is None and decoded.value is not None
            dumps, objects = dumps + 1, objects + graph.objects
            if time.monotonic() < deadline:
                result.path.unlink()
        assert child.popen.poll() is None  # and the process was never disturbed
    capsys.readouterr()
    assert main(["show", str(result.path), "--plain"]) == 0
    assert "walked in the running process (not held: values may be torn)" in capsys.readouterr().out
    stress_report(f"{dumps} dumps of a changing graph, not held, {objects} objects walked")


BIG_LAYOUT = r"""
import kmemdump
layout = bytearray(5 * 1024 * 1024)                # the application's own region under our ID, 5 MiB
kmemdump.register(layout, id=kmemdump.ID.PYCOREINFO, name="not-a-layout")
report = kmemdump.init(table=True)                 # leaves it in place (and says so)
rid = kmemdump.register_object({"n": 1}, name="state", depth=1)
send({"rid": rid, "table": report.table})
block()
"""


def test_a_layout_region_too_large_to_be_one_is_not_read(table_dir: Path, dump_dir: Path) -> None:
    with spawn_child(BIG_LAYOUT) as child:
        info = child.recv()
        result = request_dump(child.pid, info["table"], dump_dir)
    (graph,) = result.meta.graphs
    assert (graph.id, graph.status) == (info["rid"], "unwalkable")
    assert graph.error == (
        "no Python layout to walk with: the PYCOREINFO region is 5,242,880 bytes (at most 4,194,304)"
    )


SLOW = r"""
import kmemdump
report = kmemdump.init(table=True)
numbers = [float(i) + 0.5 for i in range(200_000)]
rids = [kmemdump.register_object(numbers, name=f"numbers{i}", depth=1) for i in range(4)]
send({"rids": rids, "table": report.table})
block()
"""


def test_the_walks_stop_at_their_time_limit(
    table_dir: Path, dump_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN four roots of 200,000 objects each: far more than anything walks in 0.2 s
    with spawn_child(SLOW) as child:
        info = child.recv()
        # WHEN the walks may take 0.2 s in all
        options = DumpOptions(dump_dir, graph_seconds=0.2, stacks=False)
        result = dump_target(
            child.pid, process_start_time(child.pid), Path(info["table"]), reason="request", options=options
        )
    # THEN the first stops where the time ran out, and the others are not begun
    first, *rest = result.meta.graphs
    assert first.status == "partial" and 1 <= first.objects < 100_000, first
    assert first.error.startswith(
        f"the time limit ran out after {first.objects:,} object{'s' if first.objects > 1 else ''}; "
    )
    assert [(g.status, g.objects) for g in rest] == [("skipped", 0)] * 3
    assert all("the time limit (0.2 s) ran out before this graph" in g.error for g in rest)
    assert result.meta.partial and len(result.meta.missing) == 4
    # AND what it walked reads back from the dump, no further: the items it reached (the list is the
    # first object), the rest said in a sentence, not one per item
    with Dump.open(result.path) as dump:
        decoded = dump.decode_region(next(r for r in dump.meta.regions if r.id == first.id))
    assert decoded.value == [i + 0.5 for i in range(first.objects - 1)]
    (missing,) = decoded.missing
    assert missing.endswith(f"item array: {first.objects - 1} of 200000 items decoded (max_items)")
    capsys.readouterr()
    assert main(["show", str(result.path), "--plain"]) == 0
    assert "1 object graph walked in the held process" in capsys.readouterr().out


@pytest.mark.timeout(60)
def test_a_dump_whose_graph_record_lies_is_read_within_the_readers_bounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a dump of a diamond of shared lists 60 deep (2**60 paths through 61 lists) whose graph
    # record claims bounds nobody could reach
    diamond: list[object] = [None]
    for _ in range(60):
        diamond = [diamond, diamond]
    live = probe()
    assert live.enabled and live.info is not None, live.reason
    parts = object_regions(diamond, 64)
    assert len(parts) == 2 * 61  # each list and its item array: 61 lists in all
    segments = [Segment(address, ctypes.string_at(address, size)) for address, size, _, _ in parts]
    root = RegionRecord(1024, "diamond", int(RegionKind.OBJECT), id(diamond), 56, 56, "ok", "")
    lie = GraphRecord(1024, "diamond", id(diamond), 64, "ok", 10**12, 1, 10**12, 2**40)
    meta = DumpMeta(
        reason="request", pid=os.getpid(), start_time=1, captured_ns=time.time_ns(), host="h", argv=("x",),
        exe=None, uid=os.getuid(), py_hexversion=sys.hexversion, regions=(root,), partial=False,
        stopped=True, graphs=(lie,),
    )  # fmt: skip
    notes = [
        Note("KMEMDUMP", KMD_NOTE_META, encode_meta(meta)),
        Note("PYCOREINFO", PYCOREINFO_NOTE, live.info.encode()),
    ]
    path = write_core(tmp_path / "lies.core", segments, notes)
    # WHEN it is read (with the reader's object bound made small, to keep the test short)
    monkeypatch.setattr(dumpmeta, "GRAPH_MAX_OBJECTS", 3000)
    with Dump.open(path) as dump:
        decoded = dump.decode_region(dump.meta.regions[0])
    # THEN the decoding stops at the reader's bound, not at the dump's
    assert not decoded.complete and any("max_items" in line for line in decoded.missing), decoded.missing
    assert isinstance(decoded.value, list) and decoded.value  # the leading part


GONE = r"""
import kmemdump
report = kmemdump.init(table=True)
state = {"orders": [1, 2, 3]}
rid = kmemdump.register_object(state, name="state", depth=2)
send({"rid": rid, "table": report.table})
block()
"""


def test_a_process_gone_says_which_graphs_were_not_walked(
    table_dir: Path, dump_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = []
    with spawn_child(GONE) as child:
        info = child.recv()
        watcher = Watcher([table_dir], DumpOptions(dump_dir), on_event=events.append)
        try:
            watcher.scan()
            os.kill(child.pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while not any(e.kind == "death" for e in events) and time.monotonic() < deadline:
                watcher.step()
        finally:
            watcher.close()
    (death,) = [e for e in events if e.kind == "death"]
    assert death.dump is not None
    (graph,) = death.dump.meta.graphs
    assert (graph.id, graph.status) == (info["rid"], "gone")
    assert "gone before its object graphs could be walked" in graph.error
    assert any(
        line.startswith(f"object graph {info['rid']} (state): gone") for line in death.dump.meta.missing
    )
    capsys.readouterr()
    assert main(["show", str(death.dump.path), "--plain"]) == 0
    text = capsys.readouterr().out
    assert "its object graph: the process was gone" in text
    assert re.search(r"^Graphs:\s+1 object graph, none walked \(gone; see Missing\)$", text, re.M)
