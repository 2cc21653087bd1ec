"""Taking the Python stacks of every thread of a target, out of process.

We use py-spy (``py-spy dump --json --nonblocking``): it is maintained, knows every CPython
layout from 3.5 to 3.14 and reads memory the same way we do, without running code in the
target. The target is normally held with SIGSTOP by the collector already, so py-spy's own
pausing is not needed (``--nonblocking``). Our own reader would have to track the interpreter
frame layout of each CPython release; py-spy already does.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

from kmemdump.formats.stacks import Frame
from kmemdump.formats.stacks import Stacks
from kmemdump.formats.stacks import ThreadStack
from kmemdump.record import replace

__all__ = [
    "STACKS_EXTRA",
    "StacksUnavailable",
    "find_py_spy",
    "take_stacks",
    "with_activity",
    "with_native_ids",
]

STACKS_EXTRA = "kmemdump[stacks]"
"""What to install for the stacks: py-spy, by way of the extra that names it."""


class StacksUnavailable(Exception):
    """Why no stacks could be taken (py-spy missing, refused, timed out)."""


def find_py_spy() -> str | None:
    """py-spy next to this interpreter (a venv's bin/), else on PATH; ``$KMEMDUMP_PY_SPY`` wins."""
    override = os.environ.get("KMEMDUMP_PY_SPY")
    if override:
        return override
    beside = Path(sys.executable).with_name("py-spy")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    import shutil  # with bz2 and lzma: only when stacks are taken (dump --no-stacks needs none)

    return shutil.which("py-spy")


def take_stacks(pid: int, *, timeout: float = 10.0) -> Stacks:
    """The stacks of every Python thread of ``pid``; raises :class:`StacksUnavailable`."""
    exe = find_py_spy()
    if exe is None:
        raise StacksUnavailable(f"py-spy is not installed (pip install '{STACKS_EXTRA}')")
    import subprocess

    try:
        proc = subprocess.run(
            [exe, "dump", "--pid", str(pid), "--json", "--nonblocking"],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise StacksUnavailable(f"py-spy did not answer within {timeout:g} s") from err
    except OSError as err:
        raise StacksUnavailable(f"py-spy could not run: {err}") from err
    if proc.returncode != 0:
        message = proc.stderr.decode(errors="replace").strip().splitlines()
        raise StacksUnavailable(f"py-spy failed: {message[-1] if message else proc.returncode}")
    try:
        raw = json.loads(proc.stdout)
        threads = tuple(_thread(t) for t in raw)
    except (ValueError, KeyError, TypeError) as err:
        raise StacksUnavailable(f"py-spy output not understood: {err}") from err
    return Stacks(_version(exe), threads)


def _thread(raw: dict[str, object]) -> ThreadStack:
    frames_raw = raw.get("frames") or []
    assert isinstance(frames_raw, list)
    frames = tuple(
        Frame(str(f.get("name", "?")), str(f.get("filename", "?")), int(f.get("line") or 0))
        for f in frames_raw
    )
    name = raw.get("thread_name")
    native = raw.get("os_thread_id")
    thread_id = raw.get("thread_id", 0)
    return ThreadStack(
        int(thread_id) if isinstance(thread_id, int) else 0,
        name if isinstance(name, str) else None,
        native if isinstance(native, int) else None,
        bool(raw.get("active")),
        bool(raw.get("owns_gil")),
        frames,
    )


def with_native_ids(stacks: Stacks, tid_of_pthread: dict[int, int]) -> Stacks:
    """``stacks`` with each thread's native id filled in from its ``pthread_t`` where py-spy gave none
    (Python before 3.11 does not record it): ``tid_of_pthread`` maps a thread's ``pthread_t`` to its id."""
    threads = tuple(
        replace(t, native_id=tid_of_pthread[t.thread_id])
        if t.native_id is None and t.thread_id in tid_of_pthread
        else t
        for t in stacks.threads
    )
    return replace(stacks, threads=threads)


def with_activity(stacks: Stacks, in_syscall: dict[int, bool]) -> Stacks:
    """``stacks`` with each thread's ``active`` taken from the real thread (by native id): idle when it
    was in a system call, else active. For stacks read through a shadow (:mod:`.shadow`): py-spy then
    sees the shadow's one task, not the threads, and its own guess says nothing of them."""
    threads = tuple(
        replace(t, active=not in_syscall[t.native_id])
        if t.native_id is not None and t.native_id in in_syscall
        else t
        for t in stacks.threads
    )
    return replace(stacks, threads=threads)


@functools.cache
def _version(exe: str) -> str:
    import subprocess

    try:
        out = subprocess.run([exe, "--version"], capture_output=True, timeout=5, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "py-spy"
    return out.decode(errors="replace").strip() or "py-spy"
