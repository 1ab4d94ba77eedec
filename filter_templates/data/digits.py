"""``digits``: the 8x8 handwritten digits as 32x32 RGB, the default dataset that works on a fresh
machine with no data and no network. The images ship inside the package (``digits.npz``, with
their origin and licence in the README beside it): the UCI set as scikit-learn bundles it, with
the fixed stratified train/test split, so nothing else needs installing to read them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from filter_templates.core.images import IMAGE_SIZE
from filter_templates.data.dataset import Dataset

NUM_CLASSES = 10  # the digits 0-9
MIRRORS = False  # a mirrored digit is not a digit: no flips in training, no mirrored test view

__all__ = ["load", "bilinear_resize", "TEST_SIZE", "TRAIN_SIZE", "NUM_CLASSES", "MIRRORS"]

TEST_SIZE = 360  # of 1797: a 1437 / 360 split, stratified by class (its indices are in the file)
TRAIN_SIZE = 1797 - TEST_SIZE
FILE = Path(__file__).with_name("digits.npz")


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
    with np.load(FILE, allow_pickle=False) as f:
        images, target, test = f["images"], f["target"], f["test"].astype(np.int64)
    gray = images.astype(np.float64) * (255.0 / 16.0)  # 0..16 -> 0..255
    big = np.clip(np.rint(bilinear_resize(gray, (IMAGE_SIZE, IMAGE_SIZE))), 0, 255).astype(np.uint8)
    x = np.ascontiguousarray(np.repeat(big[..., None], 3, axis=3))
    y = target.astype(np.int64)
    train = np.setdiff1d(np.arange(len(y)), test)  # sorted, as the test indices are
    return Dataset.normalised(
        "digits",
        tuple(str(d) for d in range(NUM_CLASSES)),
        x[train],
        y[train],
        hflip=MIRRORS,
        test_x=x[test],
        test_y=y[test],
        source="UCI Optical Recognition of Handwritten Digits, as bundled by scikit-learn (digits.npz)",
    )
