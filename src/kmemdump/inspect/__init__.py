"""The inspector: opening dumps, decoding CPython objects, rendering for people and programs."""

__all__: list[str] = []
