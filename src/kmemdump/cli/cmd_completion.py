"""Print a shell completion script for kmemdump: subcommands, their options, files and directories.

    kmemdump completion bash > ~/.local/share/bash-completion/completions/kmemdump
    kmemdump completion zsh > ~/.zfunc/_kmemdump      # a directory on $fpath

The scripts are generated from the command line's own parser when kmemdump is built (with shtab)
and ship inside the package, so printing one needs nothing installed.
"""

from __future__ import annotations

import argparse
import sys
from importlib.resources import files

__all__ = ["EPILOG", "SCRIPTS", "prepare", "run"]

EPILOG = """\
exit status: 0 printed; 2 bad usage
"""

SCRIPTS = {"bash": "kmemdump.bash", "zsh": "_kmemdump"}
"""Each shell's script, in the package's data directory."""


def prepare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shell", choices=sorted(SCRIPTS), help="the shell to complete in")


def run(args: argparse.Namespace) -> int:
    sys.stdout.write(files("kmemdump.cli").joinpath("data").joinpath(SCRIPTS[args.shell]).read_text())
    return 0
