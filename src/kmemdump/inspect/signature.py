"""A dump's signature: what makes two dumps the same problem, whichever host or pid they came from.

The signature is taken from one thread's innermost Python frames, each normalised to ``function
(file basename)`` — no line numbers, directories or addresses, which differ between deployments and
releases while the problem stays the same:

* the one Python thread that was running on a CPU just before the collector held the process (the
  dump's thread states say so), if exactly one was: a spinning thread;
* else the thread that held the GIL when the process was stopped, if one did (it was running Python:
  the spinning or crashing thread, or one blocked in a C call without releasing the GIL);
* otherwise the main thread (its native id is the pid), which is where most hangs are seen;
* kmemdump's own feeder thread is never chosen;
* a dump without stacks (a death recorded after the fact) is signed by how the process ended (the
  signal's name or the exit code) and the program's name instead.

The reason (hang, death, request) is part of the signature: a program that hangs and one that crashes
in the same function are two problems. The id is the first 16 hex digits of a SHA-256 over all of it.
"""

from __future__ import annotations

import hashlib
import os

from kmemdump.formats.dumpmeta import DumpMeta
from kmemdump.formats.stacks import Stacks
from kmemdump.formats.stacks import ThreadStack
from kmemdump.record import frozen

__all__ = ["SIGNATURE_FRAMES", "Signature", "compute_signature", "normalise_frame", "program_name"]

SIGNATURE_FRAMES = 5
"""Innermost frames that make a signature."""
_FEEDER = "kmemdump-feeder"


@frozen
class Signature:
    id: str
    frames: tuple[str, ...]
    """Normalised frames, innermost first (empty for a dump without stacks)."""
    basis: str
    """Which thread (or what else) the signature was taken from."""

    @property
    def title(self) -> str:
        """One line for people: the innermost frame, or what signed a dump without stacks."""
        return self.frames[0] if self.frames else self.basis


def normalise_frame(function: str, filename: str) -> str:
    """``handle (app.py)`` for function ``handle`` in ``/srv/app/app.py``."""
    return f"{function or '?'} ({os.path.basename(filename.rstrip('/')) or filename or '?'})"


def program_name(argv: tuple[str, ...], exe: str | None) -> str:
    """The program's name without its directory: ``worker.py`` for ``python3 /srv/worker.py -v``,
    ``-m pkg.main`` for ``python -m pkg.main``, else the executable's name."""
    first = os.path.basename(argv[0]) if argv else ""
    if first.startswith("python") or (exe and os.path.basename(exe).startswith("python")):
        rest = list(argv[1:])
        while rest:
            arg = rest.pop(0)
            if arg == "-m" and rest:
                return f"-m {rest[0]}"
            if arg == "-c":
                return "python -c"
            if not arg.startswith("-"):
                return os.path.basename(arg)
    return first or (os.path.basename(exe) if exe else "?")


def _pick(meta: DumpMeta, stacks: Stacks) -> tuple[ThreadStack | None, str]:
    threads = [t for t in stacks.threads if t.frames]
    running_tids = {t.tid for t in meta.threads if t.state == "R"}
    running = [t for t in threads if t.native_id in running_tids and t.name != _FEEDER]
    if len(running) == 1:
        return running[0], "the thread running when the process was held"
    holders = [t for t in threads if t.owns_gil and t.name != _FEEDER]
    if len(holders) == 1:
        return holders[0], "the thread holding the GIL"
    main = next((t for t in threads if t.native_id == meta.pid), None)
    if main is None:
        main = next((t for t in threads if t.name == "MainThread"), None)
    if main is not None:
        return main, "the main thread"
    others = [t for t in threads if t.name != _FEEDER]
    return (others[0], "the first thread") if others else (None, "")


def compute_signature(meta: DumpMeta, stacks: Stacks | None) -> Signature:
    """The signature of a dump with metadata ``meta`` and Python stacks ``stacks`` (None if absent)."""
    thread, basis = _pick(meta, stacks) if stacks is not None else (None, "")
    if thread is not None:
        frames = tuple(normalise_frame(f.function, f.filename) for f in thread.frames[:SIGNATURE_FRAMES])
        material = [meta.reason, *frames]
    else:
        frames = ()
        death = meta.death
        if death is not None and death.signal is not None:
            ending = death.signal_name or f"signal {death.signal}"
        elif death is not None and death.exit_code is not None:
            ending = f"exit code {death.exit_code}"
        else:
            ending = ""
        program = program_name(meta.argv, meta.exe)
        basis = f"{meta.reason} of {program}" + (f", {ending}" if ending else "") + " (no stacks)"
        material = [meta.reason, "no stacks", program, ending]
    digest = hashlib.sha256("\n".join(material).encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return Signature(digest, frames, basis)
