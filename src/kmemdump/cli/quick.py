"""A subcommand's common forms parsed without argparse: the ``quick_parse`` of :mod:`kmemdump.cli.main`.

argparse imports ``re``, ``enum``, ``gettext`` and more (some 6 ms, two thirds of a bare interpreter's
start-up) before it reads a word. A subcommand that is run often describes its options here and gets
the namespace argparse would give for the plain forms: flags (``--json``, ``-r``), options with a
value (``--pid 3``, ``--pid=3``, ``-n5``, repeatable ones appending), and one positional, ``--``
before it allowed. Anything else (help, an abbreviation, combined short flags, a value that starts
with ``-``, a value its type refuses, a missing or extra positional) gives None, and argparse parses
the words, with its errors and its help. tests/test_quick_parse.py holds every subcommand's
``quick_parse`` to its argparse parser.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is imported for mypy only: the command line starts faster without it
if TYPE_CHECKING:
    from argparse import Namespace
    from collections.abc import Callable
    from collections.abc import Sequence
    from typing import Any
else:

    class Namespace:
        """What :class:`argparse.Namespace` is to the commands: attributes, compared by value."""

        __hash__ = None  # as argparse's: compared by value, so not hashable

        def __init__(self, **values):
            self.__dict__.update(values)

        def __eq__(self, other):
            return vars(self) == vars(other) if hasattr(other, "__dict__") else NotImplemented

        def __contains__(self, key):
            return key in self.__dict__

        def __repr__(self):
            return f"Namespace({', '.join(f'{k}={v!r}' for k, v in self.__dict__.items())})"


__all__ = ["Namespace", "Option", "Positional", "parse_words"]


class Option:
    """An option that takes one value: its ``dest``, the ``type`` argparse converts it with, and
    whether it is repeatable (``action="append"``)."""

    __slots__ = ("append", "dest", "type")

    def __init__(self, dest: str, type: Callable[[str], Any] = str, *, append: bool = False) -> None:
        self.dest, self.type, self.append = dest, type, append


class Positional:
    """The one positional argument: ``dest``, its ``type``, and whether it must be given."""

    __slots__ = ("dest", "required", "type")

    def __init__(self, dest: str, type: Callable[[str], Any] = str, *, required: bool = True) -> None:
        self.dest, self.type, self.required = dest, type, required


def parse_words(
    words: Sequence[str],
    *,
    defaults: dict[str, Any],
    flags: dict[str, tuple[str, Any]],
    options: dict[str, Option],
    positional: Positional | None = None,
) -> Namespace | None:
    """The namespace argparse would make of ``words``, or None where argparse must parse them.

    ``defaults`` holds every attribute's default; ``flags`` maps an option string (``-r``,
    ``--reverse``) to the attribute and the value it stores; ``options`` maps an option string to
    an :class:`Option`."""
    values = dict(defaults)
    given = False
    index, count = 0, len(words)
    while index < count:
        word = words[index]
        index += 1
        value: str | None = None
        if word == "--":  # then exactly the positional, and nothing after it
            if given or positional is None or index != count - 1 or words[index] == "--":
                return None
            word = words[index]
            index += 1
        elif word in flags:
            dest, stored = flags[word]
            values[dest] = stored
            continue
        elif word in options:
            if index == count or words[index].startswith("-"):
                return None  # no value, or one argparse reads as an option or a negative number
            value = words[index]
            index += 1
        elif word.startswith("--") and "=" in word:
            word, _, value = word.partition("=")
            if word not in options:
                return None
        elif word.startswith("-") and word[:2] in options and word[2:3] not in ("", "="):
            word, value = word[:2], word[2:]
        elif word.startswith("-"):
            return None  # unknown, abbreviated, combined flags, a negative number, or "-"
        if value is not None:
            if value == "--":  # argparse drops it from the value (and gives [] for it)
                return None
            option = options[word]
            try:
                converted = option.type(value)
            except Exception:  # argparse says what is wrong with it
                return None
            if option.append:
                values[option.dest] = [*(values[option.dest] or ()), converted]
            else:
                values[option.dest] = converted
            continue
        if given or positional is None:
            return None
        try:
            values[positional.dest] = positional.type(word)
        except Exception:
            return None
        given = True
    if positional is not None and positional.required and not given:
        return None
    return Namespace(**values)
