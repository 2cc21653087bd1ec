"""formats.jsonwrite.dumps writes what json.dumps writes: the same text for every JSON value (nested,
non-ASCII, NaN and infinities, non-string keys, tuples), the same errors for what JSON cannot hold."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from budget import examples
from kmemdump.formats.jsonwrite import dumps

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(st.characters(codec="utf-8"))
    | st.text(st.characters(max_codepoint=0x10FFFF, categories=["Cs", "Cc", "Lo"]))
)
_KEYS = st.text() | st.integers() | st.floats(allow_nan=False) | st.booleans() | st.none()
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=examples(1000), deadline=None)
@given(_VALUES, st.booleans())
def test_the_same_text_as_json_dumps(value: object, sort_keys: bool) -> None:
    assert dumps(value, sort_keys=sort_keys) == json.dumps(value, sort_keys=sort_keys)


@settings(max_examples=examples(300), deadline=None)
@given(st.dictionaries(_KEYS, _SCALARS, max_size=5), st.booleans())
def test_non_string_keys_and_their_errors(value: dict[object, object], sort_keys: bool) -> None:
    try:
        expected: object = json.dumps(value, sort_keys=sort_keys)
    except TypeError as err:  # keys of mixed types cannot be sorted
        expected = (TypeError, str(err))
    try:
        got: object = dumps(value, sort_keys=sort_keys)
    except TypeError as err:
        got = (TypeError, str(err))
    assert got == expected


@pytest.mark.parametrize("value", [object(), {"a": b"bytes"}, [1, {2, 3}], {(1, 2): 3}])
def test_what_json_cannot_hold_is_the_same_type_error(value: object) -> None:
    with pytest.raises(TypeError) as expected:
        json.dumps(value)
    with pytest.raises(TypeError) as got:
        dumps(value)
    assert str(got.value) == str(expected.value)


def test_a_cycle_is_refused_as_json_refuses_it() -> None:
    cycle: list[object] = []
    cycle.append(cycle)
    with pytest.raises(ValueError, match="Circular reference detected"):
        dumps(cycle)


def test_json_is_not_imported() -> None:
    code = (
        "import sys\n"
        "from kmemdump.formats.jsonwrite import dumps\n"
        "dumps({'a': [1.5]})\n"
        "print('json' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
