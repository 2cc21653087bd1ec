"""``kmemdump`` command line: one module per subcommand, each with ``prepare(parser)`` and ``run(args)``.

The parser is built lazily: the top level knows every subcommand by name and one line of help
(:data:`COMMANDS`), and only the subcommand being run (or asked for ``--help``) is imported and
given its options. ``kmemdump --version`` imports no subcommand at all; :func:`build_parser` with
no argument builds the whole parser (for the man page and shell completion).

Exit codes: 0 success, 1 a kmemdump error, 2 bad usage or an invalid target; ``run`` and ``gdb``
pass their program's exit code through; 130 after Ctrl-C.
"""

from __future__ import annotations

import sys

from kmemdump._version import __version__
from kmemdump.errors import InvalidRegionError
from kmemdump.errors import KmemdumpError
from kmemdump.errors import ProcessGoneError
from kmemdump.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterable
    from collections.abc import Sequence
    from typing import Any

__all__ = ["COMMANDS", "DESCRIPTION", "build_parser", "command_parser", "entry", "main"]

DESCRIPTION = """\
Selective, out-of-process memory dumps: a process registers the memory that matters, and when
it hangs, dies or is asked to, kmemdump copies just those regions into a small ELF core file."""

COMMANDS: dict[str, str] = {
    "demo": "see it work: a process registers its banner, deadlocks, is dumped, and the dump is shown",
    "watch": "collect dumps for every process publishing a kmemdump table",
    "run": "run a command under a collector; dump it when it hangs or dies",
    "dump": "dump a process's registered regions now",
    "ps": "list the processes that publish a table, with their heartbeat",
    "ls": "list dumps, newest last",
    "show": "show a dump: what happened, its banner, its regions decoded, the Python stacks",
    "hexdump": "hex dump of one region of a dump",
    "extract": "write one region's bytes to a file",
    "gdb": "open gdb on a dump",
    "prune": "remove old dumps to keep a directory within a retention policy",
    "completion": "print a bash or zsh completion script",
}
"""Every subcommand and its one line of help; its module is ``kmemdump.cli.cmd_<name>``."""

_EPILOG = """\
Run 'kmemdump COMMAND --help' for a command's options. Documentation: docs/cli.md, man kmemdump.
Exit status: 0 success, 1 a kmemdump error, 2 bad usage or an invalid target; run and gdb pass
their program's status through; 130 after Ctrl-C."""
_COMMAND_EPILOG = "exit status: 0 success; 1 a kmemdump error; 2 bad usage or an invalid target\n"


def _formatter(prog: str) -> argparse.HelpFormatter:
    import argparse

    # Descriptions are written as paragraphs and examples: keep their line breaks. The width is given,
    # as argparse would find it, because argparse imports shutil for it (with bz2 and lzma: ~2 ms).
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=30, width=_terminal_width() - 2)


def _terminal_width() -> int:
    """What ``shutil.get_terminal_size().columns`` says: $COLUMNS, else the terminal's, else 80."""
    import os

    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


def build_parser(
    commands: Iterable[str] | None = None,
    *,
    others: bool = True,
    made: dict[str, argparse.ArgumentParser] | None = None,
) -> argparse.ArgumentParser:
    """The parser; only the subcommands in ``commands`` (default: all) are imported and given options.

    The others are listed without options (for the top-level help and its errors), or, with
    ``others=False``, left out: a command line that names its command needs no other parser.
    ``made`` receives each subcommand's parser by name."""
    import argparse
    import importlib

    chosen = set(COMMANDS if commands is None else commands)
    parser = argparse.ArgumentParser(
        prog="kmemdump", description=DESCRIPTION, epilog=_EPILOG, formatter_class=_formatter
    )
    parser.add_argument("--version", action="version", version=f"kmemdump {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging detail to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands", required=True)
    for name, summary in COMMANDS.items():
        if name not in chosen:
            if others:
                sub.add_parser(name, help=summary, add_help=False)
            continue
        module = importlib.import_module(f"kmemdump.cli.cmd_{name}")
        child = sub.add_parser(
            name,
            help=summary,
            description=(module.__doc__ or summary).strip(),
            epilog=getattr(module, "EPILOG", _COMMAND_EPILOG),
            formatter_class=_formatter,
        )
        module.prepare(child)
        child.set_defaults(_run=module.run, _parser=child)
        if made is not None:
            made[name] = child
    return parser


def command_parser(name: str) -> argparse.ArgumentParser:
    """The parser of subcommand ``name`` alone (for its usage and errors)."""
    made: dict[str, argparse.ArgumentParser] = {}
    build_parser([name], others=False, made=made)
    return made[name]


def _quick(chosen: str, words: list[str]) -> Any:
    """The arguments of ``kmemdump COMMAND ...`` parsed without argparse (which with ``re`` costs a
    bare interpreter's start-up again), when the command offers that for its common forms: its
    ``quick_parse(words)`` returns the namespace argparse would, or None to leave it to argparse
    (tests/test_quick_parse.py holds each to the argparse parser)."""
    if not words or words[0] != chosen:  # a global option first (-v): argparse
        return None
    __import__(f"kmemdump.cli.cmd_{chosen}")
    module = sys.modules[f"kmemdump.cli.cmd_{chosen}"]
    quick = getattr(module, "quick_parse", None)
    args = None if quick is None else quick(words[1:])
    if args is not None:
        args.command, args.verbose, args._run = chosen, False, module.run
    return args


def _chosen(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names: its first word that is not a global option."""
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # text from a dump that the locale cannot show: escaped
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    words = list(sys.argv[1:] if argv is None else argv)
    if words == ["--version"]:  # the commonest question, answered without building a parser
        print(f"kmemdump {__version__}")
        return 0
    chosen = _chosen(words)
    args = _quick(chosen, words) if chosen else None
    if args is None:
        parser = build_parser([chosen], others=False) if chosen else build_parser([])
        args, extra = parser.parse_known_args(words)
        if extra:  # an unknown option of the subcommand: its own usage, not the top level's
            args._parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(sys.modules.get(args._run.__module__), "BOUNDED", False):
        _start_up_done()
    if args.verbose:
        import logging

        logging.basicConfig(level=logging.DEBUG, format="%(message)s", stream=sys.stderr)
    try:
        return int(args._run(args))
    except UsageError as err:
        from kmemdump.fleet.errors import StoreURLError  # here: a command without URLs loads no fleet

        if isinstance(err, StoreURLError):  # a bad s3:// URL: one line and its remedy, not the whole usage
            _report(err)
            return 2
        usage: argparse.ArgumentParser = getattr(args, "_parser", None) or command_parser(args.command)
        usage.error(str(err))  # exits 2 with the command's usage
    except (ProcessGoneError, InvalidRegionError) as err:
        _report(err)
        return 2
    except KmemdumpError as err:
        _report(err)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        _quiet_stdout()  # the reader went away (kmemdump ls | head)
        return 1
    except OSError as err:  # a system error no command foresaw: one line, not a traceback
        where = f" ({err.filename})" if err.filename else ""
        print(f"kmemdump: error: {err.strerror or err}{where}", file=sys.stderr)
        return 1
    except Exception as err:  # a bug: one line, the traceback only when asked for
        if args.verbose:
            raise
        print(
            f"kmemdump: internal error: {type(err).__name__}: {err} "
            "(run with -v for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 70


def _report(err: KmemdumpError) -> None:
    print(f"kmemdump: error: {err}", file=sys.stderr)
    if err.help:
        print(f"\n{err.help}", file=sys.stderr)


def _quiet_stdout() -> None:
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


_paused = [False]
"""Whether :func:`entry` paused the cyclic garbage collector for the start-up."""


def _start_up_done() -> None:
    """The command's modules are loaded: what the start-up made (modules, classes, functions) lives as
    long as the process, so the collector leaves it alone from now on (``gc.freeze``), and collects
    again if :func:`entry` had paused it."""
    if _paused[0]:
        import gc

        _paused[0] = False
        gc.freeze()
        gc.enable()


def entry() -> None:
    import gc

    # The command line is mostly start-up: loading a command makes tens of thousands of objects that
    # live until the end, and the cyclic collector walked them again and again while they were made
    # (25 collections for 'kmemdump dump PID', 3 ms) and all once more at exit (3 ms more).
    gc.disable()
    _paused[0] = True
    code = main()
    gc.freeze()  # the exit: nothing is left to collect that the end of the process does not free
    if _paused[0]:  # still paused: a bounded command (dump) ran, start to end
        _exit_at_once(code)
    sys.exit(code)


def _exit_at_once(code: int) -> None:
    """End a bounded command without the interpreter's finalization, which tears down every module and
    object the start-up made (1.5 ms of ``dump PID``'s 27 ms here) for the end of the process to free.

    Its output is flushed first. Nothing else can be pending: such a command writes its files through
    descriptors and closes what it opens. Returns, for the ordinary exit, when it cannot tell that: an
    ``atexit`` handler is registered, a thread other than this one runs, or the output cannot be flushed
    (a reader gone: the ordinary exit reports that as it always did)."""
    import atexit
    import os

    threading = sys.modules.get("threading")
    if atexit._ncallbacks() or (threading is not None and threading.active_count() > 1):
        return
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):
        return
    os._exit(code)
