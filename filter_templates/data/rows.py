"""Some rows of a memory-mapped image array, read only when asked for.

``--limit-train`` and a held-out validation split keep part of a training split. Copying that
part out of a memory-mapped cache would put the whole split into memory, which is exactly what a
split too large for memory cannot afford; so the kept part of a mapped array stays a view,
:class:`Rows`: the mapped file and the sorted indices of the kept images. Reading rows of it reads
those images from the file (in increasing order when the rows asked for are increasing, as the
streamed path asks), and turning it into an array (``np.asarray``) copies them, as the resident
path does for a split that fits. The images are the same bytes either way, so a run's numbers do
not depend on it. Arrays that are already in memory are copied as before: a view would save
nothing there.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["Rows", "take"]


class Rows:
    """Rows ``index`` (sorted, int64) of ``base`` [N, ...]: an array-like that supports what a
    split is asked for -- ``len``, ``shape``, ``dtype``, ``ndim``, slicing (another view), integer
    index arrays (an array read from ``base``) and ``np.asarray``."""

    def __init__(self, base: np.ndarray, index: np.ndarray) -> None:
        self.base = base
        self.index = np.asarray(index, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.base.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.base.dtype

    @property
    def ndim(self) -> int:
        return self.base.ndim

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            return Rows(self.base, self.index[key])
        return self.base[self.index[np.asarray(key)]]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.ascontiguousarray(self.base[self.index])
        return out if dtype is None else out.astype(dtype, copy=False)


def take(x: "np.ndarray | Rows", index: np.ndarray) -> "np.ndarray | Rows":
    """Rows ``index`` (sorted) of ``x``: a view when ``x`` is memory-mapped (or a view already),
    else a contiguous copy."""
    if isinstance(x, Rows):
        return Rows(x.base, x.index[index])
    if isinstance(x, np.memmap):
        return Rows(x, index)
    return np.ascontiguousarray(x[index])
