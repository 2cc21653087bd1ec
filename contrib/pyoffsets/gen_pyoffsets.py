"""Print the CPython struct offsets kmemdump's Python-state walker needs, read from DWARF by gdb.

Run it inside gdb on a libpython (or a static python) that has debug information, once per minor
version, and paste the output into ``src/kmemdump/collector/pyoffsets.py``::

    gdb -batch -nx -ex 'python MINOR = "3.12"' -x contrib/pyoffsets/gen_pyoffsets.py \\
        /path/to/libpython3.12.so.1.0

Release builds of one minor version share these layouts (checked: pyenv's 3.11.7 and Debian's 3.11.2);
debug (``Py_DEBUG``) and free-threaded builds do not, and the walker refuses them.
"""

import contextlib

import gdb  # type: ignore[import-not-found]  # only inside gdb

WANTED = {
    "_PyRuntimeState": ["interpreters.head", "interpreters.main", "gilstate.tstate_current", "ceval.gil"],
    "PyInterpreterState": [
        "next",
        "tstate_head",
        "threads.head",
        "modules",
        "imports.modules",
        "sysdict",
        "builtins",
        "ceval.gil",
        "gc",
    ],
    "PyThreadState": ["next", "interp", "frame", "cframe", "current_frame", "thread_id", "native_thread_id"],
    "_PyCFrame": ["current_frame"],
    "_PyInterpreterFrame": ["f_code", "f_executable", "previous", "owner"],
    "PyFrameObject": ["f_back", "f_code", "f_lasti"],
    "PyCodeObject": [
        "co_filename",
        "co_name",
        "co_qualname",
        "co_firstlineno",
        "co_varnames",
        "co_localsplusnames",
        "co_linetable",
    ],
    "PyASCIIObject": ["length", "state"],
    "PyCompactUnicodeObject": [],
    "PyBytesObject": ["ob_sval"],
    "PyTupleObject": ["ob_item"],
    "PyTypeObject": ["tp_name"],
    "_gil_runtime_state": [],
    "_Py_DebugOffsets": ["runtime_state.interpreters_head"],
}


def lookup(name):
    for spelling in (name, f"struct {name}"):
        try:
            return gdb.lookup_type(spelling)
        except gdb.error:
            pass
    return None


table = {}
for struct_name, fields in WANTED.items():
    kind = lookup(struct_name)
    if kind is None:
        continue
    entry = {"sizeof": kind.sizeof}
    for name in fields:
        with contextlib.suppress(gdb.error):  # a field not in this version is left out
            entry[name] = int(gdb.parse_and_eval(f"(long)&((({kind} *)0)->{name})"))
    table[struct_name] = entry
print(f"    {MINOR!r}: {table!r},")  # noqa: F821 - MINOR is set by the gdb command line
