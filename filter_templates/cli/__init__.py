"""The ``filter-templates`` command: a thin layer over the library.

Each subcommand is one module in this package, ``<name>_cmd.py``, exposing
``add_parser(subparsers, help)`` and ``run(args) -> int``. Every bad input ends here as one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Iterable, NoReturn, Sequence

from filter_templates import __version__
from filter_templates.core.errors import UsageError
from filter_templates.core.messages import PROG, error, error_line

__all__ = ["main", "build_parser", "error_line", "COMMANDS", "PROG"]

# The dispatch table: each command's one-line help, in the order ``--help`` lists them. A command's
# module (``<name>_cmd.py``) is imported by name, and only when that command is given: the modules
# import torch (about a second), which ``filter-templates --help`` and ``--version`` do not need.
COMMANDS = {
    "templates": "show each template's per-layer filter counts and cost",
    "fit": "find, per template, the largest width multiplier that fits a resource budget",
    "probe": "write a model's templates at a grid of widths as ONNX, with a script that times them on a target",
    "train": "train one templated model into a run directory",
    "sweep": "train a grid of models into a results store (local, Ray or Slurm)",
    "report": "tables (Markdown/CSV/LaTeX) and figures (PNG/SVG) from a results store",
    "export": "export a trained run to ONNX or TorchScript",
    "reduce": "fit every template to a budget, train the candidates, rank them, export the winner",
    "tune": "measure how this machine trains fastest and keep it as its profile for later runs",
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line and exit 2 like every other usage error."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The parser of ``COMMANDS``: the full parsers of ``commands`` (default: all of them), the others
    only by name and help line. A command whose module is missing is an ImportError (a broken
    install), never a command silently left out of ``--help``."""
    full = set(COMMANDS if commands is None else commands)
    parser = _Parser(prog=PROG, description="Shrink CNNs with filter distribution templates.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, line in COMMANDS.items():
        if name in full:
            importlib.import_module(f"{__name__}.{name}_cmd").add_parser(sub, line)
        else:
            sub.add_parser(name, help=line)
    return parser


def _command(argv: Sequence[str]) -> list[str]:
    """The command that ``argv`` names (its first word that is not a flag), if it is one."""
    first = next((a for a in argv if not a.startswith("-")), None)
    return [first] if first in COMMANDS else []


def interrupted_line(command: str | None) -> str:
    """What Ctrl-C prints: how the command continues where it stopped, where it can (its module's
    ``ON_INTERRUPT``)."""
    for name in COMMANDS:  # by the table, so every module this imports can be read from the code
        if name == command:
            hint = getattr(importlib.import_module(f"{__name__}.{name}_cmd"), "ON_INTERRUPT", None)
            if hint:
                return f"interrupted; {hint}"
    return "interrupted"


def main(argv: Sequence[str] | None = None) -> int:
    command = None
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        command = next(iter(_command(argv)), None)
        parser = build_parser(_command(argv))
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help(sys.stderr)
            return 2
        args.argv = argv  # what was typed: a command that starts copies of itself (train --nproc) passes it on
        return int(args.run(args) or 0)
    except UsageError as exc:
        error(str(exc))
        return 2
    except KeyboardInterrupt:
        error(interrupted_line(command))
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
