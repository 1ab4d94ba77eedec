"""Per-channel mean and standard deviation of uint8 images, exactly and in bounded memory."""

from __future__ import annotations

import numpy as np

__all__ = ["channel_stats"]


_CHUNK_BYTES = 64 << 20  # pixels read at once: bounded memory whatever the image size


def channel_stats(x: np.ndarray, chunk: int | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel of uint8 [N, H, W, C] images in [0, 1] units.

    Counts a 256-bin histogram per channel, chunk by chunk, so it is exact (no float accumulation
    drift), works on a memmap without loading it whole, and costs one pass.
    """
    if x.dtype != np.uint8 or x.ndim != 4 or len(x) == 0:
        raise ValueError(f"expected non-empty uint8 [N, H, W, C] images, got {x.dtype} {x.shape}")
    c = x.shape[-1]
    if chunk is None:
        chunk = max(1, _CHUNK_BYTES // max(1, x[0].size))
    hist = np.zeros((c, 256), dtype=np.int64)
    for s in range(0, len(x), chunk):
        block = np.asarray(x[s : s + chunk]).reshape(-1, c)
        for k in range(c):
            hist[k] += np.bincount(block[:, k], minlength=256)
    v = np.arange(256, dtype=np.float64) / 255.0
    n = hist.sum(axis=1).astype(np.float64)
    mean = (hist * v).sum(axis=1) / n
    var = np.maximum((hist * v * v).sum(axis=1) / n - mean * mean, 0.0)
    return tuple(float(m) for m in mean), tuple(float(s) for s in np.sqrt(var))
