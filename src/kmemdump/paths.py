"""Path text without pathlib: what ``str(Path(path))``, ``Path(path).name`` and ``.parent`` give.

pathlib with what it imports (``re``, ``fnmatch``, ``urllib.parse``, ``ipaddress``) costs a command's
start-up about 5 ms: the command line's common paths (``ls``, ``show``, ``dump PID``) and the modules
they load work on ``str`` paths (``os.path``). Standard library only (``os``).
"""

from __future__ import annotations

import os

__all__ = ["path_name", "path_parent", "path_text"]


def path_text(path: str) -> str:
    """``str(Path(path))`` without pathlib (which costs a command's start-up milliseconds): no doubled
    or trailing slashes, no ``.`` parts; a leading ``//`` (but not ``///``) is kept, as POSIX allows."""
    root = "//" if path.startswith("//") and not path.startswith("///") else "/" if path[:1] == "/" else ""
    return root + "/".join(part for part in path.split("/") if part and part != ".") or "."


def path_name(path: str) -> str:
    """``Path(path).name`` without pathlib: the last part of the path, ``""`` for a root or ``.``."""
    name = path_text(path).rpartition("/")[2]
    return "" if name == "." else name


def path_parent(path: str) -> str:
    """``str(Path(path).parent)`` without pathlib: the directory part, ``.`` for a bare name."""
    return os.path.dirname(path_text(path)) or "."
