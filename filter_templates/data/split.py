"""The validation split: the part of a training set that selection reads, so that the test set is
only ever reported, never chosen on.

Why a fixed split: ``reduce`` compares candidates and their seeds, and they must all be scored on
the same images. The held-out images are therefore a pure function of the dataset (its name and
its labels) and :data:`SPLIT_SEED` -- never of the training seed or the model. The split is
stratified: every class gives its share of the held-out images (to within one image), so a small
validation set does not tilt towards a class by chance.

A dataset that brings its own validation set (``Dataset.val_x``, a folder's ``val/``) keeps it,
whatever the value: nothing is held out of its training split, which it never overlaps. Mean and std stay those of the full training split, so a run with a split
normalises exactly like one without.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
import zlib
from typing import Any

import numpy as np

from filter_templates.core import validate
from filter_templates.core.errors import UsageError
from filter_templates.data.dataset import Dataset
from filter_templates.data.rows import take

__all__ = [
    "SPLIT_SEED",
    "DEFAULT_FRACTION",
    "DEFAULT_MAX",
    "check",
    "parse",
    "size",
    "indices",
    "default",
    "holdout",
    "describe",
]

#: The seed of every split; a constant, so every run of a dataset holds out the same images.
SPLIT_SEED = 0x7A1
#: ``reduce``'s default: this fraction of the training set ...
DEFAULT_FRACTION = 0.1
#: ... but at most this many images (CIFAR-10/100: 5,000 of 50,000).
DEFAULT_MAX = 5000

_WHAT = "a count of images (an integer >= 0) or a fraction in (0, 1)"


def check(value: Any, what: str = "val_split") -> int | float:
    """``value`` when it can say how much to hold out: 0 (nothing), a count >= 1, or a fraction in
    (0, 1); else a UsageError naming ``what``. Needs no data (the size check is :func:`size`)."""
    if validate.is_integer(value) and value >= 0:
        return int(value)
    if validate.is_number(value) and 0 < value < 1:
        return float(value)
    if validate.is_number(value) and value == 0:
        return 0
    raise UsageError(f"{what} must be {_WHAT}, got {value!r}")


def parse(text: str) -> int | float:
    """A ``--val-split`` as typed: digits are a count, anything else a fraction."""
    text = text.strip()
    try:
        value: int | float = int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
    except ValueError:
        raise UsageError(f"{text!r} is not {_WHAT}") from None
    try:
        return check(value)
    except UsageError:
        raise UsageError(f"{text!r} is not {_WHAT}") from None


def size(value: int | float, n_train: int, what: str = "val_split") -> int:
    """How many of ``n_train`` training images ``value`` holds out; a UsageError when that is none
    (a fraction too small) or all of them."""
    v = check(value, what)
    if v == 0:
        return 0
    k = v if isinstance(v, int) else int(round(v * n_train))
    if k < 1:
        raise UsageError(
            f"{what} {value!r} holds out no image of the {n_train} training images; give a larger fraction or a count"
        )
    if k >= n_train:
        raise UsageError(
            f"{what} {value!r} holds out {k} of the {n_train} training images, leaving none to "
            "train on; give a smaller count or a fraction"
        )
    return k


def indices(labels: np.ndarray, k: int, key: str, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """``(train, val)``: sorted index arrays of ``labels`` with ``k`` stratified indices in ``val``.

    Each class gives ``k * its share`` images, rounded by the largest remainder (ties to the smaller
    label), drawn at random with a generator seeded by ``seed`` and ``key`` (the dataset's name)."""
    labels = np.asarray(labels)
    n = len(labels)
    classes, counts = np.unique(labels, return_counts=True)
    exact = k * counts / n
    quota = np.floor(exact).astype(np.int64)
    extra = k - int(quota.sum())
    order = np.lexsort((classes, -(exact - quota)))  # largest remainder first, then the smaller label
    quota[order[:extra]] += 1
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    val = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)])
    val = np.sort(val)
    keep = np.ones(n, dtype=bool)
    keep[val] = False
    return np.flatnonzero(keep), val


def default(n_train: int) -> int | float:
    """``reduce``'s split: 10% of the training set, at most 5,000 images (CIFAR-10/100: 5,000)."""
    return DEFAULT_FRACTION if DEFAULT_FRACTION * n_train <= DEFAULT_MAX else DEFAULT_MAX


@functools.lru_cache(maxsize=2)  # a sweep trains many models on one split; Dataset hashes by identity
def holdout(ds: Dataset, value: int | float, seed: int = SPLIT_SEED) -> Dataset:
    """``ds`` with the validation set a run of ``value`` uses: its own when it brings one, else
    ``value`` held out of its training split (``val_x``/``val_y``, and the training arrays hold the
    rest); none for ``value`` 0."""
    v = check(value)
    if v == 0 or ds.val_x is not None:
        return ds
    k = size(v, len(ds.train_y))
    train, val = indices(ds.train_y, k, ds.name, seed)
    return dataclasses.replace(
        ds,
        train_x=take(ds.train_x, train),  # a view of a mapped split, so a large split can still stream
        train_y=ds.train_y[train],
        val_x=np.ascontiguousarray(ds.train_x[val]),
        val_y=ds.train_y[val],
    )


def describe(original: Dataset, used: Dataset, value: int | float, seed: int = SPLIT_SEED) -> dict[str, Any] | None:
    """What a run records about its validation set (``used`` = :func:`holdout` of ``original``;
    None: it has none): its size, where it came from and a digest of its labels and pixels, so
    that two runs can show they selected on the same images."""
    if used.val_x is None or used.val_y is None:
        return None
    digest = hashlib.sha256(np.ascontiguousarray(used.val_y).tobytes())
    digest.update(np.ascontiguousarray(used.val_x).tobytes())
    own = original.val_x is not None
    return {
        "images": int(len(used.val_y)),
        "val_split": value,
        "source": "the dataset's own" if own else "held out of the training split",
        "split_seed": None if own else seed,
        "digest": digest.hexdigest()[:16],
    }
