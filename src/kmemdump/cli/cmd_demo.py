"""The seed's scenario end to end, in a few seconds.

A producer process registers a banner and a few regions, publishes its table, feeds its watchdog
and then deadlocks. The collector (this command) notices the missed heartbeat, copies only the
registered regions into an ELF core image, and prints the banner recovered from that dump.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kmemdump.collector.dump import DumpOptions
from kmemdump.collector.watch import Event
from kmemdump.collector.watch import Watcher
from kmemdump.errors import CollectorError
from kmemdump.formats.core import CoreImage
from kmemdump.ids import ID

__all__ = ["prepare", "run"]


def prepare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="keep the dump in this directory (default: a temporary one, removed after)",
    )
    parser.add_argument("--timeout", type=float, default=1.0, help="the target's watchdog timeout (s)")


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="kmemdump-demo-") as tmp:
        tables = Path(tmp) / "tables"
        tables.mkdir(mode=0o700)
        dumps = args.dir or Path(tmp) / "dumps"
        dumps.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, KMEMDUMP_DIR=str(tables))
        print(
            "[collector] starting the demo target; it will register its banner, feed its watchdog, "
            "then deadlock",
            flush=True,
        )
        child = subprocess.Popen([sys.executable, "-m", "kmemdump.demo_target", str(args.timeout)], env=env)
        dumped: list[Event] = []

        def on_event(event: Event) -> None:
            print(f"[collector] {event.line()}", flush=True)
            if event.dump is not None:
                dumped.append(event)

        watcher = Watcher(
            [tables],
            DumpOptions(dumps),
            after_hang="kill",
            on_event=on_event,
            only_pid=child.pid,
            max_sleep=0.05,
        )
        started = time.monotonic()
        try:
            watcher.scan()
            while not dumped and child.poll() is None:
                watcher.step()
                if time.monotonic() - started > args.timeout + 30:
                    raise CollectorError("the demo target was not dumped in time", pid=child.pid)
        finally:
            watcher.close()
            if child.poll() is None:
                child.kill()
            child.wait()
        if not dumped or dumped[0].dump is None:
            raise CollectorError("the demo target exited before it froze", pid=child.pid)
        _show(dumped[0].dump.path)
        if args.dir is None:
            print("\n(the dump was in a temporary directory; use --dir DIR to keep it)")
    return 0


def _show(path: Path) -> None:
    with CoreImage.open(path) as core:
        from kmemdump.formats.core import KMD_NOTE_META
        from kmemdump.formats.dumpmeta import decode_meta

        note = core.note("KMEMDUMP", KMD_NOTE_META)
        if note is None:
            raise CollectorError("the dump has no KMEMDUMP note", path=str(path))
        meta = decode_meta(note.desc)
        size = path.stat().st_size
        print(
            f"\nDump {path.name}: reason={meta.reason}, {len(meta.regions)} regions, "
            f"{meta.stored_bytes} bytes of memory in a {size}-byte file"
        )
        banner = next((r for r in meta.regions if r.id == ID.BANNER), None)
        if banner is None or banner.stored == 0:
            raise CollectorError("the banner is not in the dump", path=str(path))
        text = core.read(banner.address, banner.stored).split(b"\0", 1)[0].decode("utf-8", "replace")
        print(f"\nBanner recovered from 0x{banner.address:x} ({banner.stored} bytes):\n")
        for line in text.splitlines():
            print(f"    {line}")
        print(f"\nInspect it with: kmemdump show {path}")
