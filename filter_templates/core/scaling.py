"""A filter count scaled by a width multiplier and rounded: the one rounding every layer of every
model takes (template layers, stems, a family's inner widths, a user network's fixed groups).

Pure arithmetic with no knowledge of templates or models, so the templates (``method``) and the
families (``models``) both use it without either importing the other.
"""

from __future__ import annotations

import math

from filter_templates.core import validate
from filter_templates.core.errors import UsageError

__all__ = ["check_scaling", "scale_count"]


def check_scaling(width: float, floor: int, divisor: int, error: type[UsageError] = UsageError) -> None:
    """A positive finite ``width`` and positive integer ``floor`` and ``divisor``, else ``error``."""
    validate.number(width, "width multiplier", error=error)
    validate.integer(floor, "floor", error=error)
    validate.integer(divisor, "divisor", error=error)


def scale_count(count: float, width: float = 1.0, *, floor: int = 1, divisor: int = 1, truncate: bool = False) -> int:
    """``max(floor, round(width * count))``, rounded to the nearest multiple of ``divisor``.

    Python's ``round`` rounds half to even (``round(2.5) == 2``). With a divisor the floor is
    lifted to the next multiple of the divisor, so every count is a multiple of it.
    ``truncate=True`` is the study's own rounding, ``max(1, int(width * count))``: the
    product is computed in the same order as its code so that the results agree bit for bit.
    """
    check_scaling(width, floor, divisor)
    x = count * width
    if not math.isfinite(x):
        raise UsageError(f"count {count!r} times width {width!r} is not finite")
    lowest = -(-floor // divisor) * divisor
    steps = int(x / divisor) if truncate else round(x / divisor)
    return max(lowest, divisor * steps)
