"""The ledger of shipped dumps: what it takes for a record to count, and what it takes to be trusted at all
(a planted link, a directory of another user or one others may write to is refused, said in one error)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kmemdump.collector.retention import Limits
from kmemdump.collector.retention import Policy
from kmemdump.collector.retention import enforce
from kmemdump.fleet.ledger import LEDGER_DIR
from kmemdump.fleet.ledger import Ledger
from kmemdump.fleet.ledger import LedgerError


def _dump(directory: Path, pid: int) -> Path:
    path = directory / f"kmemdump-{pid}-1-hang-20261128T101500.000000Z.core"
    path.write_bytes(b"dump %d" % pid)
    return path


def test_a_record_counts_for_that_very_file_only(tmp_path: Path) -> None:
    path = _dump(tmp_path, 1)
    with Ledger.open(tmp_path, create=True) as ledger:  # type: ignore[union-attr]
        ledger.record(path.name, os.stat(path), "s3://b/k")
        assert ledger.shipped(path.name, os.stat(path)) and ledger.names() == [path.name]
        path.write_bytes(b"dump 1 changed")  # the same inode, other bytes: not what was shipped
        assert not ledger.shipped(path.name, os.stat(path))
        ledger.tidy(set())  # its dump is gone from the directory's listing: the record goes
        assert ledger.names() == []
    with pytest.raises(ValueError, match="not a dump name"):
        Ledger.open(tmp_path).record("../escape", os.stat(path), "s3://b/k")  # type: ignore[union-attr]


def test_a_directory_that_never_shipped_has_no_ledger(tmp_path: Path) -> None:
    assert Ledger.open(tmp_path) is None
    assert not (tmp_path / LEDGER_DIR).exists()


@pytest.mark.parametrize("plant", ["link", "others-write", "other-owner"])
def test_an_untrusted_ledger_is_refused_and_no_dump_counts_as_shipped(tmp_path: Path, plant: str) -> None:
    if plant == "other-owner" and os.geteuid() != 0:
        pytest.skip("gives the ledger to another uid (chown)")
    dumps = [_dump(tmp_path, pid) for pid in (1, 2, 3)]
    ledger_dir = tmp_path / LEDGER_DIR
    if plant == "link":
        real = tmp_path / "elsewhere"
        real.mkdir()
        ledger_dir.symlink_to(real)
    else:
        with Ledger.open(tmp_path, create=True) as ledger:  # type: ignore[union-attr]
            for path in dumps:  # records that would make every dump look shipped
                ledger.record(path.name, os.stat(path), "s3://b/k")
        if plant == "others-write":
            os.chmod(ledger_dir, 0o777)
        else:
            os.chown(ledger_dir, 65534, 65534)
    with pytest.raises(LedgerError, match="ship ledger"):
        Ledger.open(tmp_path)
    # retention takes every dump for unshipped: in a directory that ships, it removes none of them
    result = enforce(tmp_path, Policy(per_user=Limits(count=1)))
    assert result.ledger_problem.startswith(f"the ship ledger {ledger_dir}")
    assert result.removals == () and len(result.kept) == 2
    assert all(p.exists() for p in dumps)


def test_a_file_planted_as_the_ledger_is_an_error_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / LEDGER_DIR).write_text("not a directory")
    with pytest.raises(LedgerError, match="cannot be made or opened: Not a directory"):
        Ledger.open(tmp_path, create=True)
