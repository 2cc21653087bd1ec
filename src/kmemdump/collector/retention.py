"""Keeping a dump directory within bounds: how many dumps, how many bytes, how old, per user and in total.

A root collector writes dumps for every user into one directory; the byte budget bounds one dump,
not a user and not the disk. A :class:`Policy` does: :class:`Limits` (a count, a size, an age) for
each user (the owner of the dump file: the dumped process's real user) and for the whole directory.
:func:`plan` says which dumps go, oldest first, and why; :func:`apply` removes them.

The order of removal is the rule of fairness: an age limit removes what is too old; then each user
over their own limits loses their oldest dumps; then, while the directory is over its total limits,
the user who holds the most bytes loses their oldest dump, so one user's flood of dumps never pushes
out another user's. The dump just written (``keep``) is never removed by the pass it triggers.

**Shipping.** In a dump directory that ships (``watch --ship`` keeps its ledger there, see
:mod:`kmemdump.fleet.ledger`) a dump is *shipped* once both its objects are confirmed stored; the
others are the only copy. :attr:`Policy.unshipped` says what that changes:

* ``protect`` (the default in a shipping directory): every limit removes shipped dumps only, oldest
  first; a dump not shipped yet is kept past the limits (:attr:`RetentionPlan.kept` says which and
  why) and removed only while the directory is over the hard bound :attr:`Policy.hard`, oldest
  first;
* ``last``: shipped dumps go first, then, if that is not enough, unshipped ones;
* ``ignore`` (the default elsewhere): oldest first, shipped or not.

Only regular files whose names are dump names (``kmemdump-<pid>-<start>-<reason>-<time>.core`` or
``.core.zst``, ASCII digits only) are counted or removed; links and anything else are left alone.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Callable
from collections.abc import Iterable
from pathlib import Path

from kmemdump.errors import CollectorError
from kmemdump.fleet.ledger import Ledger
from kmemdump.fleet.ledger import LedgerError
from kmemdump.record import frozen
from kmemdump.record import replace

__all__ = [
    "UNSHIPPED",
    "DumpFile",
    "Limits",
    "Policy",
    "Removal",
    "RetentionPlan",
    "apply",
    "enforce",
    "parse_dump_name",
    "plan",
    "plan_retention",
    "scan",
]

_REASONS = ("hang", "death", "request")


@frozen
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


UNSHIPPED = ("auto", "protect", "last", "ignore")
"""What retention does with dumps not shipped yet (see the module)."""


@frozen
class Policy:
    per_user: Limits = Limits()
    total: Limits = Limits()
    unshipped: str = "auto"
    """``protect``, ``last`` or ``ignore``; ``auto``: ``protect`` in a shipping directory, else ``ignore``."""
    hard: Limits = Limits()
    """In ``protect``: the directory's bound (count, size) past which unshipped dumps go too."""

    @property
    def empty(self) -> bool:
        return self.per_user.empty and self.total.empty and self.hard.empty

    def describe(self) -> str:
        text = f"per user: {self.per_user.describe()}; in total: {self.total.describe()}"
        if self.unshipped != "auto":
            text += f"; unshipped dumps: {self.unshipped}"
        if not self.hard.empty:
            text += f"; hard bound: {self.hard.describe()}"
        return text

    def mode(self, shipping: bool) -> str:
        """The rule for unshipped dumps in a directory that ships (``shipping``) or not."""
        if self.unshipped == "auto":
            return "protect" if shipping else "ignore"
        return self.unshipped


@frozen
class DumpFile:
    name: str
    uid: int
    size: int
    mtime_ns: int
    shipped: bool = False
    """Confirmed stored in the object store (the ledger's record matches this very file)."""


@frozen
class Removal:
    file: DumpFile
    why: str


@frozen
class RetentionPlan:
    removals: tuple[Removal, ...]
    kept: tuple[Removal, ...]
    """Dumps not shipped yet that the limits would have removed, and the limit they are over."""
    mode: str
    """The rule applied to unshipped dumps: ``protect``, ``last`` or ``ignore``."""
    ledger_problem: str = ""
    """Why the ledger could not be read (every dump was taken for unshipped), "" when it could."""

    def kept_line(self) -> str:
        """One line on the dumps kept because they are not shipped yet ("" when there are none)."""
        if not self.kept:
            return ""
        count = len(self.kept)
        size = sum(r.file.size for r in self.kept)
        what = f"{count} dump{'' if count == 1 else 's'} ({size} bytes)"
        return (
            f"kept {what} not shipped yet past the retention limits ({self.kept[0].why}); they are removed "
            "once shipped, or past the hard bound (--hard-total, --hard-total-size)"
        )


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


def scan(dir_fd: int, ledger: Ledger | None = None) -> list[DumpFile]:
    """The dump files of the directory open as ``dir_fd``, oldest first (links are not followed);
    with a ``ledger``, each says whether it is the very file that was shipped."""
    found: list[DumpFile] = []
    for name in os.listdir(dir_fd):
        if parse_dump_name(name) is None:
            continue
        try:
            info = os.lstat(name, dir_fd=dir_fd)
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode):
            shipped = ledger is not None and ledger.shipped(name, info)
            found.append(DumpFile(name, info.st_uid, info.st_size, info.st_mtime_ns, shipped))
    found.sort(key=lambda f: (f.mtime_ns, f.name))
    return found


def plan(
    files: Iterable[DumpFile], policy: Policy, *, now_ns: int | None = None, keep: Iterable[str] = ()
) -> list[Removal]:
    """Which dumps to remove so that ``files`` meet ``policy``, and why (see the module's rule);
    shipping as :func:`plan_retention` takes it, for a directory that does not ship."""
    return list(plan_retention(files, policy, now_ns=now_ns, keep=keep).removals)


def plan_retention(
    files: Iterable[DumpFile],
    policy: Policy,
    *,
    now_ns: int | None = None,
    keep: Iterable[str] = (),
    shipping: bool = False,
) -> RetentionPlan:
    """Which dumps to remove so that ``files`` meet ``policy``, which unshipped ones are kept past
    a limit, and why. ``shipping``: the directory ships (each file's ``shipped`` is known)."""
    now = time.time_ns() if now_ns is None else now_ns
    mode = policy.mode(shipping)
    kept_names = set(keep)
    left = sorted(files, key=lambda f: (f.mtime_ns, f.name))
    removals: list[Removal] = []
    protected: dict[str, Removal] = {}

    # The classes of dumps a limit removes from, in turn: shipped ones first unless shipping is ignored.
    if mode == "ignore":
        classes: list[Callable[[DumpFile], bool]] = [lambda f: True]
    elif mode == "last":
        classes = [lambda f: f.shipped, lambda f: not f.shipped]
    else:
        classes = [lambda f: f.shipped]

    def drop(victim: DumpFile, why: str) -> None:
        left.remove(victim)
        removals.append(Removal(victim, why))

    def spare(files: list[DumpFile], limits: Limits, why: str) -> None:
        """Say which unshipped dumps of ``files`` the limit would have removed (oldest first)."""
        if mode != "protect":
            return
        count, size = len(files), sum(f.size for f in files)
        for file in files:
            if not _over_by(count, size, limits):
                break
            if file.shipped or file.name in kept_names:
                continue
            count, size = count - 1, size - file.size
            protected.setdefault(file.name, Removal(file, f"{why}, but not shipped yet"))

    ages = [a for a in (policy.per_user.age_s, policy.total.age_s) if a is not None]
    if ages:
        oldest_allowed = now - int(min(ages) * 1e9)
        for file in [f for f in left if f.mtime_ns < oldest_allowed and f.name not in kept_names]:
            if mode == "protect" and not file.shipped:
                protected.setdefault(
                    file.name, Removal(file, f"older than {min(ages):g} s, but not shipped yet")
                )
                continue
            drop(file, f"older than {min(ages):g} s")
    users = sorted({f.uid for f in left})
    for uid in users:
        limits = policy.per_user
        for removable in classes:
            while True:
                mine = [f for f in left if f.uid == uid]
                over = _over(mine, limits)
                victim = next((f for f in mine if f.name not in kept_names and removable(f)), None)
                if not over or victim is None:
                    break
                drop(
                    victim,
                    f"user {uid} over {over}" + (", shipped" if mode != "ignore" and victim.shipped else ""),
                )
        over = _over([f for f in left if f.uid == uid], limits)
        if over:
            spare([f for f in left if f.uid == uid], limits, f"user {uid} over {over}")
    for removable in classes:
        while True:
            over = _over(left, policy.total)
            if not over:
                break
            weights: dict[int, int] = {}
            for file in left:
                if file.name not in kept_names and removable(file):
                    weights[file.uid] = weights.get(file.uid, 0) + file.size
            if not weights:
                break
            heaviest = max(weights, key=lambda uid: (weights[uid], -uid))
            victim = next(f for f in left if f.uid == heaviest and f.name not in kept_names and removable(f))
            shipped = ", shipped" if mode != "ignore" and victim.shipped else ""
            drop(victim, f"directory over {over}; user {heaviest} holds the most{shipped}")
    over = _over(left, policy.total)
    if over:
        spare(left, policy.total, f"directory over {over}")
    if mode == "protect":
        while over_hard := _over(left, policy.hard):
            victim = next((f for f in left if not f.shipped and f.name not in kept_names), None)
            if victim is None:
                break
            protected.pop(victim.name, None)
            drop(victim, f"directory over the hard bound of {over_hard}; not shipped yet")
    remaining = {f.name for f in left}
    kept = tuple(r for name, r in protected.items() if name in remaining)
    return RetentionPlan(tuple(removals), kept, mode)


def _over(files: list[DumpFile], limits: Limits) -> str:
    return _over_by(len(files), sum(f.size for f in files), limits)


def _over_by(count: int, size: int, limits: Limits) -> str:
    """Which limit ``count`` dumps of ``size`` bytes are over ("" when none)."""
    if limits.count is not None and count > limits.count:
        return f"{limits.count} dump{'' if limits.count == 1 else 's'}"
    if limits.size is not None and size > limits.size:
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
    """Bring ``directory`` within ``policy``; returns what was removed (or would be, ``dry_run``)."""
    return list(enforce(directory, policy, now_ns=now_ns, keep=keep, dry_run=dry_run).removals)


def enforce(
    directory: Path,
    policy: Policy,
    *,
    now_ns: int | None = None,
    keep: Iterable[str] = (),
    dry_run: bool = False,
) -> RetentionPlan:
    """Bring ``directory`` within ``policy``, shipping taken into account (its ledger read); returns
    what was removed (or would be, ``dry_run``) and what was kept because it is not shipped yet.

    :class:`CollectorError` when the directory cannot be read. A file that changed between the look
    and the removal (another inode under the name) is left alone. A ledger that cannot be trusted
    makes every dump count as not shipped (said in :attr:`RetentionPlan.ledger_problem`).
    """
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise CollectorError(f"cannot open the dump directory: {err.strerror}", path=str(directory)) from err
    ledger: Ledger | None = None
    problem = ""
    try:
        try:
            ledger = Ledger.open(directory)
        except LedgerError as err:
            problem = str(err)
        shipping = ledger is not None or bool(problem)
        files = scan(dir_fd, ledger)
        result = plan_retention(files, policy, now_ns=now_ns, keep=keep, shipping=shipping)
        if problem:
            result = replace(result, ledger_problem=problem)
        if dry_run:
            return result
        done: list[Removal] = []
        for removal in result.removals:
            with contextlib.suppress(OSError):
                info = os.lstat(removal.file.name, dir_fd=dir_fd)
                if stat.S_ISREG(info.st_mode) and info.st_mtime_ns == removal.file.mtime_ns:
                    os.unlink(removal.file.name, dir_fd=dir_fd)
                    done.append(removal)
                    if ledger is not None:
                        ledger.forget(removal.file.name)
        return replace(result, removals=tuple(done))
    finally:
        if ledger is not None:
            ledger.close()
        os.close(dir_fd)
