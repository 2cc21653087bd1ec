"""The man page, kmemdump(1), written from the command line's own parser: every command's usage,
description, options and exit status, so the page says what ``--help`` says.

``python -m kmemdump.cli.manpage`` prints it; the committed ``src/kmemdump/cli/data/kmemdump.1`` is
kept equal to it by a test (and installed as share/man/man1/kmemdump.1 by the wheel).
"""

from __future__ import annotations

import argparse

from kmemdump._version import __version__

__all__ = ["main", "render"]

_SECTIONS = """\
.SH EXIT STATUS
0 on success; 1 for a kmemdump error (a malformed dump, an unknown region, a file that would be
overwritten, a missing optional part); 2 for bad usage or an invalid target (a process that does not
exist); 130 after Ctrl\\-C.
.B run
and
.B gdb
exit with the status of the program they ran.
.SH ENVIRONMENT
.TP
.B KMEMDUMP_DUMPS
where dumps are written and looked for (default $XDG_STATE_HOME/kmemdump/dumps, i.e.
~/.local/state/kmemdump/dumps).
.TP
.B KMEMDUMP_DIR
where producers publish their tables (default /dev/shm/kmemdump\\-<uid>).
.TP
.B KMEMDUMP_PY_SPY
the py\\-spy binary used for the Python stacks (default: next to the interpreter, else on PATH).
.TP
.B NO_COLOR
plain text output.
.SH OPTIONAL PARTS
Compressed dumps need the
.B inspect
extra, terminal tables the
.B pretty
extra, Python stacks the
.B stacks
extra; pip install 'kmemdump[collector]' brings all three. A command that needs a missing part says so
in one line.
.SH SEE ALSO
.BR gdb (1),
.BR py\\-spy (1),
.BR coredumpctl (1);
docs/cli.md, docs/api.md and docs/collector.md in the source distribution.
"""


def _escape(text: str) -> str:
    """roff-safe text: backslashes, leading dots and quotes, and hyphens that are minus signs."""
    out = []
    for raw in text.replace("\\", "\\e").split("\n"):
        line = "\\&" + raw if raw.startswith((".", "'")) else raw
        out.append(line.replace("-", "\\-"))
    return "\n".join(out)


def _paragraphs(text: str) -> list[str]:
    lines = []
    for block in text.strip().split("\n\n"):
        if all(line.startswith("    ") for line in block.splitlines()):  # an example: kept as it is
            lines += [
                ".PP",
                ".nf",
                ".RS 4",
                _escape("\n".join(line[4:] for line in block.splitlines())),
                ".RE",
                ".fi",
            ]
        else:
            lines += [".PP", _escape(" ".join(line.strip() for line in block.splitlines()))]
    return lines


def _options(parser: argparse.ArgumentParser) -> list[str]:
    lines = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        if action.option_strings:
            metavar = action.metavar or (action.dest.upper() if action.nargs != 0 else None)
            if action.choices and not action.metavar:
                metavar = "{" + ",".join(str(c) for c in action.choices) + "}"
            names = ", ".join(
                f"\\fB{_escape(name)}\\fR" + (f" \\fI{_escape(str(metavar))}\\fR" if metavar else "")
                for name in action.option_strings
            )
        else:
            names = f"\\fI{_escape(str(action.metavar or action.dest))}\\fR"
        helptext = (action.help or "") % {"default": action.default, "prog": parser.prog}
        lines += [".TP", names, _escape(helptext)]
    return lines


def render(parser: argparse.ArgumentParser) -> str:
    """The man page of ``parser`` (the whole kmemdump parser, every subcommand prepared)."""
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {choice.dest: choice.help for choice in subparsers._choices_actions}
    lines = [
        f'.TH KMEMDUMP 1 "" "kmemdump {__version__}" "User Commands"',
        ".SH NAME",
        "kmemdump \\- selective, out\\-of\\-process memory dumps of the regions a process registered",
        ".SH SYNOPSIS",
        ".B kmemdump",
        "[\\fB\\-v\\fR] \\fICOMMAND\\fR [\\fIoptions\\fR]",
        ".SH DESCRIPTION",
        *_paragraphs(parser.description or ""),
        ".SH GLOBAL OPTIONS",
        *_options(parser),
        ".SH COMMANDS",
    ]
    for name, child in subparsers.choices.items():
        usage = child.format_usage().removeprefix("usage: ").strip()
        lines += [
            ".SS " + _escape(f"kmemdump {name}"),
            _escape(summaries.get(name) or ""),
            ".PP",
            ".nf",
            _escape(" ".join(usage.split())),
            ".fi",
            *_paragraphs(child.description or ""),
            *_options(child),
        ]
        if child.epilog:
            lines += _paragraphs(child.epilog)
    return "\n".join(lines) + "\n" + _SECTIONS


def main() -> None:
    from kmemdump.cli.main import build_parser

    print(render(build_parser()), end="")


if __name__ == "__main__":
    main()
