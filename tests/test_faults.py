"""Crashes and uncaught exceptions in the dump: ``init(faulthandler=True)`` and ``init(excepthook=True)``.

Real producers crash (SIGSEGV through ctypes, SIGABRT, SIGBUS, SIGFPE), time out under
``faulthandler.dump_traceback_later`` or die of an uncaught exception, under a real ``kmemdump
watch`` (no ``--trace-exit``) or ``kmemdump run``; their death dumps must hold faulthandler's
traceback or the exception, naming the function, and ``show`` and ``run`` must say so. The fault
file is read like the table (no link followed, bounded, text treated as hostile) and removed with it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers_child import spawn_child
from helpers_watch import KMEMDUMP
from helpers_watch import WatchProcess
from kmemdump.cli.main import main
from kmemdump.errors import ForeignTableError
from kmemdump.formats.faults import fault_path_of
from kmemdump.formats.faults import read_fault_file
from kmemdump.formats.ring import RingRole
from kmemdump.formats.ring import parse_ring
from kmemdump.formats.table import LIVE_LOCK_BYTE
from kmemdump.formats.table import lock_held
from kmemdump.inspect.dumpfile import Dump

pytestmark = pytest.mark.slow

CRASHER = r"""
import ctypes, os, signal
import kmemdump
report = kmemdump.init(table=True, faulthandler=True, pycoreinfo=False)

def parse_order_{how}():
    how = "{how}"
    if how == "segv":
        ctypes.string_at(0)  # a real invalid read
    elif how == "abrt":
        os.abort()
    else:
        os.kill(os.getpid(), getattr(signal, "SIG" + how.upper()))

send({{"table": report.table, "pid": os.getpid()}})
recv()
parse_order_{how}()
"""


def _dump_path(line: str) -> Path:
    match = re.search(r" dump=(\S+)", line)
    assert match, line
    return Path(match.group(1))


@pytest.mark.parametrize(
    ("how", "fatal"),
    [
        ("segv", "Segmentation fault"),
        ("abrt", "Aborted"),
        ("bus", "Bus error"),
        ("fpe", "Floating.point exception"),  # "Floating-point" from 3.13 on
    ],
)
def test_a_crash_under_plain_watch_leaves_faulthandlers_traceback_in_the_death_dump(
    how: str, fatal: str, table_dir: Path, dump_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a producer with init(faulthandler=True) under a real `kmemdump watch` (no --trace-exit)
    with WatchProcess(table_dir, dump_dir) as watch, spawn_child(CRASHER.format(how=how)) as child:
        info = child.recv()
        fault = Path(fault_path_of(info["table"]))
        assert fault.exists() and fault.stat().st_mode & 0o777 == 0o600
        fd = os.open(fault, os.O_RDONLY)
        try:
            assert lock_held(fd, LIVE_LOCK_BYTE)  # the process's liveness lock, as on its table
        finally:
            os.close(fd)
        watch.wait_for(f"watch pid={info['pid']} ")
        # WHEN it crashes
        child.send("go")
        status = child.popen.wait(timeout=30)
        line = watch.wait_for(f"death pid={info['pid']} ")
    # THEN the death dump holds faulthandler's traceback naming the function; the files are gone
    assert status == -getattr(signal, f"SIG{how.upper()}")
    with Dump.open(_dump_path(line)) as dump:
        written = dump.faulthandler
        assert written is not None and not written.cut
        assert re.search(f"Fatal Python error: {fatal}", written.text)
        assert f"in parse_order_{how}" in written.text
    assert list(table_dir.iterdir()) == []
    assert main(["show", "--plain", str(_dump_path(line))]) == 0
    out = capsys.readouterr().out
    section = out[out.index("faulthandler (what the process wrote") :]
    assert re.search(f"Fatal Python error: {fatal}", section) and f"in parse_order_{how}" in section
    assert main(["show", "--json", str(_dump_path(line))]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert f"parse_order_{how}" in doc["faulthandler"]["text"] and doc["faulthandler"]["cut"] is False


TIMEOUT = r"""
import faulthandler, os, time
import kmemdump
report = kmemdump.init(table=True, faulthandler=True, pycoreinfo=False)

def wait_for_the_lock_server():
    time.sleep(60)

faulthandler.dump_traceback_later(0.5, exit=True, file=kmemdump.fault_file())
send({"pid": os.getpid()})
wait_for_the_lock_server()
"""


def test_a_dump_traceback_later_timeout_is_in_the_death_dump(table_dir: Path, dump_dir: Path) -> None:
    with WatchProcess(table_dir, dump_dir) as watch, spawn_child(TIMEOUT) as child:
        pid = child.recv()["pid"]
        assert child.popen.wait(timeout=30) == 1  # faulthandler's exit=True
        line = watch.wait_for(f"death pid={pid} ")
    with Dump.open(_dump_path(line)) as dump:
        written = dump.faulthandler
    assert written is not None
    assert "Timeout (0:00:00.500000)!" in written.text and "in wait_for_the_lock_server" in written.text


def test_run_says_why_a_program_crashed(tmp_path: Path, dump_dir: Path) -> None:
    program = tmp_path / "crash.py"
    program.write_text(CRASHER.format(how="segv").replace("send(", "dict(").replace("recv()", "None"))
    result = subprocess.run(
        [*KMEMDUMP, "run", "--no-autoinit", "--dir", str(dump_dir), "--", sys.executable, str(program)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 128 + signal.SIGSEGV, result.stderr
    assert "kmemdump: faulthandler: Fatal Python error: Segmentation fault" in result.stderr
    assert re.search(r'kmemdump:   File ".*crash.py", line \d+ in parse_order_segv', result.stderr), (
        result.stderr
    )


# --- uncaught exceptions ------------------------------------------------------------------------

FAILING = r"""
import kmemdump, logging
from kmemdump.logging import RingHandler
kmemdump.init(table=True, excepthook=True, pycoreinfo=False)
logging.getLogger().addHandler(RingHandler(capacity=16))
logging.getLogger("config").error("port out of range")

def load_config():
    raise ValueError("port 99999 is out of range")

load_config()
"""


def test_run_shows_why_a_program_exited_with_status_1(
    tmp_path: Path, dump_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a program that dies of an uncaught exception, under `kmemdump run`
    program = tmp_path / "failing.py"
    program.write_text(FAILING)
    result = subprocess.run(
        [*KMEMDUMP, "run", "--no-autoinit", "--dir", str(dump_dir), "--", sys.executable, str(program)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # THEN run exits 1 and says why; the previous hook still printed the traceback
    assert result.returncode == 1, result.stderr
    assert "kmemdump: uncaught exception: ValueError: port 99999 is out of range" in result.stderr
    assert re.search(r'raised at File ".*failing.py", line 9, in load_config', result.stderr)
    assert "Traceback (most recent call last):" in result.stderr  # Python's own hook ran too
    # AND the death dump holds the exception and the log record before it
    (path,) = dump_dir.iterdir()
    with Dump.open(path) as dump:
        rings = {
            r.name: parse_ring(dump.region_bytes(r))
            for r in dump.meta.regions
            if r.name in ("exceptions", "log")
        }
    (record,) = rings["exceptions"].records
    assert rings["exceptions"].role == RingRole.EXCEPTIONS and record.level == 50
    assert record.text.startswith("Traceback (most recent call last):")
    assert record.text.rstrip().endswith("ValueError: port 99999 is out of range")
    assert [r.text for r in rings["log"].records] == ["config: port out of range"]
    assert main(["show", "--plain", str(path)]) == 0
    out = capsys.readouterr().out
    section = out[out.index("Uncaught exceptions") :]
    assert "    ValueError: port 99999 is out of range" in section


LONG_CHAIN = r"""
import kmemdump
kmemdump.init(table=True, excepthook=True, pycoreinfo=False)

def parse(depth):
    if depth == 0:
        raise KeyError("missing field " + "k" * 3000)
    try:
        parse(depth - 1)
    except Exception as err:
        raise RuntimeError(f"layer {depth} failed: " + "m" * 500) from err

def load_config():
    parse(12)

load_config()
"""


def test_a_traceback_longer_than_its_record_keeps_its_end(tmp_path: Path, dump_dir: Path) -> None:
    # GIVEN a program dying of a chain of 13 exceptions with long messages (13 KB of traceback, 8 KB kept)
    program = tmp_path / "chained.py"
    program.write_text(LONG_CHAIN)
    result = subprocess.run(
        [*KMEMDUMP, "run", "--no-autoinit", "--dir", str(dump_dir), "--", sys.executable, str(program)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # THEN run names the exception that ended it and where it was raised (the end of the traceback)
    assert result.returncode == 1, result.stderr
    assert "kmemdump: uncaught exception: RuntimeError: layer 12 failed: mmm" in result.stderr
    assert re.search(r'raised at File ".*chained.py", line 11, in parse', result.stderr), result.stderr
    # AND the record keeps the start and the end, saying what it left out between
    (path,) = dump_dir.iterdir()
    with Dump.open(path) as dump:
        (record,) = parse_ring(dump.region_bytes(dump.region("exceptions"))).records
    assert len(record.text.encode()) <= 8192 - 40 and not record.cut
    assert record.text.startswith("Traceback (most recent call last):")
    assert re.search(r"\.\.\. \(\d+ bytes of the traceback left out\) \.\.\.", record.text)
    assert "in load_config" in record.text
    assert record.text.rstrip().endswith("RuntimeError: layer 12 failed: " + "m" * 500)


THREADS = r"""
import os, sys, threading
import kmemdump
from kmemdump.formats.ring import parse_ring
from kmemdump.formats.table import LIVE_LOCK_BYTE
from kmemdump.formats.table import lock_held
from kmemdump.producer.faults import exceptions_ring
report = kmemdump.init(table=True, excepthook=True, pycoreinfo=False)
seen = []
def worker():
    raise KeyError("session 42")
t = threading.Thread(target=worker, name="poller")
t.start(); t.join()
ring = parse_ring(exceptions_ring().view)
send({"texts": [r.text for r in ring.records], "levels": [r.level for r in ring.records]})
recv()
raise KeyboardInterrupt
"""


def test_thread_exceptions_are_recorded_and_a_keyboard_interrupt_is_a_clean_end(table_dir: Path) -> None:
    with spawn_child(THREADS) as child:
        out = child.recv()
        (text,) = out["texts"]
        assert text.startswith("Exception in thread poller:\nTraceback") and "KeyError: 'session 42'" in text
        assert out["levels"] == [40]
        child.send("go")
        child.popen.wait(timeout=30)
        assert "Exception in thread poller" in child.stderr_text()  # threading's own hook ran too
    assert list(table_dir.iterdir()) == []  # Ctrl-C is not a crash: nothing left for a death dump


def test_a_forked_child_never_writes_into_its_parents_fault_file(table_dir: Path) -> None:
    code = r"""
import faulthandler, os, signal
import kmemdump
from kmemdump.formats.faults import fault_path_of
report = kmemdump.init(table=True, faulthandler=True, pycoreinfo=False)
pid = os.fork()
if pid == 0:
    os.kill(os.getpid(), signal.SIGSEGV)
_, status = os.waitpid(pid, 0)
send({"size": os.stat(fault_path_of(report.table)).st_size, "signal": os.WTERMSIG(status),
      "parent": faulthandler.is_enabled()})
"""
    with spawn_child(code) as child:
        out = child.recv()
    assert out == {"size": 0, "signal": signal.SIGSEGV, "parent": True}


def test_a_clean_exit_removes_the_fault_file_and_gives_faulthandler_back(table_dir: Path) -> None:
    code = r"""
import faulthandler, os
import kmemdump
report = kmemdump.init(table=True, faulthandler=True, pycoreinfo=False)
before = faulthandler.is_enabled()
kmemdump.shutdown()
send({"before": before, "after": faulthandler.is_enabled(), "file": kmemdump.fault_file() is None,
      "left": sorted(os.listdir(os.path.dirname(report.table)))})
"""
    with spawn_child(code, python=sys.executable, env={**os.environ, "PYTHONFAULTHANDLER": "1"}) as child:
        out = child.recv()
    # it was on (to stderr) before: it is on again, to stderr, once our file is gone
    assert out == {"before": True, "after": True, "file": True, "left": []}


# --- the fault file as a reader sees it -------------------------------------------------------------


def test_the_reader_keeps_the_end_of_a_long_file_from_a_line(tmp_path: Path) -> None:
    path = tmp_path / "1-2.fault"
    path.write_bytes(b"".join(b"Timeout (0:00:05)!\nline %d \xff\n" % i for i in range(40_000)))
    found = read_fault_file(path, limit=4096)
    assert found is not None and found.cut and found.size == path.stat().st_size
    assert found.kept <= 4096 and found.text.startswith(("Timeout", "line"))
    assert found.text.endswith("line 39999 \ufffd\n")


def test_the_reader_refuses_a_link_and_ignores_an_empty_or_missing_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("root's secret")
    link = tmp_path / "1-2.fault"
    link.symlink_to(secret)
    with pytest.raises(ForeignTableError, match="symbolic link"):
        read_fault_file(link)
    empty = tmp_path / "3-4.fault"
    empty.write_bytes(b"")
    assert read_fault_file(empty) is None
    assert read_fault_file(tmp_path / "5-6.fault") is None


def test_hostile_text_is_escaped_when_shown(
    table_dir: Path, dump_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = r"""
import os
import kmemdump
report = kmemdump.init(table=True, faulthandler=True, pycoreinfo=False)
kmemdump.fault_file().write(b"Fatal Python error: \x1b[2J\x1b]0;owned\x07 cleared\n")
send({"pid": os.getpid()})
block()
"""
    with WatchProcess(table_dir, dump_dir) as watch, spawn_child(code) as child:
        pid = child.recv()["pid"]
        watch.wait_for(f"watch pid={pid} ")
        os.kill(pid, signal.SIGKILL)
        child.popen.wait()
        line = watch.wait_for(f"death pid={pid} ")
    assert main(["show", "--plain", str(_dump_path(line))]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "Fatal Python error: \\x1b[2J\\x1b]0;owned\\x07 cleared" in out


def test_watch_removes_a_fault_file_whose_table_and_process_are_gone(table_dir: Path, dump_dir: Path) -> None:
    from kmemdump.collector.dump import DumpOptions
    from kmemdump.collector.watch import Watcher
    from kmemdump.procinfo import process_start_time

    with spawn_child(
        "send({'pid': os.getpid()}); block()".replace("os.getpid()", "__import__('os').getpid()")
    ) as child:
        pid = child.recv()["pid"]
        start = process_start_time(pid)
    # the process is gone now; a fault file of it is left without a table, and one of a live process
    orphan = table_dir / f"{pid}-{start}.fault"
    orphan.write_text("Fatal Python error: Segmentation fault\n")
    living = table_dir / f"{os.getpid()}-{process_start_time(os.getpid())}.fault"
    living.write_text("")
    watcher = Watcher([table_dir], DumpOptions(dump_dir))
    try:
        events = watcher.scan()
    finally:
        watcher.close()
    assert [(e.kind, e.pid) for e in events] == [("skip", pid)]
    assert "fault file" in events[0].message and not orphan.exists() and living.exists()


def test_run_with_its_hooks_says_why_an_unmodified_program_ended(tmp_path: Path, dump_dir: Path) -> None:
    # an unmodified program: kmemdump starts inside it through run's autoinit, hooks included
    program = tmp_path / "plain.py"
    program.write_text("def connect():\n    raise ConnectionRefusedError('db:5432')\n\nconnect()\n")
    result = subprocess.run(
        [
            *KMEMDUMP,
            "run",
            "--excepthook",
            "--faulthandler",
            "--dir",
            str(dump_dir),
            "--",
            sys.executable,
            str(program),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "kmemdump: uncaught exception: ConnectionRefusedError: db:5432" in result.stderr
    assert re.search(r'raised at File ".*plain.py", line 2, in connect', result.stderr)
    assert len(list(dump_dir.iterdir())) == 1
