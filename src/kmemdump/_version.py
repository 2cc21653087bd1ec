"""The version of kmemdump, alone, so that the collector and the command line load no producer code for it."""

__all__ = ["__version__"]

__version__ = "0.1.0"
