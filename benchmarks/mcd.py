"""Running minicoredumper, the C peer, on this machine: can we, its configuration, and the host-wide
``core_pattern`` it needs, always put back.

minicoredumper is a ``core_pattern`` pipe helper: the kernel starts it as root, in the initial
namespaces, for every crashing process while the pattern names it. It reads the core's headers
from the pipe and the registered memory through ``/proc/PID/mem``, and never drains the pipe, so
the crashing process is held until the helper exits whatever ``core_pipe_limit`` says. Its
optional eighth argument names a private configuration: nothing under ``/etc`` is touched.

The pattern is host-wide, so it is set around one crash at a time and restored right after, in
``finally`` blocks and on SIGINT, SIGTERM and SIGHUP. A pattern someone else set meanwhile is
left alone (with a warning).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path
from types import FrameType
from types import TracebackType

__all__ = [
    "CORE_PATTERN",
    "CORE_PIPE_LIMIT",
    "Inotify",
    "SysctlGuard",
    "mcd_binary",
    "mcd_configs",
    "mcd_pattern",
    "mcd_unavailable_reason",
    "preflight_canary",
]

CORE_PATTERN = Path("/proc/sys/kernel/core_pattern")
CORE_PIPE_LIMIT = Path("/proc/sys/kernel/core_pipe_limit")
PIPE_LIMIT = 0x7FFFFFFF
"""What Debian's init script sets (and upstream recommends) alongside the pattern."""
_ARGS = "%P %u %g %s %t %h %e"

_RECEPT = {
    # the registered data only: no stacks, no maps, no /proc copies, no live dump of other programs
    # ("maps": {"dump_by_name": []} would be refused as invalid: leave it out)
    "stacks": {"dump_stacks": False, "first_thread_only": True, "max_stack_size": 0},
    "dump_auxv_so_list": False,
    "dump_pthread_list": False,
    "dump_robust_mutex_list": False,
    "dump_scope": 1024,
    "live_dumper": False,
    "write_proc_info": False,
    "write_debug_log": False,
    "dump_fat_core": False,
}
_GZIP = {"compressor": "gzip", "extension": "gz", "in_tar": True}


def mcd_binary() -> Path:
    return Path(os.environ.get("KMEMDUMP_BENCH_MINICOREDUMPER", "/usr/sbin/minicoredumper"))


def mcd_unavailable_reason() -> str | None:
    """Why minicoredumper cannot run side by side here (static checks), or None."""
    if not sys.platform.startswith("linux"):
        return f"minicoredumper is Linux-only (this is {sys.platform})"
    binary = mcd_binary()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        return f"{binary} not found (Debian: apt-get install minicoredumper libminicoredumper-dev)"
    if not (shutil.which("gzip") and shutil.which("tar")):
        return "gzip or tar missing: its gzip mode and the check of its output need them"
    if os.geteuid() != 0:
        return "not root: installing a core_pattern helper needs CAP_SYS_ADMIN in the initial user namespace"
    try:  # writing back the current values changes nothing and proves we may
        for path in (CORE_PATTERN, CORE_PIPE_LIMIT):
            path.write_text(path.read_text())
    except OSError as err:
        return (
            f"cannot write {CORE_PATTERN} ({errno.errorcode.get(err.errno or 0, err.errno)}): "
            "a container, or /proc/sys read-only"
        )
    return None


def mcd_configs(root: Path, watched: list[str]) -> dict[str, tuple[Path, Path]]:
    """Write a raw and a gzip configuration under ``root``; ``{mode: (config file, base_dir)}``.

    ``watched`` are the executables' names it dumps; a crash of anything else leaves an empty
    directory under base_dir (the helper creates it before matching)."""
    configs = {}
    for mode, recept in (("raw", _RECEPT), ("gz", dict(_RECEPT, compression=_GZIP))):
        base = root / mode
        base.mkdir(parents=True, exist_ok=True)
        recept_path = root / f"{mode}.recept.json"
        recept_path.write_text(json.dumps(recept, indent=2))
        config = root / f"{mode}.cfg.json"
        watch = [{"exe": f"*/{name}", "recept": str(recept_path)} for name in watched]
        config.write_text(json.dumps({"base_dir": str(base), "watch": watch}, indent=2))
        configs[mode] = (config, base)
    return configs


def mcd_pattern(config: Path) -> str:
    return f"|{mcd_binary()} {_ARGS} {config}"


class SysctlGuard:
    """Saves ``core_pattern`` and ``core_pipe_limit``; :meth:`restore` puts them back, and so does
    leaving the ``with`` block, an exception, SIGINT, SIGTERM or SIGHUP (raised as KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.saved_pattern = CORE_PATTERN.read_text()
        self.saved_limit = CORE_PIPE_LIMIT.read_text()
        self._ours: str | None = None
        self._handlers: dict[int, object] = {}

    def set(self, pattern: str, pipe_limit: int) -> None:
        self._ours = pattern
        CORE_PATTERN.write_text(pattern)
        CORE_PIPE_LIMIT.write_text(str(pipe_limit))

    def restore(self) -> None:
        if self._ours is None:
            return
        current = CORE_PATTERN.read_text().rstrip("\n")
        if current == self._ours:
            CORE_PATTERN.write_text(self.saved_pattern.rstrip("\n") or "core")
        else:  # host-wide: someone changed it while we held it; theirs stays
            print(f"benchmarks: core_pattern changed under us to {current!r}; left as it is", file=sys.stderr)
        CORE_PIPE_LIMIT.write_text(self.saved_limit.strip())
        self._ours = None

    def _interrupt(self, signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    def __enter__(self) -> SysctlGuard:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self._handlers[sig] = signal.signal(sig, self._interrupt)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        signals = list(self._handlers)
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)  # a second Ctrl-C cannot cut the restore short
        try:
            self.restore()
        finally:
            for sig, handler in self._handlers.items():
                signal.signal(sig, handler)  # type: ignore[arg-type]
            signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)


def preflight_canary(guard: SysctlGuard, canary: Path, config: Path, base: Path) -> str | None:
    """Crash a one-line program under minicoredumper: None if its core appeared, else why not (in a
    container the kernel would run the helper in the host's namespaces, where our files are not)."""
    guard.set(mcd_pattern(config), PIPE_LIMIT)
    try:
        done = subprocess.run([str(canary)], check=False, capture_output=True)
    finally:
        guard.restore()
    if done.returncode != -signal.SIGSEGV:
        return f"the canary ended with status {done.returncode}, not SIGSEGV"
    # the kernel held the canary until the helper was done: its directory is complete now
    dirs = [d for d in base.iterdir() if d.name.startswith("mcd_canary.")]
    found = any((d / "core").exists() for d in dirs)
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
    if not found:
        return "a crash under the minicoredumper core_pattern left no core (the helper did not run or failed)"
    return None


# --- inotify, for the moment a dump file is complete ------------------------------------------------

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_ISDIR = 0x40000000
_EVENT = struct.Struct("iIII")


class Inotify:
    """A non-blocking inotify descriptor (``fd``, for poll) and its decoded events."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._paths: dict[int, Path] = {}

    def add(self, path: Path, mask: int) -> None:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path} failed")
        self._paths[wd] = path

    def read(self) -> list[tuple[Path, int, str]]:
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return []
        events, at = [], 0
        while at < len(data):
            wd, mask, _cookie, size = _EVENT.unpack_from(data, at)
            name = data[at + _EVENT.size : at + _EVENT.size + size].rstrip(b"\0").decode(errors="replace")
            events.append((self._paths.get(wd, Path("?")), mask, name))
            at += _EVENT.size + size
        return events

    def close(self) -> None:
        os.close(self.fd)
