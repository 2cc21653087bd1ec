"""``python -m kmemdump.cli``."""

from kmemdump.cli.main import entry

entry()
