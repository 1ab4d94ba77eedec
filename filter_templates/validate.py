"""The number checks every entry point shares: a value from a flag, a config file or a Python call
is refused with one message shape, naming what was wrong.

Booleans are refused where numbers are expected (``True`` is an ``int`` to Python, never a width
to a user), non-finite floats are refused everywhere, and an integral float such as ``2.0`` is not
silently accepted for an integer (``2.7`` would otherwise become ``2``). Torch-free, like
``templates``, which uses it.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Type, TypeVar

from .errors import UsageError

__all__ = ["integer", "number", "parse", "is_integer", "is_number"]

N = TypeVar("N", int, float)


def is_integer(v: Any) -> bool:
    """An ``int`` (numpy integers included), not a ``bool``."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A finite ``int`` or ``float`` (numpy scalars included), not a ``bool``."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _bound(minimum: float, strict: bool, kind: str) -> str:
    if minimum == 1 and kind == "integer" and not strict:
        return "a positive integer"
    if minimum == 0 and strict:
        return f"a positive {'integer' if kind == 'integer' else 'finite number'}"
    if minimum == 0 and kind == "number":
        return "a non-negative finite number"
    return f"{'an integer' if kind == 'integer' else 'a finite number'} {'>' if strict else '>='} {minimum:g}"


def integer(v: Any, what: str, minimum: int = 1, *, error: Type[Exception] = UsageError) -> int:
    """``v`` as an int when it is an integer ``>= minimum``; else ``error`` naming ``what``."""
    if not is_integer(v) or v < minimum:
        raise error(f"{what} must be {_bound(minimum, False, 'integer')}, got {v!r}")
    return int(v)


def number(v: Any, what: str, minimum: float = 0.0, *, strict: bool = True, maximum: float | None = None,
           error: Type[Exception] = UsageError) -> float:
    """``v`` as a float when it is finite and ``> minimum`` (``>=`` unless ``strict``) and, given a
    ``maximum``, ``< maximum``; else ``error`` naming ``what``."""
    ok = is_number(v) and (v > minimum if strict else v >= minimum)
    if maximum is not None and not (ok and v < maximum):
        kind = "a fraction" if (minimum, maximum) == (0, 1) else "a number"
        raise error(f"{what} must be {kind} in {'(' if strict else '['}{minimum:g}, {maximum:g}), got {v!r}")
    if not ok:
        raise error(f"{what} must be {_bound(minimum, strict, 'number')}, got {v!r}")
    return float(v)


def parse(text: str, cast: Callable[[str], N], check: Callable[[N], Any]) -> N:
    """``check(cast(text))`` for a value typed on the command line: a text that is not a number at
    all says so; a number that ``check`` refuses keeps ``check``'s message."""
    try:
        v = cast(text)
    except ValueError:
        noun = "an integer" if cast is int else "a number"
        raise UsageError(f"{text!r} is not {noun}") from None
    check(v)
    return v
