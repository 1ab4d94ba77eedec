"""Decode once, memory-map forever: a uint8 array cache for decoded datasets.

A cache entry is a folder ``<root>/<name>-<fingerprint>/`` holding ``train_x.npy``, ``train_y.npy``,
``test_x.npy``, ``test_y.npy`` and ``meta.json`` (classes, mean, std, source). It is written into a
temporary folder and renamed into place, so a reader sees a complete entry or none, and two
processes racing to build it both end up reading the winner's. The root is
``<data_dir>/.filter-templates-cache`` when that is writable, else ``$FILTER_TEMPLATES_CACHE`` or
``~/.cache/filter-templates`` (the shared development data is read-only).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..rundir import atomic_write
from .dataset import Dataset

__all__ = ["CACHE_DIRNAME", "CACHE_VERSION", "cache_roots", "fallback_root", "load", "store"]

CACHE_DIRNAME = ".filter-templates-cache"
CACHE_VERSION = 1
_ARRAYS = {"train_x": np.uint8, "train_y": np.int64, "test_x": np.uint8, "test_y": np.int64}


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


_META_KEYS = ("version", "name", "classes", "mean", "std", "source", "train", "test")


def _open(entry: Path) -> Dataset | None:
    """The entry as a memory-mapped Dataset, or None if it is missing or incomplete/damaged
    (a meta.json without one of its keys is damaged too: rebuilt, never a KeyError)."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if not isinstance(meta, dict) or meta.get("version") != CACHE_VERSION or not all(k in meta for k in _META_KEYS):
            return None
        arrays = {k: np.load(entry / f"{k}.npy", mmap_mode="r", allow_pickle=False) for k in _ARRAYS}
        ok = all(arrays[k].dtype == dt for k, dt in _ARRAYS.items())
        ok = ok and arrays["train_x"].shape == (meta["train"], 32, 32, 3) and arrays["train_y"].shape == (meta["train"],)
        ok = ok and arrays["test_x"].shape == (meta["test"], 32, 32, 3) and arrays["test_y"].shape == (meta["test"],)
        if not ok:
            return None
        return Dataset(name=meta["name"], classes=tuple(meta["classes"]), mean=tuple(meta["mean"]),  # type: ignore[arg-type]
                       std=tuple(meta["std"]), source=meta["source"], **arrays)  # type: ignore[arg-type]
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


def _write_entry(tmp: Path, ds: Dataset) -> None:
    for k in _ARRAYS:
        arr = np.ascontiguousarray(getattr(ds, k), dtype=_ARRAYS[k])
        atomic_write(tmp / f"{k}.npy", lambda f, a=arr: np.save(f, a, allow_pickle=False))
    meta = {"version": CACHE_VERSION, "name": ds.name, "classes": list(ds.classes), "mean": list(ds.mean),
            "std": list(ds.std), "source": ds.source, "train": int(len(ds.train_y)), "test": int(len(ds.test_y))}
    atomic_write(tmp / "meta.json", lambda f: f.write(json.dumps(meta, indent=1).encode()))


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
            _write_entry(tmp, ds)
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; the entry is as readable as the data
            entry = root / final_name
            if entry.exists() and _open(entry) is None:  # a damaged entry: move it aside, then replace it
                stale = Path(tempfile.mkdtemp(prefix=f".{final_name}.stale-", dir=root))
                os.replace(entry, stale / "old")
                shutil.rmtree(stale, ignore_errors=True)
            try:
                os.rename(tmp, entry)
            except OSError:
                pass  # another process finished first; its entry is equivalent
            cached = _open(entry)
            if cached is not None:
                return cached
        except OSError:
            continue  # e.g. disk full: try the next root
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return ds
