"""JSON text decoded by the C scanner of ``_json`` without importing :mod:`json`.

``json`` imports ``re`` for its decoder (some 5 ms of a command's start-up, as much as the rest of
``kmemdump ls``); the metadata note of every dump is JSON, so the reading path decodes it with the
scanner ``json.loads`` itself ends up in, set up as :class:`json.JSONDecoder` sets it up. Anything
the scanner refuses is handed to ``json.loads``, which raises its own error: :func:`loads` accepts
and refuses exactly what ``json.loads`` does for a ``str`` (tests/test_jsonscan.py holds it to
that). Where ``_json`` is missing (another Python implementation), ``json.loads`` does it all.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is imported for mypy only: the command line starts faster without it
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["loads"]

_WHITESPACE = " \t\n\r"
"""What ``json`` skips around a document (its ``WHITESPACE`` pattern, ``[ \\t\\n\\r]*``)."""


class _Context:
    """The attributes ``_json.make_scanner`` reads from a :class:`json.JSONDecoder`, at their defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    def __init__(self) -> None:
        inf = float("inf")
        self.parse_constant = {"-Infinity": -inf, "Infinity": inf, "NaN": float("nan")}.__getitem__


_scanners: list[Callable[[str, int], tuple[Any, int]] | None] = []


def _scanner() -> Callable[[str, int], tuple[Any, int]] | None:
    if not _scanners:
        try:
            from _json import make_scanner
        except ImportError:
            _scanners.append(None)
        else:
            _scanners.append(make_scanner(_Context()))  # type: ignore[arg-type]
    return _scanners[0]


def loads(text: str) -> Any:
    """``json.loads(text)`` for a ``str``: the same value, or the same error (``json.JSONDecodeError``)."""
    scan = _scanner()
    if scan is not None and type(text) is str:
        start = len(text) - len(text.lstrip(_WHITESPACE))
        try:
            value, end = scan(text, start)
        except (StopIteration, ValueError):
            pass  # json.loads below says why, in its own words
        else:
            if end == len(text) or not text[end:].strip(_WHITESPACE):
                return value
    import json

    return json.loads(text)
