"""The collector: detection, memory copying, dump writing.

It plays the "upper level firmware" of the Linux kernel's kmemdump design.

Not imported by producers. Compressed dumps need backports.zstd before Python 3.14, stacks need py-spy.
"""

__all__: list[str] = []
