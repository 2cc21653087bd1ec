"""Static annotations: the Python counterpart of the kernel's ``.kmemdump`` section.

``kmemdump.static()`` records; ``init()`` walks the records (and the ``kmemdump.annotations``
entry points of installed distributions) and registers each. Walks of a private
:class:`AnnotationSection` run in this process; everything touching the process-wide section or
``init()`` runs in a fresh interpreter.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from kmemdump import ID
from kmemdump import NO_ID
from kmemdump import RegionKind
from kmemdump import Registry
from kmemdump.ids import DYNAMIC_START
from kmemdump.producer.annotations import ENTRY_POINT_GROUP
from kmemdump.producer.annotations import Annotation
from kmemdump.producer.annotations import AnnotationSection
from kmemdump.producer.annotations import WalkReport


def _child(code: str, *args: str, pythonpath: Path | None = None) -> Any:
    """Run ``code`` in a fresh interpreter; return the JSON it printed last."""
    env = None
    if pythonpath is not None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(pythonpath), os.environ.get("PYTHONPATH", "")]),
        }
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- a private section ----------------------------------------------------------------------------


def test_recorded_annotation_is_not_registered_before_walk() -> None:
    section = AnnotationSection()
    registry = Registry()
    buf = bytearray(b"static data")
    assert section.record(Annotation(buf, ID.USER_START, "events", origin="here:1")) is None
    assert registry.regions() == ()
    assert section.annotations == [Annotation(buf, ID.USER_START, "events", origin="here:1")]
    buf.append(0)  # recording pins nothing


def test_walk_registers_each_annotation() -> None:
    section = AnnotationSection()
    registry = Registry()
    a, b, c = bytearray(b"a" * 8), bytearray(b"b" * 8), bytearray(b"c" * 8)
    section.record(Annotation(a, ID.USER_START, "a"))
    section.record(Annotation(b, NO_ID, "b", size=4))
    section.record(Annotation(c))

    report = section.walk(registry, entry_points=False)

    assert report == WalkReport((ID.USER_START, DYNAMIC_START, DYNAMIC_START + 1), ())
    regions = {r.id: r for r in registry.regions()}
    assert regions[ID.USER_START].name == "a"
    assert (regions[DYNAMIC_START].name, regions[DYNAMIC_START].size) == ("b", 4)
    assert regions[DYNAMIC_START + 1].name == "bytearray"
    assert section.annotations == []


def test_walk_is_idempotent() -> None:
    section = AnnotationSection()
    registry = Registry()
    section.record(Annotation(bytearray(4), ID.USER_START))
    section.walk(registry, entry_points=False)
    before = registry.regions()

    again = section.walk(registry, entry_points=False)

    assert again == WalkReport((), ())
    assert registry.regions() == before


def test_record_after_walk_registers_at_once() -> None:
    section = AnnotationSection()
    registry = Registry()
    section.walk(registry, entry_points=False)
    rid = section.record(Annotation(bytearray(b"late"), ID.USER_START + 1, "late"))
    assert rid == ID.USER_START + 1
    assert registry.get(rid).name == "late"
    assert section.annotations == []


def test_walk_reports_failed_annotation_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    section = AnnotationSection()
    registry = Registry()
    section.record(Annotation(bytearray(4), ID.USER_START, origin="mod_a:10"))
    section.record(Annotation(bytearray(4), ID.USER_START, origin="mod_b:20"))  # duplicate ID
    section.record(Annotation(bytearray(), origin="mod_c:30"))  # empty buffer
    section.record(Annotation(bytearray(4), ID.USER_START + 1, origin="mod_d:40"))

    with caplog.at_level(logging.WARNING, logger="kmemdump"):
        report = section.walk(registry, entry_points=False)

    assert report.registered == (ID.USER_START, ID.USER_START + 1)
    assert [origin for origin, _ in report.failed] == ["mod_b:20", "mod_c:30"]
    assert "already registered" in report.failed[0][1]
    assert "empty" in report.failed[1][1]
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "mod_b:20" in logged
    assert "mod_c:30" in logged


def test_annotation_with_depth_registers_a_live_object_graph() -> None:
    section = AnnotationSection()
    registry = Registry()
    table = {"key": "value"}
    section.record(Annotation(table, ID.USER_START, "table", depth=1))
    section.walk(registry, entry_points=False)
    root = registry.get(ID.USER_START)
    assert (root.address, root.kind, root.graph_depth) == (id(table), RegionKind.OBJECT, 1)
    assert len(registry) == 1  # its contents are walked at dump time


# --- kmemdump.static() and init(), in a fresh interpreter ----------------------------------------------


@pytest.mark.timeout(90)
def test_static_records_without_registering_then_init_registers() -> None:
    out = _child(
        """
        import json, ctypes, kmemdump
        from kmemdump.producer.annotations import section
        EVENTS = kmemdump.static(bytearray(b"events!"), id=kmemdump.ID.USER_START, name="events")
        COUNTERS = kmemdump.static((ctypes.c_uint64 * 4)(1, 2, 3, 4), name="counters")
        before = [r.id for r in kmemdump.regions()]
        origins = [a.origin for a in section.annotations]
        report = kmemdump.init(pycoreinfo=False)
        regions = {r.name: r for r in kmemdump.regions()}
        print(json.dumps({
            "same_object": type(EVENTS) is bytearray,
            "before": before,
            "origins": origins,
            "annotations": list(report.annotations),
            "events": ctypes.string_at(regions["events"].address, regions["events"].size).decode(),
            "events_id": regions["events"].id,
            "counters": list(ctypes.string_at(regions["counters"].address, 32)[::8]),
            "banner": report.banner_id,
        }))
        """
    )
    assert out["same_object"] is True
    assert out["before"] == []
    assert out["origins"] == ["__main__:4", "__main__:5"]
    assert out["annotations"] == [ID.USER_START, DYNAMIC_START]
    assert out["events"] == "events!"
    assert out["events_id"] == ID.USER_START
    assert out["counters"] == [1, 2, 3, 4]
    assert out["banner"] == ID.BANNER


@pytest.mark.timeout(90)
def test_static_after_init_registers_at_once() -> None:
    out = _child(
        """
        import json, kmemdump
        kmemdump.init(pycoreinfo=False)
        count = len(kmemdump.regions())
        LATE = kmemdump.static(bytearray(16), id=kmemdump.ID.USER_START + 7, name="late")
        again = kmemdump.init(pycoreinfo=False)
        print(json.dumps({
            "added": len(kmemdump.regions()) - count,
            "late": kmemdump.default_registry().get(kmemdump.ID.USER_START + 7).name,
            "walked_again": list(again.annotations),
        }))
        """
    )
    assert out == {"added": 1, "late": "late", "walked_again": []}


@pytest.mark.timeout(90)
def test_static_annotation_failure_reported_by_init() -> None:
    out = _child(
        """
        import json, kmemdump
        kmemdump.register(bytearray(4), id=kmemdump.ID.USER_START)
        kmemdump.static(bytearray(4), id=kmemdump.ID.USER_START, name="clash")
        kmemdump.static(bytearray(4), id=kmemdump.ID.USER_START + 1, name="fine")
        report = kmemdump.init(pycoreinfo=False)
        print(json.dumps({"failures": report.failures, "annotations": report.annotations}))
        """
    )
    assert out["annotations"] == [ID.USER_START + 1]
    ((origin, error),) = out["failures"]
    assert origin == "__main__:4"
    assert "already registered" in error


def _plugin_tree(root: Path) -> Path:
    """A real distribution on disk: a module and its dist-info with kmemdump entry points."""
    (root / "kmd_plugin.py").write_text(
        textwrap.dedent(
            """
            import kmemdump

            PLUGIN_STATE = bytearray(b"plugin state lives here")
            CALLS = []


            def annotate():
                CALLS.append("annotate")
                kmemdump.static(PLUGIN_STATE, id=kmemdump.ID.USER_START + 20, name="plugin")


            def explode():
                raise RuntimeError("plugin is broken")
            """
        )
    )
    (root / "kmd_plugin_module.py").write_text(
        "import kmemdump\nMODULE_BUF = kmemdump.static(bytearray(b'module-level'), name='plugmod')\n"
    )
    info = root / "kmd_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kmd-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\n"
        "good = kmd_plugin:annotate\n"
        "broken = kmd_plugin:explode\n"
        "missing = kmd_no_such_module:annotate\n"
        "module = kmd_plugin_module\n"
        "\n[console_scripts]\nunrelated = kmd_plugin:explode\n"
    )
    return root


@pytest.mark.timeout(90)
def test_entry_point_loaded_and_called_by_init(tmp_path: Path) -> None:
    out = _child(
        """
        import json, ctypes, sys, kmemdump
        before = "kmd_plugin" in sys.modules
        report = kmemdump.init(pycoreinfo=False)
        import kmd_plugin
        regions = {r.name: r for r in kmemdump.regions()}
        plugin = regions["plugin"]
        print(json.dumps({
            "before": before,
            "calls": kmd_plugin.CALLS,
            "plugin_id": plugin.id,
            "plugin_bytes": ctypes.string_at(plugin.address, plugin.size).decode(),
            "module_region": "plugmod" in regions,
            "annotations": report.annotations,
            "failures": report.failures,
            "banner": report.banner_id,
        }))
        """,
        pythonpath=_plugin_tree(tmp_path),
    )
    assert out["before"] is False
    assert out["calls"] == ["annotate"]  # loaded and called once
    assert out["plugin_id"] == ID.USER_START + 20
    assert out["plugin_bytes"] == "plugin state lives here"
    assert out["module_region"] is True  # a module entry point is imported, not called
    assert ID.USER_START + 20 in out["annotations"]
    assert out["banner"] == ID.BANNER  # init went on past the failures
    failures = dict(out["failures"])
    assert len(failures) == 2
    broken = failures["entry point broken = kmd_plugin:explode"]
    assert broken == "RuntimeError: plugin is broken"
    missing = failures["entry point missing = kmd_no_such_module:annotate"]
    assert missing.startswith("ModuleNotFoundError")


@pytest.mark.timeout(90)
def test_entry_points_not_loaded_when_disabled(tmp_path: Path) -> None:
    out = _child(
        """
        import json, sys, kmemdump
        report = kmemdump.init(pycoreinfo=False, entry_points=False)
        print(json.dumps({"loaded": "kmd_plugin" in sys.modules, "failures": report.failures}))
        """,
        pythonpath=_plugin_tree(tmp_path),
    )
    assert out == {"loaded": False, "failures": []}
