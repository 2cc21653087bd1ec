"""`kmemdump watch` as a long-running service, and the dump options (budget, compression, abort)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers_child import spawn_child
from kmemdump.collector.dump import DumpOptions
from kmemdump.collector.dump import dump_target
from kmemdump.formats.dumpmeta import decode_meta
from kmemdump.formats.elf import KMD_NOTE_META
from kmemdump.memory.core import CoreImage
from kmemdump.procinfo import process_start_time

pytestmark = pytest.mark.slow

KMEMDUMP = [sys.executable, "-m", "kmemdump.cli"]

# Registers four 1000-byte regions under known IDs, then stops feeding and waits.
PRODUCER = r"""
import os, sys
import kmemdump
report = kmemdump.init(table=True, watchdog=float(sys.argv[1]))
bufs = [kmemdump.alloc(1000, id=kmemdump.ID.USER_START + i, name=f"buf{i}") for i in range(4)]
for i, b in enumerate(bufs):
    b[:] = bytes([i + 1]) * 1000
kmemdump.feed()
send({"table": report.table})
block()
"""


def test_watch_service_dumps_a_hang_speaks_sd_notify_and_stops_on_sigterm(
    tmp_path: Path, table_dir: Path, dump_dir: Path
) -> None:
    # GIVEN a notify socket like systemd's and a collector watching the table directory
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(60)
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify"))
    watch = subprocess.Popen(
        [*KMEMDUMP, "watch", "--tables", str(table_dir), "--dir", str(dump_dir), "--compress"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert b"READY=1" in notify.recv(4096)  # readiness, as systemd would see it
        # WHEN a producer stops feeding
        with spawn_child(PRODUCER, args=["0.3"]) as child:
            child.recv()
            assert watch.stderr is not None
            line = ""
            while "hang pid=" not in line:  # one log line per event
                line = watch.stderr.readline()
                assert line, "the collector exited"
            assert f"hang pid={child.pid}" in line and ".core.zst" in line
            watch.send_signal(signal.SIGTERM)  # stop before the child goes, so no death follows
            _, rest = watch.communicate(timeout=60)
        assert b"STOPPING=1" in notify.recv(4096)
    finally:
        if watch.poll() is None:
            watch.kill()
        notify.close()
    # THEN it exited cleanly and the compressed dump opens
    assert watch.returncode == 0, rest
    (dump,) = dump_dir.iterdir()
    with CoreImage.open(dump) as core:
        assert core.compressed
        meta = decode_meta(core.note("KMEMDUMP", KMD_NOTE_META).desc)  # type: ignore[union-attr]
    assert meta.reason == "hang" and meta.pid == child.pid


def test_budget_keeps_regions_in_id_order_and_lists_the_rest_as_skipped(
    table_dir: Path, dump_dir: Path
) -> None:
    with spawn_child(PRODUCER, args=["60"]) as child:
        table = Path(child.recv()["table"])
        result = dump_target(
            child.pid,
            process_start_time(child.pid),
            table,
            reason="request",
            options=DumpOptions(dump_dir, budget=2500, stacks=False),
        )
    by_name = {r.name: r for r in result.meta.regions}
    stored = [r for r in sorted(result.meta.regions, key=lambda r: r.id) if r.status == "ok"]
    # the banner and the layout come first (lowest IDs), then buf0, buf1 ... until 2500 bytes are spent
    assert sum(r.stored for r in stored) <= 2500
    assert by_name["buf3"].status == "skipped" and by_name["buf3"].stored == 0
    skipped_ids = [r.id for r in result.meta.regions if r.status == "skipped"]
    stored_ids = [r.id for r in stored]
    assert skipped_ids and max(stored_ids) < min(skipped_ids)
    with CoreImage.open(result.path) as core:  # one segment per stored region, besides the ELF headers
        regions = [s for s in core.segments if core.segment_data(s)[:4] != b"\x7fELF"]
        assert len(regions) == len(stored)


def test_after_hang_abort_lets_the_system_handle_the_process(table_dir: Path, dump_dir: Path) -> None:
    from kmemdump.collector.watch import Watcher

    with spawn_child(PRODUCER, args=["0.3"]) as child:
        child.recv()
        watcher = Watcher([table_dir], DumpOptions(dump_dir, stacks=False), after_hang="abort")
        watcher.scan()
        events = []
        while child.popen.poll() is None:
            events.extend(watcher.step())
        watcher.close()
    assert child.popen.returncode == -signal.SIGABRT
    assert [e.kind for e in events if e.dump is not None] == ["hang"]


def test_no_stop_copies_without_stopping(table_dir: Path, dump_dir: Path) -> None:
    with spawn_child(PRODUCER, args=["60"]) as child:
        table = Path(child.recv()["table"])
        result = dump_target(
            child.pid,
            process_start_time(child.pid),
            table,
            reason="request",
            options=DumpOptions(dump_dir, stop=False, stacks=False),
        )
    assert not result.meta.stopped and not result.meta.partial


def test_budget_option_defaults_to_a_gibibyte_and_none_lifts_it() -> None:
    from kmemdump.cli.main import build_parser
    from kmemdump.cli.options import DEFAULT_BUDGET
    from kmemdump.cli.options import dump_options

    parser = build_parser()
    default = parser.parse_args(["dump", "1", "--dir", "/tmp"])
    assert default.budget == DEFAULT_BUDGET == 1 << 30
    assert dump_options(default).budget == 1 << 30
    lifted = parser.parse_args(["dump", "1", "--dir", "/tmp", "--budget", "none"])
    assert dump_options(lifted).budget is None
    assert parser.parse_args(["watch", "--budget", "1.5MiB"]).budget == 1572864
    with pytest.raises(SystemExit):
        parser.parse_args(["watch", "--budget", "-3k"])
