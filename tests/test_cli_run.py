"""`kmemdump run` supervising unmodified programs, and `kmemdump demo`, as a user runs them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kmemdump.formats.dumpmeta import decode_meta
from kmemdump.formats.elf import KMD_NOTE_META
from kmemdump.idenum import ID
from kmemdump.memory.core import CoreImage

pytestmark = pytest.mark.slow

KMEMDUMP = [sys.executable, "-m", "kmemdump.cli"]

# An unmodified program: it knows nothing of kmemdump. It tells the test its pid through a FIFO,
# then waits for a line on another FIFO that never comes (blocked, the GIL released).
UNMODIFIED = r"""
import os, sys
with open(sys.argv[1], "w") as ready:
    ready.write(f"{os.getpid()}\n")
with open(sys.argv[2]) as never:
    never.read()
"""


# An unmodified program whose only thread deadlocks on a lock it holds: dumped as a hang one --timeout later.
SELF_DEADLOCK = r"""
import os, sys, threading
lock = threading.Lock()
lock.acquire()
with open(sys.argv[1], "w") as ready:
    ready.write(f"{os.getpid()}\n")
lock.acquire()
"""


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _read_pid(fifo: Path) -> int:
    with open(fifo) as f:  # blocks until the program opened it: explicit readiness
        return int(f.readline())


def _only_dump(dump_dir: Path) -> Path:
    files = list(dump_dir.iterdir())
    assert len(files) == 1, files
    return files[0]


def test_run_dumps_a_stopped_unmodified_program_and_returns_its_status(
    tmp_path: Path, dump_dir: Path, table_dir: Path
) -> None:
    ready, never = _fifo(tmp_path / "ready"), _fifo(tmp_path / "never")
    script = tmp_path / "app.py"
    script.write_text(UNMODIFIED)
    run = subprocess.Popen(
        [
            *KMEMDUMP,
            "run",
            "--timeout",
            "0.5",
            "--after-hang",
            "kill",
            "--dir",
            str(dump_dir),
            "--",
            sys.executable,
            str(script),
            str(ready),
            str(never),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        pid = _read_pid(ready)
        os.kill(pid, signal.SIGSTOP)  # a whole-process stall: the feeder thread stops too
        _, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 128 + signal.SIGKILL, err
    assert "hang pid=" in err
    with CoreImage.open(_only_dump(dump_dir)) as core:
        meta = decode_meta(core.note("KMEMDUMP", KMD_NOTE_META).desc)  # type: ignore[union-attr]
        banner = next(r for r in meta.regions if r.id == ID.BANNER)
        text = core.read(banner.address, banner.stored)
    assert meta.reason == "hang" and meta.pid == pid
    assert str(script).encode() in text  # the banner registered by the autoinit hook names the program


def test_run_passes_the_exit_code_through(dump_dir: Path, table_dir: Path) -> None:
    code = subprocess.run(
        [
            *KMEMDUMP,
            "run",
            "--quiet",
            "--dir",
            str(dump_dir),
            "--",
            sys.executable,
            "-c",
            "raise SystemExit(3)",
        ],
        timeout=60,
        check=False,
    ).returncode
    assert code == 3
    assert list(dump_dir.iterdir()) == []


def test_run_dumps_a_program_killed_by_a_signal(tmp_path: Path, dump_dir: Path, table_dir: Path) -> None:
    ready, never = _fifo(tmp_path / "ready"), _fifo(tmp_path / "never")
    run = subprocess.Popen(
        [
            *KMEMDUMP,
            "run",
            "--dir",
            str(dump_dir),
            "--",
            sys.executable,
            "-c",
            UNMODIFIED,
            str(ready),
            str(never),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        pid = _read_pid(ready)
        os.kill(pid, signal.SIGKILL)
        _, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 128 + signal.SIGKILL
    assert "death pid=" in err
    with CoreImage.open(_only_dump(dump_dir)) as core:
        meta = decode_meta(core.note("KMEMDUMP", KMD_NOTE_META).desc)  # type: ignore[union-attr]
    assert meta.reason == "death" and meta.partial


def test_demo_prints_the_banner_from_the_dump(dump_dir: Path) -> None:
    proc = subprocess.run(
        [*KMEMDUMP, "demo", "--dir", str(dump_dir)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "Banner recovered from 0x" in proc.stdout
    assert "kmemdump banner:" in proc.stdout and "kmemdump.cli.demo_target" in proc.stdout
    # the session as it was at the freeze, changed after its registration
    assert "{'user': 'alice', 'balance': 1200, 'cart': ['apple', 'pear', 'plum'], 'vip': True}" in proc.stdout
    # beside the banner and the decoded state, the two deadlocked threads: blocked, and where
    deadlock = proc.stdout.split("The deadlocked threads, from the same dump", 1)[1]
    for name in ("transfer-a", "transfer-b"):
        block = deadlock.split(f"Thread {name}: ", 1)[1].split("\n    Thread ", 1)[0]
        assert block.startswith("sleeping in futex: waiting on a lock"), block
        assert 'demo_target.py", line' in block and "worker" in block
    dump = _only_dump(dump_dir)
    with CoreImage.open(dump) as core:
        meta = decode_meta(core.note("KMEMDUMP", KMD_NOTE_META).desc)  # type: ignore[union-attr]
    assert meta.reason == "hang"
    assert {r.name for r in meta.regions} >= {"banner", "orders", "session", "greeting", "counters"}


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_run_forwards_sigterm_to_a_command_that_already_ended(
    tmp_path: Path, dump_dir: Path, table_dir: Path
) -> None:
    """SIGTERM to a whole process group reaches the command and `run` together; when the command has
    already ended, forwarding must not reap it behind the supervisor's back (no ChildProcessError)."""
    ready, never = _fifo(tmp_path / "ready"), _fifo(tmp_path / "never")
    run = subprocess.Popen(
        [
            *KMEMDUMP,
            "run",
            "-q",
            "--dir",
            str(dump_dir),
            "--",
            sys.executable,
            "-c",
            UNMODIFIED,
            *[str(ready), str(never)],
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        pid = _read_pid(ready)
        os.kill(run.pid, signal.SIGSTOP)  # the supervisor cannot notice the end before the signal
        os.kill(pid, signal.SIGTERM)
        while _state(pid) != "Z":  # the command has ended and waits to be reaped
            os.sched_yield()
        os.kill(run.pid, signal.SIGTERM)  # pending until the supervisor runs again
        os.kill(run.pid, signal.SIGCONT)
        _, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert "Traceback" not in err, err
    assert run.returncode == 128 + signal.SIGTERM, err


def _where_stuck(run_pid: int, pid: int) -> str:
    """For a failure message: which of run and its command is still there, and in what state."""
    lines = []
    for name, who in (("run", run_pid), ("command", pid)):
        try:
            status = Path(f"/proc/{who}/status").read_text()
        except OSError:
            lines.append(f"{name} {who}: gone")
            continue
        wanted = ("State", "SigPnd", "ShdPnd", "SigBlk", "SigCgt", "TracerPid")
        fields = [line for line in status.splitlines() if line.split(":")[0] in wanted]
        threads = []
        for task in sorted(Path(f"/proc/{who}/task").iterdir()):
            with contextlib.suppress(OSError):
                comm = (task / "comm").read_text().strip()
                threads.append(f"{comm}:{(task / 'wchan').read_text()}:{_state(int(task.name))}")
        lines.append(f"{name} {who}: {'; '.join(fields)}; threads {threads}")
    return "\n".join(lines)


def test_run_ended_by_sigterm_to_its_group_after_a_hang_dump_is_quiet(tmp_path: Path, dump_dir: Path) -> None:
    """As GNU timeout, Ctrl-C in a terminal or a service manager stop it: SIGTERM to the whole process group
    (run and its command at once) after the command's hang was dumped: run exits with the command's status,
    without a traceback. Two tries; the race that once gave a ChildProcessError here is forced in
    test_run_forwards_sigterm_to_a_command_that_already_ended."""
    for attempt in range(2):
        ready = _fifo(tmp_path / f"ready{attempt}")
        program = [sys.executable, "-c", SELF_DEADLOCK, str(ready)]
        run = subprocess.Popen(
            [*KMEMDUMP, "run", "-q", "--timeout", "0.3", "--dir", str(dump_dir), "--", *program],
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group, as under a terminal or timeout(1)
        )
        try:
            pid = _read_pid(ready)
            assert run.stderr is not None
            seen = []
            while not any(line.startswith(f"kmemdump: hang pid={pid} ") for line in seen):
                line = run.stderr.readline()
                assert line, seen  # run ended before reporting the hang
                seen.append(line)
            os.killpg(run.pid, signal.SIGTERM)
            try:
                _, err = run.communicate(timeout=120)  # a hang guard: it takes well under a second
            except subprocess.TimeoutExpired:
                pytest.fail(f"run did not end after SIGTERM:\n{_where_stuck(run.pid, pid)}")
        finally:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
                run.wait()
        err = "".join(seen) + err
        assert "Traceback" not in err and "internal error" not in err, err
        assert run.returncode == 128 + signal.SIGTERM, (attempt, run.returncode, err)
