"""CIFAR-10/100 from a data directory in every form people keep them.

Accepted, looked for in this order:

1. the official python folders ``cifar-10-batches-py/`` / ``cifar-100-python/`` (or ``data_dir`` is one);
2. the official archives ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``;
3. a class-folder tree ``train/<class>/*.png|jpg`` + ``test/<class>/*`` in ``data_dir`` or in a
   sub-folder named after the dataset (``cifar10``, ``CIFAR-10-images``, ...);
4. a tar/tar.gz of such a tree (optionally with one top folder), named after the dataset, or the
   only archive there (``cifar10-jpeg.tar.gz`` is the shared development copy).

``data_dir`` may also name one of those files directly. The first load decodes into the uint8
cache of :mod:`.cache`; later loads memory-map it, keyed by a fingerprint of the source files.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Mapping

import numpy as np

from filter_templates.core.errors import UsageError
from filter_templates.data import cache, download
from filter_templates.data.dataset import Dataset
from filter_templates.data.images import IMAGE_SUFFIXES, decode_images
from filter_templates.data.unpickle import load as restricted_load

__all__ = ["Source", "default_data_dir", "locate", "load"]

PRETTY = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


@dataclass(frozen=True)
class _Layout:
    folder: str
    train: tuple[str, ...]
    test: str
    meta: str
    names_key: str
    labels_key: str


LAYOUTS = {
    "cifar10": _Layout(
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        "batches.meta",
        "label_names",
        "labels",
    ),
    "cifar100": _Layout("cifar-100-python", ("train",), "test", "meta", "fine_label_names", "fine_labels"),
}
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


@dataclass(frozen=True)
class Source:
    """Where a dataset's pixels are: ``kind`` is "batches" (official folder), "tree" (class folders)
    or "tar" (official archive or a tarball of a tree; told apart while reading)."""

    kind: str
    path: Path


def default_data_dir() -> Path:
    """``$FILTER_TEMPLATES_DATA``, else ``./data`` (where CIFAR scripts habitually keep it)."""
    return Path(os.environ.get("FILTER_TEMPLATES_DATA") or "data")


# ----------------------------------------------------------------------------------------- locating


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _named_for(name: str, filename: str) -> bool:
    n = _norm(filename)
    return "cifar100" in n if name == "cifar100" else ("cifar10" in n and "cifar100" not in n)


def _is_tar(p: Path) -> bool:
    return p.is_file() and p.name.lower().endswith(_TAR_SUFFIXES)


def _is_tree(d: Path) -> bool:
    return (d / "train").is_dir() and (d / "test").is_dir()


def locate(name: str, data_dir: Path) -> Source | None:
    """The best source for ``name`` in ``data_dir`` (a folder or a file), or None."""
    lay = LAYOUTS[name]
    if data_dir.is_file():
        return Source("tar", data_dir) if _is_tar(data_dir) else None
    if not data_dir.is_dir():
        return None
    if (data_dir / lay.train[0]).is_file() and (data_dir / lay.test).is_file():
        return Source("batches", data_dir)
    if (data_dir / lay.folder).is_dir():
        return Source("batches", data_dir / lay.folder)
    if (data_dir / download.ARCHIVES[name]).is_file():
        return Source("tar", data_dir / download.ARCHIVES[name])
    if _is_tree(data_dir):
        return Source("tree", data_dir)
    entries = sorted(p for p in data_dir.iterdir() if not p.name.startswith("."))
    for p in entries:
        if p.is_dir() and _named_for(name, p.name) and _is_tree(p):
            return Source("tree", p)
    tars = [p for p in entries if _is_tar(p)]
    named = [p for p in tars if _named_for(name, p.name)]
    if named:
        return Source("tar", named[0])
    other = [p for p in tars if not _named_for("cifar10", p.name) and not _named_for("cifar100", p.name)]
    if len(other) == 1:
        return Source("tar", other[0])
    return None


def _not_found(name: str, data_dir: Path) -> UsageError:
    lay = LAYOUTS[name]
    return UsageError(
        f"no {PRETTY[name]} data in {data_dir}: expected {download.ARCHIVES[name]}, {lay.folder}/, "
        f"train/<class>/ + test/<class>/ image folders, or a tar/tar.gz of them (or pass --download)"
    )


# ------------------------------------------------------------------------------------- fingerprint


def _tree_files(root: Path) -> Iterator[tuple[str, str, Path]]:
    """(split, class, path) of every image under root/{train,test}/<class>/, sorted."""
    for split in ("train", "test"):
        base = root / split
        for cls in sorted(e.name for e in os.scandir(base) if e.is_dir() and not e.name.startswith(".")):
            files = sorted(
                e.name
                for e in os.scandir(base / cls)
                if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_SUFFIXES)
            )
            for f in files:
                yield split, cls, base / cls / f


def fingerprint(src: Source) -> str:
    """A short key that changes when the source files change (path, sizes, modification times)."""
    h = hashlib.sha256(f"{cache.CACHE_VERSION}|{src.kind}|{src.path.resolve()}".encode())
    if src.kind == "tree":
        for _, _, p in _tree_files(src.path):
            st = p.stat()
            h.update(f"|{p.relative_to(src.path)}:{st.st_size}:{st.st_mtime_ns}".encode())
    elif src.kind == "batches":
        for p in sorted(src.path.iterdir()):
            if p.is_file():
                st = p.stat()
                h.update(f"|{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    else:
        st = src.path.stat()
        h.update(f"|{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------- official pickles


def _get(d: Any, key: str, label: str) -> Any:
    if not isinstance(d, Mapping):
        raise UsageError(f"{label}: not a CIFAR batch (a pickled dict was expected, found {type(d).__name__})")
    for k in (key, key.encode()):
        if k in d:
            return d[k]
    raise UsageError(f"{label}: not a CIFAR batch: it has no {key!r} entry")


def _batch(d: Any, lay: _Layout, num_classes: int, label: str) -> tuple[np.ndarray, np.ndarray]:
    data = _get(d, "data", label)
    labels = _get(d, lay.labels_key, label)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise UsageError(f"{label}: 'data' must be a uint8 [N, 3072] array")
    if data.shape[1] != 3 * 32 * 32:
        raise UsageError(f"{label}: images have {data.shape[1]} values, expected 3072 (3x32x32); wrong image size")
    try:
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise UsageError(f"{label}: {lay.labels_key!r} must be a list of integers") from None
    if len(y) != len(data):
        raise UsageError(f"{label}: {len(data)} images but {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise UsageError(f"{label}: labels must lie in 0..{num_classes - 1}, found {y.min()}..{y.max()}")
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # CHW planes -> HWC
    return np.ascontiguousarray(x), y


def _class_names(d: Any, lay: _Layout, name: str, label: str) -> tuple[str, ...]:
    names = _get(d, lay.names_key, label)
    if not isinstance(names, (list, tuple)) or len(names) != NUM_CLASSES[name]:
        raise UsageError(f"{label}: {lay.names_key!r} must list {NUM_CLASSES[name]} class names")
    return tuple(n.decode("latin-1") if isinstance(n, bytes) else str(n) for n in names)


def _from_pickles(name: str, files: Mapping[str, Any], origin: str) -> Dataset:
    """Assemble a Dataset from the unpickled official files (basename -> object)."""
    lay = LAYOUTS[name]
    for f in (*lay.train, lay.test, lay.meta):
        if f not in files:
            raise UsageError(
                f"{origin}: {lay.folder}/{f} is missing; the official {PRETTY[name]} set has "
                f"{', '.join((*lay.train, lay.test, lay.meta))}"
            )
    classes = _class_names(files[lay.meta], lay, name, f"{origin}/{lay.meta}")
    train = [_batch(files[f], lay, len(classes), f"{origin}/{f}") for f in lay.train]
    test_x, test_y = _batch(files[lay.test], lay, len(classes), f"{origin}/{lay.test}")
    return _finish(
        name,
        classes,
        np.concatenate([b[0] for b in train]),
        np.concatenate([b[1] for b in train]),
        test_x,
        test_y,
        origin,
    )


def _read_batches(name: str, folder: Path) -> Dataset:
    lay = LAYOUTS[name]
    files = {}
    for f in (*lay.train, lay.test, lay.meta):
        p = folder / f
        if p.is_file():
            with open(p, "rb") as fh:
                files[f] = restricted_load(fh, str(p))
    return _from_pickles(name, files, str(folder))


# ------------------------------------------------------------------------------------------- trees


def _tree_dataset(name: str, items: list[tuple[str, str, str, Any]], origin: str) -> Dataset:
    """items: (split, class, display name, bytes or path). Classes are the sorted train folders."""
    classes = tuple(sorted({c for s, c, _, _ in items if s == "train"}))
    want = NUM_CLASSES[name]
    if len(classes) != want:
        raise UsageError(f"{origin}: found {len(classes)} class folders under train/, {PRETTY[name]} has {want}")
    extra = sorted({c for s, c, _, _ in items if s == "test"} - set(classes))
    if extra:
        raise UsageError(f"{origin}: test/ has class folders that train/ lacks: {', '.join(extra[:5])}")
    index = {c: i for i, c in enumerate(classes)}
    split_arrays = {}
    for split in ("train", "test"):
        part = sorted((it for it in items if it[0] == split), key=lambda it: (index[it[1]], it[2]))
        if not part:
            raise UsageError(f"{origin}: no images under {split}/<class>/ (expected .png or .jpg files)")
        x = decode_images([(it[2], it[3]) for it in part], progress_desc=f"decoding {PRETTY[name]} {split}")
        split_arrays[split] = (x, np.array([index[it[1]] for it in part], dtype=np.int64))
    return _finish(name, classes, *split_arrays["train"], *split_arrays["test"], origin)


def _read_tree(name: str, root: Path) -> Dataset:
    items = [(s, c, str(p), p) for s, c, p in _tree_files(root)]
    return _tree_dataset(name, items, str(root))


def _tree_member(member: str) -> tuple[str, str, str] | None:
    """(prefix, split, class) if ``member`` looks like [prefix/]train|test/<class>/<image>."""
    parts = PurePosixPath(member).parts
    if len(parts) < 3 or any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    if parts[-3].lower() not in ("train", "test") or not parts[-1].lower().endswith(IMAGE_SUFFIXES):
        return None
    return "/".join(parts[:-3]), parts[-3].lower(), parts[-2]


def _read_tar(name: str, path: Path) -> Dataset:
    """One streaming pass: official pickles are unpickled as they pass, tree images are collected."""
    lay = LAYOUTS[name]
    wanted = {*lay.train, lay.test, lay.meta}
    pickles: dict[str, Any] = {}
    images: list[tuple[str, str, str, Any]] = []
    prefixes: set[str] = set()
    try:
        with tarfile.open(path, "r|*") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                parts = PurePosixPath(m.name).parts
                if len(parts) >= 2 and parts[-2] == lay.folder and parts[-1] in wanted:
                    fh = tf.extractfile(m)
                    assert fh is not None
                    pickles[parts[-1]] = restricted_load(fh, f"{path}:{m.name}")
                    continue
                tm = _tree_member(m.name)
                if tm is not None:
                    fh = tf.extractfile(m)
                    assert fh is not None
                    prefixes.add(tm[0])
                    images.append((tm[1], tm[2], f"{path}:{m.name}", fh.read()))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise UsageError(f"{path}: cannot read the archive: truncated or corrupt ({exc})") from None
    if pickles:
        return _from_pickles(name, pickles, f"{path}:{lay.folder}")
    if not images:
        raise UsageError(
            f"{path}: no {PRETTY[name]} data in this archive: expected {lay.folder}/ "
            f"or [folder/]train/<class>/ + test/<class>/ images"
        )
    if len(prefixes) > 1:
        raise UsageError(
            f"{path}: images lie under several top folders ({', '.join(sorted(prefixes)[:3])}); "
            f"expected one train/ + test/ tree"
        )
    return _tree_dataset(name, images, str(path))


# ---------------------------------------------------------------------------------------- assembly


def _finish(
    name: str,
    classes: tuple[str, ...],
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    origin: str,
) -> Dataset:
    return Dataset.normalised(name, classes, train_x, train_y, test_x=test_x, test_y=test_y, source=origin)


def _decode(name: str, src: Source) -> Dataset:
    if src.kind == "batches":
        return _read_batches(name, src.path)
    if src.kind == "tree":
        return _read_tree(name, src.path)
    return _read_tar(name, src.path)


def load(name: str, data_dir: str | os.PathLike[str] | None = None, *, download_missing: bool = False) -> Dataset:
    """``name`` ("cifar10"/"cifar100") from ``data_dir``: from the cache when it is current,
    else decoded (and cached). With ``download_missing`` the official archive is fetched, verified
    and extracted when no data is found."""
    d = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    src = locate(name, d)
    if src is None:
        if not download_missing:
            if not d.exists():
                raise UsageError(f"data directory {d} does not exist (pass --download to fetch {PRETTY[name]} into it)")
            raise _not_found(name, d)
        archive = download.fetch(name, d)
        download.safe_extract(archive, d)
        src = locate(name, d)
        if src is None:  # pragma: no cover - the archive we just verified always extracts to its folder
            raise _not_found(name, d)
    elif download_missing and src.kind == "tar" and src.path.name == download.ARCHIVES[name]:
        download.fetch(name, src.path.parent)  # verifies the MD5 of the archive already there
    cache_dir = d if d.is_dir() else d.parent  # the cache lives in the folder the user named
    key = fingerprint(src)
    cached = cache.load(name, key, cache_dir)
    if cached is not None:
        return cached
    return cache.store(_decode(name, src), key, cache_dir)
