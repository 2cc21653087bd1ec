"""Retention that knows what is shipped: in a directory that ships, the limits remove shipped dumps
(the bucket has them) and keep those not shipped yet (the only copy), saying so, until a hard bound;
``--unshipped last`` and ``ignore`` give the other orders. The shipped state is the ledger the real
shipper writes after a confirmed upload to a real SeaweedFS."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from helpers_child import spawn_child
from helpers_fleet import HUNG_PRODUCER
from helpers_fleet import Collector
from helpers_fleet import dump_files
from helpers_fleet import write_dump
from kmemdump.cli.main import main
from kmemdump.collector.retention import DumpFile
from kmemdump.collector.retention import Limits
from kmemdump.collector.retention import Policy
from kmemdump.collector.retention import plan
from kmemdump.collector.retention import plan_retention
from kmemdump.fleet.ledger import Ledger
from kmemdump.fleet.shipper import ShipOptions
from kmemdump.fleet.shipper import Shipper
from kmemdump.fleet.url import parse_url


def _file(n: int, uid: int = 1000, *, shipped: bool = False, size: int = 100) -> DumpFile:
    return DumpFile(f"kmemdump-{n}-1-hang-20260101T000000.000000Z.core", uid, size, 10**12 + n, shipped)


def _names(removals: object) -> list[int]:
    return [int(r.file.name.split("-")[1]) for r in removals]  # type: ignore[attr-defined]


def test_protect_removes_shipped_dumps_only_and_says_which_unshipped_ones_it_kept() -> None:
    # oldest first: 1 and 2 not shipped, 3 and 4 shipped, 5 not shipped
    files = [_file(1), _file(2), _file(3, shipped=True), _file(4, shipped=True), _file(5)]
    result = plan_retention(files, Policy(per_user=Limits(count=2)), shipping=True)
    assert result.mode == "protect"
    assert _names(result.removals) == [3, 4]  # newer than 1 and 2, but shipped
    assert all(r.why.endswith(", shipped") for r in result.removals)
    assert _names(result.kept) == [1]  # 1 would have gone next; 2 and 5 are within the limit then
    assert result.kept[0].why == "user 1000 over 2 dumps, but not shipped yet"
    assert result.kept_line().startswith("kept 1 dump (100 bytes) not shipped yet past the retention limits")


def test_protect_lets_unshipped_dumps_go_past_the_hard_bound_oldest_first() -> None:
    files = [_file(n) for n in range(1, 7)]  # nothing shipped: the store has been away
    policy = Policy(total=Limits(count=2), hard=Limits(count=4))
    result = plan_retention(files, policy, shipping=True)
    assert _names(result.removals) == [1, 2]
    assert all(r.why == "directory over the hard bound of 4 dumps; not shipped yet" for r in result.removals)
    assert _names(result.kept) == [3, 4]
    # the dump just written is never removed, not even past the hard bound
    kept_new = plan_retention(files, Policy(hard=Limits(count=1)), shipping=True, keep=[files[0].name])
    assert _names(kept_new.removals) == [2, 3, 4, 5, 6]


def test_protect_keeps_unshipped_dumps_past_the_age_limit() -> None:
    now = 10**12 + 100 * 10**9
    files = [_file(1), _file(2, shipped=True), _file(3)]
    result = plan_retention(files, Policy(per_user=Limits(age_s=10)), shipping=True, now_ns=now)
    assert _names(result.removals) == [2] and _names(result.kept) == [1, 3]
    assert result.kept[0].why == "older than 10 s, but not shipped yet"


def test_last_removes_shipped_dumps_first_then_the_others() -> None:
    files = [_file(1), _file(2), _file(3, shipped=True), _file(4, shipped=True), _file(5)]
    result = plan_retention(files, Policy(per_user=Limits(count=2), unshipped="last"), shipping=True)
    assert _names(result.removals) == [3, 4, 1] and not result.kept


def test_the_total_limit_takes_shipped_dumps_of_the_heaviest_user_first() -> None:
    files = [
        _file(1, 2001, size=500),  # the heaviest user's oldest dump, not shipped
        _file(2, 2002, size=10, shipped=True),
        _file(3, 2001, size=500, shipped=True),
        _file(4, 2002, size=10),
    ]
    result = plan_retention(files, Policy(total=Limits(size=600)), shipping=True)
    assert _names(result.removals) == [3]  # shipped, and its user holds the most
    assert _names(result.kept) == []  # 1020 - 500 = 520 bytes: within the limit


def test_ignore_and_a_directory_that_does_not_ship_keep_the_oldest_first_rule() -> None:
    files = [_file(1), _file(2), _file(3, shipped=True), _file(4, shipped=True), _file(5)]
    policy = Policy(per_user=Limits(count=2))
    expected = [1, 2, 3]
    assert _names(plan(files, policy)) == expected
    assert _names(plan_retention(files, policy, shipping=False).removals) == expected
    ignore = plan_retention(files, Policy(per_user=Limits(count=2), unshipped="ignore"), shipping=True)
    assert _names(ignore.removals) == expected and ignore.mode == "ignore"


# --- with the real shipper and the command line ---------------------------------------------------


def _dumps(directory: Path, pids: range) -> list[Path]:
    made = []
    for pid in pids:
        path = write_dump(
            directory, host="h", pid=pid, reason="hang", captured_ns=1_795_860_900_000_000_000 + pid
        )
        os.utime(path, ns=(10**18 + pid, 10**18 + pid))  # oldest first by pid, long settled
        made.append(path)
    return made


@pytest.mark.slow
def test_prune_removes_what_the_shipper_confirmed_and_keeps_the_rest(
    store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "dumps"
    directory.mkdir()
    # GIVEN four dumps, of which the shipper uploads the two newest (the older two came before --ship)
    old = _dumps(directory, range(11, 13))
    new = _dumps(directory, range(13, 15))
    lines: list[str] = []
    shipper = Shipper(
        ShipOptions(parse_url(store_url), tmp_path / "spool", dump_dir=directory, sweep=False),
        log=lines.append,
    )
    shipper.start()
    try:
        for path in new:
            shipper.submit(path)
        assert shipper.wait_idle(60), lines
    finally:
        shipper.stop()
    # WHEN prune keeps one dump (a directory that ships: unshipped dumps are protected by default)
    assert main(["prune", str(directory), "--keep", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # THEN the shipped ones went, although newer, and the two unshipped ones were kept, and said so
    assert report["unshipped"] == "protect"
    assert sorted(r["name"] for r in report["removed"]) == sorted(p.name for p in new)
    assert all(r["shipped"] for r in report["removed"])
    assert [r["name"] for r in report["kept"]] == [old[0].name]  # the older one would have gone next
    assert sorted(p.name for p in dump_files(directory)) == sorted(p.name for p in old)
    with Ledger.open(directory) as ledger:  # type: ignore[union-attr]
        assert ledger.names() == []  # their records went with them
    # AND the text output says what it kept and why, on stdout, and the summary on stderr
    assert main(["prune", str(directory), "--keep", "1"]) == 0
    out, err = capsys.readouterr()
    assert (
        out.startswith(f"kept {old[0].name} (")
        and f"user {os.geteuid()} over 1 dump, but not shipped yet" in out
    )
    assert err.startswith("kmemdump prune: kept 1 dump (") and "--hard-total" in err
    # AND past the hard bound even an unshipped dump goes, the oldest
    assert main(["prune", str(directory), "--keep", "1", "--hard-total", "1"]) == 0
    out, _ = capsys.readouterr()
    assert out.startswith(f"removed {old[0].name} (") and "hard bound of 1 dump; not shipped yet" in out
    assert [p.name for p in dump_files(directory)] == [old[1].name]


@pytest.mark.slow
def test_a_dump_replaced_under_a_shipped_name_is_not_shipped(
    store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "dumps"
    directory.mkdir()
    (path,) = _dumps(directory, range(21, 22))
    options = ShipOptions(parse_url(store_url), tmp_path / "spool", dump_dir=directory, sweep_max_age=None)
    shipper = Shipper(options, log=lambda line: None)
    shipper.start()
    try:
        assert shipper.wait_idle(60)
    finally:
        shipper.stop()
    with Ledger.open(directory) as ledger:  # type: ignore[union-attr]
        assert ledger.shipped(path.name, os.stat(path))
        data = path.read_bytes()
        path.unlink()
        path.write_bytes(data)  # the same bytes, another file: not the one shipped
        assert not ledger.shipped(path.name, os.stat(path))
    assert main(["prune", str(directory), "--keep-size", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["removed"] == [] and [r["name"] for r in report["kept"]] == [path.name]


@pytest.mark.slow
def test_watch_removes_a_shipped_dump_to_meet_its_limit(
    store_url: str, table_dir: Path, dump_dir: Path
) -> None:
    args = [
        "--tables",
        str(table_dir),
        "--dir",
        str(dump_dir),
        "--no-stacks",
        "--keep",
        "1",
        "--ship",
        store_url,
    ]
    with Collector(args) as collector:
        collector.wait_for("watching")
        with spawn_child(HUNG_PRODUCER, args=["0.3"]) as first:
            first.recv()
            collector.wait_for(f"ship pid={first.pid} uploaded")
            with spawn_child(HUNG_PRODUCER, args=["0.3"]) as second:
                second.recv()
                collector.wait_for(f"ship pid={second.pid} uploaded")
                (removed,) = collector.wait_for(" removed kmemdump-")
                assert collector.stop() == 0
    # the first dump went once shipped; the second, as newest, stays
    assert f"kmemdump-{first.pid}-" in removed and "over 1 dump, shipped" in removed
    assert [p.name.split("-")[1] for p in dump_files(dump_dir)] == [str(second.pid)]
