"""See kmemdump work end to end, in a few seconds.

A demo process registers its banner (its Python version, executable and arguments) and a few
regions, publishes them in a table, feeds its watchdog and then deadlocks: two threads each hold
the lock the other wants. This command acts as the collector: it notices the missed heartbeat,
copies only the registered regions into a small ELF core file, stops the frozen process, and
prints the banner and a dict read back from the dump, with the commands to run next.

The dump is kept, in the dump directory where 'kmemdump ls' finds it (or in --dir).
Exit status: 0 when the dump was taken and read back; 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kmemdump.cli.options import default_dump_dir
from kmemdump.cli.options import seconds
from kmemdump.collector.dump import DumpOptions
from kmemdump.collector.watch import Event
from kmemdump.collector.watch import Watcher
from kmemdump.errors import CollectorError
from kmemdump.idenum import ID
from kmemdump.inspect.dumpfile import Dump
from kmemdump.inspect.dumpfile import plural

__all__ = ["prepare", "run"]


def prepare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="keep the dump in DIR (default: $KMEMDUMP_DUMPS or ~/.local/state/kmemdump/dumps, where "
        "'kmemdump ls' finds it)",
    )
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=1.0,
        metavar="S",
        help="the demo process's watchdog timeout in seconds (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="kmemdump-demo-") as tmp:
        tables = Path(tmp) / "tables"
        tables.mkdir(mode=0o700)
        dumps = args.dir or Path(default_dump_dir())
        dumps.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, KMEMDUMP_DIR=str(tables))
        print(
            "[collector] starting the demo target; it will register its banner, feed its watchdog, "
            "then deadlock",
            flush=True,
        )
        child = subprocess.Popen(
            [sys.executable, "-m", "kmemdump.cli.demo_target", str(args.timeout)], env=env
        )
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
    return 0


def _show(path: Path) -> None:
    with Dump.open(path) as dump:
        meta = dump.meta
        print(
            f"\nDump {path.name}: reason={meta.reason}, {plural(len(meta.regions), 'region')}, "
            f"{plural(meta.stored_bytes, 'byte')} of memory in a {dump.file_size}-byte file"
        )
        banner = dump.banner()
        record = next((r for r in meta.regions if r.id == ID.BANNER), None)
        if banner is None or record is None:
            raise CollectorError("the banner is not in the dump", path=str(path))
        print(f"\nBanner recovered from 0x{record.address:x} ({record.stored} bytes):\n")
        for line in banner.splitlines():
            print(f"    {line}")
        session = next((r for r in meta.regions if r.name == "session"), None)
        if session is not None:
            decoded = dump.decode_region(session)
            print(
                "\nThe 'session' dict, decoded from the dump without the binaries (its values at the freeze):"
                f"\n    {decoded.value!r}"
            )
        _show_deadlock(dump)
        print(f"\nEverything in it:   kmemdump show {path}\nIn gdb:             kmemdump gdb {path}")


def _show_deadlock(dump: Dump) -> None:
    """The two threads that deadlocked: what each was doing before the hold, and where, from the dump."""
    stacks = dump.stacks
    if stacks is None:
        print(f"\n(no Python stacks in the dump: {dump.stacks_state})")
        return
    states = {t.tid: t for t in dump.meta.threads}
    workers = sorted(
        (t for t in stacks.threads if t.name in ("transfer-a", "transfer-b")), key=lambda t: t.name or ""
    )
    print("\nThe deadlocked threads, from the same dump (innermost call last):")
    for thread in workers or stacks.threads:
        state = states.get(thread.native_id) if thread.native_id is not None else None
        doing = state.describe() if state is not None else ("active" if thread.active else "idle")
        print(f"\n    Thread {thread.name or hex(thread.thread_id)}: {doing}")
        for frame in list(reversed(thread.frames))[-3:]:
            print(f'      File "{frame.filename}", line {frame.line}, in {frame.function}')
