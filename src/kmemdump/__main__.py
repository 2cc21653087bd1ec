"""``python -m kmemdump``: the command line."""

from .cli.main import entry

entry()
