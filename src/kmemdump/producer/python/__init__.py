"""What the producer knows about its own interpreter: object layout, self-test, PYCOREINFO, banner.

Standard library only; imported lazily (by ``kmemdump.init()`` and ``register_object``).
"""

__all__: list[str] = []
