"""Shared fixtures: isolated table and dump directories, and capability checks with reasons."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def table_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private table directory (0700), also exported as $KMEMDUMP_DIR for children."""
    path = tmp_path / "tables"
    path.mkdir(mode=0o700)
    monkeypatch.setenv("KMEMDUMP_DIR", str(path))
    yield path


@pytest.fixture
def dump_dir(tmp_path: Path) -> Path:
    path = tmp_path / "dumps"
    path.mkdir()
    return path


def require_tool(name: str) -> str:
    """The tool's path, or skip the test saying which tool is missing."""
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed on this machine (used as an independent oracle)")
    return found
