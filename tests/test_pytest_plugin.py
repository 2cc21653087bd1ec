"""The pytest plugin: a hanging test is dumped from outside, reported failed, and its dump named.

pytest runs in a subprocess on a temporary test file, with the plugin loaded through its
``pytest11`` entry point as an installed kmemdump provides it; the dump is read back with our
reader. Without the option nothing happens at all.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kmemdump.inspect.dumpfile import Dump

pytestmark = pytest.mark.slow

TESTS = """
import threading

def test_fine():
    assert 1 + 1 == 2

def test_deadlocks():
    lock = threading.Lock()
    lock.acquire()
    lock.acquire()  # never returns: the main thread waits on itself

def test_after():
    assert True
"""


def _command(tmp_path: Path, tests: str, *args: str) -> tuple[list[str], dict[str, str]]:
    (tmp_path / "test_suite.py").write_text(tests)
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(scratch), "KMEMDUMP_DIR": str(tmp_path / "tables")}
    env.pop("PYTEST_ADDOPTS", None)
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "test_suite.py", *args], env


def _pytest(tmp_path: Path, *args: str, tests: str = TESTS) -> subprocess.CompletedProcess[str]:
    # The collector child inherits pytest's stderr: run() returns once it has ended too.
    cmd, env = _command(tmp_path, tests, *args)
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env, check=False
    )


def test_the_plugin_is_installed_with_the_package() -> None:
    found = [ep for ep in importlib.metadata.entry_points(group="pytest11") if ep.name == "kmemdump"]
    assert [ep.value for ep in found] == ["kmemdump.pytest_plugin"]


def test_a_hanging_test_is_dumped_reported_failed_and_its_dump_named(tmp_path: Path, dump_dir: Path) -> None:
    # WHEN pytest runs a test that deadlocks its main thread, with --kmemdump-timeout
    result = _pytest(tmp_path, "--kmemdump-timeout=2", f"--kmemdump-dir={dump_dir}")
    out = result.stdout
    # THEN the test is failed (the others pass) and the report names the one dump
    assert result.returncode == 1, out + result.stderr
    assert re.search(r"1 failed, 2 passed", out), out
    (path,) = dump_dir.iterdir()
    assert path.name.startswith("kmemdump-") and "-hang-" in path.name
    assert f"ran longer than 2 s; it was dumped from outside, with every thread's stack, to {path}" in out
    assert "test_suite.py:10: " in out or "lock.acquire()  # never returns" in out  # where it was stuck
    assert f"test_suite.py::test_deadlocks: dumped to {path}" in out  # the summary section
    # AND the dump holds the registered state (which test) and every thread's stack
    with Dump.open(path) as dump:
        assert dump.meta.reason == "hang" and dump.meta.pid != os.getpid()
        record = dump.region("pytest.test")
        assert dump.region_bytes(record).split(b"\0", 1)[0] == b"test_suite.py::test_deadlocks\n"
        stacks = dump.stacks
        assert stacks is not None, dump.stacks_state  # py-spy comes with the test extra; the report says so
        functions = {f.function.rsplit(".", 1)[-1] for t in stacks.threads for f in t.frames}
    assert "test_deadlocks" in functions
    # AND nothing is left behind: no table directory, no collector
    assert list((tmp_path / "tmp").iterdir()) == []


def test_the_dump_comes_before_pytest_timeout_ends_the_test(tmp_path: Path, dump_dir: Path) -> None:
    result = _pytest(tmp_path, "--kmemdump-timeout=30", f"--kmemdump-dir={dump_dir}", "--timeout=4")
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    (path,) = dump_dir.iterdir()
    assert f"ran longer than 3.2 s; it was dumped from outside, with every thread's stack, to {path}" in out
    assert "Timeout (>4.0s) from pytest-timeout" not in out and "+ Timeout +" not in out
    assert re.search(r"1 failed, 2 passed", out), out


CRASHES = """
import ctypes

def test_fine():
    assert True

def test_crashes():
    ctypes.string_at(0)  # SIGSEGV: pytest itself dies
"""


def test_a_pytest_that_dies_in_a_test_is_dumped_and_its_files_removed(tmp_path: Path, dump_dir: Path) -> None:
    # WHEN a test kills the pytest process (a SIGSEGV in a C extension), with the plugin active
    result = _pytest(tmp_path, "--kmemdump-timeout=30", f"--kmemdump-dir={dump_dir}", tests=CRASHES)
    # THEN its collector, whose pipe closed without a goodbye, dumps the death
    assert result.returncode == -11, result.stdout + result.stderr
    (path,) = dump_dir.iterdir()
    assert "-death-" in path.name
    # how the collector learned of the death may vary its words: the line names the signal and the dump
    died = [line for line in result.stderr.splitlines() if f"dump={path}" in line]
    assert died and "SIGSEGV" in died[0], result.stderr
    with Dump.open(path) as dump:
        record = dump.region("pytest.test")
        assert dump.region_bytes(record).split(b"\0", 1)[0] == b"test_suite.py::test_crashes\n"
    # AND removes the table, the arena and the directory made for them (run() returned: it has ended)
    assert list((tmp_path / "tmp").iterdir()) == []


HOLDS_THE_GIL = """
def test_stuck_in_c():
    sum(range(10**15))  # one C call holding the GIL: nothing in the process can interrupt it
"""


def test_sigterm_still_ends_a_pytest_stuck_in_c_and_its_death_is_dumped(
    tmp_path: Path, dump_dir: Path
) -> None:
    # GIVEN a test stuck in a C call that holds the GIL, dumped for its hang
    cmd, env = _command(tmp_path, HOLDS_THE_GIL, "--kmemdump-timeout=1", f"--kmemdump-dir={dump_dir}")
    with subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            deadline = time.monotonic() + 60
            while not any("-hang-" in p.name for p in dump_dir.iterdir()):  # a dump appears whole
                assert proc.poll() is None and time.monotonic() < deadline, "no hang dump"
                time.sleep(0.05)
            # WHEN a CI's job timeout sends SIGTERM
            proc.terminate()
            _, err = proc.communicate(timeout=60)  # returns once the collector child has ended too
        finally:
            proc.kill()
    # THEN pytest ends at once, as without the plugin, and its collector dumps the death and cleans up
    assert proc.returncode == -15, err
    deaths = [p for p in dump_dir.iterdir() if "-death-" in p.name]
    assert len(deaths) == 1 and "process died (killed by SIGTERM)" in err
    assert list((tmp_path / "tmp").iterdir()) == []


MARKED = """
import threading, time
import pytest

@pytest.mark.timeout(60)
def test_slow_but_allowed_a_minute():
    time.sleep(2.5)

@pytest.mark.timeout(0)
def test_never_timed():
    time.sleep(2.5)

def test_deadlocks():
    lock = threading.Lock()
    lock.acquire()
    lock.acquire()
"""


def test_pytest_timeouts_own_marker_says_how_long_a_test_may_take(tmp_path: Path, dump_dir: Path) -> None:
    # WHEN tests marked with pytest-timeout's @pytest.mark.timeout run past --kmemdump-timeout
    result = _pytest(tmp_path, "--kmemdump-timeout=1", f"--kmemdump-dir={dump_dir}", tests=MARKED)
    out = result.stdout
    # THEN the marked ones pass (the marker's 60 s, and 0 for none, are theirs), the unmarked hang is dumped
    assert result.returncode == 1, out + result.stderr
    assert re.search(r"1 failed, 2 passed", out), out
    (path,) = dump_dir.iterdir()
    assert "test_suite.py::test_deadlocks ran longer than 1 s; it was dumped from outside" in out
    assert f"test_suite.py::test_deadlocks: dumped to {path}" in out


def test_under_pytest_xdist_each_worker_dumps_its_own_hang(tmp_path: Path, dump_dir: Path) -> None:
    pytest.importorskip("xdist", reason="pytest-xdist is not installed (the test extra has it)")
    # WHEN the suite runs on two pytest-xdist workers
    result = _pytest(tmp_path, "-n", "2", "--kmemdump-timeout=2", f"--kmemdump-dir={dump_dir}")
    out = result.stdout
    # THEN the worker that ran the deadlock dumped it (the controller, which runs no test, nothing)
    assert result.returncode == 1, out + result.stderr
    assert re.search(r"1 failed, 2 passed", out), out
    (path,) = dump_dir.iterdir()
    assert f"ran longer than 2 s; it was dumped from outside, with every thread's stack, to {path}" in out
    with Dump.open(path) as dump:
        assert dump.meta.pid != os.getpid()
        record = dump.region("pytest.test")
        assert dump.region_bytes(record).split(b"\0", 1)[0] == b"test_suite.py::test_deadlocks\n"
    assert list((tmp_path / "tmp").glob("kmemdump-*")) == []  # every worker's table directory removed


def test_without_the_option_the_plugin_does_nothing(tmp_path: Path) -> None:
    (tmp_path / "tables").mkdir()
    (tmp_path / "test_suite.py").write_text(
        "import sys, threading\n"
        "def test_ok():\n"
        "    # nothing beyond the plugin module and the cheap package it sits in; no thread, no child\n"
        "    assert not [m for m in sys.modules if m.startswith(('kmemdump.producer', 'kmemdump.cli'))]\n"
        "    assert [t.name for t in threading.enumerate()] == ['MainThread']\n"
    )
    env = {**os.environ, "KMEMDUMP_DIR": str(tmp_path / "tables")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "test_suite.py"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "kmemdump" not in result.stdout + result.stderr
    assert list((tmp_path / "tables").iterdir()) == []  # no table was published
    help_text = subprocess.run(
        [sys.executable, "-m", "pytest", "--help"], capture_output=True, text=True, timeout=120, check=False
    ).stdout
    assert "--kmemdump-timeout=SECONDS" in help_text and "kmemdump_timeout" in help_text


def test_the_ini_option_works_too(tmp_path: Path, dump_dir: Path) -> None:
    (tmp_path / "pytest.ini").write_text(f"[pytest]\nkmemdump_timeout = 1.5\nkmemdump_dir = {dump_dir}\n")
    result = _pytest(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert len(list(dump_dir.iterdir())) == 1 and "ran longer than 1.5 s" in result.stdout
