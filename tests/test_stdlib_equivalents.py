"""What the reading path does instead of a heavier standard module gives what that module gives.

``kmemdump ls`` and ``show`` start without ``json``, ``shlex`` and ``pathlib`` (each imports ``re``,
and more): the metadata note is decoded by :func:`kmemdump.formats.jsonscan.loads`, command lines
are quoted by :func:`kmemdump.inspect.dumpfile.shell_quote`, paths are written by
:func:`kmemdump.paths.path_text`. ``dump PID`` starts without ``pathlib`` and ``re`` either: its
paths are ``str`` (:mod:`kmemdump.paths`, ``os.path``), libpython is told by
:func:`kmemdump.collector.coreshape.is_libpython`. Each is held here to the module it stands in for.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
from pathlib import Path
from typing import Any

from hypothesis import example
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from budget import examples
from kmemdump.formats import jsonscan
from kmemdump.inspect.dumpfile import shell_quote
from kmemdump.paths import path_name
from kmemdump.paths import path_parent
from kmemdump.paths import path_text


def _outcome(decode: Any, text: str) -> tuple[str, Any]:
    """``("ok", value)`` or ``("error", (type, message, position))``."""
    try:
        return "ok", decode(text)
    except json.JSONDecodeError as err:
        return "error", (type(err), err.msg, err.pos, err.lineno, err.colno)
    except (ValueError, RecursionError) as err:
        return "error", (type(err), str(err))


def _same_value(a: Any, b: Any) -> bool:
    """Equal, NaN included, and of the same types all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(_same_value, a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same_value(a[k], b[k]) for k in a)
    return bool(a == b)


def _check(text: str) -> None:
    ours, theirs = _outcome(jsonscan.loads, text), _outcome(json.loads, text)
    assert ours[0] == theirs[0], (text, ours, theirs)
    if ours[0] == "ok":
        assert _same_value(ours[1], theirs[1]), text
    else:
        assert ours[1] == theirs[1], text


_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(st.characters(codec="utf-8"), max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)
_PIECES = st.sampled_from(
    ['{', '}', '[', ']', ',', ':', '"', '\\', '"a"', '1', '-', '0', '.5', 'e3', 'E-2', 'true', 'false',
     'null', 'NaN', 'Infinity', '-Infinity', ' ', '\t', '\n', '\r', '\x0b', '\ufeff', '\\u00e9', '\\ud800',
     '\x01', 'é', '\u2028', '01', '1.', '+1', '{"a":1}', '[1,2]', '""', 'x']
)  # fmt: skip


@settings(max_examples=examples(1500), deadline=None)
@given(value=_VALUES, indent=st.sampled_from([None, 0, 2]), pad=st.sampled_from(["", " ", "\n\t ", "\r\n"]))
def test_loads_accepts_what_json_writes(value: Any, indent: int | None, pad: str) -> None:
    _check(pad + json.dumps(value, indent=indent) + pad)


@settings(max_examples=examples(3000), deadline=None)
@given(text=st.lists(_PIECES, max_size=10).map("".join) | st.text(max_size=12))
@example("")
@example(" ")
@example("\ufeff{}")
@example("{} x")
@example("1 2")
@example('{"a": 1,}')
@example('"\\ud800"')
@example("[" * 100_000)
@example("1" * 5000)
def test_loads_refuses_what_json_refuses(text: str) -> None:
    _check(text)


def test_loads_decodes_a_dumps_metadata_without_importing_json() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from kmemdump.formats import jsonscan\n"
        'value = jsonscan.loads(\' {"a": [1, 2.5, "x", null, true], "b": {}} \')\n'
        "assert value == {'a': [1, 2.5, 'x', None, True], 'b': {}}, value\n"
        "print([m for m in ('json', 're') if m in sys.modules])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


@settings(max_examples=examples(2000), deadline=None)
@given(
    word=st.text(max_size=12)
    | st.sampled_from(["", "'", "a b", "--x", "a'b", "é", "$HOME", "a\nb", "@%+=:,./-_"])
)
def test_shell_quote_is_shlex_quote(word: str) -> None:
    assert shell_quote(word) == shlex.quote(word)


@settings(max_examples=examples(2000), deadline=None)
@given(
    path=st.lists(
        st.sampled_from(["", "/", "//", ".", "..", "a", "b.core", " ", "é", "s3:"]), max_size=8
    ).map("".join)
)
@example("///a")
@example("//a//b/")
@example("./")
def test_path_text_is_str_of_path(path: str) -> None:
    assert path_text(path) == str(Path(path))
    assert path_name(path) == Path(path).name
    assert path_parent(path) == str(Path(path).parent)


_PATHS = st.lists(
    st.sampled_from(["", "/", "//", ".", "..", "a", "b.core", "c.table", ".table", " ", "é"]), max_size=8
).map("".join)


@settings(max_examples=examples(1000), deadline=None)
@given(directory=_PATHS, name=_PATHS)
@example(directory="//d/", name="1-2.table")
def test_the_dump_paths_name_what_pathlib_named(directory: str, name: str) -> None:
    """The table's, the fault file's and the dump's paths (str now) name the files the Path
    expressions they replace named."""
    from kmemdump.formats.faults import fault_path_of
    from kmemdump.formats.table import table_path

    assert Path(table_path(directory, 12, 345)) == Path(directory) / "12-345.table"
    for table in (os.path.join(directory, name), directory + name):
        before = Path(table)
        if before.name:  # Path.with_name refuses an empty name
            expected = before.with_name(before.name.removesuffix(".table") + ".fault")
            assert Path(fault_path_of(table)) == expected
            assert Path(fault_path_of(before)) == expected


_LIBPYTHON = re.compile(r"/libpython3\.\d+[^/]*\.so[^/]*$")
"""How coreshape told libpython's mapping before (dump PID's start-up loaded re for it)."""


@settings(max_examples=examples(2000), deadline=None)
@given(
    path=st.lists(
        st.sampled_from(
            ["/", "lib", "libpython3", "libpython3.", "python3", "12", "٣", ".so", ".so.1.0", "\n", "d"]
        ),
        max_size=8,
    ).map("".join)
)
@example("/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0")
@example("/opt/py/lib/libpython3.13d.so")
@example("libpython3.11.so")
@example("/usr/lib/libpython3.so")
@example("/usr/lib/libpython3.11.so/x")
@example("/l/libpython3.٣.so")
def test_is_libpython_finds_what_the_regular_expression_found(path: str) -> None:
    from kmemdump.collector.coreshape import is_libpython

    assert is_libpython(path) == bool(_LIBPYTHON.search(path))


def test_dump_properties_are_computed_once() -> None:
    """dumpfile's stand-in for functools.cached_property: computed on first use, then kept."""
    from kmemdump.inspect.dumpfile import Dump

    kind = type(Dump.__dict__["problems"])
    calls: list[object] = []

    class Probe:
        @kind
        def value(self) -> int:
            calls.append(self)
            return len(calls)

    probe = Probe()
    assert (probe.value, probe.value, vars(probe)) == (1, 1, {"value": 1})
    assert len(calls) == 1
    assert isinstance(Probe.__dict__["value"], kind)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
"""What records.clean escaped with a regular expression before (show's start-up loaded re for it)."""


def _clean_by_re(text: str) -> str:
    def escape(match: re.Match[str]) -> str:
        code = ord(match.group())
        return f"\\x{code:02x}" if code < 256 else f"\\u{code:04x}"

    return _CONTROL.sub(escape, text)


@settings(max_examples=examples(2000), deadline=None)
@given(text=st.text(max_size=20) | st.text(st.characters(max_codepoint=0x2100), max_size=20))
@example("".join(map(chr, range(0x2200))))
def test_records_clean_escapes_what_the_regular_expression_did(text: str) -> None:
    from kmemdump.cli.records import clean

    assert clean(text) == _clean_by_re(text)
