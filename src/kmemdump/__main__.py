"""``python -m kmemdump``: the command line."""

from kmemdump.cli.main import entry

entry()
