"""Backends publish the registry's regions somewhere an outside reader can find them."""

from kmemdump.producer.backends.base import Backend
from kmemdump.producer.backends.base import NoopBackend

__all__ = ["Backend", "NoopBackend"]
