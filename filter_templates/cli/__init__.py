"""The ``filter-templates`` command: a thin layer over the library.

Each subcommand is one module in this package exposing ``add_parser(subparsers)`` and
``run(args) -> int``. Every bad input ends here as one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn, Sequence

from .. import __version__
from ..errors import UsageError
from ..messages import PROG, error_line

__all__ = ["main", "build_parser", "error_line", "COMMANDS", "PROG"]

COMMANDS = ("templates", "fit", "train", "sweep", "report", "export", "reduce")


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line and exit 2 like every other usage error."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    """Every command of ``COMMANDS``; a command whose module is missing is an ImportError (a
    broken install), never a command silently left out of ``--help``."""
    parser = _Parser(prog=PROG, description="Shrink CNNs with filter distribution templates.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}_cmd").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help(sys.stderr)
            return 2
        return int(args.run(args) or 0)
    except UsageError as exc:
        print(error_line(str(exc)), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(error_line("interrupted"), file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
