"""The package's errors: one base class, subclasses that carry structured context.

Library messages stay short and factual. Each class may carry a ``help`` text with the
remedy; only the command line prints it (see :mod:`kmemdump.cli.main`).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs milliseconds to import; annotations only need it for mypy
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "AccessDeniedError",
    "BackendError",
    "CollectorBusyError",
    "CollectorError",
    "DecodeError",
    "DumpFormatError",
    "ForeignProcessError",
    "ForeignTableError",
    "InvalidRegionError",
    "KmemdumpError",
    "MissingExtraError",
    "ProcessGoneError",
    "RegionExistsError",
    "RegistryFullError",
    "TableFormatError",
    "UnknownRegionError",
    "UnreadableMemoryError",
    "UsageError",
]


class KmemdumpError(Exception):
    """Base of every error kmemdump raises on purpose.

    ``context`` holds the structured facts (``pid=``, ``path=``, ``id=`` …); they are shown
    after the message and kept as attributes for programs.
    """

    help: str = ""
    # the context keys programs read most, typed; any other key is an attribute too
    pid: int | None = None
    path: str | None = None
    errno: int | None = None

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context: dict[str, Any] = {k: v for k, v in context.items() if v is not None}
        for key, value in self.context.items():
            setattr(self, key, value)

    def __str__(self) -> str:
        if not self.context:
            return self.message
        facts = ", ".join(f"{k}={v}" for k, v in self.context.items())
        return f"{self.message} ({facts})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.context))


def _rebuild(cls: type[KmemdumpError], message: str, context: dict[str, Any]) -> KmemdumpError:
    return cls(message, **context)


class UsageError(KmemdumpError, ValueError):
    """The request itself is wrong (an option's value, a file where a directory is needed): the
    command line prints the command's usage and exits with status 2."""


class MissingExtraError(KmemdumpError):
    """An optional part of kmemdump is not installed; the message names the extra that brings it."""

    @classmethod
    def needs(cls, what: str, extra: str, **context: Any) -> MissingExtraError:
        """``what`` needs a package that is not installed: one line saying which extra brings it."""
        return cls(f"{what}; install it with: pip install 'kmemdump[{extra}]'", **context)


# --- the registry (the kernel's -EINVAL, -EALREADY, -ENOSPC) ---------------------------


class InvalidRegionError(KmemdumpError, ValueError):
    """The target, size or ID cannot be registered (the kernel's ``-EINVAL``)."""


class RegionExistsError(KmemdumpError):
    """The ID is already registered (the kernel's ``-EALREADY``)."""

    help = "Unregister the region first (kmemdump.unregister(id)), or register with id=kmemdump.NO_ID."


class RegistryFullError(KmemdumpError):
    """Every slot of the fixed-size registry is in use (the kernel's ``-ENOSPC``)."""

    help = "Unregister regions you no longer need, or call kmemdump.init(capacity=N) with a larger N."


class UnknownRegionError(KmemdumpError, KeyError):
    """No region is registered under that ID."""

    def __str__(self) -> str:  # KeyError would quote the message otherwise
        return KmemdumpError.__str__(self)


class BackendError(KmemdumpError):
    """A backend is malformed (missing callbacks) or refused a region."""


# --- formats ------------------------------------------------------------------------


class TableFormatError(KmemdumpError):
    """A shared table is malformed, foreign or of an unknown version."""

    help = (
        "The table file is not one kmemdump can read. If the producer runs another kmemdump "
        "version, run the collector of that version; otherwise the file is corrupt and can be removed."
    )


class DumpFormatError(KmemdumpError):
    """A dump file is not a kmemdump ELF core image, or is damaged."""

    help = (
        "Check the path; a dump is an ELF core written by 'kmemdump watch', 'run' or 'dump' "
        "(optionally .zst)."
    )


# --- the collector ------------------------------------------------------------------


class CollectorError(KmemdumpError):
    """The collector could not complete an operation on a target."""


class CollectorBusyError(CollectorError):
    """Another collector is dumping the same process right now (it holds the table's act lock)."""


class ProcessGoneError(CollectorError, ProcessLookupError):
    """The target process no longer exists, or its pid now belongs to another process."""


class AccessDeniedError(CollectorError, PermissionError):
    """The kernel refused access to the target's memory."""

    help = (
        "kmemdump reads memory with process_vm_readv or /proc/PID/mem, which need ptrace-level rights:\n"
        "  * run the collector as the same user as the target (or as root / with CAP_SYS_PTRACE);\n"
        "  * with Yama ptrace_scope=1, start the collector first: producers publishing a table call\n"
        "    prctl(PR_SET_PTRACER, collector_pid) once they see its pid; or run the target under\n"
        "    'kmemdump run', which makes it a child of the collector;\n"
        "  * a target that is not dumpable (it called prctl(PR_SET_DUMPABLE, 0), is setuid, or changed\n"
        "    its user id, as a daemon started as root that drops privileges does) is readable only\n"
        "    with CAP_SYS_PTRACE; such a program can call prctl(PR_SET_DUMPABLE, 1) again;\n"
        "  * in a container, add the SYS_PTRACE capability (docker run --cap-add SYS_PTRACE) and check\n"
        "    that the seccomp/AppArmor profile allows ptrace and process_vm_readv."
    )


class ForeignProcessError(CollectorError):
    """The process a table names is not its owner's to offer (another user's process, or one that is
    not dumpable), so the collector left it alone: nothing was read, stopped or signalled."""

    help = (
        "A table may only name a process whose real user is the table file's owner. A process that is\n"
        "not dumpable (set-id, or one that called prctl(PR_SET_DUMPABLE, 0)) is left alone unless the\n"
        "collector runs with --allow-nondumpable; see docs/security.md."
    )


class UnreadableMemoryError(KmemdumpError):
    """A memory source holds no (or not all) bytes for the requested range.

    ``readable`` is how many bytes from ``address`` on could be read (0 when none).
    """

    readable: int = 0
    address: int | None = None


class DecodeError(KmemdumpError):
    """An object in a dump cannot be decoded (missing memory, unknown type, bad layout)."""


class ForeignTableError(TableFormatError):
    """A table file belongs to another user (or is not a regular file) and is not trusted."""

    help = "Run the collector as the table's owner, or as root to watch every user's tables."
