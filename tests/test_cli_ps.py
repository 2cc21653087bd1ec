"""`kmemdump ps`: the live producers, their regions and their heartbeat, as an operator sees them."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from helpers_child import spawn_child
from kmemdump.cli.main import main

PRODUCER = r"""
import kmemdump
kmemdump.init(table=True, watchdog=0.3, pycoreinfo=False)
kmemdump.alloc(1000, name="payload")
kmemdump.feed()
send("up")
block()
"""


def _ps(capsys: pytest.CaptureFixture[str], table_dir: Path) -> list[dict[str, object]]:
    capsys.readouterr()
    assert main(["ps", "--tables", str(table_dir), "--json"]) == 0
    return json.loads(capsys.readouterr().out)["producers"]  # type: ignore[no-any-return]


def test_ps_shows_a_producer_turn_hung_and_then_stale(
    table_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with spawn_child(PRODUCER) as child:
        assert child.recv() == "up"
        # GIVEN a corrupt table beside the real one
        (table_dir / f"{os.getpid()}-1.table").write_bytes(b"not a table")
        (row,) = [p for p in _ps(capsys, table_dir) if p["pid"] == child.pid]
        assert row["regions"] == 2 and row["bytes"] >= 1000 and row["timeout_s"] == 0.3  # banner + payload
        assert row["state"] in ("ok", "HUNG") and "<child>" in str(row["command"])
        # WHEN it stops feeding for longer than its timeout (bounded polling of what ps reports)
        deadline = time.monotonic() + 10
        while row["state"] != "HUNG":
            assert time.monotonic() < deadline
            (row,) = [p for p in _ps(capsys, table_dir) if p["pid"] == child.pid]
        assert isinstance(row["fed_s_ago"], float) and row["fed_s_ago"] > 0.3
        text_code = main(["ps", "--tables", str(table_dir), "--plain"])
        text = capsys.readouterr().out
    assert text_code == 0 and "HUNG" in text and "PID" in text
    # THEN once it is killed, its table (which only a collector removes) shows as stale
    rows = {p["pid"]: p for p in _ps(capsys, table_dir)}
    assert rows[child.pid]["state"] == "stale"
    bad = rows[os.getpid()]
    assert bad["state"] == "unreadable" and bad["error"]


def test_ps_with_no_tables_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ps", "--tables", str(tmp_path)]) == 0
    assert "no kmemdump tables in" in capsys.readouterr().err
