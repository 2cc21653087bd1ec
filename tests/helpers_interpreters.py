"""Every CPython on this machine as a test parameter, and the steps the cross-version tests share.

A producer needs nothing but the standard library, so any interpreter runs it from the source tree
(``producer_env``); the collector and the inspector run in the test's own interpreter.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import kmemdump
from kmemdump.collector.dump import DumpOptions
from kmemdump.collector.dump import DumpResult
from kmemdump.collector.dump import dump_target
from kmemdump.procinfo import process_start_time

__all__ = ["EACH_INTERPRETER", "SRC", "producer_env", "request_dump"]

SRC = str(Path(kmemdump.__file__).resolve().parent.parent)
_INTERPRETERS = {
    v: f"/root/.pyenv/versions/{v}/bin/python" for v in ("3.10.13", "3.11.7", "3.12.1", "3.13.0")
}

EACH_INTERPRETER: list[Any] = [
    pytest.param(
        path,
        id=f"python={version.rsplit('.', 1)[0]}",
        marks=pytest.mark.skipif(not os.access(path, os.X_OK), reason=f"Python {version} is not installed"),
    )
    for version, path in _INTERPRETERS.items()
]
"""``@pytest.mark.parametrize("python", EACH_INTERPRETER)``: ids like ``python=3.12``; missing ones skip."""


def producer_env(table_dir: Path) -> dict[str, str]:
    """The environment of a producer importing kmemdump from the source tree, publishing in ``table_dir``."""
    return dict(os.environ, PYTHONPATH=SRC, KMEMDUMP_DIR=str(table_dir))


def request_dump(pid: int, table: str, dump_dir: Path) -> DumpResult:
    """What ``kmemdump dump PID`` does: dump the process now."""
    return dump_target(
        pid, process_start_time(pid), Path(table), reason="request", options=DumpOptions(dump_dir)
    )
