"""A dump says what it lacks: the budget goes to the banner and the layout first, every region or layout
left out makes it partial and is named; a death dump written after the fact still says who died."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest

from helpers_child import spawn_child
from kmemdump.cli.main import main
from kmemdump.collector.dump import DumpOptions
from kmemdump.collector.dump import dump_target
from kmemdump.collector.watch import Watcher
from kmemdump.idenum import ID
from kmemdump.procinfo import process_start_time

pytestmark = pytest.mark.slow

PRODUCER = r"""
import os, sys
import kmemdump
report = kmemdump.init(table=True)
orders = kmemdump.alloc(600, name="orders")
journal = kmemdump.alloc(600, name="journal", persistent=True)
sizes = {r.name: r.size for r in kmemdump.regions()}
send({"table": report.table, "sizes": sizes})
block()
"""


def test_the_budget_goes_to_the_banner_and_the_layout_first(
    table_dir: Path, dump_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with spawn_child(PRODUCER) as child:
        info = child.recv()
        sizes = info["sizes"]
        start = process_start_time(child.pid)
        # room for the predefined regions and nothing else: in ID order the layout would have lost
        budget = sizes["banner"] + sizes["pycoreinfo"] + 100
        result = dump_target(
            child.pid,
            start,
            Path(info["table"]),
            reason="request",
            options=DumpOptions(dump_dir, budget=budget),
        )
        tiny = dump_target(
            child.pid, start, Path(info["table"]), reason="request", options=DumpOptions(dump_dir, budget=64)
        )
    status = {r.name: r.status for r in result.meta.regions}
    assert status == {"banner": "ok", "pycoreinfo": "ok", "orders": "skipped", "journal": "skipped"}
    assert result.meta.partial
    assert [line for line in result.meta.missing if "skipped" in line] == [
        line for line in result.meta.missing if line.startswith("region ")
    ]
    assert len(result.meta.missing) == 2 and not any("layout" in line for line in result.meta.missing)
    # with less than the layout needs, the dump says objects cannot be decoded
    assert tiny.meta.partial
    assert any(line.startswith("the Python layout (PYCOREINFO) is skipped") for line in tiny.meta.missing)
    capsys.readouterr()
    assert main(["show", str(tiny.path), "--plain"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^Contents:.*— PARTIAL$", text, re.M)
    assert re.search(
        r"^Missing:\s+region 1 \(banner\): skipped\n\s+region 2 \(pycoreinfo\): skipped$", text, re.M
    )
    assert re.search(
        r"^\s+the Python layout \(PYCOREINFO\) is skipped: objects cannot be decoded$", text, re.M
    )
    assert main(["show", str(tiny.path), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["dump"]["partial"] and document["dump"]["missing"] == list(tiny.meta.missing)
    assert main(["ls", str(dump_dir), "--plain"]) == 0
    listing = capsys.readouterr().out
    assert "partial  2 regions" in listing
    assert "partial  4 regions, the layout" in listing  # 64 bytes: not even the banner


def test_a_death_dump_after_the_fact_names_its_command_from_the_banner(
    table_dir: Path, dump_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with spawn_child(PRODUCER, args=["--serve", "two words"]) as child:
        child.recv()
        os.kill(child.pid, signal.SIGKILL)
        child.popen.wait()
    events = []
    watcher = Watcher([table_dir], DumpOptions(dump_dir), on_event=events.append)  # after the death
    try:
        watcher.scan()
    finally:
        watcher.close()
    (event,) = [e for e in events if e.kind == "death"]
    assert event.dump is not None
    meta = event.dump.meta
    assert meta.argv == ("<child>", "--serve", "two words")
    assert meta.death is not None and not meta.death.known
    capsys.readouterr()
    assert main(["show", str(event.dump.path), "--plain"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^Command:\s+'<child>' --serve 'two words'$", text, re.M)
    assert re.search(r"^Reason:\s+death: unknown \(the process had ended before the collector", text, re.M)
    assert ID.BANNER in {r.id for r in meta.regions if r.status == "ok"}
