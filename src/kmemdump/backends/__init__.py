"""Backends publish the registry's regions somewhere an outside reader can find them."""

from .base import Backend
from .base import NoopBackend

__all__ = ["Backend", "NoopBackend"]
