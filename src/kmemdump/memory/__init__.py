"""One way to read memory, whatever holds it: :class:`MemorySource` and its implementations.

* :class:`kmemdump.memory.process.ProcessMemory`: a live process (``process_vm_readv``, ``/proc/PID/mem``);
* :class:`kmemdump.memory.arena.ArenaMemory`: a producer's persistent arena file;
* :class:`kmemdump.memory.core.CoreImage`: a dump file.

Decoders take a :class:`MemorySource` and never learn which one they hold. The implementations
are imported from their modules, so this package costs nothing to import.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kmemdump.memory.source import MemorySource

__all__ = ["MemorySource"]


def __getattr__(name: str) -> object:
    if name == "MemorySource":  # imported when asked for: a Protocol needs typing, which is slow to import
        from kmemdump.memory.source import MemorySource

        return MemorySource
    raise AttributeError(f"module 'kmemdump.memory' has no attribute {name!r}")
