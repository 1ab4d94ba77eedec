"""Tiny datasets written in the real on-disk formats, for tests of ``filter_templates.data``.

The official CIFAR files were written by Python 2: protocol-2 pickles whose strings are Python 2
``str`` (read back as ``bytes`` keys such as ``b"data"``) and whose arrays name
``numpy.core.multiarray._reconstruct``. :func:`py2_pickle_dumps` reproduces that byte layout, so
the loader is tested against what the real archives contain, not against what Python 3 writes.
"""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

try:
    from numpy._core.multiarray import _reconstruct  # type: ignore[attr-defined]
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct  # type: ignore[attr-defined,no-redef]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Protocol 2 as Python 2 wrote it: strings as BINSTRING, numpy under numpy.core."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj: Any) -> None:
        if isinstance(obj, str):
            obj = obj.encode("latin-1")
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj: Any, name: Any = None) -> None:
        if obj is _reconstruct:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def py2_pickle_dumps(obj: Any) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def make_split(per_class: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 [N, 32, 32, 3] images grouped by class (the order a class-folder tree gives)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(per_class * num_classes, 32, 32, 3), dtype=np.uint8)
    y = np.repeat(np.arange(num_classes), per_class).astype(np.int64)
    return x, y


def _rows(x: np.ndarray) -> np.ndarray:
    """HWC images -> the official uint8 [N, 3072] rows of R, G and B planes."""
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2).reshape(len(x), -1))


def _dump(path: Path, obj: Any, py2: bool) -> None:
    path.write_bytes(py2_pickle_dumps(obj) if py2 else pickle.dumps(obj, protocol=4))


def write_cifar10_batches(
    folder: Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], *, py2: bool = True
) -> Path:
    """cifar-10-batches-py/: data_batch_1..5 (train split in 5 parts), test_batch, batches.meta."""
    folder.mkdir(parents=True, exist_ok=True)
    k = (lambda s: s.encode()) if py2 else (lambda s: s)
    x, y = train
    parts = np.array_split(np.arange(len(y)), 5)
    for i, idx in enumerate(parts, 1):
        _dump(
            folder / f"data_batch_{i}",
            {
                k("batch_label"): k(f"training batch {i} of 5"),
                k("labels"): [int(v) for v in y[idx]],
                k("data"): _rows(x[idx]),
                k("filenames"): [k(f"img_{j}.png") for j in idx],
            },
            py2,
        )
    _dump(
        folder / "test_batch",
        {
            k("batch_label"): k("testing batch 1 of 1"),
            k("labels"): [int(v) for v in test[1]],
            k("data"): _rows(test[0]),
            k("filenames"): [k(f"t_{j}.png") for j in range(len(test[1]))],
        },
        py2,
    )
    _dump(
        folder / "batches.meta",
        {k("label_names"): [k(c) for c in CIFAR10_CLASSES], k("num_cases_per_batch"): 10000, k("num_vis"): 3072},
        py2,
    )
    return folder


def cifar100_classes() -> tuple[str, ...]:
    return tuple(f"class_{i:03d}" for i in range(100))


def write_cifar100_files(
    folder: Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]
) -> Path:
    """cifar-100-python/: train, test, meta with fine and coarse labels."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (x, y) in (("train", train), ("test", test)):
        _dump(
            folder / name,
            {
                b"filenames": [b"x.png"] * len(y),
                b"batch_label": name.encode(),
                b"fine_labels": [int(v) for v in y],
                b"coarse_labels": [int(v) // 5 for v in y],
                b"data": _rows(x),
            },
            True,
        )
    _dump(
        folder / "meta",
        {
            b"fine_label_names": [c.encode() for c in cifar100_classes()],
            b"coarse_label_names": [f"super_{i}".encode() for i in range(20)],
        },
        True,
    )
    return folder


def tar_folder(src: Path, dest: Path, arcname: str | None = None) -> Path:
    """Pack ``src`` into ``dest`` (compression from its suffix) under ``arcname`` ("" = no top folder)."""
    mode = "w:gz" if dest.name.endswith((".gz", ".tgz")) else "w"
    with tarfile.open(dest, mode) as tf:
        if arcname == "":
            for p in sorted(src.iterdir()):
                tf.add(p, arcname=p.name)
        else:
            tf.add(src, arcname=arcname or src.name)
    return dest


def write_tree(
    root: Path,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    classes: tuple[str, ...] = CIFAR10_CLASSES,
    fmt: str = "png",
) -> Path:
    """root/train/<class>/NNNN.png and root/test/<class>/NNNN.png, numbered in array order."""
    for split, (x, y) in (("train", train), ("test", test)):
        for i, (img, label) in enumerate(zip(x, y)):
            d = root / split / classes[int(label)]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i:04d}.{fmt}", **({"quality": 95} if fmt == "jpg" else {}))
    return root
