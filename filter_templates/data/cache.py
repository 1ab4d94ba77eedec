"""Decode once, memory-map forever: a uint8 array cache for decoded datasets.

A cache entry is a folder ``<root>/<name>-<fingerprint>/`` holding ``train_x.npy``, ``train_y.npy``,
``test_x.npy``, ``test_y.npy`` (and ``val_x.npy``, ``val_y.npy`` for a dataset that brings a
validation split) and ``meta.json`` (classes, mean, std, source, image size). It is built in a
temporary folder and renamed into place, so a reader sees a complete entry or none, a failure
halfway (a file that cannot be decoded) leaves nothing behind, and two processes racing to build
it both end up reading the winner's. The arrays can be written straight into the temporary
folder (:func:`building`), so a large dataset never has to fit in memory. The root is
``<data_dir>/.filter-templates-cache`` when that is writable, else ``$FILTER_TEMPLATES_CACHE`` or
``~/.cache/filter-templates`` (the shared development data is read-only).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import numpy as np

from filter_templates.core.images import IMAGE_SIZE
from filter_templates.core.rundir import atomic_write
from filter_templates.data.dataset import Dataset

__all__ = ["CACHE_DIRNAME", "CACHE_VERSION", "Builder", "building", "cache_roots", "fallback_root", "load", "store"]

CACHE_DIRNAME = ".filter-templates-cache"
CACHE_VERSION = 1
_ARRAYS = {"train_x": np.uint8, "train_y": np.int64, "test_x": np.uint8, "test_y": np.int64}
_VAL_ARRAYS = {"val_x": np.uint8, "val_y": np.int64}
_META_KEYS = ("version", "name", "classes", "mean", "std", "source", "train", "test")


def fallback_root() -> Path:
    env = os.environ.get("FILTER_TEMPLATES_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "filter-templates"


def cache_roots(data_dir: Path) -> list[Path]:
    """Where entries for data in ``data_dir`` may live, in order of preference."""
    return [data_dir / CACHE_DIRNAME, fallback_root()]


def _writable(path: Path) -> bool:
    """Whether we may create things under ``path`` (or its nearest existing ancestor).

    Permission bits that deny writing count even for root, who could write anyway: a folder made
    read-only (like the shared development data) is read-only by intent.
    """
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        mode = p.stat().st_mode
    except OSError:
        return False
    return bool(mode & 0o222) and os.access(p, os.W_OK | os.X_OK)


def _entry_name(name: str, key: str) -> str:
    return f"{name}-{key}"


def _split_ok(arrays: dict[str, np.ndarray], split: str, count: Any, size: int) -> bool:
    x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
    return x.shape == (count, size, size, 3) and y.shape == (count,)


def _open(entry: Path) -> Dataset | None:
    """The entry as a memory-mapped Dataset, or None if it is missing or incomplete/damaged
    (a meta.json without one of its keys is damaged too: rebuilt, never a KeyError)."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if not isinstance(meta, dict) or meta.get("version") != CACHE_VERSION or not all(k in meta for k in _META_KEYS):
            return None
        kinds = {**_ARRAYS, **(_VAL_ARRAYS if "val" in meta else {})}
        arrays = {k: np.load(entry / f"{k}.npy", mmap_mode="r", allow_pickle=False) for k in kinds}
        size = int(meta.get("image_size", IMAGE_SIZE))  # entries written before folders were all 32 px
        ok = all(arrays[k].dtype == dt for k, dt in kinds.items())
        ok = ok and all(_split_ok(arrays, s, meta[s], size) for s in ("train", "test", "val") if s in meta)
        if not ok:
            return None
        return Dataset(
            name=meta["name"],
            classes=tuple(meta["classes"]),
            mean=tuple(meta["mean"]),  # type: ignore[arg-type]
            std=tuple(meta["std"]),
            source=meta["source"],
            hflip=bool(meta.get("hflip", True)),
            **arrays,
        )  # type: ignore[arg-type]
    except (OSError, ValueError, TypeError):
        return None


def load(name: str, key: str, data_dir: Path) -> Dataset | None:
    """The cached entry for (name, key) from the first root that has a valid one."""
    for root in cache_roots(data_dir):
        entry = root / _entry_name(name, key)
        if entry.is_dir():
            ds = _open(entry)
            if ds is not None:
                return ds
    return None


class Builder:
    """Arrays of one entry under construction: :meth:`array` hands out a writable array (a
    memory-mapped ``.npy`` in the temporary folder, or plain memory when no root is writable);
    :meth:`finish` writes ``meta.json`` and publishes the entry."""

    def __init__(self, name: str, key: str, data_dir: Path) -> None:
        self.name, self.final_name = name, _entry_name(name, key)
        self.root: Path | None = None
        self.tmp: Path | None = None
        self.arrays: dict[str, np.ndarray] = {}
        for root in cache_roots(data_dir):
            if not _writable(root):
                continue
            try:
                root.mkdir(parents=True, exist_ok=True)
                self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final_name}.tmp-", dir=root))
                self.root = root
                break
            except OSError:
                continue  # read-only or not creatable: try the next root

    def array(self, kind: str, shape: tuple[int, ...]) -> np.ndarray:
        dtype = {**_ARRAYS, **_VAL_ARRAYS}[kind]
        arr: np.ndarray | None = None
        if self.tmp is not None:
            try:
                arr = np.lib.format.open_memmap(self.tmp / f"{kind}.npy", mode="w+", dtype=dtype, shape=shape)
            except OSError:
                arr = None  # e.g. disk full: keep building in memory
        if arr is None:
            arr = np.empty(shape, dtype=dtype)
        self.arrays[kind] = arr
        return arr

    def finish(self, ds: Dataset) -> Dataset:
        """``ds`` (whose arrays came from :meth:`array`) published and memory-mapped from the cache;
        ``ds`` itself when nothing could be written."""
        maps = [a for a in self.arrays.values() if isinstance(a, np.memmap)]
        if self.tmp is None or self.root is None or len(maps) != len(self.arrays):
            return ds
        try:
            for a in maps:
                a.flush()
            _write_meta(self.tmp, ds)
            return _publish(self.tmp, self.root / self.final_name) or ds
        except OSError:
            return ds

    def discard(self) -> None:
        self.arrays.clear()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)


@contextlib.contextmanager
def building(name: str, key: str, data_dir: Path) -> Iterator[Builder]:
    """A :class:`Builder` whose temporary folder is removed however the block ends (published
    entries have been renamed away by then), so a failed decode leaves nothing half-written."""
    b = Builder(name, key, data_dir)
    try:
        yield b
    finally:
        b.discard()


def _meta(ds: Dataset) -> dict[str, Any]:
    meta = {
        "version": CACHE_VERSION,
        "name": ds.name,
        "classes": list(ds.classes),
        "mean": list(ds.mean),
        "std": list(ds.std),
        "source": ds.source,
        "hflip": ds.hflip,
        "train": int(len(ds.train_y)),
        "test": int(len(ds.test_y)),
        "image_size": int(ds.train_x.shape[1]),
    }
    if ds.val_y is not None:
        meta["val"] = int(len(ds.val_y))
    return meta


def _write_meta(tmp: Path, ds: Dataset) -> None:
    meta = _meta(ds)
    atomic_write(tmp / "meta.json", lambda f: f.write(json.dumps(meta, indent=1).encode()))


def _publish(tmp: Path, entry: Path) -> Dataset | None:
    """Rename the finished ``tmp`` to ``entry`` (replacing a damaged one) and open it."""
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the entry is as readable as the data
    if entry.exists() and _open(entry) is None:  # a damaged entry: move it aside, then replace it
        stale = Path(tempfile.mkdtemp(prefix=f".{entry.name}.stale-", dir=entry.parent))
        os.replace(entry, stale / "old")
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(tmp, entry)
    except OSError:
        pass  # another process finished first; its entry is equivalent
    return _open(entry)


def _npy_writer(arr: np.ndarray) -> Callable[[IO[bytes]], None]:
    """A writer for :func:`atomic_write` that saves ``arr`` as ``.npy`` (no pickles)."""

    def write(f: IO[bytes]) -> None:
        np.save(f, arr, allow_pickle=False)

    return write


def store(ds: Dataset, key: str, data_dir: Path) -> Dataset:
    """Write ``ds`` to the first writable root and return it memory-mapped from there.

    When no root is writable the in-memory ``ds`` is returned unchanged (decoded again next time).
    """
    final_name = _entry_name(ds.name, key)
    for root in cache_roots(data_dir):
        if not _writable(root):
            continue
        try:
            root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{final_name}.tmp-", dir=root))
        except OSError:
            continue  # read-only or not creatable: try the next root
        try:
            kinds = {**_ARRAYS, **(_VAL_ARRAYS if ds.val_y is not None else {})}
            for k, dt in kinds.items():
                arr = np.ascontiguousarray(getattr(ds, k), dtype=dt)
                atomic_write(tmp / f"{k}.npy", _npy_writer(arr))
            _write_meta(tmp, ds)
            cached = _publish(tmp, root / final_name)
            if cached is not None:
                return cached
        except OSError:
            continue  # e.g. disk full: try the next root
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return ds
