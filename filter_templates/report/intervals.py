"""How sure an accuracy in the report is: a 95% interval for every plotted point and table cell.

Over several seeds the interval is Student's t on their mean (the spread of training runs, which
is what another seed would see); for one seed it is the Wilson interval of the binomial proportion
over the images the accuracy was measured on (the spread of the evaluation set alone, a lower
bound on the real uncertainty). Torch-free.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

__all__ = ["Interval", "t975", "over_seeds", "wilson", "interval"]

Z975 = 1.959964  # the normal's 97.5% quantile
# Student's t 97.5% quantiles for 1..30 degrees of freedom (beyond: the normal's)
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t975(df: int) -> float:
    """Student's t 97.5% quantile with ``df`` degrees of freedom (the two-sided 95% multiplier)."""
    return _T975[df - 1] if 1 <= df <= len(_T975) else Z975


@dataclass(frozen=True)
class Interval:
    """A 95% interval ``[low, high]`` around ``mean`` (fractions), and what it is over."""

    mean: float
    low: float
    high: float
    kind: str  # "seeds": t over the seeds' accuracies; "images": Wilson over one seed's images

    @property
    def half(self) -> float:
        """The larger half-width (Wilson's is asymmetric)."""
        return max(self.mean - self.low, self.high - self.mean)


def over_seeds(values: Sequence[float]) -> Interval:
    """Mean of two or more seeds' accuracies ± t(0.975, n-1) x their standard error."""
    n = len(values)
    if n < 2:
        raise ValueError("an interval over seeds needs at least two")
    mean = statistics.fmean(values)
    h = t975(n - 1) * statistics.stdev(values) / math.sqrt(n)
    return Interval(mean, max(0.0, mean - h), min(1.0, mean + h), "seeds")


def wilson(accuracy: float, images: int) -> Interval:
    """The Wilson 95% interval of an accuracy measured on ``images`` images."""
    if images < 1:
        raise ValueError("an interval over images needs at least one")
    z2 = Z975 * Z975
    centre = (accuracy + z2 / (2 * images)) / (1 + z2 / images)
    h = Z975 * math.sqrt(accuracy * (1 - accuracy) / images + z2 / (4 * images * images)) / (1 + z2 / images)
    return Interval(accuracy, max(0.0, centre - h), min(1.0, centre + h), "images")


def interval(values: Sequence[float], images: int | None) -> Interval | None:
    """Over the seeds when there are several, else over one seed's ``images`` (None: not known)."""
    if len(values) >= 2:
        return over_seeds(values)
    if len(values) == 1 and images:
        return wilson(values[0], images)
    return None
