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
import re
from typing import Any, Sequence, Type

from filter_templates.core.errors import UsageError

__all__ = [
    "integer",
    "number",
    "up_to",
    "layer_counts",
    "positive_integers",
    "parse",
    "byte_size",
    "expected",
    "is_integer",
    "is_number",
]


def is_integer(v: Any) -> bool:
    """An ``int`` (numpy integers included), not a ``bool``."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A finite ``int`` or ``float`` (numpy scalars included), not a ``bool``."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def expected(kind: type, minimum: float, strict: bool, maximum: float | None = None) -> str:
    """What a check accepts, in words: "a positive integer", "a fraction in [0, 1)", ..."""
    if kind is int and maximum is not None:
        return f"an integer from {minimum + (1 if strict else 0):g} to {maximum:g}"
    if maximum is not None:
        noun = "a fraction" if (minimum, maximum) == (0, 1) else "a number"
        return f"{noun} in {'(' if strict else '['}{minimum:g}, {maximum:g})"
    if kind is int and ((minimum == 1 and not strict) or (minimum == 0 and strict)):
        return "a positive integer"
    if kind is not int and minimum == 0:
        return "a positive finite number" if strict else "a non-negative finite number"
    return f"{'an integer' if kind is int else 'a finite number'} {'>' if strict else '>='} {minimum:g}"


def integer(
    v: Any, what: str, minimum: int = 1, *, maximum: int | None = None, error: Type[Exception] = UsageError
) -> int:
    """``v`` as an int when it is an integer ``>= minimum`` (and ``<= maximum``); else ``error``
    naming ``what``."""
    if not is_integer(v) or v < minimum or (maximum is not None and v > maximum):
        raise error(f"{what} must be {expected(int, minimum, False, maximum)}, got {v!r}")
    return int(v)


def number(
    v: Any,
    what: str,
    minimum: float = 0.0,
    *,
    strict: bool = True,
    maximum: float | None = None,
    error: Type[Exception] = UsageError,
) -> float:
    """``v`` as a float when it is finite and ``> minimum`` (``>=`` unless ``strict``) and, given a
    ``maximum``, ``< maximum``; else ``error`` naming ``what``."""
    if not (is_number(v) and (v > minimum if strict else v >= minimum) and (maximum is None or v < maximum)):
        raise error(f"{what} must be {expected(float, minimum, strict, maximum)}, got {v!r}")
    return float(v)


def up_to(v: Any, what: str, maximum: float, *, error: Type[Exception] = UsageError) -> float:
    """``v`` as a float in ``(0, maximum]``: a multiplier whose ceiling no sensible value reaches
    (a typo such as 1e9 fails here with one line instead of exhausting memory)."""
    if is_number(v) and v > maximum:
        raise error(f"{what} {v:g} is over the limit of {maximum:g}")
    return number(v, what, error=error)


def layer_counts(values: Sequence[Any], what: str, maximum: int, *, owner: str) -> list[int]:
    """Filter counts (or widths) as ints, each ``>= 1`` and ``<= maximum``; else a UsageError
    naming ``owner`` (a family) and ``what``."""
    out = [int(v) for v in values]
    if any(v < 1 for v in out):
        raise UsageError(f"{owner}: every {what} must be >= 1, got {out}")
    if out and max(out) > maximum:
        raise UsageError(
            f"{owner}: a layer of {max(out):,} filters is over the limit of {maximum:,}; use a smaller width or counts"
        )
    return out


def positive_integers(v: Any, what: str) -> list[int]:
    """``v`` when it is a list of integers ``>= 1`` (a record read from JSON); else a UsageError."""
    if not isinstance(v, list) or not all(is_integer(x) and x >= 1 for x in v):
        raise UsageError(f"{what} must be a list of positive integers")
    return v


def parse(text: str, kind: type, minimum: float, *, strict: bool = False, maximum: float | None = None) -> Any:
    """A number typed on the command line: ``kind(text)`` when it passes :func:`integer` (``kind``
    int) or :func:`number`; else a UsageError "'<text>' is not <what is accepted>"."""
    want = expected(kind, minimum, strict, maximum)
    try:
        v = kind(text)
    except ValueError:
        raise UsageError(f"{text!r} is not {'an integer' if kind is int else 'a number'}; expected {want}") from None
    try:
        if kind is int:
            return integer(v, text, int(minimum) + (1 if strict else 0))
        return number(v, text, minimum, strict=strict, maximum=maximum)
    except UsageError:
        raise UsageError(f"{text!r} is not {want}") from None


_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def byte_size(text: str) -> int:
    """A memory size typed by a user, as bytes: ``256MiB``, ``1.5GB``, ``2G`` (decimal ``k``/``M``/
    ``G``/``T``, binary ``KiB``/``MiB``/``GiB``/``TiB``) or a plain byte count; at least one byte."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", str(text).lower())
    if m is None or m.group(2) not in _UNITS:
        raise UsageError(
            f"{text!r} is not a memory size; expected a number of bytes with an optional unit "
            "such as 512MiB, 2GiB or 1.5GB"
        )
    value = float(m.group(1)) * _UNITS[m.group(2)]
    if not math.isfinite(value) or value < 1:
        raise UsageError(f"{text!r} is not a memory size of at least one byte")
    return int(value)
