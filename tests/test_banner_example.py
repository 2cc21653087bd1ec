"""The example of the Linux kernel's kmemdump design, step by step, with a real process and its banner.

"The kernel registers the linux_banner variable ... The backend will then note into a specific table the
address of the banner and the size of it. The specific table is then written to a shared memory area ...
When the kernel freezes ..., the kernel will no longer feed the watchdog. ... This firmware will then read
the shared memory table and find an entry with the start and size of the banner. It will then copy it":
here the process registers its banner (``init``), the shared-table backend notes it in a table file it
maps shared, the process stops feeding its watchdog, and the collector reads the table, finds the banner's
entry, copies its bytes and shows them.
"""

from __future__ import annotations

import ctypes
import re
import time
from pathlib import Path

import pytest

from helpers_child import spawn_child
from kmemdump.cli.main import main
from kmemdump.collector.dump import DumpOptions
from kmemdump.collector.watch import Event
from kmemdump.collector.watch import Watcher
from kmemdump.formats.enums import RegionKind
from kmemdump.formats.table import read_table
from kmemdump.idenum import ID
from kmemdump.memory.core import CoreImage

pytestmark = pytest.mark.slow

PRODUCER = r"""
import ctypes, os, sys, threading, time
import kmemdump
from kmemdump import ID

class Recording:
    name = "recording"
    def __init__(self):
        self.calls = []
    def register_region(self, region):
        self.calls.append(["register", region.id, region.address, region.size])
    def unregister_region(self, region):
        self.calls.append(["unregister", region.id])

mode = sys.argv[1]
if mode == "backend":
    kmemdump.init()                                    # the banner is registered with one call
    backend = Recording()
    kmemdump.backend_register(backend)                 # a backend that probes later still hears of it
    banner = kmemdump.default_registry().get(ID.BANNER)
    send({"calls": backend.calls, "banner": [banner.address, banner.size]})
    block()
else:
    report = kmemdump.init(table=True, watchdog=0.5)
    banner = kmemdump.default_registry().get(ID.BANNER)
    text = ctypes.string_at(banner.address, banner.size).split(b"\0", 1)[0].decode()
    for _ in range(3):
        kmemdump.feed()
    send({"table": report.table, "banner": [banner.address, banner.size], "text": text})
    lock = threading.Lock()
    lock.acquire()
    lock.acquire()                                     # the freeze: nothing feeds the watchdog any more
"""


def test_the_banner_is_registered_and_a_later_backend_receives_it() -> None:
    with spawn_child(PRODUCER, args=["backend"]) as child:
        info = child.recv()
    address, size = info["banner"]
    assert ["register", ID.BANNER, address, size] in info["calls"]


def test_the_backend_notes_the_banner_in_a_shared_table(table_dir: Path) -> None:
    with spawn_child(PRODUCER, args=["freeze"]) as child:
        info = child.recv()
        table = Path(info["table"])
        snapshot = read_table(table)  # read from outside, as the firmware reads shared memory
        maps = Path(f"/proc/{child.pid}/maps").read_text()
        inode = table.stat().st_ino
    entry = next(e for e in snapshot.entries if e.id == ID.BANNER)
    assert [entry.address, entry.size] == info["banner"] and entry.kind == RegionKind.BUFFER
    assert snapshot.header.pid == child.pid
    # the table is memory the process shares: a shared, writable mapping of the very file the collector
    # reads (mapped under the temporary name it was built with, then linked into place)
    shared = [line.split() for line in maps.splitlines() if " rw-s " in line]
    assert any(fields[4] == str(inode) for fields in shared), maps


def test_a_freeze_stops_the_feed_and_the_collector_copies_the_banner(
    table_dir: Path, dump_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events: list[Event] = []
    with spawn_child(PRODUCER, args=["freeze"]) as child:
        info = child.recv()
        watcher = Watcher([table_dir], DumpOptions(dump_dir), on_event=events.append)
        try:
            watcher.scan()
            deadline = time.monotonic() + 30
            while not any(e.kind == "hang" for e in events) and time.monotonic() < deadline:
                watcher.step()
        finally:
            watcher.close()
    (hang,) = [e for e in events if e.kind == "hang"]
    assert hang.dump is not None and "heartbeat" in hang.message  # the watchdog was not fed
    address, size = info["banner"]
    record = next(r for r in hang.dump.meta.regions if r.id == ID.BANNER)
    assert (record.address, record.size, record.stored, record.status) == (address, size, size, "ok")
    with CoreImage.open(hang.dump.path) as core:
        copied = core.read(address, size)  # the start and size the table gave, copied
    assert copied.split(b"\0", 1)[0].decode() == info["text"]
    capsys.readouterr()
    assert main(["show", str(hang.dump.path), "--plain"]) == 0
    shown = capsys.readouterr().out.split("\nBanner\n", 1)[1]
    first = info["text"].splitlines()[0]
    assert re.search(rf"^    {re.escape(first)}$", shown, re.M)
    assert ctypes.sizeof(ctypes.c_void_p) == 8
