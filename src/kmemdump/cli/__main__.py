"""``python -m kmemdump.cli``."""

from .main import entry

entry()
