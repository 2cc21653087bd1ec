"""The whole path, for every interpreter on the machine: register objects, freeze, dump, show --json.

A real process running CPython 3.10, 3.11, 3.12 or 3.13 (with nothing but the producer on its path)
registers objects of every decoded type and deadlocks; the collector dumps it; `kmemdump show --json`
must return exactly the original values, and the stacks must name the deadlocked function and line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers_child import spawn_child
from helpers_interpreters import EACH_INTERPRETER
from helpers_interpreters import producer_env
from helpers_interpreters import request_dump
from kmemdump.cli.main import main
from kmemdump.inspect.cpython import encode_value

pytestmark = pytest.mark.slow


PRODUCER = r"""
import sys, threading, time
import kmemdump
report = kmemdump.init(table=True, watchdog=60.0, capacity=4096)  # the big dict needs 600 slots
values = {
    "ascii": "hello world",
    "latin1": "caf\u00e9 cr\u00e8me",
    "ucs2": "\u03a9\u2248\u00e7\u221a \u4e2d\u6587",
    "ucs4": "\U0001f40d snake \U0001f600",
    "empty_str": "",
    "bytes": b"\x00\x01binary\xff",
    "bytearray": bytearray(b"mutable bytes"),
    "small_int": 7,
    "zero": 0,
    "negative": -12345,
    "big": 2**100 + 12345,
    "big_negative": -(2**70) - 1,
    "float": 3.25,
    "negative_float": -1e-300,
    "true": True,
    "false": False,
    "none": None,
    "tuple": (1, "two", 3.0, None),
    "list": [1, [2, 3], "x", {"k": "v"}],
    "dict": {"a": 1, "b": [1, 2], "c": {"d": None, "e": (True, False)}},
    "int_keys": {1: "one", 2: "two", -3: b"three"},
    "big_dict": {f"key{i}": i * i for i in range(300)},
}
ids = {name: kmemdump.register_object(value, name=name, depth=4) for name, value in values.items()}
failures = [f for f in report.failures]
a, b = threading.Lock(), threading.Lock()
both = threading.Barrier(2)
blocked_at = {}
def worker(mine, theirs):
    with mine:
        both.wait()
        blocked_at[threading.get_ident()] = sys._getframe().f_lineno + 1
        with theirs:
            pass
threads = [threading.Thread(target=worker, args=(a, b), name="left"),
           threading.Thread(target=worker, args=(b, a), name="right")]
for t in threads:
    t.start()
deadline = time.monotonic() + 30
while time.monotonic() < deadline:  # readiness: both threads parked on their second lock
    frames = sys._current_frames()
    if all(t.ident in blocked_at and frames[t.ident].f_lineno == blocked_at[t.ident] for t in threads):
        break
    time.sleep(0.001)
send({"ids": ids, "repr": {k: repr(v) for k, v in values.items()}, "table": report.table,
      "failures": failures, "line": blocked_at[threads[0].ident], "version": sys.version})
for t in threads:
    t.join()
"""


@pytest.mark.parametrize("python", EACH_INTERPRETER)
def test_objects_and_stacks_survive_the_round_trip(
    python: str, table_dir: Path, dump_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a process of that interpreter with objects of every decodable type, deadlocked
    with spawn_child(PRODUCER, python=python, env=producer_env(table_dir)) as child:
        info = child.recv(timeout=60)
        assert info["failures"] == []
        # WHEN the collector dumps it and the inspector shows the dump as JSON
        result = request_dump(child.pid, info["table"], dump_dir)
    capsys.readouterr()
    assert main(["show", str(result.path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    # THEN every registered object decodes to exactly its original value
    by_id = {region["id"]: region for region in shown["regions"]}
    expected = {name: eval(text, {"bytearray": bytearray}) for name, text in info["repr"].items()}
    for name, rid in info["ids"].items():
        decoded = by_id[rid]["decoded"]
        assert decoded["complete"], (name, decoded["missing"])
        assert decoded["value"] == encode_value(expected[name]), name
    # AND the stacks name the deadlocked function at the line where it waits
    assert shown["stacks"]["state"] == "ok"
    threads = {t["name"]: t for t in shown["stacks"]["threads"]}
    for name in ("left", "right"):
        innermost = threads[name]["frames"][0]
        assert innermost["function"].endswith("worker") and innermost["line"] == info["line"]
