"""JSON text as ``json.dumps`` writes it (its defaults, ASCII only), without importing :mod:`json`.

The ``json`` package compiles regular expressions for its pure-Python decoder and encoder when it is
imported, a millisecond or two of ``kmemdump dump``'s start-up for notes that the C encoder behind
``json.dumps`` writes anyway. :func:`dumps` calls that encoder (``_json.make_encoder``, the same
arguments ``json.dumps`` gives it) directly; where it is missing (not CPython), ``json`` itself.
tests/test_jsonwrite.py holds it to ``json.dumps``.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

try:
    import _json
except ImportError:  # pragma: no cover - CPython has it
    _json = None  # type: ignore[assignment]

__all__ = ["dumps"]


def _refuse(value: object) -> Any:
    raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")


def dumps(value: object, *, sort_keys: bool = False) -> str:
    """``json.dumps(value, sort_keys=sort_keys)``: the same text, the same errors."""
    if _json is None:  # pragma: no cover
        import json

        return json.dumps(value, sort_keys=sort_keys)
    quoted = _json.encode_basestring_ascii
    if isinstance(value, str):
        return quoted(value)
    encode = _json.make_encoder({}, _refuse, quoted, None, ": ", ", ", sort_keys, False, True)
    return "".join(encode(value, 0))
