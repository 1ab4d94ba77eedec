"""``synthetic``: deterministic generated images for tests and benchmarks.

Each class has a smooth colour pattern; a sample is its class pattern, shifted by a few pixels and
dimmed or brightened, plus noise. A small CNN learns it in an epoch or two, which is what tests of
the training loop need. Samples come in fixed-seed chunks, so the first N samples are the same
whatever size is asked for.
"""

from __future__ import annotations

import numpy as np

from filter_templates.core.images import IMAGE_SIZE
from filter_templates.data.dataset import Dataset
from filter_templates.data.digits import bilinear_resize

__all__ = ["load", "DEFAULT_TRAIN", "DEFAULT_TEST", "NUM_CLASSES"]

DEFAULT_TRAIN = 2000
DEFAULT_TEST = 500
NUM_CLASSES = 10
_CHUNK = 1000
_SEED = 20240


def _prototypes() -> np.ndarray:
    rng = np.random.default_rng([_SEED, 0])
    low = rng.uniform(0, 255, size=(NUM_CLASSES, 4, 4, 3))
    return bilinear_resize(low, (32, 32)).astype(np.float32)  # [C, 32, 32, 3]


def _split(n: int, split: int, protos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for k in range(-(-n // _CHUNK)):
        rng = np.random.default_rng([_SEED, split, k])
        y = rng.integers(0, NUM_CLASSES, _CHUNK)
        shift = rng.integers(-3, 4, size=(_CHUNK, 2))
        gain = rng.uniform(0.6, 1.2, size=(_CHUNK, 1, 1, 1)).astype(np.float32)
        noise = rng.integers(-40, 41, size=(_CHUNK, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.int16)
        base = protos[y]
        for dy in range(-3, 4):  # shift by rolling, grouped by offset: no per-sample loop
            for dx in range(-3, 4):
                sel = (shift[:, 0] == dy) & (shift[:, 1] == dx)
                if sel.any():
                    base[sel] = np.roll(base[sel], (dy, dx), axis=(1, 2))
        xs.append(np.clip(base * gain + noise, 0, 255).astype(np.uint8))
        ys.append(y.astype(np.int64))
    return np.concatenate(xs)[:n], np.concatenate(ys)[:n]


def load(n_train: int = DEFAULT_TRAIN, n_test: int = DEFAULT_TEST) -> Dataset:
    protos = _prototypes()
    train_x, train_y = _split(n_train, 1, protos)
    test_x, test_y = _split(n_test, 2, protos)
    return Dataset.normalised(
        "synthetic",
        tuple(f"class{c}" for c in range(NUM_CLASSES)),
        train_x,
        train_y,
        test_x=test_x,
        test_y=test_y,
        source=f"generated (seed {_SEED})",
    )
