"""Instances of Python classes through the whole path, for every interpreter on the machine.

A real process registers instances (attribute values of several types, a nested instance, one
whose ``__dict__`` was created, a cycle) with ``register_object(obj, depth=N)``, then waits; the
collector dumps it and ``kmemdump show --json`` must give each instance's attributes.
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

pytestmark = pytest.mark.slow


PRODUCER = r"""
import kmemdump
report = kmemdump.init(table=True, watchdog=60.0)

class Inner:
    def __init__(self, tag):
        self.tag = tag
        self.numbers = (1, 2.5)

class Session:
    def __init__(self):
        self.user = "alice"
        self.n = 3
        self.inner = Inner("nested")
        self.items = [1, "two", None]
        self.meta = {"k": [True], "big": 2**80}

class Slotted:
    __slots__ = ("a",)
    def __init__(self):
        self.a = 1

session = Session()
opened = Session()
opened.__dict__
node = Inner("loop")
node.me = node
objects = {"session": session, "opened": opened, "node": node, "slotted": Slotted()}
ids = {name: kmemdump.register_object(obj, name=name, depth=4) for name, obj in objects.items()}

NAMES = {Session: ("user", "n", "inner", "items", "meta"), Inner: ("tag", "numbers", "me")}

def expect(o, active=()):  # never vars(): that would move 3.11+ attributes into a new dict
    if type(o) in NAMES:
        if id(o) in active:
            return {"$cycle": "0x%x" % id(o)}
        names = [k for k in NAMES[type(o)] if hasattr(o, k)]
        attrs = {k: expect(getattr(o, k), active + (id(o),)) for k in names}
        name = type(o).__module__ + "." + type(o).__qualname__
        return {"$object": "0x%x" % id(o), "type": name, "attrs": attrs}
    if isinstance(o, dict):
        return {k: expect(v, active) for k, v in o.items()}
    if isinstance(o, list):
        return [expect(v, active) for v in o]
    if isinstance(o, tuple):
        return {"$tuple": [expect(v, active) for v in o]}
    return o

send({"ids": ids, "table": report.table, "failures": list(report.failures),
      "expected": {name: expect(objects[name]) for name in ("session", "opened", "node")},
      "slotted": "0x%x" % id(objects["slotted"]), "slotted_type": Slotted.__module__ + ".Slotted"})
block()
"""


@pytest.mark.parametrize("python", EACH_INTERPRETER)
def test_instances_show_their_attributes(
    python: str, table_dir: Path, dump_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a process of that interpreter with registered instances, waiting
    with spawn_child(PRODUCER, python=python, env=producer_env(table_dir)) as child:
        info = child.recv(timeout=60)
        assert info["failures"] == []
        # WHEN the collector dumps it and the inspector shows the dump as JSON
        result = request_dump(child.pid, info["table"], dump_dir)
        child.send("exit")
    capsys.readouterr()
    assert main(["show", str(result.path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    by_id = {region["id"]: region for region in shown["regions"]}
    # THEN each instance decodes to its attributes, nested ones and the cycle included
    for name, want in info["expected"].items():
        decoded = by_id[info["ids"][name]]["decoded"]
        assert decoded["complete"], (name, decoded["missing"])
        assert decoded["value"] == want, name
    # AND a class with __slots__ only is named, its attributes reported as not decoded
    slotted = by_id[info["ids"]["slotted"]]["decoded"]
    assert slotted["value"] == {"$object": info["slotted"], "type": info["slotted_type"]}
    assert any("no __dict__" in line for line in slotted["missing"])
    # AND the text form prints an instance like a dataclass's repr
    assert main(["show", str(result.path), "--plain"]) == 0
    text = capsys.readouterr().out
    assert (
        "Session(user='alice', n=3, inner=Inner(tag='nested', numbers=(1, 2.5)), items=[1, 'two', None]"
        in text
    )
