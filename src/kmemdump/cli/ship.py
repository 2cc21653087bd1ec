"""The ``--ship`` options of ``kmemdump watch``, and starting the shipper they describe.

``--ship s3://BUCKET/PREFIX`` (or ``$KMEMDUMP_SHIP``) uploads every finished dump with its index
object; see ``docs/fleet.md``. Endpoint, region and credentials come from the standard AWS variables
and files, never from the command line, so they stay out of ``ps`` and of the log.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from kmemdump.cli.options import parse_duration
from kmemdump.cli.options import parse_size

if TYPE_CHECKING:
    from kmemdump.fleet.shipper import Shipper

__all__ = ["SHIP_VARIABLE", "add_ship_options", "start_shipper"]

SHIP_VARIABLE = "KMEMDUMP_SHIP"


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"must be between 0 and 86400 seconds: {text!r}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def add_ship_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("shipping to object storage (the 'ship' extra; docs/fleet.md)")
    group.add_argument(
        "--ship",
        default=None,
        metavar="s3://BUCKET/PREFIX",
        help=f"upload each finished dump and its index object there (default: ${SHIP_VARIABLE}); "
        "endpoint, region and credentials from AWS_* variables or ~/.aws",
    )
    group.add_argument("--no-ship", action="store_true", help=f"do not ship, even if ${SHIP_VARIABLE} is set")
    group.add_argument(
        "--ship-spool",
        type=Path,
        default=None,
        metavar="DIR",
        help="where dumps wait for their upload (default: .ship-spool in the dump directory)",
    )
    group.add_argument(
        "--ship-spool-size",
        type=parse_size,
        default=None,
        metavar="SIZE",
        help="most bytes waiting in the spool; the oldest uploads are given up beyond it (default 4GiB)",
    )
    group.add_argument(
        "--ship-spool-dumps",
        type=_positive,
        default=None,
        metavar="N",
        help="most dumps waiting in the spool (default 1000)",
    )
    group.add_argument(
        "--ship-retry",
        type=_seconds,
        nargs=2,
        default=None,
        metavar=("MIN", "MAX"),
        help="wait MIN seconds after a failed upload, doubling up to MAX, with jitter (default 1 300)",
    )
    group.add_argument(
        "--no-ship-sweep",
        action="store_true",
        help="ship only the dumps this collector writes: do not sweep the dump directory for dumps not "
        "shipped yet (at start, after an outage, every 10 minutes)",
    )
    group.add_argument(
        "--ship-sweep-age",
        type=parse_duration,
        default=7 * 86400.0,
        metavar="AGE",
        help="the sweep leaves dumps older than AGE to the dump directory, e.g. 12h, 30d (default 7d)",
    )
    group.add_argument(
        "--ship-delete-local",
        action="store_true",
        help="remove a dump from the dump directory once its upload is confirmed",
    )


def start_shipper(args: argparse.Namespace, dump_dir: Path, log: Callable[[str], None]) -> Shipper | None:
    """The running shipper ``args`` ask for, or None; settings errors are raised before any dump."""
    target = None if args.no_ship else (args.ship or os.environ.get(SHIP_VARIABLE) or None)
    if target is None:
        return None
    from kmemdump.fleet.shipper import ShipOptions
    from kmemdump.fleet.shipper import Shipper
    from kmemdump.fleet.url import parse_url

    kwargs: dict[str, object] = {}
    if args.ship_spool_size is not None:
        kwargs["max_spool_bytes"] = args.ship_spool_size
    if args.ship_spool_dumps is not None:
        kwargs["max_spool_dumps"] = args.ship_spool_dumps
    if args.ship_retry is not None:
        low, high = args.ship_retry
        kwargs["retry_min"], kwargs["retry_max"] = low, max(low, high)
    options = ShipOptions(
        parse_url(target),
        args.ship_spool or dump_dir / ".ship-spool",
        delete_local=args.ship_delete_local,
        dump_dir=dump_dir,
        sweep=not args.no_ship_sweep,
        sweep_max_age=args.ship_sweep_age,
        **kwargs,  # type: ignore[arg-type]
    )
    shipper = Shipper(options, log=log)
    shipper.start()
    log(f"shipping dumps to {options.url} (spool {options.spool})")
    return shipper
