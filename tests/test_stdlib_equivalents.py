"""What the reading path does instead of a heavier standard module gives what that module gives.

``kmemdump ls`` and ``show`` start without ``json``, ``shlex`` and ``pathlib`` (each imports ``re``,
and more): the metadata note is decoded by :func:`kmemdump.formats.jsonscan.loads`, command lines
are quoted by :func:`kmemdump.inspect.dumpfile.shell_quote`, paths are written by
:func:`kmemdump.cli.options.path_text`. Each is held here to the module it stands in for.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path
from typing import Any

from hypothesis import example
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from budget import examples
from kmemdump.cli.options import path_text
from kmemdump.formats import jsonscan
from kmemdump.inspect.dumpfile import shell_quote


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
