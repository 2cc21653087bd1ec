"""Options and defaults shared by several subcommands.

Why one module of this size: each option that two or more subcommands take is declared once here,
with its checks and its help text, so the subcommand modules stay small; the declarations are
independent of one another and read one at a time."""

from __future__ import annotations

import os
import sys
import time

from kmemdump.errors import CollectorError
from kmemdump.errors import KmemdumpError
from kmemdump.errors import UnreadableMemoryError
from kmemdump.paths import path_text

TYPE_CHECKING = False  # typing is imported for mypy only: it costs the command line milliseconds
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from pathlib import Path

    from kmemdump.collector.dump import DumpOptions
    from kmemdump.collector.retention import Policy

__all__ = [
    "DEFAULT_BUDGET",
    "DIRECTORIES",
    "DUMP_HELP",
    "FILES",
    "REGION_HELP",
    "DumpAccessError",
    "NoSuchDumpError",
    "add_dump_argument",
    "add_dump_dir_option",
    "add_dump_options",
    "add_range_options",
    "add_retention_options",
    "add_tables_option",
    "check_table_dirs",
    "completes",
    "default_dump_dir",
    "dump_options",
    "dump_path",
    "parse_duration",
    "parse_size",
    "path_text",
    "pid_number",
    "retention_policy",
    "seconds",
    "select_range",
    "table_dir_texts",
    "table_dirs",
]

DEFAULT_BUDGET = 1024**3
"""Bytes of regions per dump unless --budget says otherwise: a table that lists huge regions (a bug, or
a hostile producer when a root collector serves every user) cannot fill the dump directory."""

_UNITS = {
    "": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
}


def default_dump_dir() -> str:
    """``$KMEMDUMP_DUMPS``, else ``$XDG_STATE_HOME/kmemdump/dumps`` (``~/.local/state/...``)."""
    explicit = os.environ.get("KMEMDUMP_DUMPS")
    if explicit:
        return path_text(explicit)
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(path_text(state), "kmemdump", "dumps")


MAX_FALLBACK_DIRS = 64
"""Private fallback table directories of one user listed at most (the newest): a user who makes
thousands of them costs the collector no more than this (the watcher keeps those it watches)."""


def table_dirs(all_users: bool) -> list[Path]:
    """:func:`table_dir_texts` as paths (``watch`` and ``ps``; ``dump PID`` uses the text)."""
    from pathlib import Path

    return [Path(path) for path in table_dir_texts(all_users)]


def table_dir_texts(all_users: bool) -> list[str]:
    """Where producers publish tables: ours, or (as root) every user's.

    Ours: ``$KMEMDUMP_DIR`` or ``/dev/shm/kmemdump-<uid>``, and the private fallbacks
    ``/dev/shm/kmemdump-<uid>.<hex>`` a producer makes when that directory was squatted. As root:
    every ``/dev/shm/kmemdump-<uid>`` and ``kmemdump-<uid>.<hex>`` (names with ASCII digits only; the
    watcher also checks each one's owner against its name). Fallbacks are listed only when they are
    directories owned by the uid of their name, at most :data:`MAX_FALLBACK_DIRS` per user. The
    listing of ``/dev/shm`` is read again only when that directory changed since the last call.
    Each path is as ``str(Path(...))`` gives it (:func:`~kmemdump.paths.path_text`).
    """
    from kmemdump.formats.table import default_dir

    first = path_text(default_dir())
    now = time.monotonic()
    try:
        stamp = (os.stat(_SHM).st_mtime_ns, all_users, os.geteuid())
    except OSError:
        stamp = None
    cached = _shm_listing.get("dirs")
    if stamp is None or cached is None or cached[0] != stamp or now - cached[1] > _SHM_RELIST_S:
        cached = (stamp, now, _list_shm(all_users))
        _shm_listing["dirs"] = cached
    return [first, *(path for path in cached[2] if path != first)]


_SHM = "/dev/shm"
_SHM_RELIST_S = 5.0
"""A listing of /dev/shm is used again for at most this long (a change within the same clock tick as
the listing leaves the directory's mtime as it was)."""
_shm_listing: dict[str, tuple[tuple[int, bool, int] | None, float, list[str]]] = {}
"""The last listing of /dev/shm's table directories: the mtime and the moment it was taken at."""


def _list_shm(all_users: bool) -> list[str]:
    from kmemdump.formats.table import parse_dir_name

    uid = os.geteuid()
    primary: list[str] = []
    fallbacks: dict[int, list[tuple[int, str]]] = {}
    try:
        entries = list(os.scandir(_SHM))
    except OSError:
        entries = []
    for entry in entries:
        owner = parse_dir_name(entry.name)
        if owner is None or (not all_users and not (owner == uid and "." in entry.name)):
            continue
        if "." not in entry.name:
            primary.append(entry.path)
            continue
        try:  # a fallback: only its owner's, at most MAX_FALLBACK_DIRS of them
            if not entry.is_dir(follow_symlinks=False):
                continue
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if info.st_uid == owner:
            fallbacks.setdefault(owner, []).append((info.st_mtime_ns, entry.path))
    paths = sorted(primary)
    for found in fallbacks.values():
        found.sort(reverse=True)  # the newest: where a process that just started publishes
        paths.extend(path for _, path in found[:MAX_FALLBACK_DIRS])
    return paths


def add_tables_option(parser: argparse.ArgumentParser, verb: str, *, text: bool = False) -> None:
    """``--tables DIR`` (repeatable): where to look for tables instead of the default places; each a
    :class:`~pathlib.Path`, or with ``text`` a ``str`` (``str(Path(DIR))``: ``dump PID`` loads no pathlib)."""
    from pathlib import Path

    parser.add_argument(
        "--tables",
        type=path_text if text else Path,
        action="append",
        default=None,
        metavar="DIR",
        help=f"table directory to {verb} (repeatable; default: $KMEMDUMP_DIR or "
        "/dev/shm/kmemdump-<uid>, and every user's when root)",
    )


def check_table_dirs(dirs: Sequence[str | os.PathLike[str]]) -> None:
    """Refuse, once and before any work, a --tables that names something other than a readable
    directory (one that does not exist yet is fine: producers create it)."""
    from kmemdump.errors import UsageError

    for directory in dirs:
        try:
            if not os.path.isdir(directory):
                os.stat(directory)  # not there: fine, a producer creates it
                raise UsageError(f"--tables {directory}: not a directory")
            os.listdir(directory)
        except FileNotFoundError:
            continue
        except OSError as err:
            raise UsageError(f"--tables {directory}: cannot be read ({err.strerror})") from None


def _invalid(message: str) -> Exception:
    """argparse's error for a bad option value (argparse is imported only then: see quick_parse)."""
    import argparse

    return argparse.ArgumentTypeError(message)


def parse_size(text: str) -> int:
    """``4096``, ``64k``, ``1.5MiB`` → bytes."""
    raw = text.strip().lower()
    if raw in ("none", "unlimited"):
        return 0
    number = raw.rstrip("kmgib")
    unit = raw[len(number) :]
    try:
        value = float(number)
    except ValueError:
        raise _invalid(f"not a size: {text!r}") from None
    if unit not in _UNITS or value <= 0:
        raise _invalid(f"not a size: {text!r}")
    return int(value * _UNITS[unit])


def pid_number(text: str) -> int:
    """A process id: a positive decimal number."""
    try:
        value = int(text, 10)
    except ValueError:
        raise _invalid(f"not a process id: {text!r}") from None
    if value <= 0 or value >= 2**31:
        raise _invalid(f"not a process id: {text!r} (a pid is a positive number)")
    return value


def seconds(text: str) -> float:
    """A duration in seconds: a positive, finite number (``0.5``, ``5``)."""
    try:
        value = float(text)
    except ValueError:
        raise _invalid(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise _invalid(f"must be a positive number of seconds: {text!r}")
    return value


def add_dump_options(parser: argparse.ArgumentParser, *, text: bool = False) -> None:
    """The options of every command that dumps; ``--dir`` a :class:`~pathlib.Path`, or with ``text`` a
    ``str`` (``str(Path(DIR))``: ``dump PID`` loads no pathlib)."""
    from pathlib import Path

    parser.add_argument(
        "--dir",
        type=path_text if text else Path,
        default=None,
        help="where dumps go (default: $KMEMDUMP_DUMPS or ~/.local/state/kmemdump/dumps)",
    )
    parser.add_argument(
        "--budget",
        type=parse_size,
        default=DEFAULT_BUDGET,
        metavar="SIZE",
        help="store at most SIZE bytes of regions per dump, taken in ID order, e.g. 64k, 2MiB "
        "(default 1GiB; 'none' for no limit)",
    )
    parser.add_argument(
        "--max-region",
        type=parse_size,
        default=None,
        metavar="SIZE",
        help="store at most SIZE bytes of any one region (default 256MiB)",
    )
    parser.add_argument("--compress", action="store_true", help="write zstd-compressed dumps (.core.zst)")
    parser.add_argument(
        "--durable",
        action="store_true",
        help="fsync each dump (and its directory) before it is complete, writing with O_DIRECT: it then "
        "survives a crash of the host, at the disk's write time (about 0.2 s for 64 MiB); by default the "
        "page cache writes it back later",
    )
    parser.add_argument(
        "--no-stop",
        dest="stop",
        action="store_false",
        help="do not hold the target still while copying (ptrace stops, or SIGSTOP where ptrace is refused)",
    )
    parser.add_argument(
        "--no-stacks", dest="stacks", action="store_false", help="do not take the Python stacks (py-spy)"
    )
    parser.add_argument(
        "--capture",
        choices=("regions", "stacks"),
        default="regions",
        help="what else to store: 'regions' (default) adds the ELF headers of the mapped files; 'stacks' "
        "also the top of each thread's stack and the interpreter's threads and frames, so that pystack, "
        "gdb bt and py-bt print every thread's stack (some 100-400 KB more)",
    )
    parser.add_argument(
        "--allow-nondumpable",
        action="store_true",
        help="also dump processes that are not dumpable (set-id, or that cleared the flag) for their owner "
        "(default: leave them alone; see docs/security.md)",
    )
    parser.add_argument(
        "--group",
        type=_group,
        default=None,
        metavar="GROUP",
        help="as root, the group dumps belong to (they are 0640, owned by the process's user; "
        "default: the collector's own group)",
    )


_DURATIONS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``90``, ``45s``, ``30m``, ``12h``, ``7d``, ``2w`` → seconds."""
    raw = text.strip().lower()
    unit = raw[-1:] if raw[-1:] in _DURATIONS else "s"
    number = raw[:-1] if raw[-1:] in _DURATIONS else raw
    try:
        value = float(number)
    except ValueError:
        raise _invalid(f"not a duration: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise _invalid(f"not a duration: {text!r}")
    return value * _DURATIONS[unit]


def _count_limit(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise _invalid(f"not a positive number: {text!r}")
    return int(text)


def _size_text(size: int | None) -> str:
    if size is None:
        return "no limit"
    return f"{size >> 30}GiB" if size % (1 << 30) == 0 else f"{size}"


def add_retention_options(
    parser: argparse.ArgumentParser,
    *,
    count: int | None = None,
    size: int | None = None,
    total: int | None = None,
    hard: int | None = None,
) -> None:
    """The retention policy: per user (the dumps' owner) and for the whole directory, and what it
    does with dumps not shipped yet."""
    group = parser.add_argument_group("retention (oldest dumps removed first; see docs/security.md)")
    group.add_argument(
        "--keep",
        type=_count_limit,
        default=count,
        metavar="N",
        help=f"dumps per user (default: {count or 'no limit'})",
    )
    group.add_argument(
        "--keep-size",
        type=parse_size,
        default=size,
        metavar="SIZE",
        help=f"bytes of dumps per user (default: {_size_text(size)})",
    )
    group.add_argument(
        "--keep-age",
        type=parse_duration,
        default=None,
        metavar="AGE",
        help="remove dumps older than AGE, e.g. 7d, 12h (default: no limit)",
    )
    group.add_argument(
        "--keep-total",
        type=_count_limit,
        default=None,
        metavar="N",
        help="dumps in the whole directory (default: no limit)",
    )
    group.add_argument(
        "--keep-total-size",
        type=parse_size,
        default=total,
        metavar="SIZE",
        help=f"bytes of dumps in the whole directory (default: {_size_text(total)})",
    )
    group.add_argument(
        "--unshipped",
        choices=("auto", "protect", "last", "ignore"),
        default="auto",
        help="dumps not shipped to object storage yet: 'protect' removes only shipped dumps to meet the "
        "limits and unshipped ones only past --hard-total/--hard-total-size; 'last' removes shipped "
        "dumps first; 'ignore' oldest first either way (default 'auto': protect in a directory that "
        "ships, where watch --ship keeps its ledger, else ignore)",
    )
    group.add_argument(
        "--hard-total",
        type=_count_limit,
        default=None,
        metavar="N",
        help="with --unshipped protect: dumps in the directory past which unshipped ones go too, oldest "
        "first (default: no limit)",
    )
    group.add_argument(
        "--hard-total-size",
        type=parse_size,
        default=hard,
        metavar="SIZE",
        help="with --unshipped protect: bytes of dumps in the directory past which unshipped ones go too, "
        f"oldest first (default: {_size_text(hard)})",
    )


def retention_policy(args: argparse.Namespace) -> Policy:
    """The :class:`~kmemdump.collector.retention.Policy` the retention options describe."""
    from kmemdump.collector.retention import Limits
    from kmemdump.collector.retention import Policy

    return Policy(
        per_user=Limits(args.keep, args.keep_size or None, args.keep_age),
        total=Limits(args.keep_total, args.keep_total_size or None, None),
        unshipped=args.unshipped,
        hard=Limits(args.hard_total, args.hard_total_size or None, None),
    )


def dump_options(args: argparse.Namespace) -> DumpOptions:
    from kmemdump.collector.dump import DumpOptions

    if args.compress:
        from kmemdump.formats import zstd

        try:
            zstd.module()
        except ImportError:
            raise zstd.missing("--compress") from None
    directory: str | os.PathLike[str] = args.dir if args.dir is not None else default_dump_dir()
    try:
        made = not os.path.exists(directory)
        os.makedirs(directory, mode=0o750, exist_ok=True)
        if made:  # 0750 whatever the umask (the service's is 0077), and the operators' group as root
            os.chmod(directory, 0o750)
            group = getattr(args, "group", None)
            if os.geteuid() == 0 and group is not None:
                os.chown(directory, -1, group)
    except OSError as err:
        raise CollectorError(
            f"cannot create the dump directory ({err.strerror}); create it or choose another with --dir",
            path=str(directory),
        ) from err
    kwargs = {}
    if args.max_region is not None:
        kwargs["max_region"] = args.max_region
    budget = args.budget or None  # 0: "none"
    return DumpOptions(
        directory,
        budget=budget,
        compress=args.compress,
        stop=args.stop,
        stacks=args.stacks,
        capture=args.capture,
        allow_nondumpable=args.allow_nondumpable,
        group=args.group,
        durable=args.durable,
        **kwargs,
    )


def _group(text: str) -> int:
    """A group name or number."""
    import grp

    if text.isascii() and text.isdigit():
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise _invalid(f"no such group: {text!r}") from None


# --- the inspector commands: which dump, which bytes of a region ------------------------------


class NoSuchDumpError(KmemdumpError):
    """A DUMP argument names no dump: no such file, no such number, no dump of that pid."""

    help = (
        "DUMP is a path, a file name in the dump directory, 'latest', a number from the # column of\n"
        "'kmemdump ls', or pid:PID (that process's latest dump). 'kmemdump ls' lists the dumps."
    )


class DumpAccessError(KmemdumpError):
    """The dump is in a directory this user cannot enter (the message says what to do)."""


REGION_HELP = (
    "a region of the dump: its ID (17, 0x11), name, label (user+0, dyn+2) or predefined name (BANNER)"
)

DUMP_HELP = (
    "a dump: a path, a file name in the dump directory, 'latest', the number 'kmemdump ls' shows, "
    "pid:PID (that process's latest dump), or s3://BUCKET/KEY as 'kmemdump ls s3://...' shows it"
)


FILES = {"bash": "_shtab_compgen_files", "zsh": "_files", "tcsh": "f"}
"""Shell completion of an argument (read by shtab when the completion scripts are generated): a file."""
DIRECTORIES = {"bash": "_shtab_compgen_dirs", "zsh": "_files -/", "tcsh": "d"}
"""... a directory."""


def completes(action: argparse.Action, what: dict[str, str]) -> argparse.Action:
    """Mark ``action`` as completing files or directories (:data:`FILES`, :data:`DIRECTORIES`)."""
    action.complete = what  # type: ignore[attr-defined]
    return action


def add_dump_argument(parser: argparse.ArgumentParser) -> None:
    """The DUMP positional every inspector command takes, and --dir for where names and numbers point."""
    completes(parser.add_argument("dump", metavar="DUMP", help=DUMP_HELP), FILES)
    add_dump_dir_option(parser)


def add_dump_dir_option(parser: argparse.ArgumentParser, default: object = None) -> None:
    from pathlib import Path

    action = parser.add_argument(
        "--dir",
        type=Path,
        default=default,
        metavar="DIR",
        help="the dump directory that names, numbers, 'latest' and pid:PID refer to "
        "(default: $KMEMDUMP_DUMPS or ~/.local/state/kmemdump/dumps)",
    )
    completes(action, DIRECTORIES)


def dump_path(given: str | os.PathLike[str], directory: str | os.PathLike[str] | None = None) -> str:
    """The dump file a DUMP argument means (see :data:`DUMP_HELP`); :class:`NoSuchDumpError` if none.

    An existing file wins; then the handles ``latest``, ``N`` and ``pid:PID``; then a bare name in
    the dump directory. A path in a directory this user cannot enter is a clear error, not a crash.
    An ``s3://BUCKET/KEY`` dump is downloaded to a private temporary file (see docs/fleet.md).
    """
    text = os.fspath(given)
    if text.lower().startswith("s3://"):
        from kmemdump.fleet.remote import fetch_dump

        def warn(message: str) -> None:
            print(f"kmemdump: warning: {message}", file=sys.stderr)

        return os.fspath(fetch_dump(text, on_warning=warn))
    path = path_text(text)
    try:
        os.stat(path)
        return path
    except PermissionError as err:
        raise DumpAccessError(
            "permission denied: this user cannot enter the directory holding "
            f"{os.path.basename(path)}; ask for access to it (e.g. through its group) or run as its owner",
            path=text,
        ) from err
    except (OSError, ValueError):  # not there (or not a valid path): maybe a handle or a bare name
        pass
    where = path_text(os.fspath(directory)) if directory is not None else default_dump_dir()
    if text in ("latest", "last") or (text.isascii() and text.isdigit()) or text.startswith("pid:"):
        return _handle(text, where)
    if os.sep not in text:
        candidate = path_text(os.path.join(where, text))
        try:
            os.stat(candidate)
            return candidate
        except OSError:
            pass
        raise NoSuchDumpError(f"no such dump: {text} is neither a file here nor one in {where}", path=text)
    raise NoSuchDumpError(f"no such dump: {text} does not exist", path=text)


def _handle(text: str, where: str) -> str:
    from kmemdump.inspect.dumpfile import catalog

    entries = catalog(where, on_error=lambda path, err: None)
    if not entries:
        raise NoSuchDumpError(f"there are no dumps in {where}", path=str(where))
    if text in ("latest", "last"):
        return entries[-1].path
    if text.isascii() and text.isdigit():
        number = int(text)
        if not 1 <= number <= len(entries):
            raise NoSuchDumpError(
                f"no dump number {number}: 'kmemdump ls' numbers the {len(entries)} dumps of {where} "
                f"1 to {len(entries)}",
                path=str(where),
            )
        return entries[number - 1].path
    pid = text.removeprefix("pid:")
    if not (pid.isascii() and pid.isdigit()):
        raise NoSuchDumpError(f"not a pid: {text!r} (pid:PID, e.g. pid:4242)")
    mine = [entry for entry in entries if entry.pid == int(pid)]
    if not mine:
        raise NoSuchDumpError(f"no dump of pid {pid} in {where}", path=str(where))
    return mine[-1].path


def add_range_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--offset",
        type=_count,
        default=0,
        metavar="N",
        help="start N bytes into the region (decimal or 0x hex)",
    )
    parser.add_argument(
        "--length",
        type=_count,
        default=None,
        metavar="N",
        help="at most N bytes (default: to the end of what was stored)",
    )


def _count(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise _invalid(f"not a byte count: {text!r}") from None
    if value < 0:
        raise _invalid(f"must not be negative: {text!r}")
    return value


def select_range(data: bytes, offset: int, length: int | None, region_id: int) -> bytes:
    """``data[offset:offset+length]``; an offset past the stored bytes is an error, not nothing."""
    if offset and offset >= len(data):
        raise UnreadableMemoryError(
            f"offset {offset} is past the {len(data)} bytes stored for the region", id=region_id, readable=0
        )
    return data[offset:] if length is None else data[offset : offset + length]
