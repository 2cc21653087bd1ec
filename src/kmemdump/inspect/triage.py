"""Folding many dumps into a few problems: one per signature, with counts, first and last seen, hosts.

What Sentry calls issues: 200 dumps from 20 hosts are, say, three problems, each with how often and
where it happened. The input is one :class:`TriageRecord` per dump, from a bucket's index objects or
from the dumps of a directory.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kmemdump.record import frozen

__all__ = ["Problem", "TriageRecord", "fold"]


@frozen
class TriageRecord:
    signature: str
    reason: str
    frames: tuple[str, ...]
    basis: str
    host: str
    pid: int
    captured_ns: int
    where: str
    """The dump: an s3:// URL or a path."""
    command: str = ""
    death: str | None = None


@frozen
class Problem:
    signature: str
    reason: str
    frames: tuple[str, ...]
    basis: str
    count: int
    first_ns: int
    last_ns: int
    hosts: tuple[str, ...]
    """Every host it was seen on, the most affected first."""
    host_counts: tuple[int, ...]
    latest: str
    """The newest dump of the problem."""
    commands: tuple[str, ...]
    deaths: tuple[str, ...]

    @property
    def title(self) -> str:
        return self.frames[0] if self.frames else self.basis

    def to_json(self) -> dict[str, Any]:
        return {
            "signature": self.signature,
            "reason": self.reason,
            "title": self.title,
            "frames": list(self.frames),
            "basis": self.basis,
            "count": self.count,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "hosts": dict(zip(self.hosts, self.host_counts, strict=True)),
            "latest": self.latest,
            "commands": list(self.commands),
            "deaths": list(self.deaths),
        }


def fold(records: Iterable[TriageRecord]) -> list[Problem]:
    """One :class:`Problem` per signature, the most frequent first (then the most recent)."""
    groups: dict[str, list[TriageRecord]] = {}
    for record in records:
        groups.setdefault(record.signature, []).append(record)
    problems = []
    for signature, members in groups.items():
        members.sort(key=lambda r: (r.captured_ns, r.where))
        per_host: dict[str, int] = {}
        for record in members:
            per_host[record.host] = per_host.get(record.host, 0) + 1
        hosts = sorted(per_host, key=lambda h: (-per_host[h], h))
        newest = members[-1]
        problems.append(
            Problem(
                signature,
                newest.reason,
                newest.frames,
                newest.basis,
                len(members),
                members[0].captured_ns,
                newest.captured_ns,
                tuple(hosts),
                tuple(per_host[h] for h in hosts),
                newest.where,
                tuple(sorted({r.command for r in members if r.command})),
                tuple(sorted({r.death for r in members if r.death})),
            )
        )
    problems.sort(key=lambda p: (-p.count, -p.last_ns, p.signature))
    return problems
