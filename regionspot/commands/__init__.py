"""What every console command shares: the name it was typed as, one kind of parser, and one way to run.

The commands parse their arguments before they import torch, open_clip, Lightning or gradio, so that `--help`
and a mistyped option answer at once; the modules that do the work are imported after parsing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]


def prog_name(module: str, subcommand: str | None = None) -> str:
    """The command as the user typed it, for usage lines: `regionspot-evaluate`, `evaluate.py`, or
    `python -m <module>` when run as a module (argparse alone would say `__main__.py`); then `subcommand`."""
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else "-c"
    typed = Path(argv0).name
    if typed in ("-c", "__main__.py") or (typed.endswith(".py") and Path(argv0).resolve().is_relative_to(_PACKAGE)):
        typed = f"python -m {module}"
    return f"{typed} {subcommand}" if subcommand else typed


def argument_parser(module: str, description: str | None, subcommand: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser named as the command was typed, whose description may say `{prog}`, and which takes no
    abbreviation of an option for the option (`--max-image` is an error, not `--max-images`)."""
    prog = prog_name(module, subcommand)
    return argparse.ArgumentParser(
        prog=prog,
        description=description.replace("{prog}", prog.removesuffix(f" {subcommand}") if subcommand else prog)
        if description
        else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
