"""The inspector: ls, show, hexdump, extract and gdb on real dumps built in the test process.

Each dump is written with the real writer (``write_core``) from regions registered in a real
``Registry``: the memory is copied out of this process with ``ctypes.string_at``, the metadata
is a real ``KMEMDUMP`` note, the stacks a real stacks note, and the Python layout a PYCOREINFO
probed from this interpreter. Decoded values are checked against ``encode_value`` of the very
objects that were registered.
"""

from __future__ import annotations

import ctypes
import io
import json
import os
import re
import shlex
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import pytest

from conftest import require_tool
from kmemdump.cli.main import main
from kmemdump.cli.render import PROGRESS_THRESHOLD
from kmemdump.cli.render import Column
from kmemdump.cli.render import Output
from kmemdump.cli.render import format_size
from kmemdump.cli.render import hexdump_lines
from kmemdump.cli.render import progress
from kmemdump.collector.corewriter import write_core
from kmemdump.errors import DumpFormatError
from kmemdump.errors import UnknownRegionError
from kmemdump.formats.dumpmeta import DumpMeta
from kmemdump.formats.dumpmeta import RegionRecord
from kmemdump.formats.dumpmeta import encode_meta
from kmemdump.formats.elf import KMD_NOTE_META
from kmemdump.formats.elf import KMD_NOTE_STACKS
from kmemdump.formats.elf import LEGACY_NOTE_TYPES
from kmemdump.formats.elf import PYCOREINFO_NOTE
from kmemdump.formats.elf import Note
from kmemdump.formats.elf import Segment
from kmemdump.formats.elf import prpsinfo_note
from kmemdump.formats.elf import prstatus_note
from kmemdump.formats.enums import RegionKind
from kmemdump.formats.stacks import Frame
from kmemdump.formats.stacks import Stacks
from kmemdump.formats.stacks import ThreadStack
from kmemdump.formats.stacks import encode_stacks
from kmemdump.idenum import ID
from kmemdump.inspect.cpython import encode_value
from kmemdump.inspect.dumpfile import Dump
from kmemdump.inspect.dumpfile import list_dumps
from kmemdump.memory.core import CoreImage
from kmemdump.producer.python.live import probe
from kmemdump.producer.region import Region
from kmemdump.producer.registry import Registry
from kmemdump.record import replace

BANNER_TEXT = "kmemdump banner: test process\nargv: python app.py --serve\n"


class RecordingBackend:
    """Keeps what the registry publishes, as a shared table would."""

    name = "recording"

    def __init__(self) -> None:
        self.regions: dict[int, Region] = {}

    def register_region(self, region: Region) -> None:
        self.regions[region.id] = region

    def unregister_region(self, region: Region) -> None:
        self.regions.pop(region.id, None)


STACKS = Stacks(
    source="py-spy 0.4.2",
    threads=(
        ThreadStack(
            thread_id=0x7F00AA,
            name="MainThread",
            native_id=4242,
            active=True,
            owns_gil=True,
            frames=(  # innermost first, as py-spy reports them
                Frame("acquire_lock", "/srv/app/locks.py", 88),
                Frame("transfer", "/srv/app/bank.py", 41),
                Frame("main", "/srv/app/app.py", 12),
            ),
        ),
        ThreadStack(
            0x7F00BB, "transfer-b", 4243, False, False, (Frame("wait", "/usr/lib/threading.py", 320),)
        ),
    ),
)


@dataclass
class Built:
    """A dump written by :func:`build_dump` and what went into it."""

    path: Path
    meta: DumpMeta
    objects: dict[int, Any]
    """Region ID -> the registered object, for OBJECT regions whose value the test checks."""
    data: dict[int, bytes]
    """Region ID -> the bytes stored for it."""
    keep: list[Any] = field(default_factory=list)

    def record(self, name: str) -> RegionRecord:
        return next(r for r in self.meta.regions if r.name == name)


def build_dump(
    path: Path,
    *,
    compress: bool = False,
    captured_ns: int | None = None,
    pid: int = 4242,
    stacks: bool = True,
    pycoreinfo: bool = True,
    extra_notes: tuple[Note, ...] = (),
    meta_changes: dict[str, Any] | None = None,
) -> Built:
    """Register real objects and buffers, copy them out of this process, write a dump."""
    registry = Registry()
    backend = RecordingBackend()
    registry.backend_register(backend)
    banner = bytearray(BANNER_TEXT.encode() + b"\0")
    orders = bytearray(b"order#1001 paid; order#1002 pending\0")
    zeros = bytearray(64)  # hexdump squeezes its repeated lines
    counters = bytearray(range(48))  # only a prefix is stored: a partial region
    lost = bytearray(b"never copied")  # unreadable: nothing stored
    session = {"user": "alice", "balance": 1234, "cart": ["apple", "pear"], "vip": True, "ratio": 0.25}
    greeting = "héllo from the frozen process ✓"
    numbers = (1, -(2**70), 3.5, None, b"\x00\xff")
    registry.register(banner, id=ID.BANNER, name="banner")
    registry.register(orders, id=ID.USER_START, name="orders")
    registry.register(zeros, name="zeros")
    counters_id = registry.register(counters, name="counters")
    lost_id = registry.register(lost, name="lost")
    # snapshots: this dump is built here from what was registered, with no collector walking graphs
    session_id = registry.register_object(session, name="session", depth=2, snapshot=True)
    greeting_id = registry.register_object(greeting, name="greeting", snapshot=True)
    numbers_id = registry.register_object(numbers, name="numbers", depth=1, snapshot=True)
    live = probe()
    assert live.enabled, live.reason
    live.add_types({type(v) for v in (session, greeting, numbers, *session.values(), *numbers)})
    info = live.info
    assert info is not None
    blob = info.encode()
    if pycoreinfo:
        blob_buffer = bytearray(blob)
        registry.register(blob_buffer, id=ID.PYCOREINFO, name="pycoreinfo")
    records: list[RegionRecord] = []
    segments: list[Segment] = []
    data: dict[int, bytes] = {}
    for region in sorted(backend.regions.values(), key=lambda r: r.id):
        kind = RegionKind.PYCOREINFO if region.id == ID.PYCOREINFO else region.kind
        stored = {counters_id: 16, lost_id: 0}.get(region.id, region.size)
        status = "ok" if stored == region.size else ("partial" if stored else "unreadable")
        error = "process_vm_readv: EFAULT" if stored == 0 else ""
        records.append(
            RegionRecord(
                region.id, region.name, int(kind), region.address, region.size, stored, status, error
            )
        )
        if stored:
            chunk = ctypes.string_at(region.address, stored)
            data[region.id] = chunk
            segments.append(Segment(region.address, chunk))
    captured = time.time_ns() if captured_ns is None else captured_ns
    meta = DumpMeta(
        reason="hang",
        pid=pid,
        start_time=987654,
        captured_ns=captured,
        host="testhost",
        argv=("python", "app.py", "--serve", "two words"),
        exe=sys.executable,
        uid=os.getuid(),
        py_hexversion=sys.hexversion,
        regions=tuple(records),
        partial=True,
        stopped=True,
        heartbeat=42,
        heartbeat_age_s=5.5,
        watchdog_timeout_s=5.0,
        stacks="ok" if stacks else "py-spy is not installed (pip install py-spy)",
        copy_ms=0.25,
    )
    if meta_changes:
        meta = replace(meta, **meta_changes)
    notes = [
        prpsinfo_note(pid, "python", "python app.py --serve", "T"),
        prstatus_note(pid),
        Note("KMEMDUMP", KMD_NOTE_META, encode_meta(meta)),
    ]
    if pycoreinfo:
        notes.append(Note("PYCOREINFO", PYCOREINFO_NOTE, blob))
    if stacks:
        notes.append(Note("KMEMDUMP", KMD_NOTE_STACKS, encode_stacks(STACKS)))
    notes.extend(extra_notes)
    final = write_core(path, segments, notes, compress=compress)
    objects = {session_id: session, greeting_id: greeting, numbers_id: numbers}
    return Built(final, meta, objects, data, keep=[registry, banner, orders, zeros, counters, lost])


@pytest.fixture
def built(tmp_path: Path) -> Built:
    return build_dump(tmp_path / "kmemdump-4242-987654-hang-20261127T094945.000000Z.core")


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- show -------------------------------------------------------------------------------------------


def test_show_text_leads_with_what_the_dump_is(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    # WHEN
    code, out, err = run_cli(capsys, "show", str(built.path))
    # THEN
    assert code == 0, err
    head = out.split("\nBanner\n", 1)[0]
    assert re.search(r"^Reason:\s+hang: ", head, re.M)
    assert re.search(r"^Process:\s+pid 4242 \(start time 987654\)", head, re.M)
    assert "python app.py --serve 'two words'" in head
    assert (
        f"Python:      {sys.version_info[0]}.{sys.version_info[1]}.{sys.version_info[2]}; objects decoded"
        in head
    )
    assert re.search(r"^Watchdog:\s+last fed 5\.5 s before the capture, timeout 5 s, 42 beats$", head, re.M)
    assert re.search(r"^Stopped:\s+yes", head, re.M)
    assert "PARTIAL" in head
    assert re.search(r"^Stacks:\s+2 threads, taken by py-spy 0\.4\.2$", head, re.M)
    # the banner comes next, line by line
    assert "    kmemdump banner: test process\n    argv: python app.py --serve\n" in out
    assert (
        out.index("\nBanner\n")
        < out.index("\nRegions\n")
        < out.index("\nDecoded\n")
        < out.index("\nPython stacks")
    )


def test_show_text_region_table_and_decoded_values(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "show", str(built.path), "--plain")
    assert code == 0
    table = out.split("\nRegions\n", 1)[1].split("\nDecoded\n", 1)[0]
    lines = table.strip("-\n").splitlines()
    columns = ["ID", "LABEL", "NAME", "KIND", "ADDRESS", "SIZE", "STORED", "SOURCE", "STATUS"]
    assert lines[0].split() == columns
    rows = {line.split()[2]: line.split() for line in lines[1:]}
    banner = built.record("banner")
    assert rows["banner"][:7] == [
        "1",
        "BANNER",
        "banner",
        "BUFFER",
        f"0x{banner.address:016x}",
        str(banner.size),
        str(banner.size),
    ]
    assert rows["orders"][1] == "user+0"
    assert rows["counters"][5:9] == ["48", "16", "process", "partial"]
    assert rows["lost"][8:] == ["unreadable:", "process_vm_readv:", "EFAULT"]
    assert rows["pycoreinfo"][1:4] == ["PYCOREINFO", "pycoreinfo", "PYCOREINFO"]
    decoded = out.split("\nDecoded\n", 1)[1].split("\nPython stacks", 1)[0]
    session = built.record("session")
    assert f"[{session.id}] session: dict\n" in decoded
    assert (
        "    {'user': 'alice', 'balance': 1234, 'cart': ['apple', 'pear'], 'vip': True, 'ratio': 0.25}"
        in decoded
    )
    assert "greeting: str\n    'héllo from the frozen process ✓'" in decoded
    assert f"numbers: tuple\n    (1, {-(2**70)}, 3.5, None, b'\\x00\\xff')" in decoded
    assert "orders: buffer\n    'order#1001 paid; order#1002 pending'" in decoded
    assert "lost: buffer — not stored (status unreadable): process_vm_readv: EFAULT" in decoded


def test_show_stacks_read_like_a_traceback(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "show", str(built.path))
    assert code == 0
    stacks = out.split("\nPython stacks (most recent call last)\n", 1)[1]
    assert stacks.splitlines()[1:6] == [
        'Thread 0x7f00aa "MainThread", native id 4242 (active, holds the GIL):',
        '  File "/srv/app/app.py", line 12, in main',
        '  File "/srv/app/bank.py", line 41, in transfer',
        '  File "/srv/app/locks.py", line 88, in acquire_lock',
        "",
    ]
    assert 'Thread 0x7f00bb "transfer-b", native id 4243 (idle):' in stacks


def test_show_json_has_everything_and_exact_values(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    # WHEN
    code, out, _ = run_cli(capsys, "show", str(built.path), "--json")
    # THEN
    assert code == 0
    doc = json.loads(out)
    assert doc["path"] == str(built.path)
    assert doc["file_size"] == built.path.stat().st_size
    assert doc["compressed"] is False
    assert doc["banner"] == BANNER_TEXT
    assert doc["dump"]["reason"] == "hang"
    assert doc["dump"]["pid"] == 4242
    assert doc["dump"]["argv"] == list(built.meta.argv)
    assert doc["dump"]["captured_ns"] == built.meta.captured_ns
    assert doc["dump"]["stored_bytes"] == built.meta.stored_bytes
    assert doc["problems"] == []
    assert doc["pycoreinfo"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert doc["pycoreinfo_error"] is None
    by_id = {r["id"]: r for r in doc["regions"]}
    assert [r["id"] for r in doc["regions"]] == [r.id for r in built.meta.regions]
    for region_id, obj in built.objects.items():
        decoded = by_id[region_id]["decoded"]
        assert decoded["value"] == encode_value(obj), region_id
        assert decoded["complete"] is True
        assert decoded["type_name"] == type(obj).__name__
    # every child region of the object graphs decodes to the live object at its address
    for record in built.meta.regions:
        if record.kind == RegionKind.OBJECT and record.id not in built.objects:
            assert by_id[record.id]["decoded"]["error"] is None
            assert by_id[record.id]["decoded"]["complete"] is True
    orders = by_id[ID.USER_START]
    assert orders["label"] == "user+0"
    assert orders["kind_name"] == "BUFFER"
    assert bytes.fromhex(orders["decoded"]["value"]["hex"]) == built.data[ID.USER_START]
    lost = by_id[built.record("lost").id]
    assert lost["stored"] == 0
    assert lost["decoded"]["value"] is None
    assert "not stored" in lost["decoded"]["error"]
    assert by_id[ID.PYCOREINFO]["decoded"]["value"]["types"] >= 11
    assert doc["stacks"]["state"] == "ok"
    assert doc["stacks"]["source"] == "py-spy 0.4.2"
    first = doc["stacks"]["threads"][0]
    assert first["name"] == "MainThread"
    assert [f["function"] for f in first["frames"]] == ["acquire_lock", "transfer", "main"]


def test_show_no_decode(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "show", str(built.path), "--no-decode")
    assert code == 0
    assert "\nRegions\n" in out
    assert "\nDecoded\n" not in out
    assert "alice" not in out
    code, out, _ = run_cli(capsys, "show", str(built.path), "--no-decode", "--json")
    assert code == 0
    assert all("decoded" not in region for region in json.loads(out)["regions"])


def test_show_compressed_dump_matches_plain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = build_dump(tmp_path / "a.core", captured_ns=1_800_000_000_000_000_000)
    packed = build_dump(tmp_path / "b.core", compress=True, captured_ns=1_800_000_000_000_000_000)
    assert packed.path.name == "b.core.zst"
    _, out_plain, _ = run_cli(capsys, "show", str(plain.path), "--json")
    _, out_packed, _ = run_cli(capsys, "show", str(packed.path), "--json")
    doc_plain, doc_packed = json.loads(out_plain), json.loads(out_packed)
    assert doc_packed["compressed"] is True
    assert doc_packed["file_size"] == packed.path.stat().st_size
    values = {
        r["name"]: r["decoded"]["value"] for r in doc_packed["regions"] if r["kind"] == RegionKind.OBJECT
    }
    assert values["session"] == encode_value(packed.objects[packed.record("session").id])
    assert doc_packed["banner"] == doc_plain["banner"]


def test_show_without_stacks_or_pycoreinfo_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    built = build_dump(tmp_path / "d.core", stacks=False, pycoreinfo=False)
    code, out, _ = run_cli(capsys, "show", str(built.path))
    assert code == 0
    assert "Stacks:      none (py-spy is not installed (pip install py-spy))" in out
    assert "(no stacks: py-spy is not installed" in out
    assert "objects cannot be decoded: the process published no Python layout" in out
    assert "session: object — cannot decode objects: the process published no Python layout" in out
    assert "orders: buffer\n    'order#1001 paid; order#1002 pending'" in out  # buffers need no layout


def test_show_damaged_optional_notes_degrade(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a dump whose stacks note and PYCOREINFO note are garbage
    path = tmp_path / "d.core"
    registry = Registry()
    buffer = bytearray(b"still readable\0")
    registry.register(buffer, id=ID.USER_START, name="buf")
    region = registry.regions()[0]
    record = RegionRecord(
        region.id, region.name, int(region.kind), region.address, region.size, region.size, "ok"
    )
    meta = replace(build_dump(tmp_path / "x.core").meta, regions=(record,), stacks="ok")
    notes = [
        Note("KMEMDUMP", KMD_NOTE_META, encode_meta(meta)),
        Note("KMEMDUMP", KMD_NOTE_STACKS, b"{not json"),
        Note("PYCOREINFO", PYCOREINFO_NOTE, b"PYCOREINFO\0\0garbage"),
    ]
    write_core(path, [Segment(region.address, ctypes.string_at(region.address, region.size))], notes)
    # WHEN
    code, out, err = run_cli(capsys, "show", str(path), "--json")
    # THEN the dump is still shown, and says what is wrong
    assert code == 0, err
    doc = json.loads(out)
    assert doc["stacks"]["state"].startswith("the stacks note is invalid: stacks note is not valid JSON")
    assert doc["pycoreinfo"] is None
    assert doc["pycoreinfo_error"].startswith("the PYCOREINFO note is invalid")
    assert doc["regions"][0]["decoded"]["value"]["text"] == "still readable"


def test_dumps_with_the_first_note_type_numbers_still_open(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN the same dump with its own notes under the types 0.1.0's development versions wrote
    path = tmp_path / "legacy.core"
    with CoreImage.open(built.path) as core:
        segments = [Segment(s.address, core.segment_data(s)) for s in core.segments]
        notes = [Note(n.owner, LEGACY_NOTE_TYPES.get((n.owner, n.type), n.type), n.desc) for n in core.notes]
    assert sorted(n.type for n in notes if n.owner != "CORE") == [1, 1, 2]
    write_core(path, segments, notes)
    # WHEN
    code, out, err = run_cli(capsys, "show", str(path), "--json")
    # THEN metadata, stacks and layout are all found
    assert code == 0, err
    doc = json.loads(out)
    assert doc["stacks"]["state"] == "ok"
    assert doc["stacks"]["source"] == "py-spy 0.4.2"
    assert doc["pycoreinfo"]["python"] == ".".join(map(str, sys.version_info[:3]))


def test_show_reports_metadata_the_image_does_not_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    built = build_dump(tmp_path / "x.core")
    ghost = RegionRecord(900, "ghost", int(RegionKind.BUFFER), 0x1000, 32, 32, "ok")
    meta = replace(built.meta, regions=(*built.meta.regions, ghost))
    path = tmp_path / "ghost.core"
    with CoreImage.open(built.path) as core:
        segments = [Segment(s.address, core.segment_data(s)) for s in core.segments]
        notes = [
            n
            if (n.owner, n.type) != ("KMEMDUMP", KMD_NOTE_META)
            else Note(n.owner, n.type, encode_meta(meta))
            for n in core.notes
        ]
    write_core(path, segments, notes)
    code, out, _ = run_cli(capsys, "show", str(path))
    assert code == 0
    assert "warning: region 900 (ghost) claims 32 stored bytes at 0x1000, the image holds 0" in out
    assert "ghost: buffer — the dump holds only 0 of 32 bytes at 0x1000" in out


def test_show_finds_a_bare_name_in_the_default_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    built = build_dump(tmp_path / "kmemdump-1-2-request-x.core")
    monkeypatch.setenv("KMEMDUMP_DUMPS", str(tmp_path))
    monkeypatch.chdir(tmp_path / "..")
    code, out, _ = run_cli(capsys, "show", built.path.name, "--json")
    assert code == 0
    assert json.loads(out)["path"] == str(built.path)


# --- ls ---------------------------------------------------------------------------------------------


def test_ls_lists_newest_last_and_skips_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN two dumps whose names sort against their capture order, a broken one and an unrelated file
    newer = build_dump(tmp_path / "a-newer.core", captured_ns=1_800_000_100_000_000_000, pid=222)
    older = build_dump(
        tmp_path / "b-older.core", compress=True, captured_ns=1_800_000_000_000_000_000, pid=111
    )
    (tmp_path / "broken.core").write_bytes(b"\x7fELF" + b"\0" * 20)
    (tmp_path / "notes.txt").write_text("not a dump")
    (tmp_path / ".half-written.core.tmp").write_bytes(b"")
    # WHEN
    code, out, err = run_cli(capsys, "ls", str(tmp_path))
    # THEN
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["#", "TIME", "(UTC)", "PID", "REASON"]
    assert [line.split()[-1] for line in lines[1:]] == ["b-older.core.zst", "a-newer.core"]
    old = lines[1].split()[1:]
    assert lines[1].split()[0] == "1" and lines[2].split()[0] == "2"  # the numbers other commands accept
    assert old[:2] == ["2027-01-15", "08:00:00"]
    assert old[2:4] == ["111", "hang"]
    assert old[4] == str(len(older.meta.regions))
    assert " ".join(old[5:7]) == format_size(older.meta.stored_bytes)
    assert " ".join(old[7:10]) == format_size(older.path.stat().st_size) + " zst"
    assert old[10:13] == ["partial", "2", "regions"]  # MISSING: counter (partial) and lost (unreadable)
    assert "python app.py --serve 'two words'" in lines[1]
    assert lines[2].split()[3] == "222"
    assert lines[2].split()[5] == str(len(newer.meta.regions))
    assert err.startswith(f"kmemdump: skipped {tmp_path / 'broken.core'}: ")
    assert "Traceback" not in err


def test_ls_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    built = build_dump(tmp_path / "one.core", captured_ns=1_800_000_000_000_000_000)
    (tmp_path / "zz.core").write_bytes(b"garbage")
    code, out, err = run_cli(capsys, "ls", str(tmp_path), "--json")
    assert code == 0
    assert err == ""
    doc = json.loads(out)
    assert doc["directory"] == str(tmp_path)
    (entry,) = doc["dumps"]
    assert entry == {
        "index": 1,
        "path": str(built.path),
        "file_size": built.path.stat().st_size,
        "compressed": False,
        "captured_ns": 1_800_000_000_000_000_000,
        "reason": "hang",
        "pid": 4242,
        "start_time": 987654,
        "command": "python app.py --serve 'two words'",
        "exe": sys.executable,
        "regions": len(built.meta.regions),
        "stored_bytes": built.meta.stored_bytes,
        "partial": True,
        "stacks": "ok",
        "host": built.meta.host,
        "missing": list(built.meta.missing),
    }
    assert doc["skipped"][0]["path"] == str(tmp_path / "zz.core")
    assert "not an ELF file" in doc["skipped"][0]["error"]


def test_ls_defaults_to_the_dump_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KMEMDUMP_DUMPS", str(tmp_path / "nowhere"))
    code, out, err = run_cli(capsys, "ls")
    assert code == 0
    assert out == ""
    assert err == f"no dumps in {tmp_path / 'nowhere'} (it does not exist)\n"
    monkeypatch.setenv("KMEMDUMP_DUMPS", str(tmp_path))
    build_dump(tmp_path / "x.core")
    code, out, _ = run_cli(capsys, "ls", "--json")
    assert [Path(d["path"]).name for d in json.loads(out)["dumps"]] == ["x.core"]


def test_list_dumps_reports_unreadable_files(tmp_path: Path) -> None:
    build_dump(tmp_path / "good.core")
    (tmp_path / "bad.core.zst").write_bytes(b"\x28\xb5\x2f\xfd" + b"\x01" * 30)
    skipped: list[tuple[str, str]] = []
    summaries = list_dumps(tmp_path, on_error=lambda path, err: skipped.append((path, str(err))))
    assert [s.path for s in summaries] == [str(tmp_path / "good.core")]
    assert skipped[0][0] == str(tmp_path / "bad.core.zst")
    assert "zstd" in skipped[0][1]


# --- hexdump ----------------------------------------------------------------------------------------


def test_hexdump_text_uses_original_addresses(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    record = built.record("orders")
    code, out, err = run_cli(capsys, "hexdump", str(built.path), "orders")
    assert code == 0
    assert err == ""
    lines = out.splitlines()
    a = record.address
    assert lines[0] == f"{a:016x}  6f 72 64 65 72 23 31 30  30 31 20 70 61 69 64 3b  |order#1001 paid;|"
    assert lines[2] == f"{a + 32:016x}  69 6e 67 00{' ' * 12}  {' ' * 23}  |ing.|"
    assert lines[-1] == f"{a + record.size:016x}"


def test_hexdump_squeezes_repeats_and_selects_by_id(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    record = built.record("zeros")
    code, out, _ = run_cli(capsys, "hexdump", str(built.path), str(record.id))
    assert code == 0
    a = record.address
    zero_line = f"{a:016x}  {'00 ' * 7}00  {'00 ' * 7}00  |{'.' * 16}|"
    assert out.splitlines() == [zero_line, "*", f"{a + 64:016x}"]
    code, out, _ = run_cli(capsys, "hexdump", str(built.path), hex(record.id), "--all")
    assert len(out.splitlines()) == 5


def test_hexdump_partial_region_and_range(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    record = built.record("counters")
    code, out, err = run_cli(
        capsys, "hexdump", str(built.path), "counters", "--offset", "4", "--length", "0x8"
    )
    assert code == 0
    assert "only 16 of 48 bytes were stored (status partial)" in err
    assert out.splitlines() == [
        f"{record.address + 4:016x}  04 05 06 07 08 09 0a 0b  {' ' * 23}  |........|",
        f"{record.address + 12:016x}",
    ]


def test_hexdump_json(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "hexdump", str(built.path), "BANNER", "--json")
    assert code == 0
    doc = json.loads(out)
    record = built.record("banner")
    assert doc["address"] == record.address
    assert doc["length"] == record.size
    assert bytes.fromhex(doc["hex"]) == built.data[ID.BANNER]
    assert doc["region"]["label"] == "BANNER"


def test_hexdump_region_errors(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "hexdump", str(built.path), "nosuch")
    assert code == 1
    assert out == ""
    assert err.startswith("kmemdump: error: no region 'nosuch' in the dump")
    code, _, err = run_cli(capsys, "hexdump", str(built.path), "lost")
    assert code == 1
    assert "has no bytes in the dump (status unreadable; process_vm_readv: EFAULT)" in err
    code, _, err = run_cli(capsys, "hexdump", str(built.path), "orders", "--offset", "999")
    assert code == 1
    assert "offset 999 is past the" in err


# --- extract ----------------------------------------------------------------------------------------


def test_extract_writes_the_bytes_and_refuses_to_overwrite(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "out" / "orders.bin"
    target.parent.mkdir()
    # WHEN
    code, _, err = run_cli(capsys, "extract", str(built.path), "orders", "-o", str(target))
    # THEN
    assert code == 0
    assert target.read_bytes() == built.data[ID.USER_START]
    assert target.stat().st_mode & 0o777 == 0o600
    assert f"wrote {len(built.data[ID.USER_START])} bytes of region 16 (orders)" in err
    assert sorted(p.name for p in target.parent.iterdir()) == ["orders.bin"]  # no temporary left
    # WHEN the file exists
    code, _, err = run_cli(capsys, "extract", str(built.path), "banner", "-o", str(target))
    # THEN it is kept, and the error says how to proceed
    assert code == 1
    assert err.startswith(f"kmemdump: error: the output file exists (path={target})")
    assert "--force" in err
    assert target.read_bytes() == built.data[ID.USER_START]
    assert sorted(p.name for p in target.parent.iterdir()) == ["orders.bin"]
    # WHEN forced
    code, _, _ = run_cli(capsys, "extract", str(built.path), "banner", "-o", str(target), "--force")
    assert code == 0
    assert target.read_bytes() == built.data[ID.BANNER]


def test_extract_to_stdout(built: Built, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    code = main(["extract", str(built.path), "counters", "-o", "-"])
    out, _ = capsysbinary.readouterr()
    assert code == 0
    assert out == bytes(range(16))


def test_extract_refuses_a_symlink_and_a_directory(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    link = tmp_path / "link"
    link.symlink_to(victim)
    code, _, err = run_cli(capsys, "extract", str(built.path), "orders", "-o", str(link))
    assert code == 1
    assert victim.read_bytes() == b"precious"
    code, _, err = run_cli(capsys, "extract", str(built.path), "orders", "-o", str(tmp_path))
    assert code == 1
    assert "the output is a directory" in err


def _special(kind: str, path: Path) -> None:
    """Make a ``kind`` file at ``path`` (a device node needs root: skipped, with the reason, otherwise)."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "chardev":
        if os.geteuid() != 0:
            pytest.skip("making a device node (mknod) needs root")
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 7))  # the numbers of /dev/full
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.close()
    else:
        (path.parent / "victim").write_bytes(b"precious")
        path.symlink_to(path.parent / "victim")


def _same_special(kind: str, path: Path) -> bool:
    info = os.lstat(path)
    if kind == "fifo":
        return stat.S_ISFIFO(info.st_mode)
    if kind == "chardev":
        return stat.S_ISCHR(info.st_mode) and info.st_rdev == os.makedev(1, 7)
    if kind == "socket":
        return stat.S_ISSOCK(info.st_mode)
    return stat.S_ISLNK(info.st_mode) and (path.parent / "victim").read_bytes() == b"precious"


SPECIAL_KINDS = {
    "fifo": "a FIFO",
    "chardev": "a character device",
    "socket": "a socket",
    "symlink": "a symbolic link",
}


@pytest.mark.parametrize(
    "case", [f"{k}-{way}" for k in SPECIAL_KINDS for way in ("renameat2", "without-renameat2")]
)
def test_extract_force_replaces_only_a_regular_file(
    case: str,
    built: Built,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kmemdump import files

    kind, _, way = case.partition("-")
    if way == "without-renameat2":
        monkeypatch.setattr(files, "_renameat2", None)
    output = tmp_path / "out"
    output.mkdir()
    target = output / "region.bin"
    _special(kind, target)
    before = sorted(p.name for p in output.iterdir())
    # WHEN extract is forced onto it THEN it is refused in one line, and the file is as it was
    code, _, err = run_cli(capsys, "extract", str(built.path), "orders", "-o", str(target), "-f")
    assert code == 1
    assert err.startswith(f"kmemdump: error: the output is {SPECIAL_KINDS[kind]}, not a regular file"), err
    assert "-o -" in err and "Traceback" not in err
    assert _same_special(kind, target)
    assert sorted(p.name for p in output.iterdir()) == before  # no temporary left either
    # AND a regular file is still replaced
    plain = output / "plain.bin"
    plain.write_bytes(b"old")
    code, _, _ = run_cli(capsys, "extract", str(built.path), "orders", "-o", str(plain), "-f")
    assert code == 0 and plain.read_bytes() == built.data[ID.USER_START]


@pytest.mark.parametrize("kind", list(SPECIAL_KINDS))
def test_replace_regular_swaps_back_what_is_not_a_regular_file(kind: str, tmp_path: Path) -> None:
    from kmemdump import files

    if files._renameat2 is None:
        pytest.skip("renameat2 is not available in this C library")
    # GIVEN a name that became a special file after the check (the race the exchange closes)
    target = tmp_path / "region.bin"
    _special(kind, target)
    ours = tmp_path / ".region.bin.tmp"
    ours.write_bytes(b"new")
    # WHEN it is replaced THEN the special file is back under its name and ours under its own
    with pytest.raises(files.NotRegularFileError) as caught:
        files.replace_regular(ours, target)
    assert caught.value.kind == SPECIAL_KINDS[kind]
    assert _same_special(kind, target)
    assert ours.read_bytes() == b"new"
    # AND a regular file there is replaced, and an absent name given
    regular = tmp_path / "regular"
    regular.write_bytes(b"old")
    files.replace_regular(ours, regular)
    assert regular.read_bytes() == b"new" and not ours.exists()
    ours.write_bytes(b"newer")
    files.replace_regular(ours, tmp_path / "absent")
    assert (tmp_path / "absent").read_bytes() == b"newer" and not ours.exists()


# --- gdb --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["DUMP", "--print-command", "--", "-batch", "-ex", "info files"],
        ["--print-command", "DUMP", "--", "-batch", "-ex", "info files"],
        ["--print-command", "DUMP", "-batch", "-ex", "info files"],
    ],
    ids=["options-after-dump", "options-before-dump", "no-separator"],
)
def test_gdb_print_command(argv: list[str], built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(built.path) if a == "DUMP" else a for a in argv]
    code, out, _ = run_cli(capsys, "gdb", *argv)
    assert code == 0
    want = ["gdb", "-se", sys.executable, "-c", str(built.path), "-batch", "-ex", "info files"]
    assert shlex.split(out) == want


def test_show_counts_in_words(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    built = build_dump(tmp_path / "one.core", meta_changes={"heartbeat": 1})
    code, out, err = run_cli(capsys, "show", str(built.path))
    assert code == 0, err
    assert re.search(r"^Watchdog:\s+last fed 5\.5 s before the capture, timeout 5 s, 1 beat$", out, re.M)


def test_gdb_print_command_without_the_executable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    built = build_dump(tmp_path / "x.core", meta_changes={"exe": str(tmp_path / "gone" / "python")})
    code, out, err = run_cli(capsys, "gdb", str(built.path), "--print-command", "--gdb", "/opt/gdb")
    assert code == 0
    assert shlex.split(out) == ["/opt/gdb", "-c", str(built.path)]
    assert "no longer exists" in err


def test_gdb_print_command_names_absolute_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    built = build_dump(tmp_path / "x.core")
    (tmp_path / "root").mkdir()
    monkeypatch.chdir(tmp_path)  # pasted later from another directory, the command still works
    code, out, _ = run_cli(
        capsys, "gdb", "x.core", "--print-command", "--sysroot", "root", "--gdb", "bin/gdb"
    )
    assert code == 0
    command = shlex.split(out)
    assert command[0] == str(tmp_path / "bin" / "gdb")
    assert command[command.index("-c") + 1] == str(built.path)
    assert f"set sysroot {tmp_path / 'root'}" in command


def test_gdb_decompresses_zstd_dumps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    packed = build_dump(tmp_path / "z.core", compress=True)
    code, out, err = run_cli(capsys, "gdb", str(packed.path), "--print-command")
    assert code == 0
    command = shlex.split(out)
    core = Path(command[command.index("-c") + 1])
    try:
        assert core != packed.path
        assert core.name == "z.core"
        assert f"decompressed z.core.zst to {core}" in err
        with CoreImage.open(core) as image:
            assert not image.compressed
            banner = packed.record("banner")
            assert image.read(banner.address, banner.size) == packed.data[ID.BANNER]
    finally:
        core.unlink()
        core.parent.rmdir()


def test_gdb_reads_the_banner(built: Built, capfd: pytest.CaptureFixture[str]) -> None:
    require_tool("gdb")
    record = built.record("banner")
    code = main(["gdb", str(built.path), "--", "-batch", "-nx", "-ex", f"x/s {record.address:#x}"])
    out, _ = capfd.readouterr()
    assert code == 0
    assert "kmemdump banner: test process" in out


def test_gdb_missing(built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "gdb", str(built.path), "--gdb", str(tmp_path / "no-gdb"))
    assert code == 1
    assert "gdb not found" in err
    assert "Install gdb" in err


# --- malformed dumps --------------------------------------------------------------------------------

COMMANDS: list[list[str]] = [
    ["show"],
    ["show", "--json"],
    ["hexdump", "BANNER"],
    ["extract", "BANNER", "-o", "OUT"],
    ["gdb", "--print-command"],
]


def _truncated(built: Built, tmp_path: Path) -> Path:
    path = tmp_path / "truncated.core"
    data = built.path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _garbage(built: Built, tmp_path: Path) -> Path:
    path = tmp_path / "garbage.core"
    path.write_bytes(bytes(range(256)) * 8)
    return path


def _empty(built: Built, tmp_path: Path) -> Path:
    path = tmp_path / "empty.core"
    path.write_bytes(b"")
    return path


def _truncated_zstd(built: Built, tmp_path: Path) -> Path:
    packed = build_dump(tmp_path / "p.core", compress=True)
    data = packed.path.read_bytes()
    path = tmp_path / "cut.core.zst"
    path.write_bytes(data[: len(data) // 2])
    return path


def _no_meta_note(built: Built, tmp_path: Path) -> Path:
    # a core image like gcore's: memory and CORE notes, but no KMEMDUMP note
    return write_core(tmp_path / "foreign.core", [Segment(0x1000, b"x" * 32)], [prstatus_note(1)])


def _bad_meta_json(built: Built, tmp_path: Path) -> Path:
    return write_core(tmp_path / "badjson.core", [], [Note("KMEMDUMP", KMD_NOTE_META, b'{"format": ')])


def _future_meta(built: Built, tmp_path: Path) -> Path:
    body = json.loads(encode_meta(built.meta))
    body["version"] = 99
    note = Note("KMEMDUMP", KMD_NOTE_META, json.dumps(body).encode())
    return write_core(tmp_path / "future.core", [], [note])


MALFORMED: dict[str, tuple[Callable[[Built, Path], Path], str]] = {
    "truncated": (_truncated, "truncated"),
    "garbage": (_garbage, "not an ELF file"),
    "empty": (_empty, "the file is empty"),
    "truncated-zstd": (_truncated_zstd, "zstd"),
    "no-meta-note": (_no_meta_note, "not a kmemdump dump: the core image has no KMEMDUMP metadata note"),
    "bad-meta-json": (_bad_meta_json, "KMEMDUMP note is not valid JSON"),
    "future-meta": (_future_meta, "dump metadata version is not supported by this kmemdump"),
}


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_dumps_fail_cleanly(
    case: str, command: list[str], built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN
    make, expected = MALFORMED[case]
    path = make(built, tmp_path)
    out_file = tmp_path / "extracted.bin"
    argv = [command[0], str(path), *(str(out_file) if a == "OUT" else a for a in command[1:])]
    # WHEN
    code, out, err = run_cli(capsys, *argv)
    # THEN one error line (plus the remedy), no traceback, nothing written
    assert code == 1
    assert out == ""
    assert err.startswith("kmemdump: error: ")
    assert expected in err.splitlines()[0]
    assert f"path={path}" in err.splitlines()[0]
    assert "Traceback" not in err
    assert not out_file.exists()


def test_missing_file_and_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "show", str(tmp_path / "nope.core"))
    assert code == 1
    assert err.startswith(f"kmemdump: error: no such dump: {tmp_path / 'nope.core'} does not exist")
    code, _, err = run_cli(capsys, "show", str(tmp_path))
    assert code == 1
    assert "this is a directory, not a dump" in err


# --- the Dump object --------------------------------------------------------------------------------


def test_dump_region_selectors(built: Built) -> None:
    with Dump.open(built.path) as dump:
        orders = built.record("orders")
        assert dump.region(16) == orders
        assert dump.region("16") == orders
        assert dump.region("0x10") == orders
        assert dump.region("orders") == orders
        assert dump.region("user+0") == orders
        assert dump.region("BANNER").id == ID.BANNER
        assert dump.region("pycoreinfo").id == ID.PYCOREINFO
        assert dump.region("banner") == built.record("banner")
        with pytest.raises(UnknownRegionError, match="regions are named 'session>str'"):
            dump.region("session>str")
        with pytest.raises(UnknownRegionError, match="no region 'x'"):
            dump.region("x")
        with pytest.raises(UnknownRegionError):
            dump.region(5)
        assert dump.banner() == BANNER_TEXT
        assert dump.region_bytes(orders) == built.data[ID.USER_START]
        assert dump.problems == ()


def test_dump_open_wraps_errors(tmp_path: Path) -> None:
    path = tmp_path / "x.core"
    path.write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 100)
    with pytest.raises(DumpFormatError) as info:
        Dump.open(path)
    assert info.value.context["path"] == str(path)


# --- rendering --------------------------------------------------------------------------------------


def test_hexdump_lines_match_hexdump_c(tmp_path: Path) -> None:
    hexdump = require_tool("hexdump")
    data = bytes(range(40)) + b"\0" * 48 + b"tail"
    (tmp_path / "d").write_bytes(data)
    want = subprocess.run([hexdump, "-C", str(tmp_path / "d")], capture_output=True, text=True, check=True)
    got = list(hexdump_lines(data, 0))
    # hexdump -C prints 8-digit offsets; ours are 16-digit addresses
    assert [line if line == "*" else line[8:] for line in got] == want.stdout.splitlines()
    assert "*" in got


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_output_plain_and_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    columns = [Column("NAME"), Column("SIZE", right=True)]
    rows = [["a", "1"], ["longer", "1234"]]
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    plain = io.StringIO()
    Output(plain).table(columns, rows)
    assert plain.getvalue().splitlines() == ["NAME    SIZE", "a          1", "longer  1234"]
    fancy = _Terminal()
    out = Output(fancy)
    assert out.fancy
    out.table(columns, [["[bold]x[/bold]", "1"]])
    assert "\x1b[1mNAME" in fancy.getvalue() and "─" * 8 in fancy.getvalue()  # bold header, a rule below
    assert "[bold]x[/bold]" in fancy.getvalue()  # user text is never markup
    monkeypatch.setenv("NO_COLOR", "1")
    assert not Output(_Terminal()).fancy
    monkeypatch.delenv("NO_COLOR")
    assert not Output(_Terminal(), plain=True).fancy


def test_progress_only_for_long_work_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    quiet = _Terminal()
    assert list(progress(list(range(PROGRESS_THRESHOLD - 1)), "few", stream=quiet)) == list(
        range(PROGRESS_THRESHOLD - 1)
    )
    assert quiet.getvalue() == ""
    piped = io.StringIO()
    assert list(progress(list(range(100)), "many", stream=piped)) == list(range(100))
    assert piped.getvalue() == ""
    terminal = _Terminal()
    assert list(progress(list(range(100)), "many", stream=terminal)) == list(range(100))
    assert "many" in terminal.getvalue()


def test_show_object_whose_items_were_not_registered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a list registered without its items (depth 0): its item array is in the dump, the items are not
    registry = Registry()
    backend = RecordingBackend()
    registry.backend_register(backend)
    items = ["first item", "second item"]
    rid = registry.register_object(items, name="items", depth=0, snapshot=True)
    live = probe()
    live.add_types({list, str})
    info = live.info
    assert info is not None
    regions = sorted(backend.regions.values(), key=lambda r: r.id)
    records = tuple(RegionRecord(r.id, r.name, int(r.kind), r.address, r.size, r.size, "ok") for r in regions)
    meta = replace(build_dump(tmp_path / "x.core").meta, regions=records, partial=False)
    segments = [Segment(r.address, ctypes.string_at(r.address, r.size)) for r in regions]
    notes = [
        Note("KMEMDUMP", KMD_NOTE_META, encode_meta(meta)),
        Note("PYCOREINFO", PYCOREINFO_NOTE, info.encode()),
    ]
    path = write_core(tmp_path / "items.core", segments, notes)
    # WHEN
    code, out, _ = run_cli(capsys, "show", str(path), "--json")
    # THEN the list decodes, each item is a marker, and the reasons are listed
    assert code == 0
    decoded = next(r for r in json.loads(out)["regions"] if r["id"] == rid)["decoded"]
    assert decoded["complete"] is False
    assert [next(iter(item)) for item in decoded["value"]] == ["$missing", "$missing"]
    assert [int(item["$missing"], 16) for item in decoded["value"]] == [id(s) for s in items]
    assert len(decoded["missing"]) == 2
    code, out, _ = run_cli(capsys, "show", str(path))
    assert f"[{rid}] items: list (incomplete)\n    [<missing 0x{id(items[0]):x}: " in out
    assert out.count("\n    missing: ") == 2
