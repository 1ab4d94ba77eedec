"""``digits``: scikit-learn's bundled 8x8 handwritten digits as 32x32 RGB, the default dataset that
works on a fresh machine with no data and no network."""

from __future__ import annotations

import numpy as np

from filter_templates.data.dataset import Dataset
from filter_templates.data.stats import channel_stats

NUM_CLASSES = 10  # the digits 0-9

__all__ = ["load", "bilinear_resize", "TEST_SIZE", "NUM_CLASSES"]

TEST_SIZE = 360  # of 1797: a 1437 / 360 split, stratified by class
_SPLIT_SEED = 0


def _bilinear_matrix(src: int, dst: int) -> np.ndarray:
    """[dst, src] weights of bilinear resampling with half-pixel centres (edges clamped), the
    convention of ``torch.nn.functional.interpolate(..., align_corners=False)``."""
    pos = np.clip((np.arange(dst) + 0.5) * src / dst - 0.5, 0, src - 1)
    i0 = np.floor(pos).astype(int)
    i1 = np.minimum(i0 + 1, src - 1)
    frac = pos - i0
    w = np.zeros((dst, src))
    w[np.arange(dst), i0] += 1 - frac
    w[np.arange(dst), i1] += frac
    return w


def bilinear_resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize float images [N, h, w] or [N, h, w, C] to ``size`` (H, W), as two small matrix products."""
    wh = _bilinear_matrix(x.shape[1], size[0])
    ww = _bilinear_matrix(x.shape[2], size[1])
    return np.einsum("Hh,nhw...,Ww->nHW...", wh, x.astype(np.float64), ww)


def load() -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    gray = bunch.images * (255.0 / 16.0)  # 0..16 -> 0..255
    big = np.clip(np.rint(bilinear_resize(gray, (32, 32))), 0, 255).astype(np.uint8)
    x = np.ascontiguousarray(np.repeat(big[..., None], 3, axis=3))
    y = bunch.target.astype(np.int64)
    train, test = train_test_split(np.arange(len(y)), test_size=TEST_SIZE, stratify=y, random_state=_SPLIT_SEED)
    train, test = np.sort(train), np.sort(test)
    mean, std = channel_stats(x[train])
    return Dataset(name="digits", hflip=False, classes=tuple(str(d) for d in range(NUM_CLASSES)), train_x=x[train], train_y=y[train],
                   test_x=x[test], test_y=y[test], mean=mean, std=std,  # type: ignore[arg-type]
                   source="sklearn.datasets.load_digits (bundled)")
