"""Watching an asyncio event loop: the loop feeds the watchdog, and a blocked loop says who blocks it.

A coroutine that calls blocking code (``time.sleep``, a synchronous database driver, a CPU-bound
parse) stops the whole event loop: every other task waits, yet the process looks alive and a
feeder thread would keep beating. :func:`watch_loop` makes the loop itself feed the watchdog, from a
callback it schedules every ``timeout / 4`` seconds, so a blocked loop stops feeding and the
collector dumps the process after ``timeout``.

A dump of a blocked loop must say what blocks it, but the loop cannot run then. So the state is
kept in a persistent ring (role ``ASYNCIO``, :mod:`kmemdump.formats.ring`) as JSON snapshots:

* the loop's callback writes one at each turn: every task (up to ``max_tasks``), its coroutine's
  name and where each coroutine of its ``await`` chain is suspended (file, line, function);
* a small monitor thread notices when the loop has not turned for ``timeout / 2`` (the blocking
  code holds the loop, not the GIL: ``time.sleep``, I/O, a lock, or Python code that the GIL's
  switch interval interrupts) and writes a snapshot naming the task that is running — the one
  that blocks — with the loop thread's Python stack at that moment, every ``timeout / 8`` while
  it stays blocked.

``kmemdump show`` prints the newest snapshot under "Event loop"; the Python stacks in the dump
(py-spy) show the same frames. Public as :mod:`kmemdump.asyncio`. Standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from types import FrameType
from typing import Any

from kmemdump.errors import InvalidRegionError
from kmemdump.formats.ring import SLOT_HEADER
from kmemdump.formats.ring import RingRole
from kmemdump.producer import api
from kmemdump.producer import heartbeat
from kmemdump.producer.forksafe import fork_safe_lock
from kmemdump.producer.rings import PersistentRing
from kmemdump.producer.stopping import leave_signals_to_the_program

__all__ = ["DEFAULT_MAX_TASKS", "SNAPSHOT_SIZE", "LoopWatch", "current_watch", "watch_loop"]

log = logging.getLogger("kmemdump")

DEFAULT_MAX_TASKS = 100
SNAPSHOT_SIZE = 32 * 1024
"""Bytes per snapshot: tasks past what fits are counted in ``omitted``."""
_SNAPSHOTS = 4
_arming = fork_safe_lock()
"""Taken to arm or disarm the watchdog: an ended watch's monitor never disarms its successor's."""
_MAX_FRAMES = 30


class LoopWatch:
    """One watched event loop; :meth:`stop` ends the watch (and disarms the watchdog)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, max_tasks: int) -> None:
        self.loop = loop
        self.timeout = timeout
        self.max_tasks = max_tasks
        self.ring = _ring()
        self.loop_thread: int | None = None
        self.last_turn = time.monotonic()
        self.turns = 0
        self.armed = False
        self.stopped = False
        self._handle: asyncio.TimerHandle | asyncio.Handle | None = None
        self._wake = threading.Event()
        self._monitor = threading.Thread(target=self._watch, name="kmemdump-asyncio", daemon=True)

    def __repr__(self) -> str:
        state = "stopped" if self.stopped else f"{self.turns} turns"
        return f"LoopWatch(timeout={self.timeout}, {state})"

    # --- on the loop ------------------------------------------------------------------------

    def _start(self) -> None:
        self._handle = self.loop.call_soon_threadsafe(self._turn)
        self._monitor.start()

    def _turn(self) -> None:
        """The loop's beat: feed, note the time, record the tasks, come back in timeout / 4."""
        if self.stopped:
            return
        if not self.armed:
            with _arming:
                heartbeat.set_watchdog(self.timeout)  # arming feeds
                self.armed = True
        else:
            heartbeat.feed()
        self.loop_thread = threading.get_ident()
        self.last_turn = time.monotonic()
        self.turns += 1
        self._record(blocked=False)
        self._handle = self.loop.call_later(self.timeout / 4, self._turn)

    # --- the monitor thread -------------------------------------------------------------------

    def _watch(self) -> None:
        leave_signals_to_the_program()
        period = self.timeout / 8
        while not self.stopped:
            self._wake.wait(period)
            if self.stopped:
                return
            if self.loop.is_closed() or not self.loop.is_running():
                self._disarm()  # asyncio.run() returned, or the loop is between runs: not a hang
                if self.loop.is_closed():
                    self.stopped = True  # a closed loop never runs again: the next watch_loop() may start
                    return
                continue
            age = time.monotonic() - self.last_turn
            if self.armed and age >= self.timeout / 2:
                self._record(blocked=True)

    def _disarm(self) -> None:
        with _arming:  # never the watchdog a newer watch armed meanwhile
            if self.armed:
                self.armed = False
                heartbeat.set_watchdog(None)

    def _blocker(self) -> tuple[asyncio.Task[Any] | None, dict[str, Any]]:
        """The task running on the loop right now (the one that blocks it) and the loop thread's stack."""
        task = _current_task(self.loop)
        found: dict[str, Any] = _describe(task) if task is not None else {"name": None, "coro": None}
        found["state"] = "running"
        frame = sys._current_frames().get(self.loop_thread) if self.loop_thread is not None else None
        found["stack"] = list(_stack(frame))
        return task, found

    # --- snapshots ------------------------------------------------------------------------------

    def _record(self, *, blocked: bool) -> None:
        running, current = self._blocker() if blocked else (None, None)
        try:
            tasks = list(asyncio.all_tasks(self.loop))
        except RuntimeError:  # the set changed size under a thread's iteration: next time
            return
        if running is not None and running in tasks:  # the one that blocks comes first
            tasks.remove(running)
            tasks.insert(0, running)
        described = [_describe(task) for task in tasks[: self.max_tasks]]
        if running is not None and described:
            described[0]["state"] = "running"
        now = time.time()
        snapshot = {
            "time": now,
            "blocked": blocked,
            "timeout_s": self.timeout,
            "loop_age_s": round(time.monotonic() - self.last_turn, 6),
            "turns": self.turns,
            "task_count": len(tasks),
            "omitted": len(tasks) - len(described),
            "current": current,
            "tasks": described,
        }
        self.ring.write(_fit(snapshot), 0, now)

    def stop(self) -> None:
        """Stop watching: no more snapshots or feeds; the watchdog is disarmed."""
        self.stopped = True
        self._wake.set()
        handle = self._handle
        if handle is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop
                self.loop.call_soon_threadsafe(handle.cancel)
        self._disarm()
        _watches.pop(self.loop, None)


_watches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopWatch] = weakref.WeakKeyDictionary()
_rings: list[PersistentRing] = []
"""The process's one ring of snapshots, made by the first watch and reused by every later one (one
loop is watched at a time: a program that calls ``asyncio.run()`` again does not use up its arena)."""


def _ring() -> PersistentRing:
    if not _rings:
        _rings[:] = [
            PersistentRing(_SNAPSHOTS, SNAPSHOT_SIZE, RingRole.ASYNCIO, "asyncio", host=api.ring_host())
        ]
    return _rings[0]


def current_watch(loop: asyncio.AbstractEventLoop | None = None) -> LoopWatch | None:
    """The watch on ``loop`` (the running loop by default), if any."""
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
    return _watches.get(loop)


def watch_loop(
    loop: asyncio.AbstractEventLoop | None = None, timeout: float = 5.0, *, max_tasks: int = DEFAULT_MAX_TASKS
) -> LoopWatch:
    """Feed the watchdog from ``loop`` and keep what a hang of it needs where the dump finds it.

    Call it from a coroutine (the running loop is watched), or give the ``loop``. It publishes the
    shared table if this process has none yet (``kmemdump.init(table=True)``), stops a feeder
    thread (which would keep beating through a blocked loop), and arms a watchdog of ``timeout``
    seconds that the loop feeds every ``timeout / 4``: a loop blocked for ``timeout`` is dumped.
    Calling it again for the same loop returns the same watch; another loop while one is watched
    raises :class:`~kmemdump.errors.InvalidRegionError` (one heartbeat per process).
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < 1e6:
        raise InvalidRegionError("timeout must be a positive number of seconds", timeout=timeout)
    if isinstance(max_tasks, bool) or not isinstance(max_tasks, int) or max_tasks < 0:
        raise InvalidRegionError("max_tasks must be a non-negative int", max_tasks=max_tasks)
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise InvalidRegionError(
                "no running event loop: call watch_loop() from a coroutine, or pass the loop"
            ) from None
    known = _watches.get(loop)
    if known is not None and not known.stopped:
        return known
    for ended in [w for w in _watches.values() if w.stopped or w.loop.is_closed()]:
        ended.stop()  # a loop that asyncio.run() closed: its watch is over, and forgotten
    others = [w for w in _watches.values() if not w.stopped]
    if others:
        raise InvalidRegionError("another event loop is watched already (one heartbeat per process)")
    if not getattr(api.current_backend(), "published", False):
        api.init(table=True)
    heartbeat.stop_feeder()
    watch = LoopWatch(loop, float(timeout), max_tasks)
    _watches[loop] = watch
    watch._start()
    return watch


# --- reading tasks ----------------------------------------------------------------------------------


def _current_task(loop: asyncio.AbstractEventLoop) -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task(loop)
    except Exception:  # 3.14 keeps the current task per thread; other loops may refuse
        return None


def _describe(task: asyncio.Task[Any]) -> dict[str, Any]:
    coro = task.get_coro()
    state = "done" if task.done() else ("cancelling" if _cancelling(task) else "pending")
    return {
        "name": task.get_name(),
        "coro": _qualname(coro),
        "state": state,
        "awaiting": list(_await_chain(coro)),
    }


def _cancelling(task: asyncio.Task[Any]) -> bool:
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling()) if callable(cancelling) else False


def _qualname(coro: Any) -> str:
    return str(getattr(coro, "__qualname__", None) or type(coro).__name__)


def _await_chain(coro: Any) -> Iterator[dict[str, Any]]:
    """Where each coroutine of ``coro``'s await chain is suspended, outermost first."""
    seen = 0
    while coro is not None and seen < _MAX_FRAMES:
        frame = (
            getattr(coro, "cr_frame", None)
            or getattr(coro, "gi_frame", None)
            or getattr(coro, "ag_frame", None)
        )
        if frame is not None:
            yield _frame(frame)
        coro = (
            getattr(coro, "cr_await", None)
            or getattr(coro, "gi_yieldfrom", None)
            or getattr(coro, "ag_await", None)
        )
        seen += 1


def _stack(frame: FrameType | None) -> Iterator[dict[str, Any]]:
    """The Python stack from ``frame`` outwards, innermost last (as a traceback prints it)."""
    frames: list[dict[str, Any]] = []
    while frame is not None and len(frames) < _MAX_FRAMES:
        frames.append(_frame(frame))
        frame = frame.f_back
    return iter(frames[::-1])


def _frame(frame: FrameType) -> dict[str, Any]:
    code = frame.f_code
    return {
        "file": code.co_filename,
        "line": frame.f_lineno,
        "function": getattr(code, "co_qualname", code.co_name),
    }


def _fit(snapshot: dict[str, Any]) -> str:
    """The snapshot as JSON no longer than a ring slot: tasks past what fits are counted, not listed."""
    room = SNAPSHOT_SIZE - SLOT_HEADER
    text = json.dumps(snapshot, separators=(",", ":"))
    tasks = snapshot["tasks"]
    while len(text.encode()) > room and tasks:
        keep = len(tasks) // 2
        snapshot["omitted"] += len(tasks) - keep
        tasks = snapshot["tasks"] = tasks[:keep]
        text = json.dumps(snapshot, separators=(",", ":"))
    return text


def _after_fork_in_child() -> None:
    # the child has no monitor thread and its own heartbeat: the parent's watches are not its own
    for watch in list(_watches.values()):
        watch.stopped = True
    _watches.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
