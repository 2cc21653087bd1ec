"""Putting inspector output on the screen: rich tables on a terminal, plain aligned text otherwise.

Plain text is used when the stream is not a terminal, when ``NO_COLOR`` is set (https://no-color.org),
when ``TERM=dumb``, when ``rich`` (the ``pretty`` extra) is not installed, or when the command was
given ``--plain``. ``rich`` is imported only when it is actually used, so piping ``kmemdump ls`` into
``grep`` never pays for it. On a terminal, tables are fitted to its width.

Also here: the small formatters every command shares (sizes, times, addresses), the classic
16-bytes-a-line hex dump, and a progress wrapper that draws a bar only for long work on a terminal.
"""

from __future__ import annotations

import os
import sys

from kmemdump.record import frozen

TYPE_CHECKING = False  # typing is imported for mypy only: the command line starts faster without it
if TYPE_CHECKING:
    from collections.abc import Iterable
    from collections.abc import Iterator
    from collections.abc import Sequence
    from typing import IO
    from typing import Any
    from typing import TypeVar

    T = TypeVar("T")

__all__ = [
    "PROGRESS_THRESHOLD",
    "SEPARATOR",
    "Column",
    "Output",
    "clip",
    "fit_columns",
    "format_address",
    "format_duration",
    "format_size",
    "format_time",
    "hexdump_lines",
    "json_text",
    "printable",
    "progress",
    "rich_installed",
    "terminal_width",
    "wants_rich",
]

PROGRESS_THRESHOLD = 32
"""Fewer items than this finish before a bar would be worth drawing."""


_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_CONTROLS.update({0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"})
_CONTROLS_BUT_NEWLINE = {c: text for c, text in _CONTROLS.items() if c != 0x0A}


def printable(text: str, *, newlines: bool = False) -> str:
    """``text`` with control characters (escape sequences, carriage returns, and newlines unless
    ``newlines``) written as backslash escapes: what a process or a dump holds never drives the
    terminal nor breaks a table's lines."""
    return text.translate(_CONTROLS_BUT_NEWLINE if newlines else _CONTROLS)


def wants_rich(stream: IO[str], plain: bool = False) -> bool:
    """True when ``stream`` is a terminal and nothing asked for plain text."""
    if plain or os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real file
        return False


# --- formatters ------------------------------------------------------------------------------


def format_size(n: int) -> str:
    """``512 B``, ``1.5 KiB``, ``12.0 MiB``: binary units, one decimal above bytes."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def format_time(ns: int) -> str:
    """A wall-clock time in UTC, to the millisecond (dump file names use UTC as well)."""
    import time  # not datetime: ls and show print times, and datetime costs their start-up a millisecond

    seconds, rest = divmod(ns, 1_000_000_000)
    try:
        moment = time.gmtime(seconds)
        if not 1 <= moment.tm_year <= 9999:
            raise ValueError(moment.tm_year)
    except (OverflowError, OSError, ValueError):
        return f"(time out of range: {ns} ns)"
    return time.strftime("%Y-%m-%d %H:%M:%S.", moment) + f"{rest // 1_000_000:03d} UTC"


def format_duration(seconds: float) -> str:
    """``850 ms``, ``5.2 s``, ``3 min 20 s``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.3g} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} min {rest} s"


def format_address(address: int) -> str:
    return f"0x{address:016x}"


def json_text(document: Any) -> str:
    """Indented, ASCII-only JSON (safe whatever the locale); stray bytes become hex, not a crash."""
    import json

    return json.dumps(document, indent=2, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# --- hex dump --------------------------------------------------------------------------------


def hexdump_lines(data: bytes, address: int, *, squeeze: bool = True) -> Iterator[str]:
    """``hexdump -C`` style lines, each starting with the original address of its first byte.

    Runs of identical 16-byte lines are shown once followed by ``*`` (unless ``squeeze`` is false);
    the last line is the address just past the data, as ``hexdump -C`` prints it.
    """
    previous: bytes | None = None
    starred = False
    for offset in range(0, len(data), 16):
        chunk = data[offset : offset + 16]
        if squeeze and chunk == previous and len(chunk) == 16:
            if not starred:
                starred = True
                yield "*"
            continue
        starred = False
        previous = chunk
        left = " ".join(f"{b:02x}" for b in chunk[:8])
        right = " ".join(f"{b:02x}" for b in chunk[8:])
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        yield f"{address + offset:016x}  {left:<23}  {right:<23}  |{text}|"
    yield f"{address + len(data):016x}"


# --- progress --------------------------------------------------------------------------------


def progress(items: Sequence[T], description: str, *, stream: IO[str] | None = None) -> Iterator[T]:
    """Iterate over ``items``, with a transient progress bar on a terminal when there are many."""
    target = sys.stderr if stream is None else stream
    if len(items) < PROGRESS_THRESHOLD or not wants_rich(target) or not rich_installed():
        yield from items
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(file=target), transient=True) as bar:
        task = bar.add_task(description, total=len(items))
        for item in items:
            yield item
            bar.advance(task)


# --- tables that fit the terminal ------------------------------------------------------------


@frozen
class Column:
    """One table column: its header, how it lines up, and what may happen to it on a narrow terminal.

    ``wrap`` columns (free text: names, commands, reasons) are cut to fit, with an ellipsis, down to
    ``min_width``; the others (numbers, addresses, times) keep their width. When even that is too
    wide, the columns with a ``drop`` rank are left out, rank 1 first; a column without one is always
    shown.
    """

    header: str
    right: bool = False
    wrap: bool = True
    drop: int = 0
    min_width: int = 8


SEPARATOR = 2
"""Spaces between two columns, in plain text and (as padding) in rich tables."""


def fit_columns(
    columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int
) -> list[tuple[int, int]]:
    """Which columns to show within ``width`` characters, and how wide: ``[(index, width), ...]``.

    Droppable columns go first, then free-text columns are cut (the widest first). A table that
    cannot fit even so keeps its essential columns at their narrowest and overflows.
    """
    natural = _natural_widths(columns, rows)
    narrowest = [
        min(natural[i], max(c.min_width, len(c.header))) if c.wrap else natural[i]
        for i, c in enumerate(columns)
    ]
    shown = list(range(len(columns)))

    def total(widths: Sequence[int], indices: Sequence[int]) -> int:
        return sum(widths[i] for i in indices) + SEPARATOR * (len(indices) - 1)

    droppable = sorted(((c.drop, i) for i, c in enumerate(columns) if c.drop), reverse=True)
    while total(narrowest, shown) > width and droppable:
        shown.remove(droppable.pop()[1])
    widths = {i: natural[i] for i in shown}
    excess = total(natural, shown) - width
    while excess > 0:
        cuttable = [i for i in shown if columns[i].wrap and widths[i] > narrowest[i]]
        if not cuttable:
            break
        widest = max(cuttable, key=lambda i: widths[i])
        widths[widest] -= 1
        excess -= 1
    return [(i, widths[i]) for i in shown]


def _natural_widths(columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> list[int]:
    return [max([len(c.header), *(len(row[i]) for row in rows)]) for i, c in enumerate(columns)]


def clip(text: str, width: int, ellipsis: str = "…") -> str:
    """``text`` cut to ``width`` characters, the last one an ellipsis when something was cut."""
    if len(text) <= width:
        return text
    return text[: max(width - len(ellipsis), 0)] + ellipsis if width > len(ellipsis) else text[:width]


def terminal_width(stream: IO[str]) -> int | None:
    """The width of the terminal ``stream`` writes to ($COLUMNS wins), or None when it is no terminal."""
    try:
        if not stream.isatty():
            return None
    except (AttributeError, ValueError):
        return None
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        return os.get_terminal_size(stream.fileno()).columns or None
    except (OSError, ValueError, AttributeError):
        return None


def rich_installed() -> bool:
    """Whether ``rich`` (the ``pretty`` extra) can be imported."""
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


# --- output ----------------------------------------------------------------------------------


class Output:
    """Where a command writes: headings, lines, key/value blocks and tables.

    With ``fancy`` (a terminal, no ``NO_COLOR``, rich installed) the output goes through ``rich``
    (bold headings, styled tables); without it, everything is plain text with columns aligned by
    spaces, suitable for ``grep`` and ``awk``. On a terminal tables are fitted to its width (free
    text cut with an ellipsis, the least needed columns left out); ``--plain`` and pipes get every
    column whole. User-supplied text is never interpreted as rich markup.
    """

    def __init__(self, stream: IO[str] | None = None, *, plain: bool = False) -> None:
        self.stream = sys.stdout if stream is None else stream
        self.fancy = wants_rich(self.stream, plain) and rich_installed()
        self.width = None if plain else terminal_width(self.stream)
        """The terminal's width that tables fit in; None: print them whole."""
        encoding = (getattr(self.stream, "encoding", None) or "").lower().replace("-", "")
        self.ellipsis = "…" if encoding in ("utf8", "utf_8") else "~"
        self._console: Any = None

    @property
    def console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(
                file=self.stream, highlight=False, markup=False, emoji=False, width=self.width
            )
        return self._console

    def line(self, text: str = "") -> None:
        text = printable(text, newlines=True)
        if self.fancy:
            self.console.print(text, soft_wrap=True)
        else:
            print(text, file=self.stream)

    def heading(self, text: str) -> None:
        if self.fancy:
            from rich.text import Text

            self.console.print()
            self.console.print(Text(text, style="bold underline"))
        else:
            print(f"\n{text}\n{'-' * len(text)}", file=self.stream)

    def fields(self, pairs: Iterable[tuple[str, str]]) -> None:
        """``Label:  value`` lines with the values aligned; an empty label continues the line above."""
        rows = list(pairs)
        if not rows:
            return
        width = max(len(label) for label, _ in rows) + 1
        for label, raw in rows:
            head = f"{label + ':' if label else '':<{width}}"
            value = printable(raw)
            if self.fancy:
                from rich.text import Text

                self.console.print(Text.assemble((head, "bold"), f"  {value}"), soft_wrap=True)
            else:
                print(f"{head}  {value}", file=self.stream)

    def table(
        self, columns: Sequence[Column], rows: Sequence[Sequence[str]], *, title: str | None = None
    ) -> None:
        rows = [[printable(cell) for cell in row] for row in rows]
        if self.width is None:
            layout = list(enumerate(_natural_widths(columns, rows)))
        else:
            layout = fit_columns(columns, rows, self.width)
        shown = [columns[i] for i, _ in layout]
        cells = [[clip(row[i], w, self.ellipsis) for i, w in layout] for row in rows]
        if self.fancy:
            self._rich_table(shown, [w for _, w in layout], cells, title)
            return
        if title:
            self.heading(title)
        for row in [[c.header for c in shown], *cells]:
            text = [
                f"{cell:>{w}}" if column.right else f"{cell:<{w}}"
                for column, cell, (_, w) in zip(shown, row, layout, strict=True)
            ]
            print((" " * SEPARATOR).join(text).rstrip(), file=self.stream)

    def _rich_table(
        self,
        columns: Sequence[Column],
        widths: Sequence[int],
        rows: Sequence[Sequence[str]],
        title: str | None,
    ) -> None:
        from rich import box
        from rich.table import Table
        from rich.text import Text

        if title:
            self.console.print()
        table = Table(
            title=title,
            title_justify="left",
            title_style="bold underline",
            box=box.SIMPLE_HEAD,
            show_edge=False,
            pad_edge=False,
            padding=(0, SEPARATOR - 1, 0, 0),
        )
        for column, width in zip(columns, widths, strict=True):
            table.add_column(
                column.header, justify="right" if column.right else "left", no_wrap=True, width=width
            )
        for row in rows:
            table.add_row(*(Text(cell) for cell in row))
        # a table wider than the terminal (its essential columns alone) overflows rather than being squeezed
        needed = sum(widths) + SEPARATOR * (len(widths) - 1)
        self.console.print(table, width=max(needed, self.width or 0) if self.width else None)
