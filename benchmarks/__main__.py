"""Run every benchmark and print one table: what we measured, its baseline in the same run, the ratio.

    .venv/bin/python -m benchmarks            # everything (about two minutes)
    .venv/bin/python -m benchmarks --quick    # skip gcore and the 100-process collector
    .venv/bin/python -m benchmarks --json     # machine-readable rows

The targets come from docs (DESIGN §5). Timings are best-of-N so a noisy machine disturbs them
least; they are never asserted in the test suite.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from benchmarks.rows import Row
from benchmarks.suites import SUITES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="skip the slow comparisons (gcore, 100 processes)"
    )
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--only", action="append", default=None, help="run only this suite (repeatable)")
    args = parser.parse_args(argv)
    rows: list[Row] = []
    for name, (suite, slow) in SUITES.items():
        if (args.only and name not in args.only) or (slow and args.quick and not args.only):
            continue
        print(f"running {name} …", file=sys.stderr, flush=True)
        rows.extend(suite())
    if args.json:
        print(json.dumps([asdict(r) | {"met": r.met} for r in rows], indent=2))
    else:
        print(render(rows))
    return 0 if all(r.met is not False for r in rows) else 1


def render(rows: list[Row]) -> str:
    header = ("measure", "kmemdump", "baseline", "ratio", "target", "met")
    table = [header] + [r.cells() for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
