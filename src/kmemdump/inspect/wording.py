"""A few words about a dump, shared by the commands that print one line of it (``dump``, ``ls``).

Apart from :mod:`kmemdump.inspect.dumpfile` (which re-exports them) so that ``kmemdump dump`` can
say what it wrote without loading the reader.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kmemdump.formats.dumpmeta import DumpMeta

__all__ = ["plural", "what_is_missing"]


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 thread``, ``2 threads``; ``many`` for irregular plurals."""
    return f"{count} {word if count == 1 else many or word + 's'}"


def what_is_missing(meta: DumpMeta) -> str:
    """A few words on what a partial dump lacks (``2 regions, the layout``), for one-line listings."""
    parts = []
    regions = sum(1 for r in meta.regions if r.status != "ok")
    if regions:
        parts.append(plural(regions, "region"))
    if any(line.startswith("the Python layout") for line in meta.missing):
        parts.append("the layout")
    graphs = sum(1 for g in meta.graphs if g.status != "ok")
    if graphs:
        parts.append(plural(graphs, "object graph"))
    if not parts and meta.partial:
        parts.append("the process was gone")
    return ", ".join(parts)
