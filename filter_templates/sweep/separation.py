"""Is one candidate's accuracy separable from another's on the same images?

Two candidates ranked on one validation split saw the very same images, so their difference is
measured image by image (paired): ``d = mean(a) - mean(b)`` over the images, where ``a`` and ``b``
are the per-image outcomes (1: classified right), each averaged over the candidate's seeds.

The 95% interval is a paired bootstrap with a fixed generator seed (the same inputs give the same
interval): each of :data:`DRAWS` draws resamples the images (one draw for both candidates: the
pairing is kept) and, where a candidate has several seeds, its seeds too, so the interval holds
both sources of noise a rerun would meet -- which images the split happened to hold, and which
seeds trained. McNemar's exact test would give a p-value for one seed each but no interval, and no
way to pool seeds; the bootstrap gives both for any seed counts. ``p`` is the two-sided bootstrap
p-value, ``2 * min(P(d* <= 0), P(d* >= 0))``, so ``p < 0.05`` exactly when the percentile
interval leaves out 0: the two never disagree. Not separable (``tied``): the interval holds 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["Separation", "separate", "points", "DRAWS", "LEVEL"]

#: Bootstrap draws per comparison: the interval's ends move by well under a tenth of a point
#: between generator seeds at this count on a few thousand images.
DRAWS = 2000
#: The interval's coverage.
LEVEL = 0.95
_SEED = 0  # the bootstrap's generator: fixed, so a comparison is a pure function of its inputs


@dataclass(frozen=True)
class Separation:
    """``a`` against ``b``: the accuracy difference (a fraction; positive: ``a`` is more accurate),
    its 95% interval, the two-sided p-value, and whether the two are tied (the interval holds 0),
    with the images and seeds behind it."""

    difference: float
    low: float
    high: float
    p: float
    images: int
    seeds: tuple[int, int]

    def points(self) -> str:
        return points(self.difference, self.low, self.high)

    @property
    def tied(self) -> bool:
        return self.low <= 0.0 <= self.high

    def to_dict(self) -> dict[str, Any]:
        return {
            "difference": self.difference,
            "interval": [self.low, self.high],
            "p": self.p,
            "tied": self.tied,
            "images": self.images,
            "seeds": list(self.seeds),
        }


def separate(a: Sequence[np.ndarray] | np.ndarray, b: Sequence[np.ndarray] | np.ndarray) -> Separation:
    """``a`` against ``b``: each one bool vector per seed of the same images in the same order
    (a 2-D array [seeds, images], or a list of vectors). A ValueError when the image counts differ
    or a side has no seed."""
    x, y = _matrix(a), _matrix(b)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"outcomes of {x.shape[1]} and {y.shape[1]} images: not the same images")
    n = x.shape[1]
    if n == 0:
        raise ValueError("no images to compare")
    rng = np.random.default_rng(_SEED)
    d = float(x.mean() - y.mean())
    # image weights: how often each image is drawn (one multinomial per draw, shared by both sides)
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=DRAWS).astype(np.float64)  # [DRAWS, n]
    draws = _side(x, w, rng) - _side(y, w, rng)
    lo, hi = np.quantile(draws, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    below, above = int((draws <= 0).sum()), int((draws >= 0).sum())
    p = min(1.0, 2 * min(below + 1, above + 1) / (DRAWS + 1))
    return Separation(d, float(lo), float(hi), p, n, (x.shape[0], y.shape[0]))


def points(difference: float, low: float, high: float) -> str:
    """``+1.20 [-0.40, +2.80]``: a difference and its interval (fractions) in points, as tables show them."""
    d, lo, hi = (round(100 * v, 2) + 0.0 for v in (difference, low, high))  # + 0.0: no "-0.00"
    return f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def _matrix(v: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    m = np.atleast_2d(np.asarray(v, dtype=np.float64)) if len(v) else np.zeros((0, 0))
    if m.shape[0] == 0:
        raise ValueError("a candidate with no seed's outcomes")
    return m


def _side(m: np.ndarray, image_weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per draw: the accuracy of one side with its seeds resampled (one seed: itself) and the images
    weighted as drawn."""
    seeds, n = m.shape
    per_seed = image_weights @ m.T / n  # [DRAWS, seeds]: each seed's accuracy on the drawn images
    if seeds == 1:
        return per_seed[:, 0]
    seed_weights = rng.multinomial(seeds, np.full(seeds, 1.0 / seeds), size=len(image_weights))
    return (per_seed * seed_weights).sum(1) / seeds
