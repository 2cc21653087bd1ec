"""Which dumps a listing keeps: by pid, reason, host and capture time.

One filter for the local dump directory and for a bucket: ``ls`` builds it from its options, and
each listing asks it about what it can see cheaply (a file name or an object key) before reading
anything else.
"""

from __future__ import annotations

from kmemdump.record import frozen

TYPE_CHECKING = False  # argparse and typing are imported for mypy only: ls starts without them
if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterable

__all__ = ["DumpFilter"]


@frozen
class DumpFilter:
    """Empty sets and None mean "any"; ``until_ns`` is exclusive."""

    pids: frozenset[int] = frozenset()
    reasons: frozenset[str] = frozenset()
    hosts: frozenset[str] = frozenset()
    since_ns: int | None = None
    until_ns: int | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DumpFilter:
        """From ``ls``'s options (``--pid``, ``--reason``, ``--host``, ``--since``, ``--until``)."""

        def values(name: str) -> Iterable[object]:
            found = getattr(args, name, None)
            return (
                found
                if isinstance(found, list | tuple | set | frozenset)
                else ([] if found is None else [found])
            )

        return cls(
            frozenset(int(p) for p in values("pid")),  # type: ignore[call-overload]
            frozenset(str(r) for r in values("reason")),
            frozenset(str(h) for h in values("host")),
            getattr(args, "since", None),
            getattr(args, "until", None),
        )

    @property
    def active(self) -> bool:
        return (
            bool(self.pids or self.reasons or self.hosts)
            or self.since_ns is not None
            or self.until_ns is not None
        )

    def matches(self, *, pid: int, reason: str, captured_ns: int, host: str | None = None) -> bool:
        """Whether a dump with these facts passes (a host of None is not checked)."""
        if self.pids and pid not in self.pids:
            return False
        if self.reasons and reason not in self.reasons:
            return False
        if self.hosts and host is not None and host not in self.hosts:
            return False
        if self.since_ns is not None and captured_ns < self.since_ns:
            return False
        return self.until_ns is None or captured_ns < self.until_ns
