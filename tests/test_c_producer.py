"""Any process can publish a table: a C program using contrib/c/kmemdump_table.h is dumped like Python."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from conftest import require_tool
from kmemdump.cli.main import main
from kmemdump.collector.dump import DumpOptions
from kmemdump.collector.watch import Watcher
from kmemdump.formats.table import LIVE_LOCK_BYTE
from kmemdump.formats.table import TableReader
from kmemdump.formats.table import lock_held
from kmemdump.formats.table import read_table
from kmemdump.idenum import ID
from kmemdump.memory.core import CoreImage
from kmemdump.procinfo import pid_namespace

pytestmark = pytest.mark.slow

CONTRIB = Path(__file__).resolve().parent.parent / "contrib" / "c"
BANNER = b"C producer banner: kmemdump_table.h example, format v1"


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = require_tool("cc")
    exe = tmp_path_factory.mktemp("c") / "example"
    subprocess.run(
        [
            cc,
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-O2",
            "-D_GNU_SOURCE",
            "-o",
            str(exe),
            str(CONTRIB / "example.c"),
        ],
        check=True,
        capture_output=True,
    )
    return exe


def test_a_frozen_c_program_is_dumped_with_its_banner(
    example: Path, table_dir: Path, dump_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a C program that registered its banner, fed its 0.3 s watchdog and then froze
    proc = subprocess.Popen([str(example), "0.3"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready, pid, address = proc.stdout.readline().split()  # readiness: the table is published
        assert ready == "ready" and int(pid) == proc.pid
        (table,) = table_dir.glob("*.table")
        snapshot = read_table(table)  # the Python reader accepts what C wrote
        assert snapshot.header.py_hexversion == 0
        # its pid namespace and its liveness lock, as a collector elsewhere needs them
        assert (snapshot.header.pidns_dev, snapshot.header.pidns_ino) == pid_namespace(proc.pid)
        assert snapshot.header.live_lock
        with TableReader(table) as reader:
            assert lock_held(reader.fileno(), LIVE_LOCK_BYTE)
        assert [(e.id, e.name) for e in snapshot.entries] == [
            (ID.BANNER, "banner"),
            (ID.USER_START, "requests"),
        ]
        # WHEN the collector watches it
        watcher = Watcher([table_dir], DumpOptions(dump_dir))
        events = watcher.scan()
        deadline = time.monotonic() + 30
        while not any(e.dump for e in events) and time.monotonic() < deadline:
            events.extend(watcher.step())
        watcher.close()
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    # THEN it is dumped once, for a hang, with the banner at its address and the counter's value
    (hang,) = [e for e in events if e.dump is not None]
    assert hang.kind == "hang" and hang.dump is not None
    meta = hang.dump.meta
    assert not meta.partial and meta.stacks == "not a Python process"  # its table says so: no py-spy tried
    capsys.readouterr()
    assert main(["show", str(hang.dump.path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["banner"] == BANNER.decode()
    requests = next(r for r in shown["regions"] if r["name"] == "requests")
    with CoreImage.open(hang.dump.path) as core:  # the C loop counted to 1000 before freezing
        assert core.read(requests["address"], 8) == (1000).to_bytes(8, "little")
    gdb = subprocess.run(
        [require_tool("gdb"), "-nx", "-batch", "-c", str(hang.dump.path), "-ex", f"x/s {address}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    assert BANNER.decode() in gdb


def test_a_clean_exit_removes_the_table(example: Path, table_dir: Path) -> None:
    # the example never exits cleanly; a tiny program that opens and closes a table does
    cc = require_tool("cc")
    source = table_dir.parent / "close.c"
    source.write_text(
        '#define KMD_TABLE_IMPLEMENTATION\n#include "kmemdump_table.h"\n#include <stdio.h>\n'
        "int main(void) { struct kmd_table t; if (kmd_table_open(&t, NULL, 4)) return 1;\n"
        "  puts(t.path); fflush(stdout); kmd_table_close(&t); return 0; }\n"
    )
    exe = table_dir.parent / "close"
    subprocess.run([cc, "-std=c11", "-D_GNU_SOURCE", f"-I{CONTRIB}", "-o", str(exe), str(source)], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.strip()
    assert out.startswith(str(table_dir)) and not Path(out).exists()
    assert list(table_dir.iterdir()) == []
