"""The heartbeat: :func:`feed` from the main loop, the watchdog timeout, an optional feeder thread.

In the kernel's kmemdump design the kernel "stops feeding the watchdog when it freezes"; here the
process bumps a counter and a monotonic timestamp in its shared table, and the collector dumps it
when the timestamp is older than the published timeout.

:func:`feed` is one function object for the life of the process (``from kmemdump import feed``
keeps working), yet costs one Python call: it is a closure whose cells :func:`attach` points at
the current table's buffer and counter. Before any table is attached (or after the process
forked) it writes into a private scratch buffer, which nobody reads.

Standard library only: the producer imports this module.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import threading
from collections.abc import Callable
from types import CellType
from typing import TYPE_CHECKING
from typing import Protocol
from typing import cast

from kmemdump.errors import UsageError
from kmemdump.formats.table import FLAG_FEEDER
from kmemdump.formats.table import HEADER_SIZE
from kmemdump.formats.table import make_feed
from kmemdump.producer.forksafe import fork_safe_lock
from kmemdump.producer.stopping import leave_signals_to_the_program

if TYPE_CHECKING:
    from kmemdump.formats.table import TableWriter

__all__ = [
    "DEFAULT_FEEDER_INTERVAL",
    "Beating",
    "Feeder",
    "attach",
    "current",
    "detach",
    "feed",
    "refresh",
    "set_watchdog",
    "start_feeder",
    "stop_feeder",
    "watchdog_timeout",
]

DEFAULT_FEEDER_INTERVAL = 1.0
"""Seconds between a feeder thread's beats when no watchdog timeout is set."""


def _nothing() -> None:
    return None


def _scratch_words() -> memoryview:
    return memoryview(bytearray(HEADER_SIZE)).cast("Q")


def _build_feed() -> tuple[Callable[[], None], dict[str, CellType]]:
    # TableWriter's own feed function, built once over a scratch header; attach() repoints its
    # closure cells at the current table, so that this one function object serves for ever.
    feed = make_feed(_scratch_words(), itertools.count(1).__next__, _nothing)
    cells = dict(zip(feed.__code__.co_freevars, feed.__closure__ or (), strict=True))
    return feed, cells


feed, _cells = _build_feed()
feed.__qualname__ = "feed"
feed.__doc__ = """Beat the heartbeat of the current table (a no-op before any table is attached).

Call it from the loop whose progress proves the application is alive: the collector dumps the
process when no feed happened within the watchdog timeout. It allocates nothing and makes no
system call beyond reading the monotonic clock.
"""


class Beating(Protocol):
    """A backend whose table carries the heartbeat (the shared-table backend)."""

    @property
    def published(self) -> bool:
        """True while the backend has a table it keeps current."""
        ...

    @property
    def writer(self) -> TableWriter:
        """The table's writer (only asked for while :attr:`published`)."""
        ...


class _State:
    """What the module remembers; one instance, replaced parts only under ``lock``."""

    __slots__ = ("backend", "feeder", "lock", "timeout_ns")

    def __init__(self) -> None:
        self.lock = fork_safe_lock()
        self.backend: Beating | None = None
        self.timeout_ns = 0
        self.feeder: Feeder | None = None


_state = _State()


def _point(words: memoryview, next_beat: Callable[[], int], on_tick: Callable[[], object]) -> None:
    # A feed running concurrently may use a mix of old and new cells for that one beat (say, the
    # new counter on the old table); the next beat uses the new ones only.
    _cells["next_beat"].cell_contents = next_beat
    _cells["on_tick"].cell_contents = on_tick
    _cells["words"].cell_contents = words


def _point_nowhere() -> None:
    _point(_scratch_words(), itertools.count(1).__next__, _nothing)


def _writer_of(backend: Beating | None) -> TableWriter | None:
    if backend is None or not backend.published:
        return None
    return backend.writer


def _refresh_locked() -> None:
    writer = _writer_of(_state.backend)
    if writer is None:
        _point_nowhere()
        return
    changed = writer.set_watchdog(_state.timeout_ns)
    writer.set_flag(FLAG_FEEDER, _state.feeder is not None)
    _point(*writer.feed_binding())
    if _state.timeout_ns:
        feed()  # arming counts as a beat: the deadline starts now, not at some old feed
    touch = getattr(_state.backend, "touch", None)
    if changed and _state.timeout_ns and touch is not None:
        touch()  # a collector reads a table when its deadline may have passed: this one may be sooner


def _as_beating(backend: object) -> Beating | None:
    # looked up on the type: reading the properties of an unpublished backend would raise
    kind = type(backend)
    if isinstance(getattr(kind, "writer", None), property) and isinstance(
        getattr(kind, "published", None), property
    ):
        return cast(Beating, backend)
    return None


def attach(backend: object) -> None:
    """Point :func:`feed` at ``backend``'s table and publish the watchdog timeout in it.

    ``backend`` is a :class:`Beating` backend (the shared-table backend); ``None`` or a backend
    without a table (the no-op backend) detaches. The registry owner calls this when it makes a
    backend current.
    """
    with _state.lock:
        _state.backend = _as_beating(backend)
        _refresh_locked()


def detach() -> None:
    """Stop feeding any table (feeds go to the scratch buffer)."""
    attach(None)


def refresh() -> None:
    """Re-read the attached backend's table (after it was reopened, e.g. in a forked child)."""
    with _state.lock:
        _refresh_locked()


def current() -> Beating | None:
    """The backend :func:`feed` is attached to, or ``None``."""
    return _state.backend


def set_watchdog(timeout_s: float | None) -> None:
    """Arm the watchdog: the collector dumps the process if no feed happens for ``timeout_s``.

    ``None`` or 0 disarms it. The timeout is kept and published in every table attached later.
    Arming feeds once, so the first deadline is ``timeout_s`` from now. A feeder started on the
    program's behalf (by ``kmemdump run``) stops: a program that arms its own watchdog feeds it.
    """
    if timeout_s is None or timeout_s == 0:
        timeout_ns = 0
    elif (
        isinstance(timeout_s, bool)
        or not isinstance(timeout_s, (int, float))
        or not math.isfinite(timeout_s)
        or timeout_s < 0
    ):
        raise UsageError(f"watchdog timeout must be a positive number of seconds, not {timeout_s!r}")
    else:
        timeout_ns = max(1, round(timeout_s * 1e9))
    with _state.lock:
        _state.timeout_ns = timeout_ns
        feeder = _state.feeder
        if feeder is not None and feeder.on_behalf:
            _state.feeder = None
        _refresh_locked()
    if feeder is not None:
        if feeder.on_behalf:
            feeder.stop()
        else:
            feeder.poke()


def watchdog_timeout() -> float | None:
    """The armed timeout in seconds, or ``None``."""
    timeout_ns = _state.timeout_ns
    return timeout_ns / 1e9 if timeout_ns else None


class Feeder(threading.Thread):
    """A daemon thread that calls :func:`feed` every ``interval`` seconds.

    By default the interval is a quarter of the watchdog timeout (re-read after each beat, and
    at once when :func:`set_watchdog` changes it), or :data:`DEFAULT_FEEDER_INTERVAL` when no
    timeout is armed.

    What it can and cannot detect: the thread keeps beating while Python code spins or blocks in
    the main thread (it only needs the GIL now and then), so a feeder alone never reports an
    application hang such as a deadlock or an endless loop in Python. It stops beating only when
    the whole process stalls (SIGSTOP, swapped out, a debugger) or native code holds the GIL for
    longer than the timeout. To detect an application hang, call :func:`feed` from the main
    loop instead, or as well.

    With ``check_progress`` it beats only while some other thread gets somewhere
    (:class:`~kmemdump.producer.progress.ProgressProbe`): once every other thread waits for ever on
    a lock and uses no CPU, it stops beating, so a deadlock of all the program's threads is dumped
    one timeout later. ``on_behalf`` marks a feeder started for a program that does not feed
    itself (``kmemdump run``); it stops when the program arms a watchdog of its own.
    """

    def __init__(
        self, interval: float | None = None, *, check_progress: bool = False, on_behalf: bool = False
    ) -> None:
        super().__init__(name="kmemdump-feeder", daemon=True)
        if interval is not None and (
            isinstance(interval, bool)
            or not isinstance(interval, (int, float))
            or not math.isfinite(interval)
            or interval <= 0
        ):
            raise UsageError(f"feeder interval must be a positive number of seconds, not {interval!r}")
        self.interval = interval
        self.check_progress = check_progress
        self.on_behalf = on_behalf
        self._wake = threading.Event()
        self._stopping = False

    def period(self) -> float:
        """Seconds until the next beat."""
        if self.interval is not None:
            return self.interval
        timeout_ns = _state.timeout_ns
        return timeout_ns / 4e9 if timeout_ns else DEFAULT_FEEDER_INTERVAL

    def run(self) -> None:
        leave_signals_to_the_program()
        probe = None
        if self.check_progress:
            from kmemdump.producer.progress import ProgressProbe

            probe = ProgressProbe()
        while not self._stopping:
            if probe is None or not probe.stuck():
                feed()
            self._wake.wait(self.period())
            self._wake.clear()

    def poke(self) -> None:
        """Beat now and recompute the period."""
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the thread to end and wait for it (unless called from the thread itself)."""
        self._stopping = True
        self._wake.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)


def start_feeder(
    interval: float | None = None, *, check_progress: bool = False, on_behalf: bool = False
) -> Feeder:
    """Start (or restart) the feeder thread; see :class:`Feeder` for what it can detect."""
    new = Feeder(interval, check_progress=check_progress, on_behalf=on_behalf)
    with _state.lock:
        old, _state.feeder = _state.feeder, new
        _mark_feeder_locked()
    if old is not None:
        old.stop()
    new.start()
    return new


def stop_feeder() -> None:
    """Stop the feeder thread, if one runs."""
    with _state.lock:
        old, _state.feeder = _state.feeder, None
        _mark_feeder_locked()
    if old is not None:
        old.stop()


def _mark_feeder_locked() -> None:
    """Say in the table whether a feeder thread beats (for ``kmemdump run`` and ``ps``)."""
    writer = _writer_of(_state.backend)
    if writer is not None:
        with contextlib.suppress(ValueError):  # the table was released meanwhile
            writer.set_flag(FLAG_FEEDER, _state.feeder is not None)


def _after_fork_in_child() -> None:
    # The child has no feeder thread, and its inherited mapping is the parent's table: feeding
    # it would beat the parent's heart. The owner re-attaches once it publishes a table. Nor does
    # it inherit the watchdog: nothing in the child feeds it yet, and a table it publishes later
    # must not look hung the moment it appears (kmemdump.init(watchdog=S) in the child arms one).
    _state.feeder = None
    _state.timeout_ns = 0
    _point_nowhere()


os.register_at_fork(after_in_child=_after_fork_in_child)
