"""Datasets: ``cifar10``, ``cifar100``, ``digits`` and ``synthetic`` as uint8 arrays, and
the batched augmenting :class:`Loader` that feeds them to a model.

``load_dataset`` is the one entry point; every problem with the data a user supplied is a
:class:`~filter_templates.core.errors.UsageError` naming the file. Importing this package imports no
torch (the image-decoding worker processes import it and must start quickly): the Loader is
``data.augment.Loader``, and the CIFAR and folder modules are imported by name when loaded.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import re
from typing import Any, Callable, Mapping

import numpy as np

from filter_templates.core import validate
from filter_templates.core.errors import UsageError
from filter_templates.core.images import IMAGE_SIZE
from filter_templates.data import digits, split, synthetic
from filter_templates.data.dataset import Dataset
from filter_templates.data.rows import Rows, take

__all__ = [
    "DATASETS",
    "Dataset",
    "load_dataset",
    "load_data",
    "load_data_for",
    "data_digest_for",
    "num_classes",
    "DataFacts",
    "data_facts",
    "mirrors",
]

DATASETS = ("cifar10", "cifar100", "digits", "synthetic", "folder")
_LIMIT_SEED = 0x5EED


# The module of each dataset, imported by name when it is loaded: CIFAR's and the folder's write
# their decoded cache with the run-file writer, which imports torch.
_MODULES = {"cifar10": "cifar", "cifar100": "cifar", "digits": "digits", "synthetic": "synthetic", "folder": "folder"}


def _module(key: str) -> Any:
    return importlib.import_module(f"{__name__}.{_MODULES[key]}")


def _canonical(name: str) -> str:
    key = re.sub(r"[-_ ]", "", str(name).lower())
    if key not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    return key


def _check_limit(value: int | None, what: str) -> None:
    if value is not None:
        validate.integer(value, what)


def _subset(
    x: "np.ndarray | Rows", y: np.ndarray, limit: int | None, salt: int
) -> tuple["np.ndarray | Rows", np.ndarray]:
    """The first ``limit`` samples after a fixed seeded shuffle (kept in their stored order, which
    reads a memmap sequentially); all samples when ``limit`` is None or not smaller."""
    if limit is None or limit >= len(y):
        return x, y
    keep = np.sort(np.random.default_rng([_LIMIT_SEED, salt]).permutation(len(y))[:limit])
    return take(x, keep), np.ascontiguousarray(y[keep])  # a mapped split stays mapped (data.rows)


def _check_size(key: str, image_size: int | None) -> None:
    if image_size is not None and key != "folder" and image_size != IMAGE_SIZE:
        raise UsageError(f"--image-size applies to --dataset folder; {key} images are {IMAGE_SIZE}x{IMAGE_SIZE}")


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = False,
    limit_train: int | None = None,
    limit_test: int | None = None,
    image_size: int | None = None,
) -> Dataset:
    """Load a dataset by name.

    ``data_dir``: for CIFAR (default ``$FILTER_TEMPLATES_DATA`` or ``./data``) the data in any
    form :mod:`filter_templates.data.cifar` accepts, ``download`` fetching the official archive
    when none is there; for ``folder`` (required) the user's image tree or archive
    (:mod:`filter_templates.data.folder`), brought to ``image_size`` px (default: the images'
    common size; the built-in datasets are 32 px). ``limit_train``/``limit_test`` keep the first
    N samples after a fixed seeded shuffle (for ``synthetic`` they are the sizes generated).
    Mean/std always describe the full training split.
    """
    key = _canonical(name)
    _check_limit(limit_train, "limit_train")
    _check_limit(limit_test, "limit_test")
    _check_size(key, image_size)
    if key == "synthetic":
        return synthetic.load(limit_train or synthetic.DEFAULT_TRAIN, limit_test or synthetic.DEFAULT_TEST)
    if key == "digits":
        ds = digits.load()
    elif key == "folder":
        ds = _module(key).load(data_dir, image_size)
    else:
        ds = _module(key).load(key, data_dir, download_missing=download)
    train_x, train_y = _subset(ds.train_x, ds.train_y, limit_train, 1)
    test_x, test_y = _subset(ds.test_x, ds.test_y, limit_test, 2)
    if train_x is ds.train_x and test_x is ds.test_x:
        return ds
    return dataclasses.replace(ds, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y)


@functools.lru_cache(maxsize=1)
def load_data(
    name: str,
    data_dir: str | None = None,
    download: bool = False,
    limit_train: int | None = None,
    limit_test: int | None = None,
    image_size: int | None = None,
) -> Dataset:
    """:func:`load_dataset`, remembering the last one: a sweep trains many models on one dataset."""
    return load_dataset(
        name, data_dir, download=download, limit_train=limit_train, limit_test=limit_test, image_size=image_size
    )


def mirrors(name: str) -> bool:
    """Whether a mirrored image of dataset ``name`` is still an image of its class (``Dataset.hflip``),
    known without loading it: photos yes, digits no."""
    return digits.MIRRORS if _canonical(name) == "digits" else True


def _setting(settings: Any, name: str, default: Any = None) -> Any:
    if isinstance(settings, Mapping):
        return settings.get(name, default)
    return getattr(settings, name, default)


def load_data_for(settings: Any) -> Dataset:
    """The data a run of ``settings`` reads: a ``TrainConfig``, or a mapping of its fields (a
    sweep's shared training settings with ``dataset``). The one place that turns a configuration
    into :func:`load_data`'s arguments, so a new data setting is added here and nowhere else."""
    return load_data(
        _setting(settings, "dataset"),
        _setting(settings, "data_dir"),
        bool(_setting(settings, "download", False)),
        _setting(settings, "limit_train"),
        _setting(settings, "limit_test"),
        _setting(settings, "image_size"),
    )


def data_digest_for(settings: Any) -> str | None:
    """What the images of ``settings``' dataset are, for its runs' identity (``TrainConfig.data_digest``):
    a folder's content digest (:func:`folder.digest`: its files' names, sizes and times, nothing
    decoded; where the folder lies is no part of it), None for a built-in dataset, whose name says it."""
    key = _canonical(_setting(settings, "dataset"))
    return _module(key).digest(_setting(settings, "data_dir")) if key == "folder" else None


def num_classes(name: str) -> int:
    """The class count of a built-in dataset from its metadata, without reading any data."""
    counts = {**_module("cifar10").NUM_CLASSES, "digits": digits.NUM_CLASSES, "synthetic": synthetic.NUM_CLASSES}
    key = _canonical(name)
    if key not in counts:
        raise UsageError(f"the classes of --dataset {key} are its folder names: they are known once it is read")
    return counts[key]


@dataclasses.dataclass(frozen=True)
class DataFacts:
    """What planning runs on a dataset needs to know of it before anything trains: what a model for
    it must fit (``classes``, the square ``image_size``), which images they are (``digest``: a
    folder's content digest, None for a built-in dataset), the training split's size
    (``train_images``, ``limit_train`` applied, before any validation split) and the validation set
    the dataset brings itself (``own_val_images``, a folder's ``val/``; 0: none). The two sizes are
    counted when first asked (``count``): CIFAR's are in its data, read only then."""

    classes: int
    image_size: int
    digest: str | None
    count: Callable[[], tuple[int, int]] = dataclasses.field(repr=False, compare=False)

    @functools.cached_property
    def _sizes(self) -> tuple[int, int]:
        return self.count()

    @property
    def train_images(self) -> int:
        return self._sizes[0]

    @property
    def own_val_images(self) -> int:
        return self._sizes[1]

    def default_val_split(self) -> int | float:
        """``reduce``'s validation split for this dataset (:func:`split.default`)."""
        return split.default(self.train_images)

    def val_images(self, val_split: int | float, batch_size: int = 1) -> int:
        """The size of the validation set a run of ``val_split`` selects on (0: none): the
        dataset's own when it brings one, else ``val_split`` held out of the training split; a
        UsageError when that holds out none, or leaves less than one batch of ``batch_size``."""
        if self.own_val_images:
            return self.own_val_images
        n, k = self.train_images, split.size(val_split, self.train_images)
        if k and n - k < batch_size:  # every run of it would fail on its first epoch
            raise UsageError(
                f"val_split {val_split!r} holds out {k} of the {n} training images, leaving "
                f"{n - k}, fewer than one batch of {batch_size}; give a smaller split or batch size"
            )
        return k


def data_facts(settings: Any) -> DataFacts:
    """The :class:`DataFacts` of the dataset ``settings`` name (a ``TrainConfig``, or a mapping of
    its fields). The built-in datasets answer from their metadata; CIFAR is read only for its split
    sizes, and a folder at once (decoded once into its cache, which also proves it readable before
    anything trains), as its classes and image size are in its files."""
    key = _canonical(_setting(settings, "dataset"))
    _check_size(key, _setting(settings, "image_size"))
    limit = _setting(settings, "limit_train")
    _check_limit(limit, "limit_train")

    def read() -> tuple[int, int]:
        ds = load_data_for(settings)
        return len(ds.train_y), 0 if ds.val_y is None else len(ds.val_y)

    if key == "folder":
        ds = load_data_for(settings)
        return DataFacts(ds.num_classes, ds.image_size, data_digest_for(settings), read)
    if key == "digits":
        n = min(digits.TRAIN_SIZE, limit or digits.TRAIN_SIZE)
        return DataFacts(num_classes(key), IMAGE_SIZE, None, lambda: (n, 0))
    if key == "synthetic":
        n = limit or synthetic.DEFAULT_TRAIN
        return DataFacts(num_classes(key), IMAGE_SIZE, None, lambda: (n, 0))
    return DataFacts(num_classes(key), IMAGE_SIZE, None, read)
