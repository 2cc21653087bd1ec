"""Remove old dumps so that a directory meets a retention policy: per user and in total.

Dumps belong to the user of the process they hold (a root collector gives each to that user); the
per-user limits apply to each owner, the total ones to the whole directory. Oldest dumps go first;
past the total limits, the user who holds the most bytes loses theirs first. Nothing but dump files
(kmemdump-<pid>-<start>-<reason>-<time>.core[.zst], regular files) is touched. With --dry-run
nothing is removed. `kmemdump watch` applies the same policy after each dump.

In a directory that ships (`watch --ship` keeps its ledger of shipped dumps there) only shipped dumps
are removed to meet the limits; a dump not shipped yet is kept and said ("kept …: …, but not shipped
yet"), and removed only past --hard-total or --hard-total-size. --unshipped last removes shipped
dumps first and then the others; --unshipped ignore removes the oldest, shipped or not.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kmemdump.cli.options import add_retention_options
from kmemdump.cli.options import default_dump_dir
from kmemdump.cli.options import retention_policy
from kmemdump.collector.retention import Removal
from kmemdump.collector.retention import enforce

__all__ = ["EPILOG", "prepare", "run"]

EPILOG = """\
exit status: 0 (also when nothing had to go); 1 the directory cannot be read; 2 bad usage or no limit given

--json prints {"directory", "dry_run", "policy", "unshipped", "removed": [{"name", "uid", "bytes", "shipped",
"why"}], "kept": [the same, for dumps kept because they are not shipped yet], "ledger_problem"}.
"""


def prepare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dir",
        nargs="?",
        type=Path,
        default=None,
        metavar="DIR",
        help="the dump directory (default: the usual one)",
    )
    add_retention_options(parser)
    parser.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def run(args: argparse.Namespace) -> int:
    policy = retention_policy(args)
    if policy.empty:
        print(
            "kmemdump prune: give at least one limit (--keep, --keep-size, --keep-age, --keep-total, "
            "--keep-total-size)",
            file=sys.stderr,
        )
        return 2
    directory: Path = args.dir if args.dir is not None else Path(default_dump_dir())
    outcome = enforce(directory, policy, dry_run=args.dry_run)
    removed = outcome.removals
    if args.json:
        print(
            json.dumps(
                {
                    "directory": str(directory),
                    "dry_run": args.dry_run,
                    "policy": policy.describe(),
                    "unshipped": outcome.mode,
                    "removed": [_entry(r) for r in removed],
                    "kept": [_entry(r) for r in outcome.kept],
                    "ledger_problem": outcome.ledger_problem or None,
                },
                indent=2,
            )
        )
        return 0
    if outcome.ledger_problem:
        print(f"kmemdump prune: {outcome.ledger_problem}; no dump counts as shipped", file=sys.stderr)
    verb = "would remove" if args.dry_run else "removed"
    for removal in removed:
        print(
            f"{verb} {removal.file.name} ({removal.file.size} bytes, user {removal.file.uid}): {removal.why}"
        )
    for kept in outcome.kept:
        print(f"kept {kept.file.name} ({kept.file.size} bytes, user {kept.file.uid}): {kept.why}")
    sys.stdout.flush()
    if outcome.kept:
        print(f"kmemdump prune: {outcome.kept_line()}", file=sys.stderr)
    elif not removed:
        print(f"{directory} is within the policy ({policy.describe()})", file=sys.stderr)
    return 0


def _entry(removal: Removal) -> dict[str, object]:
    file = removal.file
    return {
        "name": file.name,
        "uid": file.uid,
        "bytes": file.size,
        "shipped": file.shipped,
        "why": removal.why,
    }
