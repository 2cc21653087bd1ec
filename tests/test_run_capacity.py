"""A program under ``kmemdump run`` that sizes the registry itself: its ``init(capacity=N)`` comes after
the autoinit hook's, so it either gets its N (``run --capacity N``) or fails loudly naming that option;
never does it go on silently with 201 slots and lose regions. Real ``kmemdump run`` children."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kmemdump.formats.dumpmeta import decode_meta
from kmemdump.formats.elf import KMD_NOTE_META
from kmemdump.memory.core import CoreImage

pytestmark = pytest.mark.slow

KMEMDUMP = [sys.executable, "-m", "kmemdump.cli"]

# Sizes the registry for 500 regions, registers 400, says so through a FIFO, then deadlocks.
SIZED = r"""
import os, sys, threading
import kmemdump

try:
    kmemdump.init(table=True, capacity=500)
except kmemdump.InvalidRegionError as err:
    print(f"init refused: {err}", file=sys.stderr, flush=True)
    raise SystemExit(3)
kept = [kmemdump.alloc(16, name=f"order-{n}") for n in range(400)]
with open(sys.argv[1], "w") as ready:
    ready.write(f"{os.getpid()} {kmemdump.default_registry().capacity}\n")
lock = threading.Lock()
lock.acquire()
lock.acquire()  # a deadlock: the feeder's progress check stops the heartbeat
"""


def _run(tmp_path: Path, dump_dir: Path, *extra: str) -> tuple[subprocess.Popen[str], Path]:
    script = tmp_path / "sized.py"
    script.write_text(SIZED)
    ready = tmp_path / "ready"
    os.mkfifo(ready)
    command = [
        *KMEMDUMP,
        "run",
        "--timeout",
        "0.5",
        "--after-hang",
        "kill",
        "--no-stacks",
        "--dir",
        str(dump_dir),
    ]
    proc = subprocess.Popen(
        [*command, *extra, "--", sys.executable, str(script), str(ready)], stderr=subprocess.PIPE, text=True
    )
    return proc, ready


def test_the_programs_capacity_wins_with_run_capacity(
    tmp_path: Path, dump_dir: Path, table_dir: Path
) -> None:
    proc, ready = _run(tmp_path, dump_dir, "--capacity", "500")
    try:
        with open(ready) as fifo:  # explicit readiness: the program has its 400 regions
            pid, capacity = (int(word) for word in fifo.readline().split())
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert capacity == 500
    assert proc.returncode == 128 + signal.SIGKILL, err
    (dump,) = list(dump_dir.iterdir())
    with CoreImage.open(dump) as core:
        meta = decode_meta(core.note("KMEMDUMP", KMD_NOTE_META).desc)  # type: ignore[union-attr]
    names = {r.name for r in meta.regions}
    assert meta.pid == pid and meta.reason == "hang"
    assert {f"order-{n}" for n in range(400)} <= names  # every region the program registered


def test_without_it_the_programs_init_fails_loudly_naming_the_option(
    tmp_path: Path, dump_dir: Path, table_dir: Path
) -> None:
    proc, _ready = _run(tmp_path, dump_dir)  # the program stops at its init, before the FIFO
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    (line,) = [line for line in err.splitlines() if line.startswith("init refused: ")]
    assert "kmemdump run started kmemdump in this process with 201 region slots" in line
    assert "init(capacity=500)" in line and "'kmemdump run --capacity 500'" in line
    assert list(dump_dir.iterdir()) == []


def test_the_same_capacity_as_run_is_no_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            *KMEMDUMP,
            "run",
            "--quiet",
            "--dir",
            str(tmp_path),
            "--capacity",
            "300",
            "--",
            sys.executable,
            "-c",
            "import kmemdump; kmemdump.init(capacity=300); kmemdump.init(); "
            "print(kmemdump.default_registry().capacity)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and result.stdout.strip() == "300", result.stderr
