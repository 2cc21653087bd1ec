"""Keeping a dump directory within bounds: how many dumps, how many bytes, how old, per user and in total.

A root collector writes dumps for every user into one directory; the byte budget bounds one dump,
not a user and not the disk. A :class:`Policy` does: :class:`Limits` (a count, a size, an age) for
each user (the owner of the dump file: the dumped process's real user) and for the whole directory.
:func:`plan` says which dumps go, oldest first, and why; :func:`apply` removes them.

The order of removal is the rule of fairness: an age limit removes what is too old; then each user
over their own limits loses their oldest dumps; then, while the directory is over its total limits,
the user who holds the most bytes loses their oldest dump, so one user's flood of dumps never pushes
out another user's. The dump just written (``keep``) is never removed by the pass it triggers.

Only regular files whose names are dump names (``kmemdump-<pid>-<start>-<reason>-<time>.core`` or
``.core.zst``, ASCII digits only) are counted or removed; links and anything else are left alone.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from kmemdump.errors import CollectorError

__all__ = ["DumpFile", "Limits", "Policy", "Removal", "apply", "parse_dump_name", "plan", "scan"]

_REASONS = ("hang", "death", "request")


@dataclass(frozen=True, slots=True)
class Limits:
    """At most ``count`` dumps, ``size`` bytes, none older than ``age_s`` seconds (None: no limit)."""

    count: int | None = None
    size: int | None = None
    age_s: float | None = None

    @property
    def empty(self) -> bool:
        return self.count is None and self.size is None and self.age_s is None

    def describe(self) -> str:
        parts = []
        if self.count is not None:
            parts.append(f"{self.count} dumps")
        if self.size is not None:
            parts.append(f"{self.size} bytes")
        if self.age_s is not None:
            parts.append(f"{self.age_s:g} s")
        return ", ".join(parts) or "no limit"


@dataclass(frozen=True, slots=True)
class Policy:
    per_user: Limits = Limits()
    total: Limits = Limits()

    @property
    def empty(self) -> bool:
        return self.per_user.empty and self.total.empty

    def describe(self) -> str:
        return f"per user: {self.per_user.describe()}; in total: {self.total.describe()}"


@dataclass(frozen=True, slots=True)
class DumpFile:
    name: str
    uid: int
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class Removal:
    file: DumpFile
    why: str


def parse_dump_name(name: str) -> tuple[int, int, str, str] | None:
    """``(pid, start time, reason, time stamp)`` of a dump file name; None for any other name."""
    for suffix in (".core.zst", ".core"):
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            break
    else:
        return None
    parts = stem.split("-")
    if len(parts) != 5 or parts[0] != "kmemdump" or parts[3] not in _REASONS:
        return None
    pid, start, stamp = parts[1], parts[2], parts[4]
    if not (_digits(pid, 10) and _digits(start, 20)) or not 0 < int(pid) < 2**31:
        return None
    if not (stamp.isascii() and 8 <= len(stamp) <= 40 and all(c.isalnum() or c == "." for c in stamp)):
        return None
    return int(pid), int(start), parts[3], stamp


def _digits(text: str, longest: int) -> bool:
    return 0 < len(text) <= longest and text.isascii() and text.isdigit()


def scan(dir_fd: int) -> list[DumpFile]:
    """The dump files of the directory open as ``dir_fd``, oldest first (links are not followed)."""
    found: list[DumpFile] = []
    for name in os.listdir(dir_fd):
        if parse_dump_name(name) is None:
            continue
        try:
            info = os.lstat(name, dir_fd=dir_fd)
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode):
            found.append(DumpFile(name, info.st_uid, info.st_size, info.st_mtime_ns))
    found.sort(key=lambda f: (f.mtime_ns, f.name))
    return found


def plan(
    files: Iterable[DumpFile], policy: Policy, *, now_ns: int | None = None, keep: Iterable[str] = ()
) -> list[Removal]:
    """Which dumps to remove so that ``files`` meet ``policy``, and why (see the module's rule)."""
    now = time.time_ns() if now_ns is None else now_ns
    kept = set(keep)
    left = sorted(files, key=lambda f: (f.mtime_ns, f.name))
    removals: list[Removal] = []

    def drop(victim: DumpFile, why: str) -> None:
        left.remove(victim)
        removals.append(Removal(victim, why))

    ages = [a for a in (policy.per_user.age_s, policy.total.age_s) if a is not None]
    if ages:
        oldest_allowed = now - int(min(ages) * 1e9)
        for file in [f for f in left if f.mtime_ns < oldest_allowed and f.name not in kept]:
            drop(file, f"older than {min(ages):g} s")
    users = sorted({f.uid for f in left})
    for uid in users:
        limits = policy.per_user
        while True:
            mine = [f for f in left if f.uid == uid]
            over = _over(mine, limits)
            victim = next((f for f in mine if f.name not in kept), None)
            if not over or victim is None:
                break
            drop(victim, f"user {uid} over {over}")
    while True:
        over = _over(left, policy.total)
        if not over:
            break
        weights: dict[int, int] = {}
        for file in left:
            if file.name not in kept:
                weights[file.uid] = weights.get(file.uid, 0) + file.size
        if not weights:
            break
        heaviest = max(weights, key=lambda uid: (weights[uid], -uid))
        victim = next(f for f in left if f.uid == heaviest and f.name not in kept)
        drop(victim, f"directory over {over}; user {heaviest} holds the most")
    return removals


def _over(files: list[DumpFile], limits: Limits) -> str:
    if limits.count is not None and len(files) > limits.count:
        return f"{limits.count} dumps"
    if limits.size is not None and sum(f.size for f in files) > limits.size:
        return f"{limits.size} bytes"
    return ""


def apply(
    directory: Path,
    policy: Policy,
    *,
    now_ns: int | None = None,
    keep: Iterable[str] = (),
    dry_run: bool = False,
) -> list[Removal]:
    """Bring ``directory`` within ``policy``; returns what was removed (or would be, ``dry_run``).

    :class:`CollectorError` when the directory cannot be read. A file that changed between the look
    and the removal (another inode under the name) is left alone.
    """
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise CollectorError(f"cannot open the dump directory: {err.strerror}", path=str(directory)) from err
    try:
        removals = plan(scan(dir_fd), policy, now_ns=now_ns, keep=keep)
        if dry_run:
            return removals
        done: list[Removal] = []
        for removal in removals:
            with contextlib.suppress(OSError):
                info = os.lstat(removal.file.name, dir_fd=dir_fd)
                if stat.S_ISREG(info.st_mode) and info.st_mtime_ns == removal.file.mtime_ns:
                    os.unlink(removal.file.name, dir_fd=dir_fd)
                    done.append(removal)
        return done
    finally:
        os.close(dir_fd)
