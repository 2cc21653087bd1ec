"""Putting inspector output on the screen: rich tables on a terminal, plain aligned text otherwise.

Plain text is used when the stream is not a terminal, when ``NO_COLOR`` is set (https://no-color.org),
when ``TERM=dumb``, or when the command was given ``--plain``. ``rich`` is imported only when it is
actually used, so piping ``kmemdump ls`` into ``grep`` never pays for it.

Also here: the small formatters every command shares (sizes, times, addresses), the classic
16-bytes-a-line hex dump, and a progress wrapper that draws a bar only for long work on a terminal.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from datetime import timezone
from typing import IO
from typing import Any
from typing import TypeVar

__all__ = [
    "PROGRESS_THRESHOLD",
    "Column",
    "Output",
    "format_address",
    "format_duration",
    "format_size",
    "format_time",
    "hexdump_lines",
    "json_text",
    "progress",
    "wants_rich",
]

T = TypeVar("T")

PROGRESS_THRESHOLD = 32
"""Fewer items than this finish before a bar would be worth drawing."""


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
    moment = datetime.fromtimestamp(ns / 1e9, tz=timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d} UTC"


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
    if len(items) < PROGRESS_THRESHOLD or not wants_rich(target):
        yield from items
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(file=target), transient=True) as bar:
        task = bar.add_task(description, total=len(items))
        for item in items:
            yield item
            bar.advance(task)


# --- output ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Column:
    """One table column: its header, and whether numbers line up on the right."""

    header: str
    right: bool = False
    wrap: bool = True
    """False for cells that must stay whole on a narrow terminal (addresses, numbers)."""


class Output:
    """Where a command writes: headings, lines, key/value blocks and tables.

    With ``fancy`` the output goes through ``rich`` (bold headings, boxed tables); without it,
    everything is plain text with columns aligned by spaces, suitable for ``grep`` and ``awk``.
    User-supplied text is never interpreted as rich markup.
    """

    def __init__(self, stream: IO[str] | None = None, *, plain: bool = False) -> None:
        self.stream = sys.stdout if stream is None else stream
        self.fancy = wants_rich(self.stream, plain)
        self._console: Any = None

    @property
    def console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=self.stream, highlight=False, markup=False, emoji=False)
        return self._console

    def line(self, text: str = "") -> None:
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
        """``Label:  value`` lines with the values aligned."""
        rows = list(pairs)
        if not rows:
            return
        width = max(len(label) for label, _ in rows) + 1
        for label, value in rows:
            head = f"{label + ':':<{width}}"
            if self.fancy:
                from rich.text import Text

                self.console.print(Text.assemble((head, "bold"), f"  {value}"), soft_wrap=True)
            else:
                print(f"{head}  {value}", file=self.stream)

    def table(
        self, columns: Sequence[Column], rows: Sequence[Sequence[str]], *, title: str | None = None
    ) -> None:
        if self.fancy:
            self._rich_table(columns, rows, title)
            return
        if title:
            self.heading(title)
        widths = [len(c.header) for c in columns]
        for row in rows:
            for i, cell in enumerate(row):
                widths[i] = max(widths[i], len(cell))
        for row in [[c.header for c in columns], *rows]:
            cells = [
                f"{cell:>{widths[i]}}" if columns[i].right else f"{cell:<{widths[i]}}"
                for i, cell in enumerate(row)
            ]
            print("  ".join(cells).rstrip(), file=self.stream)

    def _rich_table(
        self, columns: Sequence[Column], rows: Sequence[Sequence[str]], title: str | None
    ) -> None:
        from rich.table import Table
        from rich.text import Text

        if title:
            self.console.print()
        table = Table(title=title, title_justify="left", title_style="bold underline")
        for index, column in enumerate(columns):
            width = None if column.wrap else max([len(column.header), *(len(row[index]) for row in rows)])
            table.add_column(
                column.header,
                justify="right" if column.right else "left",
                no_wrap=not column.wrap,
                min_width=width,
            )
        for row in rows:
            table.add_row(*(Text(cell) for cell in row))
        self.console.print(table)
