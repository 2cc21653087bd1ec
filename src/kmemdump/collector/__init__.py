"""The collector (the seed's "upper level firmware"): detection, memory copying, dump writing.

Not imported by producers; it needs the ``collector`` extra (pyelftools, backports.zstd, py-spy).
"""

__all__: list[str] = []
