"""Locks that stay usable in a forked child.

``fork()`` copies a lock in whatever state it is in. A lock that another thread held at that
instant stays held for ever in the child, where that thread does not exist: the child's first
registration (or feed of a new table) would deadlock. Every lock the producer owns is made with
:func:`fork_safe_lock`; after a fork the child re-initialises each of them in place
(``_at_fork_reinit``, CPython's own tool for its locks), so every object that holds a reference to
one (a registry and the table backend it drives share one lock) sees it free again.

The locks that guard data (a registry's) are also taken just before the fork, for a bounded time,
and released on both sides after it: the child then starts from a state no thread was half way
through changing (:func:`hold_across_fork`).

Standard library only: the producer imports this module.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import Any

__all__ = ["FORK_HOLD_TIMEOUT", "fork_safe_lock", "hold_across_fork", "reinit"]

log = logging.getLogger("kmemdump")

FORK_HOLD_TIMEOUT = 1.0
"""Seconds a fork waits for a data lock another thread holds before it goes on without it."""

_locks: weakref.WeakSet[Any] = weakref.WeakSet()
_held_across: weakref.WeakSet[Any] = weakref.WeakSet()
_taken: list[Any] = []


def fork_safe_lock() -> threading.Lock:
    """A new ``threading.Lock`` that is free again in a forked child."""
    lock = threading.Lock()
    _locks.add(lock)
    return lock


def hold_across_fork(lock: threading.Lock) -> None:
    """Take ``lock`` (bounded by :data:`FORK_HOLD_TIMEOUT`) just before each fork, release it after."""
    _locks.add(lock)
    _held_across.add(lock)


def reinit(lock: Any) -> None:
    """Make ``lock`` free, in place (its owner thread does not exist in a child)."""
    again = getattr(lock, "_at_fork_reinit", None)
    if callable(again):
        again()
    elif lock.locked():  # another implementation: release what the parent's thread held
        lock.release()


def _before() -> None:
    _taken.clear()
    for lock in list(_held_across):
        if lock.acquire(timeout=FORK_HOLD_TIMEOUT):
            _taken.append(lock)
        else:
            log.warning(
                "fork: a kmemdump lock stayed held for %ss; the child re-initialises it", FORK_HOLD_TIMEOUT
            )


def _after_in_parent() -> None:
    for lock in _taken:
        lock.release()
    _taken.clear()


def _after_in_child() -> None:
    _taken.clear()
    for lock in list(_locks):
        reinit(lock)


os.register_at_fork(before=_before, after_in_parent=_after_in_parent, after_in_child=_after_in_child)
