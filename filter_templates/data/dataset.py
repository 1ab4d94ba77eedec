"""The in-memory (or memory-mapped) form of a dataset that every other module consumes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from filter_templates.data.rows import Rows
from filter_templates.data.stats import channel_stats

__all__ = ["Dataset"]


@dataclass(frozen=True, eq=False)  # arrays make a generated __eq__ meaningless
class Dataset:
    """Both splits as uint8 HWC images (possibly ``np.memmap``) with int64 labels.

    ``mean``/``std`` are per-channel statistics of the *full* training split in [0, 1] units, the
    values the batched loader normalises with. ``source`` says where the pixels came from.
    ``hflip``: whether a mirrored image is still an image of its class (photos yes, digits no), so
    training augmentation flips only where that holds. ``val_x``/``val_y``: a validation set the
    dataset comes with (a folder's own ``val/``), or the part of the training split held out by
    :func:`filter_templates.data.split.holdout`; None when there is none. Selection (ranking,
    choosing a seed) reads it, never the test split. ``digest``: what the images are where the
    name does not say it (a folder's content digest, part of its runs' identity); else None.
    """

    name: str
    classes: tuple[str, ...]
    # uint8 [N, S, S, 3]: S = image_size (32 for the built-in datasets); a part of a mapped
    # split kept by --limit-train or a validation split is a view of it (data.rows)
    train_x: np.ndarray | Rows
    train_y: np.ndarray  # int64 [N]
    test_x: np.ndarray | Rows
    test_y: np.ndarray
    mean: tuple[float, ...]  # one per channel
    std: tuple[float, ...]
    source: str = ""
    hflip: bool = True
    val_x: np.ndarray | None = None
    val_y: np.ndarray | None = None
    digest: str | None = None

    @classmethod
    def normalised(
        cls, name: str, classes: tuple[str, ...], train_x: np.ndarray, train_y: np.ndarray, **rest: Any
    ) -> "Dataset":
        """The dataset with ``mean``/``std`` measured on ``train_x``, as every loader makes it
        (``rest``: the other fields, ``test_x`` and ``test_y`` among them)."""
        mean, std = channel_stats(train_x)
        return cls(name=name, classes=classes, train_x=train_x, train_y=train_y, mean=mean, std=std, **rest)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        """The side of the (square) images."""
        return int(self.train_x.shape[1])

    def record(self) -> dict:
        """What a run records about its data: classes, image size and the normalisation used."""
        return {
            "name": self.name,
            "classes": list(self.classes),
            "image_size": self.image_size,
            "mean": [round(float(m), 6) for m in self.mean],
            "std": [round(float(s), 6) for s in self.std],
            "train": int(len(self.train_y)),
            "test": int(len(self.test_y)),
            "val": None if self.val_y is None else int(len(self.val_y)),
            "source": self.source,
            **({"digest": self.digest} if self.digest is not None else {}),
        }

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, classes={self.num_classes}, train={len(self.train_y)}, "
            f"test={len(self.test_y)}, "
            + (f"val={len(self.val_y)}, " if self.val_y is not None else "")
            + f"source={self.source!r})"
        )
