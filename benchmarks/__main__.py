"""Run the benchmarks and print one table: what we measured, its baseline in the same run, the ratio.

    .venv/bin/python -m benchmarks                  # everything (about ten minutes; root for minicoredumper)
    .venv/bin/python -m benchmarks --quick          # every suite, fewer rounds and processes (two or three)
    .venv/bin/python -m benchmarks --only disk      # one suite (repeatable); --list names them
    .venv/bin/python -m benchmarks --json           # machine-readable rows

Targets come from the design notes and the issues; nothing here is asserted by the test suite.
Exit status 1 when a target is missed, so that a regression shows in a script.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict

from benchmarks.rows import Row
from benchmarks.suites import SUITES
from benchmarks.timing import Config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run: fewer rounds, fewer processes")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per suite (overrides its default)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--only", action="append", default=None, help="run only this suite (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the suites and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(SUITES))
        return 0
    unknown = [name for name in args.only or () if name not in SUITES]
    if unknown:
        parser.error(f"no suite named {', '.join(unknown)} (--list names them)")
    config = Config(quick=args.quick, rounds=args.rounds)
    rows: list[Row] = []
    load = os.getloadavg()[0]
    for name, suite in SUITES.items():
        if args.only and name not in args.only:
            continue
        print(f"running {name} (load average {os.getloadavg()[0]:.2f}) …", file=sys.stderr, flush=True)
        try:
            rows.extend(suite(config))
        except Exception as err:  # one suite's failure is a row: the others still run
            rows.append(
                Row(f"{name}: the suite failed", float("nan"), "", None, "", None, "runs", False, repr(err))
            )
    if args.json:
        print(json.dumps([asdict(r) | {"met": r.met} for r in rows], indent=2))
    else:
        print(render(rows))
        print(f"\nload average at the start {load:.2f}, at the end {os.getloadavg()[0]:.2f}")
    return 0 if all(r.met is not False for r in rows) else 1


def render(rows: list[Row]) -> str:
    header = ("measure", "kmemdump", "baseline", "ratio", "target", "met")
    table = [header] + [r.cells() for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  {r.measure}: {r.note}" for r in rows if r.note]
    return "\n".join(lines + (["", "notes:", *notes] if notes else []))


if __name__ == "__main__":
    raise SystemExit(main())
