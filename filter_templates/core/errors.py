"""One error type for everything a user can get wrong, so the CLI has one error path."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input a user typed or supplied (names, numbers, files). The CLI prints the message as
    one line on stderr and exits with status 2; library callers get a normal exception."""
