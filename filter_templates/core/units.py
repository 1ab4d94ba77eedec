"""Counts as a reader reads them: 52.3K parameters, 20M FLOPs, not 0.0523 million or 0.020 GFLOPs.

One home for the decimal prefixes every table, figure and command line uses for counts (memory is
always in MiB: ``method.measure.mib``). Torch-free.
"""

from __future__ import annotations

from typing import Iterable

__all__ = ["PREFIXES", "prefix_of", "prefix_for", "human"]

#: (prefix, scale), smallest first: the same K/M/G/T a budget is typed with (params=100K, flops=20M).
PREFIXES: tuple[tuple[str, float], ...] = (("", 1.0), ("K", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12))


def prefix_of(value: float) -> tuple[str, float]:
    """The largest prefix under which ``value`` is still at least 1 (``20e6`` -> ``("M", 1e6)``)."""
    best = PREFIXES[0]
    for p in PREFIXES:
        if abs(value) >= p[1]:
            best = p
    return best


def prefix_for(values: Iterable[float | None]) -> tuple[str, float]:
    """One prefix for a column or an axis: that of its smallest positive value, so no entry reads 0.0x."""
    known = [abs(v) for v in values if v]
    return prefix_of(min(known)) if known else PREFIXES[0]


def human(value: float | None, digits: int = 3, missing: str = "—") -> str:
    """``value`` with its own prefix and ``digits`` significant figures: 52300 -> ``52.3K``."""
    if value is None:
        return missing
    prefix, scale = prefix_of(value)
    return f"{value / scale:.{digits}g}{prefix}"
