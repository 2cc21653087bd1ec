"""kmemdump's pytest plugin: a test that runs too long is dumped from outside, then failed.

Installed with kmemdump (entry point ``pytest11``) and inactive until asked::

    pytest --kmemdump-timeout=30 [--kmemdump-dir=DIR]

or ``kmemdump_timeout = 30`` (and ``kmemdump_dir``) in the ini file. The pytest process then
publishes a kmemdump table and starts a collector as its child (``python -m kmemdump.cli.sidecar``)
that watches it. Each test arms the watchdog for its setup, call and teardown; one that runs longer
than the timeout is dumped by the collector — from outside, so it works when every thread of the
test is stuck — with the registered state (the test's node id, and whatever the test registered)
and every thread's Python stack. Then the test is failed where it is stuck (a signal to the main
thread interrupts a sleep, a lock wait or a blocking read), and the failure report gives the dump's
path. With pytest-timeout present, the dump is taken before its timeout ends the test.

This module imports only pytest and the standard library until the option is given.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Generator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

__all__ = ["Recorder", "pytest_addoption", "pytest_configure"]

SIGNAL = signal.SIGRTMIN + 6 if hasattr(signal, "SIGRTMIN") else signal.SIGUSR2
"""Sent to the main thread to fail the test that overran (a real-time signal nothing else uses here)."""
READY_TIMEOUT = 30.0
TEST_REGION_SIZE = 1024
_PLUGIN_NAME = "kmemdump-recorder"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kmemdump", "dump a test that runs too long, from outside (kmemdump)")
    group.addoption(
        "--kmemdump-timeout",
        dest="kmemdump_timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="dump (with kmemdump) and fail a test whose setup, call and teardown run longer than SECONDS",
    )
    group.addoption(
        "--kmemdump-dir",
        dest="kmemdump_dir",
        default=None,
        metavar="DIR",
        help="where the dumps go (default: $KMEMDUMP_DUMPS or ~/.local/state/kmemdump/dumps)",
    )
    parser.addini("kmemdump_timeout", "as --kmemdump-timeout", default=None)
    parser.addini("kmemdump_dir", "as --kmemdump-dir", default=None)


def _setting(config: pytest.Config, name: str) -> Any:
    given = config.getoption(name)
    return given if given is not None else config.getini(name)


def pytest_configure(config: pytest.Config) -> None:
    raw = _setting(config, "kmemdump_timeout")
    if raw in (None, ""):
        return
    try:
        timeout = float(raw)
    except ValueError:
        raise pytest.UsageError(f"kmemdump_timeout must be a number of seconds, not {raw!r}") from None
    if not timeout > 0:
        raise pytest.UsageError(f"--kmemdump-timeout must be positive, not {raw!r}")
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        return  # the pytest-xdist controller runs no test: its workers watch themselves
    directory = _setting(config, "kmemdump_dir")
    where = Path(directory).expanduser().absolute() if directory else None  # the report's paths work anywhere
    recorder = Recorder(config, timeout, where)
    config.pluginmanager.register(recorder, _PLUGIN_NAME)


def _marked_timeout(item: pytest.Item) -> float | None:
    """The seconds of pytest-timeout's ``@pytest.mark.timeout`` on ``item``, if it has one."""
    marker = item.get_closest_marker("timeout")
    if marker is None:
        return None
    value = marker.args[0] if marker.args else marker.kwargs.get("timeout")
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


class Recorder:
    """The active plugin: the table, the collector child, and the per-test watchdog."""

    def __init__(self, config: pytest.Config, timeout: float, directory: Path | None) -> None:
        self.config = config
        self.timeout = timeout
        self.directory = directory
        self.lock = threading.Lock()
        self.sidecar: subprocess.Popen[str] | None = None
        self.reader: threading.Thread | None = None
        self.ready = threading.Event()
        self.tables: Path | None = None
        self.own_tables = False
        self.region: Any = None
        self.item: pytest.Item | None = None
        self.previous_item: pytest.Item | None = None
        self.armed_at = 0.0
        self.limit = timeout
        self.pending: tuple[str, str, str] | None = None
        self.dumps: list[tuple[str, str]] = []
        """(node id, dump path) of every hang dump, in order."""
        self.problems: list[str] = []
        self.old_handler: Any = None
        self.their_timeouts: dict[str, float] = {}
        """pytest-timeout's timeout for each item, as its hook told us."""
        self.active = False

    # --- the session ------------------------------------------------------------------------------

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        try:
            self._start()
        except Exception as err:  # a broken recorder must not stop the tests: say so, run them plainly
            self.problems.append(f"kmemdump: not watching the tests: {err}")
            self._stop_sidecar()

    def _start(self) -> None:
        import kmemdump

        self.tables = Path(tempfile.mkdtemp(prefix="kmemdump-pytest-"))
        self.own_tables = True
        # stop_signals=False: SIGTERM (a CI's job timeout) ends pytest as before, even stuck in a C call
        # that holds the GIL, where a Python handler would never run; the collector dumps that death.
        report = kmemdump.init(table=True, directory=self.tables, pycoreinfo=True, stop_signals=False)
        if report.table is None:
            raise RuntimeError("no table was published")
        published = Path(report.table).parent
        if published != self.tables:  # someone published one before us: watch theirs
            os.rmdir(self.tables)
            self.tables, self.own_tables = published, False
        with contextlib.suppress(kmemdump.KmemdumpError):
            self.region = kmemdump.alloc(TEST_REGION_SIZE, name="pytest.test", persistent=True)
        cmd = [
            sys.executable,
            "-m",
            "kmemdump.cli.sidecar",
            "--pid",
            str(os.getpid()),
            "--tables",
            str(self.tables),
        ]
        if self.directory is not None:
            cmd += ["--dir", str(self.directory)]
        if self.own_tables:
            cmd.append("--remove-tables-dir")  # if pytest dies, its collector cleans up after it
        capture = self.config.pluginmanager.getplugin("capturemanager")
        # the collector writes to the real stderr, not a test's captured one
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            self.sidecar = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.reader = threading.Thread(target=self._read, name="kmemdump-pytest", daemon=True)
        self.reader.start()
        if not self.ready.wait(READY_TIMEOUT):
            raise RuntimeError(f"the collector did not adopt this process within {READY_TIMEOUT:g} s")
        backend = kmemdump.current_backend()
        grant = getattr(backend, "grant_ptrace", None)
        if callable(grant):
            grant()  # Yama ptrace_scope=1: our child may read us (and its py-spy, take our stacks)
        # For the whole session, not per test: a signal sent just as a test ends must never meet the
        # default disposition (which ends the process).
        self.old_handler = signal.signal(SIGNAL, self._on_signal)
        self.active = True

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        was_active, self.active = self.active, False
        self._stop_sidecar()
        if was_active:  # the collector is gone: no more signals; a late one is ignored
            signal.signal(
                SIGNAL, signal.SIG_IGN if self.old_handler in (None, signal.SIG_DFL) else self.old_handler
            )
        if self.own_tables and self.tables is not None:
            import kmemdump

            kmemdump.shutdown()  # our table and arena: no exit left to take for a death
            with contextlib.suppress(OSError):
                os.rmdir(self.tables)

    def _stop_sidecar(self) -> None:
        sidecar, self.sidecar = self.sidecar, None
        if sidecar is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if sidecar.stdin is not None:
                sidecar.stdin.write("bye\n")  # a close without it would mean that pytest died
                sidecar.stdin.flush()
        with contextlib.suppress(OSError, ValueError):
            if sidecar.stdin is not None:
                sidecar.stdin.close()
        try:
            sidecar.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sidecar.kill()
            sidecar.wait()
        if self.reader is not None:
            self.reader.join(timeout=5)

    # --- the collector's events -------------------------------------------------------------------

    def _read(self) -> None:
        from kmemdump.producer.stopping import leave_signals_to_the_program

        leave_signals_to_the_program()  # pytest-timeout's SIGALRM, a SIGTERM: for the main thread
        sidecar = self.sidecar
        assert sidecar is not None and sidecar.stdout is not None
        for line in sidecar.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            kind = event.get("kind")
            if kind == "watch":
                self.ready.set()
            elif kind == "hang" and event.get("dump"):
                self._on_hang(str(event["dump"]), str(event.get("stacks") or "?"))
            elif kind == "error":
                self.problems.append(f"kmemdump: {event.get('message')}")

    def _on_hang(self, path: str, stacks: str) -> None:
        with self.lock:
            item = self.item
            # a deadline passed for the test armed now, or (a test that just ended) for the one before
            if item is None or time.monotonic() - self.armed_at < self.limit * 0.9:
                self.dumps.append((self.previous_item.nodeid if self.previous_item else "?", path))
                self._ack()
                return
            self.dumps.append((item.nodeid, path))
            self.pending = (item.nodeid, path, stacks)
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pthread_kill(threading.main_thread().ident or 0, SIGNAL)
        self._ack()

    def _ack(self) -> None:
        sidecar = self.sidecar
        with contextlib.suppress(OSError, ValueError):
            if sidecar is not None and sidecar.stdin is not None:
                sidecar.stdin.write("ack\n")
                sidecar.stdin.flush()

    # --- each test ----------------------------------------------------------------------------------

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
        if not self.active:
            yield
            return
        self._arm(item)
        try:
            yield
        finally:
            self._disarm(item)

    def _arm(self, item: pytest.Item) -> None:
        import kmemdump

        if self.region is not None:
            text = f"{item.nodeid}\n".encode("utf-8", "backslashreplace")[: TEST_REGION_SIZE - 1]
            self.region[:] = bytes(TEST_REGION_SIZE)
            self.region[: len(text)] = text
        limit = self._limit(item)
        with self.lock:
            self.item, self.pending, self.limit = item, None, limit
            self.armed_at = time.monotonic()
        kmemdump.watchdog(limit or None)  # arming feeds: the deadline is `limit` from now (0: not watched)

    def _disarm(self, item: pytest.Item) -> None:
        import kmemdump

        kmemdump.watchdog(None)
        with self.lock:
            self.item, self.previous_item, self.pending = None, item, None
        self.their_timeouts.pop(item.nodeid, None)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        __tracebackhide__ = True  # the report shows where the test was stuck, not this handler
        # no lock here: the main thread may have been interrupted while holding it
        pending, self.pending = self.pending, None
        if pending is None:
            return
        nodeid, path, stacks = pending
        what = "with every thread's stack" if stacks == "ok" else f"without the threads' stacks ({stacks})"
        pytest.fail(
            f"kmemdump: {nodeid} ran longer than {self.limit:g} s; it was dumped from outside, {what}, "
            f"to {path}\n  (kmemdump show {path})",
            pytrace=True,
        )

    def _limit(self, item: pytest.Item) -> float:
        """Our timeout, or less: a dump must come before pytest-timeout ends the test. A test marked
        with pytest-timeout's own ``@pytest.mark.timeout(N)`` gets N (less the margin) even when longer
        than ours, and ``timeout(0)`` is not watched at all: the marker says how long the test may take."""
        marked = _marked_timeout(item)
        if marked is not None and marked <= 0:
            return 0.0
        theirs = marked if marked is not None else self.their_timeouts.get(item.nodeid)
        if not theirs or theirs <= 0:
            return self.timeout
        margin = max(0.5, min(5.0, theirs * 0.2))  # the dump's own time (py-spy takes the stacks)
        before_theirs = max(theirs - margin, theirs / 2)
        return before_theirs if marked is not None else min(self.timeout, before_theirs)

    @pytest.hookimpl(optionalhook=True, tryfirst=True)
    def pytest_timeout_set_timer(self, item: pytest.Item, settings: Any) -> None:
        """pytest-timeout is about to arm its timer for ``item``: come in before it."""
        import kmemdump

        theirs = getattr(settings, "timeout", None)
        if not isinstance(theirs, (int, float)) or theirs <= 0:
            return
        self.their_timeouts[item.nodeid] = float(theirs)
        if self.active and self.item is item:  # armed already (our hook ran first): shorten
            limit = self._limit(item)
            if 0 < limit < self.limit:
                with self.lock:
                    self.limit = limit
                    self.armed_at = time.monotonic()
                kmemdump.watchdog(limit)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, Any]:
        outcome = yield
        report = outcome.get_result()
        mine = [path for nodeid, path in self.dumps if nodeid == item.nodeid]
        if not mine or (call.when != "call" and report.passed):
            return
        report.sections.append(("kmemdump", "\n".join(f"dumped to {path}" for path in mine)))
        if report.passed:  # it overran and was dumped, then ended on its own before the signal came
            report.outcome = "failed"
            report.longrepr = (
                f"kmemdump: {item.nodeid} ran longer than {self.limit:g} s; dumped to {mine[-1]}"
            )

    def pytest_report_header(self, config: pytest.Config) -> str:
        where = self.directory or "$KMEMDUMP_DUMPS or ~/.local/state/kmemdump/dumps"
        return f"kmemdump: tests running longer than {self.timeout:g} s are dumped to {where}"

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.dumps and not self.problems:
            return
        terminalreporter.section("kmemdump")
        for problem in self.problems:
            terminalreporter.write_line(problem)
        for nodeid, path in self.dumps:
            terminalreporter.write_line(f"{nodeid}: dumped to {path}")
