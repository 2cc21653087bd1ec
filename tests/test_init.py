"""``import kmemdump`` and ``kmemdump.init()``: the seed's "kmemdump Initialization".

The default registry is process-global, so every test here runs in a fresh interpreter and
prints its findings as one JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from kmemdump import ID
from kmemdump import RegionKind

pytestmark = pytest.mark.timeout(90)


def _child(code: str, *args: str, env: dict[str, str] | None = None) -> Any:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=None if env is None else {**os.environ, **env},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_noop_backend_current_from_import() -> None:
    out = _child(
        """
        import json, kmemdump
        backend = kmemdump.current_backend()
        rid = kmemdump.register(bytearray(b"before any init or backend"))
        print(json.dumps({
            "type": type(backend).__name__,
            "exact": type(backend) is kmemdump.NoopBackend,
            "name": backend.name,
            "rid": rid,
            "regions": len(kmemdump.regions()),
            "capacity": kmemdump.default_registry().capacity,
        }))
        """
    )
    assert out == {
        "type": "NoopBackend",
        "exact": True,
        "name": "noop",
        "rid": 1024,
        "regions": 1,
        "capacity": 201,
    }


def test_import_does_not_register_or_start_anything() -> None:
    out = _child(
        """
        import json, threading, kmemdump
        print(json.dumps({
            "regions": len(kmemdump.regions()),
            "threads": [t.name for t in threading.enumerate()],
        }))
        """
    )
    assert out["regions"] == 0
    assert out["threads"] == ["MainThread"]


def test_init_registers_banner_naming_executable_and_argv() -> None:
    out = _child(
        """
        import json, ctypes, sys, kmemdump
        report = kmemdump.init(pycoreinfo=False)
        region = kmemdump.default_registry().get(kmemdump.ID.BANNER)
        raw = ctypes.string_at(region.address, region.size)
        print(json.dumps({
            "banner_id": report.banner_id,
            "kind": region.kind,
            "name": region.name,
            "text": raw.decode(),
            "executable": sys.executable,
            "argv": sys.argv,
        }))
        """,
        "first-arg",
        "second arg",
    )
    assert out["banner_id"] == ID.BANNER
    assert out["kind"] == RegionKind.BUFFER
    assert out["name"] == "banner"
    text = out["text"]
    assert text.endswith("\0")
    assert text.count("\0") == 1
    assert out["executable"] in text
    assert "argv: -c first-arg 'second arg'\n" in text  # shell-quoted: readable back as a list
    assert "pid: " in text
    assert sys.version.split()[0] in text


def test_init_is_idempotent() -> None:
    out = _child(
        """
        import json, kmemdump
        first = kmemdump.init()
        regions = kmemdump.regions()
        second = kmemdump.init(capacity=5)
        print(json.dumps({
            "first": [first.banner_id, first.pycoreinfo_id, list(first.annotations), first.failures],
            "second": [second.banner_id, second.pycoreinfo_id, list(second.annotations), second.failures],
            "unchanged": kmemdump.regions() == regions,
            "capacity": kmemdump.default_registry().capacity,
        }))
        """
    )
    assert out["first"][:2] == [ID.BANNER, ID.PYCOREINFO]
    assert out["second"] == [ID.BANNER, ID.PYCOREINFO, [], []]
    assert out["unchanged"] is True
    assert out["capacity"] == 201  # a later capacity is ignored


def test_init_capacity_sizes_the_registry() -> None:
    out = _child(
        """
        import json, kmemdump
        kmemdump.init(capacity=3, pycoreinfo=False)  # the banner takes one slot
        kmemdump.register(bytearray(1))
        kmemdump.register(bytearray(1))
        try:
            kmemdump.register(bytearray(1))
        except kmemdump.RegistryFullError as err:
            full = str(err)
        print(json.dumps({"capacity": kmemdump.default_registry().capacity, "full": full}))
        """
    )
    assert out == {"capacity": 3, "full": "no free slot (capacity=3)"}


def test_init_capacity_after_registrations_refused_and_retry_works() -> None:
    out = _child(
        """
        import json, kmemdump
        kmemdump.register(bytearray(1))
        try:
            kmemdump.init(capacity=50, pycoreinfo=False)
        except kmemdump.InvalidRegionError as err:
            error = type(err).__name__
        report = kmemdump.init(pycoreinfo=False)
        print(json.dumps({"error": error, "banner": report.banner_id}))
        """
    )
    assert out == {"error": "InvalidRegionError", "banner": ID.BANNER}


def test_init_without_banner_or_pycoreinfo() -> None:
    out = _child(
        """
        import json, kmemdump
        report = kmemdump.init(banner=False, pycoreinfo=False)
        print(json.dumps({"report": [report.banner_id, report.pycoreinfo_id], "n": len(kmemdump.regions())}))
        """
    )
    assert out == {"report": [None, None], "n": 0}


def test_init_publishes_pycoreinfo_with_types_registered_before_and_after() -> None:
    out = _child(
        """
        import json, ctypes, kmemdump
        from kmemdump.formats.pycoreinfo import PyCoreInfo

        class Early: pass
        class Late: pass

        def types():
            region = kmemdump.default_registry().get(kmemdump.ID.PYCOREINFO)
            blob = ctypes.string_at(region.address, region.size)
            return region, PyCoreInfo.decode(blob).types

        early = Early()
        kmemdump.register(early)  # before init: the map must still name it
        report = kmemdump.init()
        region, before = types()
        late = Late()
        kmemdump.register(late)
        _, after = types()
        print(json.dumps({
            "id": report.pycoreinfo_id,
            "kind": region.kind,
            "early": id(Early) in before,
            "late_before": id(Late) in before,
            "late_after": id(Late) in after,
            "late_name": after[id(Late)].name if id(Late) in after else None,
            "failures": report.failures,
        }))
        """
    )
    assert out["id"] == ID.PYCOREINFO
    assert out["kind"] == RegionKind.PYCOREINFO
    assert out["failures"] == []
    assert out["early"] is True
    assert out["late_before"] is False
    assert out["late_after"] is True
    assert out["late_name"] == "__main__.Late"


def test_init_reports_unavailable_layout_and_goes_on() -> None:
    out = _child(
        """
        import json, kmemdump, kmemdump.producer.python.live as pylive
        pylive.default = lambda: pylive.LiveInfo(None, "layout refused for the test")
        kmemdump.static(bytearray(4), id=kmemdump.ID.USER_START)
        report = kmemdump.init()
        print(json.dumps({
            "pycoreinfo": report.pycoreinfo_id,
            "banner": report.banner_id,
            "annotations": report.annotations,
            "failures": report.failures,
            "registered": [r.id for r in kmemdump.regions()],
        }))
        """
    )
    assert out["pycoreinfo"] is None
    assert out["banner"] == ID.BANNER
    assert out["annotations"] == [ID.USER_START]
    ((what, why),) = out["failures"]
    assert what == "pycoreinfo"
    assert "layout refused for the test" in why
    assert out["registered"] == [ID.BANNER, ID.USER_START]


def test_init_survives_a_crashing_layout_builder() -> None:
    out = _child(
        """
        import json, kmemdump, kmemdump.producer.python.live as pylive
        def boom():
            raise OSError("no /proc here")
        pylive.default = boom
        report = kmemdump.init()
        print(json.dumps({"failures": report.failures, "banner": report.banner_id}))
        """
    )
    assert out == {"failures": [["pycoreinfo", "OSError: no /proc here"]], "banner": ID.BANNER}


def test_backend_registered_after_init_receives_everything() -> None:
    out = _child(
        """
        import json, kmemdump

        class Rec:
            name = "rec"
            def __init__(self):
                self.ids = []
            def register_region(self, region):
                self.ids.append(region.id)
            def unregister_region(self, region):
                self.ids.remove(region.id)

        kmemdump.static(bytearray(8), id=kmemdump.ID.USER_START)
        kmemdump.init()
        rec = Rec()
        report = kmemdump.backend_register(rec)
        print(json.dumps({"ids": rec.ids, "all": [r.id for r in kmemdump.regions()], "ok": report.ok}))
        """
    )
    assert out["ids"] == out["all"] == [ID.BANNER, ID.PYCOREINFO, ID.USER_START]
    assert out["ok"] is True


def test_init_with_table_and_watchdog(tmp_path: Path) -> None:
    out = _child(
        """
        import json, os, sys, threading, kmemdump
        from kmemdump.producer import heartbeat as watchdog
        report = kmemdump.init(
            table=True, directory=sys.argv[1], watchdog=30.0, feeder=True, pycoreinfo=False
        )
        again = kmemdump.init(table=True, directory=sys.argv[1])
        threads = [t.name for t in threading.enumerate()]
        backend = kmemdump.current_backend()
        kmemdump.stop_feeder()
        print(json.dumps({
            "table": report.table,
            "again": again.table,
            "exists": os.path.isfile(report.table),
            "backend": type(backend).__name__,
            "timeout": watchdog.watchdog_timeout(),
            "feeder": "kmemdump-feeder" in threads,
        }))
        """,
        str(tmp_path),
    )
    assert out["table"] == out["again"]
    assert Path(out["table"]).parent == tmp_path
    assert out["exists"] is True
    assert out["backend"] == "SharedTableBackend"
    assert out["timeout"] == 30.0
    assert out["feeder"] is True


def test_init_leaves_an_applications_regions_under_our_ids_in_place(tmp_path: Path) -> None:
    """The kernel design's rule for every ID: a second registration needs a deregistration first.
    init() does not replace (and free) what the application registered under ID.BANNER or ID.PYCOREINFO."""
    out = _child(
        """
        import ctypes, json, kmemdump
        from kmemdump import ID
        mine = bytearray(b"the application's own banner\\0")
        layout = bytearray(b"the application's own layout")
        kmemdump.register(mine, id=ID.BANNER, name="app-banner")
        kmemdump.register(layout, id=ID.PYCOREINFO, name="app-layout")
        report = kmemdump.init(table=True)
        again = kmemdump.init(table=True)
        registry = kmemdump.default_registry()
        banner, info = registry.get(ID.BANNER), registry.get(ID.PYCOREINFO)
        try:
            mine.extend(b"!")  # still pinned by its registration: a released export would allow it
            resizable = True
        except BufferError:
            resizable = False
        kmemdump.register_object({"k": 1}, name="state")  # a new type: the layout would be republished
        print(json.dumps({
            "report": [report.banner_id, report.pycoreinfo_id, report.failures],
            "again": [again.banner_id, again.pycoreinfo_id],
            "banner": [banner.name, banner.address == ctypes.addressof(ctypes.c_char.from_buffer(mine))],
            "info": [registry.get(ID.PYCOREINFO).name, info.size],
            "resizable": resizable,
            "bytes": bytes(mine).decode(errors="replace"),
        }))
        """,
        env={"KMEMDUMP_DIR": str(tmp_path)},
    )
    banner_id, info_id, failures = out["report"]
    assert (banner_id, info_id) == (None, None) and out["again"] == [None, None]
    reasons = dict(failures)
    assert "ID.BANNER (1) is already registered by the application (region 'app-banner')" in reasons["banner"]
    assert "left in place" in reasons["banner"]
    assert "ID.PYCOREINFO (2) is already registered by the application" in reasons["pycoreinfo"]
    assert out["banner"] == ["app-banner", True]
    assert out["info"] == ["app-layout", len(b"the application's own layout")]
    assert out["resizable"] is False  # the application's buffer is still registered (pinned), not freed
    assert out["bytes"].startswith("the application's own banner")


def test_init_keeps_refreshing_its_own_layout_only() -> None:
    out = _child(
        """
        import json, kmemdump
        from kmemdump import ID
        report = kmemdump.init()
        registry = kmemdump.default_registry()
        kmemdump.unregister(ID.PYCOREINFO)
        kmemdump.register(bytearray(b"app data"), id=ID.PYCOREINFO, name="app")
        class Fresh:
            pass
        kmemdump.register_object(Fresh(), name="fresh")  # a new type: ours would be republished
        print(json.dumps({"name": registry.get(ID.PYCOREINFO).name, "first": report.pycoreinfo_id,
                          "later": kmemdump.init().pycoreinfo_id}))
        """
    )
    assert out == {"name": "app", "first": ID.PYCOREINFO, "later": None}
