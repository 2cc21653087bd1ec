"""``kmemdump ls`` for a fleet: the dumps of a bucket (``ls s3://BUCKET/PREFIX``), and ``--group``,
which folds dumps (a bucket's or a directory's) into problems by signature.

A bucket is listed from its index objects alone; the dumps themselves are never downloaded. The
DUMP column holds each dump's ``s3://`` URL, which ``show``, ``hexdump``, ``extract`` and ``gdb``
accept as it is.
"""

from __future__ import annotations

import os
import sys

from kmemdump.cli.options import path_text
from kmemdump.cli.render import Column
from kmemdump.cli.render import Output
from kmemdump.cli.render import format_size
from kmemdump.cli.render import format_time
from kmemdump.cli.render import json_text
from kmemdump.cli.render import printable
from kmemdump.cli.render import progress
from kmemdump.errors import KmemdumpError
from kmemdump.inspect.dumpfile import plural

TYPE_CHECKING = False  # plain `kmemdump ls DIR` imports this module: the fleet's parts load on use
if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterable

    from kmemdump.fleet.url import StoreURL
    from kmemdump.formats.dumpindex import DumpIndex
    from kmemdump.inspect.filters import DumpFilter
    from kmemdump.inspect.triage import Problem
    from kmemdump.inspect.triage import TriageRecord

__all__ = [
    "SKIPPED_SHOWN",
    "add_fleet_options",
    "dir_or_url",
    "is_url",
    "local_records",
    "print_problems",
    "report_skipped",
    "run_remote",
]

_DUMP_COLUMNS = (
    Column("TIME (UTC)", wrap=False),
    Column("HOST", min_width=8),
    Column("PID", right=True, wrap=False),
    Column("REASON", wrap=False),
    Column("SIZE", right=True, wrap=False, drop=3),
    Column("STATE", wrap=False, drop=4),
    Column("SIGNATURE", min_width=16, drop=2),
    Column("COMMAND", min_width=12, drop=5),
    Column("DUMP", wrap=False, drop=1),
)
_PROBLEM_COLUMNS = (
    Column("COUNT", right=True, wrap=False),
    Column("FIRST SEEN (UTC)", wrap=False, drop=3),
    Column("LAST SEEN (UTC)", wrap=False),
    Column("HOSTS", min_width=10),
    Column("REASON", wrap=False),
    Column("SIGNATURE", min_width=20),
    Column("ID", wrap=False, drop=2),
    Column("LATEST", wrap=False, drop=1),
)


def is_url(text: str) -> bool:
    """Whether ls's DIR argument names a bucket: an ``s3://`` URL, or ``s3:/x`` or ``s3:x`` that is
    not an existing path (a mistyped URL, refused by the URL parser rather than listed as a missing
    directory)."""
    if text[:3].lower() != "s3:":  # a path: the URL parser is not loaded for it
        return False
    from kmemdump.fleet.url import is_remote

    return is_remote(text) or not os.path.lexists(text)


def dir_or_url(text: str) -> str:
    """ls's DIR argument: an ``s3://`` URL (:func:`is_url`) as it is (a path would fold its ``//``),
    a path as ``str(Path(text))`` writes it."""
    return text if is_url(text) else path_text(text)


def add_fleet_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        action="append",
        metavar="HOST",
        help="only dumps from this host (repeatable; a bucket's dumps, or local ones)",
    )
    parser.add_argument(
        "--group",
        action="store_true",
        help="fold the dumps into problems by signature: count, first and last seen, hosts",
    )


def run_remote(args: argparse.Namespace, wanted: DumpFilter) -> int:
    """``ls s3://BUCKET/PREFIX`` with ``args``' filters and output options."""
    import threading

    from kmemdump.fleet.remote import list_indexes
    from kmemdump.fleet.s3 import ObjectStore
    from kmemdump.fleet.url import parse_url

    url = parse_url(str(args.dir))
    skipped: list[tuple[str, KmemdumpError]] = []
    lock = threading.Lock()

    def on_error(key: str, err: KmemdumpError) -> None:  # called from the reading threads
        with lock:
            skipped.append((key, err))

    indexes = list_indexes(ObjectStore(url, timeout=60.0), url, wanted, on_error=on_error)
    skipped.sort(key=lambda item: item[0])
    if not args.json:
        report_skipped([f"s3://{url.bucket}/{key}: {err}" for key, err in skipped])
    last = getattr(args, "last", None)
    if last:
        indexes = indexes[-last:]
    where = f"s3://{url.bucket}/"
    if args.group:
        return print_problems(args, [_record(i, where) for i in indexes], str(url), len(skipped))
    if getattr(args, "reverse", False):
        indexes.reverse()
    if args.json:
        document = {
            "url": str(url),
            "dumps": [{**i.to_json(), "url": where + i.key} for i in indexes],
            "skipped": [{"key": key, "error": str(err)} for key, err in skipped],
        }
        print(json_text(document))
        return 0
    if not indexes:
        filtered = " matching the filters" if wanted.active else ""
        print(f"no dumps{filtered} in {url}{_layout_hint(url)}", file=sys.stderr)
        return 0
    Output(plain=args.plain).table(_DUMP_COLUMNS, [_row(i, where) for i in indexes])
    return 0


def _layout_hint(url: StoreURL) -> str:
    """A hint when the prefix reaches into the key layout (``PREFIX/DAY`` or ``PREFIX/DAY/HOST``),
    where nothing is listed: ls takes the shipping prefix and filters by day and host itself."""
    from datetime import date
    from datetime import timedelta

    from kmemdump.fleet.url import StoreURL

    parts = url.prefix.split("/") if url.prefix else []
    for depth, flag in ((1, ""), (2, " --host {host}")):
        if len(parts) >= depth and _is_day(parts[-depth]):
            base = StoreURL(url.bucket, "/".join(parts[:-depth]))
            day = parts[-depth]
            try:
                after = (date.fromisoformat(day) + timedelta(days=1)).isoformat()
            except ValueError:
                continue
            host = parts[-1] if depth == 2 else ""
            return (
                f" ({day} is a day of the key layout PREFIX/DAY/HOST/…: list it with "
                f"kmemdump ls {base} --since {day} --until {after}{flag.format(host=host)})"
            )
    return ""


def _is_day(text: str) -> bool:
    """``YYYY-MM-DD`` in ASCII digits."""
    digits = text[:4] + text[5:7] + text[8:]
    return len(text) == 10 and text[4] == text[7] == "-" and digits.isascii() and digits.isdigit()


def _row(index: DumpIndex, where: str) -> list[str]:
    return [
        format_time(index.captured_ns)[:-8],
        index.host,
        str(index.pid),
        index.reason if index.death is None else f"{index.reason} ({index.death})",
        format_size(index.size) + (" zst" if index.compressed else ""),
        "partial" if index.partial else "complete",
        index.title,
        index.command,
        where + index.key,
    ]


def _record(index: DumpIndex, where: str) -> TriageRecord:
    from kmemdump.inspect.triage import TriageRecord

    return TriageRecord(
        index.signature,
        index.reason,
        index.frames,
        index.signature_basis,
        index.host,
        index.pid,
        index.captured_ns,
        where + index.key,
        index.command,
        index.death,
    )


def local_records(paths: Iterable[str], on_error: object = None) -> list[TriageRecord]:
    """Triage records for local dump files (their signatures computed now)."""
    from kmemdump.inspect.dumpfile import Dump
    from kmemdump.inspect.dumpfile import command_line
    from kmemdump.inspect.signature import compute_signature
    from kmemdump.inspect.triage import TriageRecord

    records = []
    for path in progress(list(paths), "reading dumps"):
        try:
            with Dump.open(path) as dump:
                meta = dump.meta
                signature = compute_signature(meta, dump.stacks)
        except KmemdumpError as err:
            if callable(on_error):
                on_error(path, err)
            continue
        records.append(
            TriageRecord(
                signature.id,
                meta.reason,
                signature.frames,
                signature.basis,
                meta.host,
                meta.pid,
                meta.captured_ns,
                str(path),
                command_line(meta),
                meta.death.describe() if meta.death is not None else None,
            )
        )
    return records


def _hosts(problem: Problem, limit: int = 3) -> str:
    named = ", ".join(problem.hosts[:limit])
    more = f" +{len(problem.hosts) - limit}" if len(problem.hosts) > limit else ""
    return f"{len(problem.hosts)}: {named}{more}"


def print_problems(
    args: argparse.Namespace, records: list[TriageRecord], source: str, skipped: int = 0
) -> int:
    """The ``--group`` view of ``records``: one row per problem, the most frequent first."""
    from kmemdump.inspect.triage import fold

    problems = fold(records)
    if args.json:
        document = {
            "source": source,
            "dumps": len(records),
            "skipped": skipped,
            "problems": [p.to_json() for p in problems],
        }
        print(json_text(document))
        return 0
    if not problems:
        print(f"no dumps in {source}", file=sys.stderr)
        return 0
    rows = [
        [
            str(p.count),
            format_time(p.first_ns)[:-8],
            format_time(p.last_ns)[:-8],
            _hosts(p),
            p.reason,
            " < ".join(p.frames[:3]) if p.frames else p.basis,
            p.signature,
            p.latest,
        ]
        for p in problems
    ]
    Output(plain=args.plain).table(_PROBLEM_COLUMNS, rows)
    sys.stdout.flush()  # the table before the summary, also when both go to one file
    print(
        f"{plural(len(records), 'dump')}, {plural(len(problems), 'problem')}; "
        "'kmemdump show' on a LATEST opens that dump",
        file=sys.stderr,
    )
    return 0


SKIPPED_SHOWN = 10
"""Objects or files that could not be read, named one per line on stderr; the rest are counted."""


def report_skipped(lines: list[str]) -> None:
    """Say on stderr what was skipped: whole lines, each one write (never glued to another line or
    to the table on stdout), at most :data:`SKIPPED_SHOWN` of them and then how many more."""
    if not lines:
        return
    sys.stdout.flush()
    shown = [f"kmemdump: skipped {printable(line)}\n" for line in lines[:SKIPPED_SHOWN]]
    if len(lines) > SKIPPED_SHOWN:
        shown.append(f"kmemdump: skipped {len(lines) - SKIPPED_SHOWN} more (--json lists them all)\n")
    sys.stderr.write("".join(shown))
    sys.stderr.flush()
