"""The heartbeat: ``feed()``, the watchdog timeout, the feeder thread, and what a collector sees.

In-process tests drive ``kmemdump.producer.heartbeat`` against a real table; process tests watch a child's
table from outside. "Stops advancing" is always decided across an explicit handshake (the child says
it stopped feeding; the kernel says every thread is stopped), then confirmed by polling until the
heartbeat is older than the watchdog timeout, as a collector would judge it.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers_child import spawn_child
from kmemdump.formats.table import TableHeader
from kmemdump.formats.table import TableReader
from kmemdump.producer.backends.base import NoopBackend
from kmemdump.producer.backends.table import SharedTableBackend
from kmemdump.producer.heartbeat import DEFAULT_FEEDER_INTERVAL
from kmemdump.producer.heartbeat import Feeder
from kmemdump.producer.heartbeat import attach
from kmemdump.producer.heartbeat import current
from kmemdump.producer.heartbeat import detach
from kmemdump.producer.heartbeat import feed
from kmemdump.producer.heartbeat import set_watchdog
from kmemdump.producer.heartbeat import start_feeder
from kmemdump.producer.heartbeat import stop_feeder
from kmemdump.producer.heartbeat import watchdog_timeout

DEADLINE = 10.0


@pytest.fixture(autouse=True)
def private_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Children publish under the test's own directory, out of sight of any collector on the host."""
    monkeypatch.setenv("KMEMDUMP_DIR", str(tmp_path / "tables"))


@pytest.fixture(autouse=True)
def quiet_watchdog() -> Iterator[None]:
    """Each test starts and ends with no table attached, no timeout and no feeder thread."""
    stop_feeder()
    set_watchdog(None)
    detach()
    yield
    stop_feeder()
    set_watchdog(None)
    detach()


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[SharedTableBackend]:
    published = SharedTableBackend(tmp_path / "tables", capacity=4)
    yield published
    published.close()


def header(path: Path | str) -> TableHeader:
    with TableReader(path) as reader:
        return reader.header()


def poll(condition: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    """Re-check ``condition`` until it holds; fail after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for: {what}")
        time.sleep(0.001)  # polling interval of a value, not a synchronisation


def stale(path: Path | str) -> bool:
    """What a collector decides: the last feed is older than the watchdog timeout."""
    head = header(path)
    return (
        bool(head.watchdog_timeout_ns) and time.monotonic_ns() - head.last_feed_ns > head.watchdog_timeout_ns
    )


# --- in process ------------------------------------------------------------------------------------------


def test_feed_is_one_function_for_the_life_of_the_process(backend: SharedTableBackend) -> None:
    # sys.modules: the package re-exports set_watchdog under the name "watchdog"
    module = sys.modules["kmemdump.producer.heartbeat"]

    before = module.feed
    attach(backend)
    assert module.feed is before is feed
    assert feed.__name__ == "feed"
    assert feed.__doc__ and "heartbeat" in feed.__doc__


def test_feed_goes_nowhere_until_attached(backend: SharedTableBackend) -> None:
    for _ in range(2048):  # crosses the every-1024th tick as well
        feed()
    assert header(backend.path).heartbeat == 0
    attach(backend)
    assert current() is backend
    feed()
    feed()
    assert header(backend.path).heartbeat == 2
    backend.writer.feed()  # the writer's own feed shares the counter
    assert header(backend.path).heartbeat == 3
    detach()
    assert current() is None
    feed()
    assert header(backend.path).heartbeat == 3


def test_backends_without_a_table_detach(backend: SharedTableBackend) -> None:
    attach(backend)
    attach(NoopBackend())
    assert current() is None
    feed()
    assert header(backend.path).heartbeat == 0
    attach(backend)
    attach(None)
    assert current() is None


def test_closing_the_backend_detaches_the_watchdog(backend: SharedTableBackend) -> None:
    attach(backend)
    feed()
    backend.close()
    assert current() is None
    feed()  # harmless: goes to the scratch buffer


def test_set_watchdog_publishes_and_arms(backend: SharedTableBackend) -> None:
    set_watchdog(2.5)  # before a table: remembered
    assert watchdog_timeout() == 2.5
    attach(backend)
    head = header(backend.path)
    assert head.watchdog_timeout_ns == 2_500_000_000
    assert head.heartbeat == 1  # arming counts as a beat
    assert time.monotonic_ns() - head.last_feed_ns < 2_500_000_000
    set_watchdog(0.25)
    assert header(backend.path).watchdog_timeout_ns == 250_000_000
    assert header(backend.path).heartbeat == 2
    set_watchdog(None)
    assert header(backend.path).watchdog_timeout_ns == 0
    assert watchdog_timeout() is None
    set_watchdog(3)
    set_watchdog(0)
    assert header(backend.path).watchdog_timeout_ns == 0


@pytest.mark.parametrize("bad", [-1, -0.5, math.nan, math.inf, "1", True])
def test_set_watchdog_refuses_nonsense(bad: object) -> None:
    with pytest.raises(ValueError, match="positive number of seconds"):
        set_watchdog(bad)  # type: ignore[arg-type]
    assert watchdog_timeout() is None


def test_feeder_period() -> None:
    assert Feeder().period() == DEFAULT_FEEDER_INTERVAL
    set_watchdog(0.4)
    assert Feeder().period() == pytest.approx(0.1)
    assert Feeder(0.02).period() == 0.02
    for bad in (0, -1, math.nan, math.inf):
        with pytest.raises(ValueError, match="positive number of seconds"):
            Feeder(bad)


def test_feeder_beats_until_stopped(backend: SharedTableBackend) -> None:
    attach(backend)
    thread = start_feeder(0.001)
    assert thread.daemon
    poll(lambda: header(backend.path).heartbeat >= 5, "five beats from the feeder")
    again = start_feeder(0.001)  # restarting replaces the thread
    assert not thread.is_alive()
    poll(lambda: header(backend.path).heartbeat >= 10, "beats from the new feeder")
    stop_feeder()
    assert not again.is_alive()  # joined: no beat can follow
    last = header(backend.path).heartbeat
    feed()
    assert header(backend.path).heartbeat == last + 1
    stop_feeder()  # no feeder: nothing to do


# --- other processes ---------------------------------------------------------------------------------------

MAIN_LOOP_CHILD = r"""
import threading
from kmemdump.producer.backends.table import SharedTableBackend
from kmemdump.formats.table import read_table
from kmemdump.producer.heartbeat import attach, feed, set_watchdog

backend = SharedTableBackend(capacity=4)
attach(backend)
set_watchdog(1.0)
told = threading.Event()
threading.Thread(target=lambda: (recv(), told.set()), daemon=True).start()
send(str(backend.path))
while not told.is_set():  # the application's main loop
    feed()
send({"stopped feeding": read_table(backend.path).header.heartbeat})
block()
"""


def test_heartbeat_stops_when_the_main_loop_stops_feeding() -> None:
    with spawn_child(MAIN_LOOP_CHILD) as child:
        path = child.recv()
        first = header(path).heartbeat
        poll(lambda: header(path).heartbeat > first + 1000, "the main loop's beats")
        assert not stale(path), (header(path), time.monotonic_ns())
        child.send("stop")
        last = child.recv()["stopped feeding"]
        assert header(path).heartbeat == last
        poll(lambda: stale(path), "the heartbeat to go stale")
        assert header(path).heartbeat == last


FEEDER_CHILD = r"""
from kmemdump.producer.backends.table import SharedTableBackend
from kmemdump.producer.heartbeat import attach, set_watchdog, start_feeder

backend = SharedTableBackend(capacity=4)
attach(backend)
set_watchdog(0.2)
start_feeder()  # every 50 ms
send(str(backend.path))
block()  # the main thread waits; only the feeder beats
"""


def _all_threads_stopped(pid: int) -> bool:
    states = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/stat", "rb") as f:
            stat = f.read()
        states.append(stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3])
    return all(state in (b"T", b"t") for state in states)


def test_sigstop_stops_a_feeder_thread() -> None:
    with spawn_child(FEEDER_CHILD) as child:
        path = child.recv()
        first = header(path).heartbeat
        poll(lambda: header(path).heartbeat >= first + 3, "the feeder's beats")
        os.kill(child.pid, signal.SIGSTOP)
        try:
            poll(lambda: _all_threads_stopped(child.pid), "every thread of the child to stop")
            frozen = header(path).heartbeat
            poll(lambda: stale(path), "the heartbeat to go stale while stopped")
            assert header(path).heartbeat == frozen
        finally:
            os.kill(child.pid, signal.SIGCONT)
        poll(lambda: header(path).heartbeat > frozen, "the feeder to beat again after SIGCONT")
        poll(lambda: not stale(path), "a fresh heartbeat")


SPINNING_CHILD = r"""
from kmemdump.producer.backends.table import SharedTableBackend
from kmemdump.producer.heartbeat import attach, set_watchdog, start_feeder

backend = SharedTableBackend(capacity=4)
attach(backend)
set_watchdog(1.0)
start_feeder(0.01)
send(str(backend.path))
while True:  # an application hang in Python: never feeds
    pass
"""


def test_a_feeder_thread_hides_a_python_level_hang() -> None:
    # The limitation the Feeder docstring states: the thread keeps beating while the main thread
    # spins, so only feeding from the main loop detects this kind of hang.
    with spawn_child(SPINNING_CHILD) as child:
        path = child.recv()
        first = header(path).heartbeat
        poll(lambda: header(path).heartbeat >= first + 5, "beats while the main thread spins")
        assert not stale(path)
