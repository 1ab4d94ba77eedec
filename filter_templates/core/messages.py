"""The one way the package talks to a person on stderr: prefixed notes and the CLI's error line.

stdout is kept for results (``--json`` prints exactly one document there), so every note, warning
and progress line goes to stderr, each prefixed with the program's name so that it stands out in
a log that mixes several tools.
"""

from __future__ import annotations

import sys

__all__ = ["PROG", "note", "warn", "error", "error_line"]

PROG = "filter-templates"


def note(message: str) -> None:
    """``filter-templates: <message>`` on stderr, flushed (a sweep's log follows the runs live)."""
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """A note that says something may not be what the user wanted."""
    note(f"warning: {message}")


def error(message: str) -> None:
    """The error line on stderr: a usage error, or a run that failed."""
    print(error_line(message), file=sys.stderr, flush=True)


def error_line(message: str) -> str:
    """The one line a usage error becomes: whitespace folded, so the error is always one line."""
    return f"{PROG}: error: {' '.join(str(message).split())}"
