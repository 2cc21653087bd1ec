"""CPython's interpreter-state layouts, 3.10 to 3.13: the offsets :mod:`.pystate` walks with.

Data only, generated from the DWARF debug information of CPython release builds by
``contrib/pyoffsets/gen_pyoffsets.py`` (pyenv's 3.10.13, 3.11.7, 3.12.1 and 3.13.0 built with
``--enable-shared``; Debian's 3.11.2 gives the same table). To add a version or check one::

    gdb -batch -nx -ex 'python MINOR = "3.14"' -x contrib/pyoffsets/gen_pyoffsets.py \\
        /path/to/libpython3.14.so.1.0

and paste the line it prints below. Each entry maps a struct to its ``sizeof`` and the byte offset
of the members used (dotted names are members of nested structs). A member that a version does not
have is absent. Release builds of one minor version share a layout; debug (``Py_DEBUG``) and
free-threaded builds do not, and :mod:`.pystate` refuses them. On 3.13 the walker also checks the
table against the interpreter's own ``_Py_DebugOffsets``.
"""

from __future__ import annotations

__all__ = ["OFFSETS"]

OFFSETS: dict[str, dict[str, dict[str, int]]] = {
    "3.10": {
        "_PyRuntimeState": {
            "sizeof": 672,
            "interpreters.head": 32,
            "interpreters.main": 40,
            "gilstate.tstate_current": 568,
            "ceval.gil": 352,
        },
        "PyInterpreterState": {
            "sizeof": 113528,
            "next": 0,
            "tstate_head": 8,
            "modules": 856,
            "sysdict": 872,
            "builtins": 880,
            "gc": 616,
        },
        "PyThreadState": {
            "sizeof": 280,
            "next": 8,
            "interp": 16,
            "frame": 24,
            "cframe": 48,
            "thread_id": 176,
        },
        "PyFrameObject": {"sizeof": 360, "f_back": 24, "f_code": 32, "f_lasti": 96},
        "PyCodeObject": {
            "sizeof": 176,
            "co_filename": 104,
            "co_name": 112,
            "co_firstlineno": 40,
            "co_varnames": 72,
            "co_linetable": 120,
        },
        "PyASCIIObject": {"sizeof": 48, "length": 16, "state": 32},
        "PyCompactUnicodeObject": {"sizeof": 72},
        "PyBytesObject": {"sizeof": 40, "ob_sval": 32},
        "PyTupleObject": {"sizeof": 32, "ob_item": 24},
        "PyTypeObject": {"sizeof": 408, "tp_name": 24},
        "_gil_runtime_state": {"sizeof": 208},
    },
    "3.11": {
        "_PyRuntimeState": {
            "sizeof": 166688,
            "interpreters.head": 40,
            "interpreters.main": 48,
            "gilstate.tstate_current": 576,
            "ceval.gil": 360,
        },
        "PyInterpreterState": {
            "sizeof": 107752,
            "next": 0,
            "threads.head": 16,
            "modules": 888,
            "sysdict": 904,
            "builtins": 912,
            "gc": 648,
        },
        "PyThreadState": {
            "sizeof": 360,
            "next": 8,
            "interp": 16,
            "cframe": 56,
            "thread_id": 152,
            "native_thread_id": 160,
        },
        "_PyCFrame": {"sizeof": 24, "current_frame": 8},
        "_PyInterpreterFrame": {"sizeof": 80, "f_code": 32, "previous": 48, "owner": 69},
        "PyFrameObject": {"sizeof": 56, "f_back": 16},
        "PyCodeObject": {
            "sizeof": 192,
            "co_filename": 112,
            "co_name": 120,
            "co_qualname": 128,
            "co_firstlineno": 72,
            "co_localsplusnames": 96,
            "co_linetable": 136,
        },
        "PyASCIIObject": {"sizeof": 48, "length": 16, "state": 32},
        "PyCompactUnicodeObject": {"sizeof": 72},
        "PyBytesObject": {"sizeof": 40, "ob_sval": 32},
        "PyTupleObject": {"sizeof": 32, "ob_item": 24},
        "PyTypeObject": {"sizeof": 408, "tp_name": 24},
        "_gil_runtime_state": {"sizeof": 208},
    },
    "3.12": {
        "_PyRuntimeState": {"sizeof": 459944, "interpreters.head": 40, "interpreters.main": 48},
        "PyInterpreterState": {
            "sizeof": 383552,
            "next": 0,
            "threads.head": 72,
            "imports.modules": 944,
            "sysdict": 352,
            "builtins": 360,
            "ceval.gil": 384,
            "gc": 112,
        },
        "PyThreadState": {
            "sizeof": 288,
            "next": 8,
            "interp": 16,
            "cframe": 56,
            "thread_id": 136,
            "native_thread_id": 144,
        },
        "_PyCFrame": {"sizeof": 16, "current_frame": 0},
        "_PyInterpreterFrame": {"sizeof": 80, "f_code": 0, "previous": 8, "owner": 70},
        "PyFrameObject": {"sizeof": 56, "f_back": 16},
        "PyCodeObject": {
            "sizeof": 200,
            "co_filename": 112,
            "co_name": 120,
            "co_qualname": 128,
            "co_firstlineno": 68,
            "co_localsplusnames": 96,
            "co_linetable": 136,
        },
        "PyASCIIObject": {"sizeof": 40, "length": 16, "state": 32},
        "PyCompactUnicodeObject": {"sizeof": 56},
        "PyBytesObject": {"sizeof": 40, "ob_sval": 32},
        "PyTupleObject": {"sizeof": 32, "ob_item": 24},
        "PyTypeObject": {"sizeof": 416, "tp_name": 24},
        "_gil_runtime_state": {"sizeof": 208},
    },
    "3.13": {
        "_PyRuntimeState": {"sizeof": 283320, "interpreters.head": 632, "interpreters.main": 640},
        "PyInterpreterState": {
            "sizeof": 194968,
            "next": 7264,
            "threads.head": 7344,
            "imports.modules": 7656,
            "sysdict": 7640,
            "builtins": 7648,
            "ceval.gil": 16,
            "gc": 7400,
        },
        "PyThreadState": {
            "sizeof": 304,
            "next": 8,
            "interp": 16,
            "current_frame": 72,
            "thread_id": 152,
            "native_thread_id": 160,
        },
        "_PyInterpreterFrame": {"sizeof": 80, "f_executable": 0, "previous": 8, "owner": 70},
        "PyFrameObject": {"sizeof": 72, "f_back": 16},
        "PyCodeObject": {
            "sizeof": 208,
            "co_filename": 112,
            "co_name": 120,
            "co_qualname": 128,
            "co_firstlineno": 68,
            "co_localsplusnames": 96,
            "co_linetable": 136,
        },
        "PyASCIIObject": {"sizeof": 40, "length": 16, "state": 32},
        "PyCompactUnicodeObject": {"sizeof": 56},
        "PyBytesObject": {"sizeof": 40, "ob_sval": 32},
        "PyTupleObject": {"sizeof": 32, "ob_item": 24},
        "PyTypeObject": {"sizeof": 416, "tp_name": 24},
        "_gil_runtime_state": {"sizeof": 208},
        "_Py_DebugOffsets": {"sizeof": 584, "runtime_state.interpreters_head": 40},
    },
}
