"""The producer: everything ``import kmemdump`` runs inside an application.

Standard library only, cheap to import. The public names live in :mod:`kmemdump`; these modules
are its implementation: the registry and its regions, allocation wrappers, static annotations,
the heartbeat, the persistent arena, the shared-file helpers, the backends, and
:mod:`kmemdump.producer.python` for the interpreter's own layout.
"""

__all__: list[str] = []
