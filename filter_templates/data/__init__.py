"""Datasets: ``cifar10``, ``cifar100``, ``digits`` and ``synthetic`` as uint8 arrays, and
the batched augmenting :class:`Loader` that feeds them to a model.

``load_dataset`` is the one entry point; every problem with the data a user supplied is a
:class:`~filter_templates.errors.UsageError` naming the file. This package imports no torch
except through :class:`Loader` (imported lazily), so decoding workers start quickly.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any

import numpy as np

from .. import validate
from ..errors import UsageError
from .dataset import Dataset

__all__ = ["DATASETS", "Dataset", "Loader", "load_dataset", "load_data", "num_classes", "default_data_dir"]

DATASETS = ("cifar10", "cifar100", "digits", "synthetic")
_LIMIT_SEED = 0x5EED


def _canonical(name: str) -> str:
    key = re.sub(r"[-_ ]", "", str(name).lower())
    if key not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    return key


def _check_limit(value: int | None, what: str) -> None:
    if value is not None:
        validate.integer(value, what)


def _subset(x: np.ndarray, y: np.ndarray, limit: int | None, salt: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` samples after a fixed seeded shuffle (kept in their stored order, which
    reads a memmap sequentially); all samples when ``limit`` is None or not smaller."""
    if limit is None or limit >= len(y):
        return x, y
    keep = np.sort(np.random.default_rng([_LIMIT_SEED, salt]).permutation(len(y))[:limit])
    return np.ascontiguousarray(x[keep]), np.ascontiguousarray(y[keep])


def load_dataset(name: str, data_dir: str | os.PathLike[str] | None = None, *, download: bool = False,
                 limit_train: int | None = None, limit_test: int | None = None) -> Dataset:
    """Load a dataset by name.

    ``data_dir`` (CIFAR only; default ``$FILTER_TEMPLATES_DATA`` or ``./data``) may hold the data in
    any form :mod:`filter_templates.data.cifar` accepts; ``download`` fetches the official archive
    when none is there. ``limit_train``/``limit_test`` keep the first N samples after a fixed
    seeded shuffle (for ``synthetic`` they are the sizes generated). Mean/std always describe the
    full training split.
    """
    key = _canonical(name)
    _check_limit(limit_train, "limit_train")
    _check_limit(limit_test, "limit_test")
    if key == "synthetic":
        from . import synthetic

        return synthetic.load(limit_train or synthetic.DEFAULT_TRAIN, limit_test or synthetic.DEFAULT_TEST)
    if key == "digits":
        from . import digits

        ds = digits.load()
    else:
        from . import cifar

        ds = cifar.load(key, data_dir, download_missing=download)
    train_x, train_y = _subset(ds.train_x, ds.train_y, limit_train, 1)
    test_x, test_y = _subset(ds.test_x, ds.test_y, limit_test, 2)
    if train_x is ds.train_x and test_x is ds.test_x:
        return ds
    return Dataset(name=ds.name, classes=ds.classes, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
                   mean=ds.mean, std=ds.std, source=ds.source, hflip=ds.hflip)


@functools.lru_cache(maxsize=1)
def load_data(name: str, data_dir: str | None = None, download: bool = False,
              limit_train: int | None = None, limit_test: int | None = None) -> Dataset:
    """:func:`load_dataset`, remembering the last one: a sweep trains many models on one dataset."""
    return load_dataset(name, data_dir, download=download, limit_train=limit_train, limit_test=limit_test)


def num_classes(name: str) -> int:
    """The class count of a built-in dataset from its metadata, without reading any data."""
    from .cifar import NUM_CLASSES
    from . import digits, synthetic

    counts = {**NUM_CLASSES, "digits": digits.NUM_CLASSES, "synthetic": synthetic.NUM_CLASSES}
    return counts[_canonical(name)]


def default_data_dir() -> "os.PathLike[str]":
    """Where CIFAR is looked for when no data_dir is given."""
    from .cifar import default_data_dir as _d

    return _d()


def __getattr__(name: str) -> Any:
    if name == "Loader":  # imports torch: only on demand
        from .augment import Loader

        return Loader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
