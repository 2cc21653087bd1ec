"""Static annotations: the Python counterpart of the kernel's ``.kmemdump`` section.

``static(obj, ...)`` only *records* an annotation (usually at import time, beside the variable it
names); nothing is registered until ``kmemdump.init()`` walks the recorded annotations, plus those
that installed packages provide through the ``kmemdump.annotations`` entry-point group, and
registers each. An annotation recorded after that walk is registered at once.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any
from typing import TypeVar

from kmemdump.errors import KmemdumpError
from kmemdump.ids import NO_ID
from kmemdump.producer.registry import Registry
from kmemdump.record import field
from kmemdump.record import frozen
from kmemdump.record import mutable

__all__ = ["ENTRY_POINT_GROUP", "Annotation", "AnnotationSection", "WalkReport", "caller_origin", "section"]

log = logging.getLogger("kmemdump")

ENTRY_POINT_GROUP = "kmemdump.annotations"

T = TypeVar("T")


@frozen
class Annotation:
    """One recorded static region: what, under which ID and name, and where it was declared."""

    target: Any
    id: int = NO_ID
    name: str | None = None
    size: int | None = None
    depth: int | None = None
    origin: str = ""


@frozen
class WalkReport:
    """What a walk registered, and what it could not."""

    registered: tuple[int, ...] = ()
    failed: tuple[tuple[str, str], ...] = ()
    """(origin, error) for each annotation or entry point that failed."""


@mutable
class AnnotationSection:
    """The list of annotations, and the registry they go to once walked."""

    annotations: list[Annotation] = field(default_factory=list)
    registry: Registry | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, annotation: Annotation) -> int | None:
        """Record ``annotation``; after the walk, register it at once and return its ID."""
        with self._lock:
            live = self.registry
            if live is None:
                self.annotations.append(annotation)
                return None
        return _register(live, annotation)

    def walk(self, registry: Registry, *, entry_points: bool = True) -> WalkReport:
        """Register every recorded annotation (and those of entry points) into ``registry``.

        Idempotent: a second walk registers nothing that the first registered.
        """
        failed: list[tuple[str, str]] = []
        if entry_points:
            failed.extend(_load_entry_points())
        with self._lock:
            pending, self.annotations = self.annotations, []
            self.registry = registry
        registered = []
        for annotation in pending:
            try:
                registered.append(_register(registry, annotation))
            except KmemdumpError as err:
                log.warning("static annotation from %s not registered: %s", annotation.origin, err)
                failed.append((annotation.origin, str(err)))
        return WalkReport(tuple(registered), tuple(failed))


def _register(registry: Registry, annotation: Annotation) -> int:
    if annotation.depth is not None:
        return registry.register_object(
            annotation.target, id=annotation.id, name=annotation.name, depth=annotation.depth
        )
    return registry.register(annotation.target, annotation.size, id=annotation.id, name=annotation.name)


def _load_entry_points() -> list[tuple[str, str]]:
    """Import each ``kmemdump.annotations`` entry point; call it if it is callable."""
    from importlib.metadata import entry_points

    failed = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = ep.load()
            if callable(loaded):
                loaded()
        except Exception as err:  # a broken plugin must not break the application's start-up
            log.warning("kmemdump annotation entry point %s failed: %s", ep.value, err)
            failed.append((f"entry point {ep.name} = {ep.value}", f"{type(err).__name__}: {err}"))
    return failed


def caller_origin(depth: int = 2) -> str:
    """``module:line`` of the code that called the public wrapper."""
    frame = sys._getframe(depth)
    return f"{frame.f_globals.get('__name__', '?')}:{frame.f_lineno}"


section = AnnotationSection()
"""The process-wide section that ``kmemdump.static()`` records into."""
