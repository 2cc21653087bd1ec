"""Hex dump of one region of a dump, 16 bytes a line with their original addresses.

The layout is that of 'hexdump -C': address, two groups of eight bytes, then the printable
ASCII between bars; runs of identical lines are shown once followed by '*'. REGION is an ID
(17, 0x11), a region name, or a predefined name such as BANNER. Only the bytes the dump stored
are shown; a partially stored region says so on stderr.
"""

from __future__ import annotations

import argparse
import sys

from kmemdump.cli.options import REGION_HELP
from kmemdump.cli.options import add_dump_argument
from kmemdump.cli.options import add_range_options
from kmemdump.cli.options import dump_path
from kmemdump.cli.options import select_range
from kmemdump.cli.render import hexdump_lines
from kmemdump.cli.render import json_text
from kmemdump.ids import id_label
from kmemdump.inspect.dumpfile import Dump
from kmemdump.inspect.dumpfile import kind_name
from kmemdump.record import asdict

__all__ = ["EPILOG", "prepare", "run"]

EPILOG = """\
exit status: 0 printed; 1 not a dump, no such region, or an offset past the stored bytes; 2 bad usage

--json prints {"region": {...as in show...}, "address", "length", "hex"}.
"""


def prepare(parser: argparse.ArgumentParser) -> None:
    add_dump_argument(parser)
    parser.add_argument("region", metavar="REGION", help=REGION_HELP)
    add_range_options(parser)
    parser.add_argument(
        "--all", dest="squeeze", action="store_false", help="print repeated lines instead of '*'"
    )
    parser.add_argument("--json", action="store_true", help="print the region and its bytes (hex) as JSON")


def run(args: argparse.Namespace) -> int:
    with Dump.open(dump_path(args.dump, args.dir)) as dump:
        record = dump.region(args.region)
        data = select_range(dump.region_bytes(record), args.offset, args.length, record.id)
    start = record.address + args.offset
    if args.json:
        region = {
            **asdict(record),
            "label": id_label(record.id),
            "kind_name": kind_name(record.kind),
        }
        print(json_text({"region": region, "address": start, "length": len(data), "hex": data.hex()}))
        return 0
    if record.stored < record.size:
        print(
            f"kmemdump: region {record.id} ({record.name}): only {record.stored} of {record.size} bytes "
            f"were stored (status {record.status})",
            file=sys.stderr,
        )
    for line in hexdump_lines(data, start, squeeze=args.squeeze):
        print(line)
    return 0
