"""The binaries a dump's process ran, found on this machine and checked by build-id.

A dump records every ELF file the process mapped, with its load address and GNU build-id (the
``KMEMDUMP`` modules note). To show symbols a debugger needs those very files: :func:`find_binaries`
looks each one up (under a sysroot when the dump comes from another machine or a container), and
checks the file's build-id against the recorded one, so that a library upgraded since the dump was
taken is reported, not silently used for wrong symbols. When a file is missing but its separate debug
information is installed (``/usr/lib/debug/.build-id/xx/yyyy.debug``), that is used instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from kmemdump.formats.corenotes import Module
from kmemdump.formats.elfimage import PT_NOTE
from kmemdump.formats.elfimage import ElfImageError
from kmemdump.formats.elfimage import build_id_from_notes
from kmemdump.formats.elfimage import parse_image_header
from kmemdump.record import frozen

__all__ = [
    "DEBUG_DIRECTORY",
    "Binary",
    "BinaryStatus",
    "file_build_id",
    "find_binaries",
    "interpreter_file",
    "missing_interpreter",
]

DEBUG_DIRECTORY = Path("/usr/lib/debug")
_HEAD = 64 << 10
_MAX_NOTES = 64 << 10

BinaryStatus = Literal["ok", "debuginfo", "missing", "unreadable", "mismatch", "unchecked"]
"""``ok``: the file is here with the recorded build-id; ``debuginfo``: only its separate debug file is;
``missing``: neither; ``mismatch``: a file is there but another build; ``unchecked``: the dump recorded
no build-id for it (the file is used when present)."""


@frozen
class Binary:
    """One recorded module and what was found for it here."""

    module: Module
    status: BinaryStatus
    path: str | None
    """The local file to load symbols from (None when missing or another build)."""
    looked_at: str
    """Where it was looked for (under the sysroot)."""
    found_build_id: str | None = None
    bias: int = 0
    """What to add to the file's addresses to get the process's (gdb's ``add-symbol-file -o``)."""

    def describe(self) -> str:
        """One line for the user, for anything but ``ok``."""
        what = {"exe": "the executable", "libpython": "libpython"}.get(self.module.role, "the library")
        recorded = f" (build-id {self.module.build_id})" if self.module.build_id else ""
        if self.status == "missing":
            return f"{what} {self.looked_at}{recorded} is not on this machine: its frames get no symbols"
        if self.status == "unreadable":
            return f"{what} {self.looked_at}{recorded} cannot be read by this user: its frames get no symbols"
        if self.status == "mismatch":
            return (
                f"{what} {self.looked_at} is another build (build-id {self.found_build_id}, the process ran "
                f"{self.module.build_id}): not loaded, its symbols would be wrong"
            )
        if self.status == "debuginfo":
            return f"{what} {self.looked_at} is missing; symbols from its debug file {self.path}"
        if self.status == "unchecked":
            return f"{what} {self.looked_at} has no recorded build-id: loaded unchecked"
        return f"{what} {self.looked_at}: ok"


def file_build_id(path: str | os.PathLike[str]) -> tuple[str | None, int]:
    """The GNU build-id of an ELF file (None when it has none or is not ELF), and the lowest
    ``p_vaddr - p_offset`` of its loadable segments (0 for none)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_HEAD)
            try:
                image = parse_image_header(0, head)
            except ElfImageError:
                return None, 0
            loads = [ph.vaddr - ph.offset for ph in image.program_headers if ph.type == 1]
            for ph in image.program_headers:
                if ph.type != PT_NOTE or ph.filesz > _MAX_NOTES:
                    continue
                handle.seek(ph.offset)
                found = build_id_from_notes(handle.read(ph.filesz))
                if found:
                    return found, min(loads, default=0)
            return None, min(loads, default=0)
    except OSError:
        return None, 0


def _under(sysroot: Path | None, path: str) -> Path:
    return Path(path) if sysroot is None else sysroot / path.lstrip("/")


def find_binaries(
    modules: Sequence[Module], *, sysroot: Path | None = None, debug_directory: Path = DEBUG_DIRECTORY
) -> list[Binary]:
    """Each module's local file (under ``sysroot``), checked against its recorded build-id."""
    out = []
    for module in modules:
        local = _under(sysroot, module.path.removesuffix(" (deleted)"))
        readable = _readable_file(local)
        found, lowest = file_build_id(local) if readable is True else (None, 0)
        bias = module.base - (lowest - lowest % 4096)
        if readable is True and module.build_id is None:
            out.append(Binary(module, "unchecked", str(local), str(local), found, bias))
            continue
        if readable is True and found == module.build_id:
            out.append(Binary(module, "ok", str(local), str(local), found, bias))
            continue
        debug = _debug_file(module, debug_directory)
        if debug is not None:
            _, lowest = file_build_id(debug)
            bias = module.base - (lowest - lowest % 4096)
            out.append(Binary(module, "debuginfo", str(debug), str(local), found, bias))
        elif readable is True:
            out.append(Binary(module, "mismatch", None, str(local), found))
        else:
            out.append(Binary(module, "unreadable" if readable is None else "missing", None, str(local)))
    return out


def _readable_file(path: Path) -> bool | None:
    """True for a regular file this user can read, False when there is none, None when there is
    one (or may be one) that this user cannot read: a closed directory on its path, or its mode."""
    try:
        if not path.is_file():
            return False
    except PermissionError:
        return None
    except OSError:
        return False
    return True if os.access(path, os.R_OK) else None


def _debug_file(module: Module, directory: Path) -> Path | None:
    """The separate debug file installed for the module's build-id, checked, if any."""
    build_id = module.build_id
    if not build_id or len(build_id) < 3:
        return None
    path = directory / ".build-id" / build_id[:2] / f"{build_id[2:]}.debug"
    if _readable_file(path) is True and file_build_id(path)[0] == build_id:
        return path
    return None


def interpreter_file(binaries: Sequence[Binary]) -> Binary | None:
    """The file here that holds the process's interpreter, for ``pystack core DUMP FILE`` and gdb's
    py-bt: the executable when it is the build that ran, else libpython (a shared build: pystack
    reads the interpreter's symbols from it just as well); None when neither is here."""
    for role in ("exe", "libpython"):
        found = next((b for b in binaries if b.module.role == role and b.status in ("ok", "unchecked")), None)
        if found is not None:
            return found
    return None


_NOT_HERE = {"mismatch": "is another build here", "unreadable": "cannot be read by this user"}


def missing_interpreter(binaries: Sequence[Binary], dump: str, *, lead: bool = False) -> str:
    """What pystack and gdb's py-bt need when the executable is not here (or is another build), and
    how to give it; "" when it is here. With ``lead``, the line first says that the executable is
    missing (for a reader not shown :meth:`Binary.describe`'s line)."""
    exe = next((b for b in binaries if b.module.role == "exe"), None)
    if exe is None or exe.status in ("ok", "unchecked"):
        return ""
    recorded = f" (build-id {exe.module.build_id})" if exe.module.build_id else ""
    first = (
        f"the executable {exe.looked_at}{recorded} {_NOT_HERE.get(exe.status, 'is not on this machine')}; "
    )
    libpython = next((b for b in binaries if b.module.role == "libpython"), None)
    holder = interpreter_file(binaries)
    if holder is not None:
        advice = (
            f"libpython, which holds the interpreter, is here: pystack core {dump} {holder.path}, "
            "and kmemdump gdb gives it to gdb for bt and py-bt"
        )
    elif libpython is not None:
        advice = (
            f"pystack and py-bt need libpython {libpython.looked_at}, which holds the interpreter and is "
            "not here either: with a copy of the files of the machine it ran on, kmemdump gdb --sysroot DIR "
            f"and pystack core {dump} DIR{libpython.module.path}"
        )
    else:
        advice = (
            f"the interpreter is linked into it: pystack (pystack core {dump} EXE) and py-bt need a copy "
            "of that build, kmemdump gdb --exe EXE, or --sysroot DIR with a copy of the files of the machine "
            "it ran on"
        )
    return first + advice if lead else advice
