"""CPython's own bookkeeping of its threads, found from outside: what pystack and gdb's py-bt read.

A post-mortem Python debugger reads a core the way the interpreter reads itself: from
``_PyRuntime`` to the interpreter, its thread states, each thread's chain of frames, and each
frame's code object with its name, file name, line table and variable names. A selective dump has
none of that unless the collector stores it; :func:`walk_python` finds exactly those objects in a
held target and returns their address ranges (a few KB per thread). It runs no code in the target:
a deadlocked or dying interpreter cannot help.

``_PyRuntime`` is found through the dynamic symbol table of libpython (or of a static
interpreter's executable) as it lies in the target's memory, the version from the producer's
table or the ``Py_Version`` symbol, and the struct offsets from :mod:`.pyoffsets`. Everything read
is checked before it is followed (each thread state names its interpreter, each code object's
type is ``code``, 3.13's ``_Py_DebugOffsets`` agree with the table), every count and size is
bounded, and a mismatch stops the walk with :class:`PyStateError` rather than storing garbage.
"""

from __future__ import annotations

import re
import struct

from kmemdump.collector.coreshape import ProcessShape
from kmemdump.collector.pyoffsets import OFFSETS
from kmemdump.errors import UnreadableMemoryError
from kmemdump.formats.elfimage import dynamic_entries
from kmemdump.formats.elfimage import find_dynamic_symbol
from kmemdump.memory.process import ProcessMemory
from kmemdump.record import field
from kmemdump.record import frozen
from kmemdump.record import mutable

__all__ = ["PyStateError", "PyStateWalk", "PyThread", "walk_python"]

_MAX_THREADS = 4096
_MAX_FRAMES = 100_000  # over all threads
_MAX_STRING = 1 << 20
_MAX_TUPLE = 1 << 16
_MAX_BYTES = 16 << 20  # stored in all
_PTHREAD_SIZE = 0x2E0  # glibc's struct pthread up to its tid (pystack reads the tid there on 3.10)
_FRAME_OWNED_BY_CSTACK = 3
_DEBUG_COOKIE = b"xdebugpy"
_VERSION_IN_NAME = re.compile(r"python3\.(\d+)(t?)")


class PyStateError(Exception):
    """Why the interpreter's state could not be walked (unsupported version, layout mismatch …)."""


@frozen
class PyThread:
    """One Python thread as found: its thread state, native thread and frames (innermost first)."""

    tstate: int
    pthread: int
    """``PyThreadState.thread_id``: the thread's ``pthread_t``, its ``struct pthread`` in glibc."""
    native_id: int | None
    functions: tuple[str, ...]


@frozen
class PyStateWalk:
    """What :func:`walk_python` found: the ranges to store and the threads they describe."""

    version: str
    runtime: int
    ranges: tuple[tuple[int, int], ...]
    threads: tuple[PyThread, ...]


@mutable
class _Walker:
    mem: ProcessMemory
    table: dict[str, dict[str, int]]
    minor: int
    ranges: list[tuple[int, int]] = field(default_factory=list)
    stored: int = 0
    frames: int = 0
    types: set[int] = field(default_factory=set)
    code_types: dict[int, bool] = field(default_factory=dict)
    strings: set[int] = field(default_factory=set)

    def off(self, struct_name: str, member: str) -> int:
        return self.table[struct_name][member]

    def size(self, struct_name: str) -> int:
        return self.table[struct_name]["sizeof"]

    def grab(self, address: int, size: int) -> bytes:
        """Read and keep ``size`` bytes at ``address``."""
        if self.stored + size > _MAX_BYTES:
            raise PyStateError(f"the interpreter's state exceeds {_MAX_BYTES >> 20} MiB; stopped there")
        data = self.mem.read(address, size)
        self.ranges.append((address, size))
        self.stored += size
        return data

    def word(self, data: bytes, offset: int) -> int:
        return int(struct.unpack_from("<Q", data, offset)[0])

    def pointer(self, address: int) -> int:
        return int(struct.unpack("<Q", self.mem.read(address, 8))[0])

    def type_of(self, address: int) -> int:
        """Store the type object of the object at ``address`` (debuggers classify objects by it)."""
        kind = self.pointer(address + 8)
        if kind and kind not in self.types:
            self.types.add(kind)
            self.grab(kind, self.size("PyTypeObject"))
        return kind

    def type_name(self, kind: int) -> bytes:
        name = self.pointer(kind + self.off("PyTypeObject", "tp_name"))
        return self.mem.read_upto(name, 32).split(b"\0", 1)[0]

    def is_code(self, kind: int) -> bool:
        if kind not in self.code_types:
            self.code_types[kind] = self.type_name(kind) == b"code"
        return self.code_types[kind]

    def string(self, address: int) -> str:
        if not address:
            return ""
        ascii_size = self.size("PyASCIIObject")
        head = self.mem.read(address, ascii_size)
        length = struct.unpack_from("<q", head, self.off("PyASCIIObject", "length"))[0]
        state = struct.unpack_from("<I", head, self.off("PyASCIIObject", "state"))[0]
        kind, compact, ascii_only = (state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1
        if not compact or kind not in (1, 2, 4) or not 0 <= length <= _MAX_STRING:
            return "?"
        data_at = address + (ascii_size if ascii_only else self.size("PyCompactUnicodeObject"))
        if address not in self.strings:
            self.strings.add(address)
            # pystack copies the compact header and one more word whatever the string
            self.grab(address, self.size("PyCompactUnicodeObject") + 8)
            raw = self.grab(data_at, (length + 1) * kind)
            self.type_of(address)
        else:
            raw = self.mem.read(data_at, length * kind)
        codec = {1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}[kind]
        return raw[: length * kind].decode(codec, "replace")

    def pybytes(self, address: int) -> None:
        if not address:
            return
        sval = self.off("PyBytesObject", "ob_sval")
        head = self.grab(address, sval)
        size = struct.unpack_from("<q", head, 16)[0]
        if not 0 <= size <= _MAX_STRING:
            raise PyStateError(f"a line table of {size} bytes at {address:#x}: layout mismatch")
        self.grab(address + sval, size + 1)
        self.type_of(address)

    def names(self, address: int) -> None:
        """A tuple of strings (a code object's variable names) and its items."""
        if not address:
            return
        item = self.off("PyTupleObject", "ob_item")
        head = self.grab(address, item)
        count = struct.unpack_from("<q", head, 16)[0]
        if not 0 <= count <= _MAX_TUPLE:
            raise PyStateError(f"a name tuple of {count} items at {address:#x}: layout mismatch")
        self.type_of(address)
        items = self.grab(address + item, 8 * count) if count else b""
        for (name,) in struct.iter_unpack("<Q", items):
            self.string(name)

    def code(self, address: int) -> str:
        """Store a code object and what a debugger reads of it; its qualified name."""
        table = self.table["PyCodeObject"]
        data = self.grab(address, table["sizeof"])
        if not self.is_code(self.type_of(address)):
            raise PyStateError(f"the frame's code at {address:#x} is not a code object: layout mismatch")
        self.string(self.word(data, table["co_filename"]))
        name = self.string(self.word(data, table["co_name"]))
        if "co_qualname" in table:
            name = self.string(self.word(data, table["co_qualname"])) or name
        self.pybytes(self.word(data, table["co_linetable"]))
        self.names(self.word(data, table.get("co_localsplusnames", table.get("co_varnames", 0))))
        return name

    def thread_frames(self, tstate: bytes) -> list[str]:
        names: list[str] = []
        if self.minor == 10:
            frame = self.word(tstate, self.off("PyThreadState", "frame"))
            layout = self.table["PyFrameObject"]
            while frame and self.frames < _MAX_FRAMES:
                self.frames += 1
                data = self.grab(frame, layout["sizeof"])
                self.type_of(frame)
                names.append(self.code(self.word(data, layout["f_code"])))
                frame = self.word(data, layout["f_back"])
            return names
        if self.minor in (11, 12):
            cframe = self.word(tstate, self.off("PyThreadState", "cframe"))
            data = self.grab(cframe, self.size("_PyCFrame")) if cframe else b""
            frame = self.word(data, self.off("_PyCFrame", "current_frame")) if data else 0
        else:
            frame = self.word(tstate, self.off("PyThreadState", "current_frame"))
        layout = self.table["_PyInterpreterFrame"]
        code_at = layout.get("f_executable", layout.get("f_code", 0))
        while frame and self.frames < _MAX_FRAMES:
            self.frames += 1
            data = self.grab(frame, layout["sizeof"])
            code = self.word(data, code_at)
            if data[layout["owner"]] == _FRAME_OWNED_BY_CSTACK:
                # the C-stack shims of 3.12+: gdb's py-bt reads their code object (3.13 has None there)
                if code and self.is_code(self.type_of(code)):
                    self.code(code)
            elif code:
                names.append(self.code(code))
            frame = self.word(data, layout["previous"])
        return names


def _version(shape: ProcessShape, mem: ProcessMemory, hexversion: int, find: _Finder) -> tuple[int, bool]:
    """The minor version, and whether the build is free-threaded (from the library's name)."""
    module = shape.module("libpython") or shape.module("exe")
    named = _VERSION_IN_NAME.search(module.path.rsplit("/", 1)[-1]) if module else None
    threaded = bool(named and named.group(2))
    if hexversion >> 24 == 3:
        return (hexversion >> 16) & 0xFF, threaded
    address = find("Py_Version")
    if address is not None:
        value = struct.unpack("<I", mem.read(address, 4))[0]
        if value >> 24 == 3:
            return (value >> 16) & 0xFF, threaded
    if named:
        return int(named.group(1)), threaded
    raise PyStateError("the interpreter's version is unknown (no Py_Version, no version in its file name)")


class _Finder:
    """Dynamic symbols of the module that holds the interpreter (libpython, else the executable)."""

    def __init__(self, shape: ProcessShape, mem: ProcessMemory) -> None:
        self.mem = mem
        self.images = []
        for role in ("libpython", "exe"):
            module = shape.module(role)
            image = shape.image_of(module) if module is not None else None
            dynamic = image.dynamic() if image is not None else None
            if image is None or dynamic is None:
                continue
            entries = dynamic_entries(mem.read_upto(dynamic[0], min(dynamic[1], 16 * 512)))
            self.images.append((image, entries))

    def __call__(self, name: str) -> int | None:
        for image, entries in self.images:
            address = find_dynamic_symbol(self.mem.read_upto, image, entries, name)
            if address is not None:
                return address
        return None


def walk_python(shape: ProcessShape, mem: ProcessMemory, hexversion: int = 0) -> PyStateWalk:
    """Find the interpreter's state in the held target ``shape``; :class:`PyStateError` if it cannot.

    ``hexversion`` is the producer's ``sys.hexversion`` when known (the table says it).
    """
    find = _Finder(shape, mem)
    runtime = find("_PyRuntime")
    if runtime is None:
        raise PyStateError("no _PyRuntime symbol: not a CPython process, or its symbols are stripped")
    minor, threaded = _version(shape, mem, hexversion, find)
    version = f"3.{minor}"
    if threaded:
        raise PyStateError(f"free-threaded Python {version} is not supported by the stacks capture")
    table = OFFSETS.get(version)
    if table is None:
        supported = ", ".join(OFFSETS)
        raise PyStateError(f"Python {version} is not supported by the stacks capture (only {supported})")
    walker = _Walker(mem, table, minor)
    try:
        return _walk(walker, runtime, version)
    except UnreadableMemoryError as err:
        raise PyStateError(f"the interpreter's state is unreadable: {err}") from err


def _walk(walker: _Walker, runtime: int, version: str) -> PyStateWalk:
    table, minor = walker.table, walker.minor
    rt = table["_PyRuntimeState"]
    size = max(rt["interpreters.head"], rt["interpreters.main"]) + 8
    if minor < 12:  # the GIL and the current thread state live in the runtime there
        size = max(
            size, rt["gilstate.tstate_current"] + 8, rt["ceval.gil"] + table["_gil_runtime_state"]["sizeof"]
        )
    if minor >= 13:
        debug = walker.mem.read(runtime, 48)
        expected = table["_Py_DebugOffsets"]["runtime_state.interpreters_head"]
        if debug[:8] != _DEBUG_COOKIE:
            raise PyStateError("no _Py_DebugOffsets at _PyRuntime: not the layout of a 3.13 release build")
        if walker.word(debug, 16):
            raise PyStateError(f"free-threaded Python {version} is not supported by the stacks capture")
        if walker.word(debug, expected) != rt["interpreters.head"]:
            raise PyStateError("_Py_DebugOffsets disagree with the 3.13 layout table: another build")
        size = max(size, table["_Py_DebugOffsets"]["sizeof"])
    walker.grab(runtime, size)
    interp = walker.pointer(runtime + rt["interpreters.head"])
    if not interp:
        raise PyStateError("the interpreter is gone (finalized, or not started)")
    layout = table["PyInterpreterState"]
    used = max(v for k, v in layout.items() if k != "sizeof") + 8
    data = walker.grab(interp, min(layout["sizeof"], -(-used // 4096) * 4096))
    for key in ("modules", "imports.modules", "sysdict", "builtins"):
        if key in layout:  # pystack checks that these are dicts, by their type's flags
            obj = walker.word(data, layout[key])
            if obj:
                walker.grab(obj, 16)
                walker.type_of(obj)
    if "ceval.gil" in layout and minor >= 12:
        gil = walker.word(data, layout["ceval.gil"])
        if gil:
            walker.grab(gil, table["_gil_runtime_state"]["sizeof"])
    tstate = walker.word(data, layout.get("threads.head", layout.get("tstate_head", 0)))
    threads: list[PyThread] = []
    seen: set[int] = set()
    ts = table["PyThreadState"]
    while tstate and tstate not in seen and len(seen) < _MAX_THREADS:
        seen.add(tstate)
        state = walker.grab(tstate, ts["sizeof"])
        if walker.word(state, ts["interp"]) != interp:
            raise PyStateError(f"thread state {tstate:#x} names another interpreter: layout mismatch")
        pthread = walker.word(state, ts["thread_id"])
        native = (
            struct.unpack_from("<i", state, ts["native_thread_id"])[0] if "native_thread_id" in ts else None
        )
        if minor == 10 and pthread:
            walker.grab(pthread, _PTHREAD_SIZE)
        functions = walker.thread_frames(state)
        threads.append(PyThread(tstate, pthread, native, tuple(functions)))
        tstate = walker.word(state, ts["next"])
    return PyStateWalk(version, runtime, tuple(walker.ranges), tuple(threads))
