"""``folder``: a user's own images, ``train/<class>/*`` + ``test/<class>/*`` (+ optionally ``val/<class>/*``).

The folder tree may also come as a tar/tar.gz (optionally under one top folder). Any file Pillow
reads is an image, of any size, greyscale or colour (made RGB). Classes are the sorted folder
names under ``train/``. Every image is brought to ``image_size`` x ``image_size`` once (shorter
side to the size, centre crop) and kept in the decode-once, memory-mapped cache of :mod:`.cache`,
keyed by the folder's content digest (:func:`digest`) and the size. Decoding writes straight into the cache's files in chunks, so a folder
larger than memory is fine, and an unreadable file stops it with nothing left behind.

Without an ``image_size`` the training images' common size is used; images of several sizes
need one to be chosen (an error says so).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator, Union

import numpy as np

from filter_templates.core import validate
from filter_templates.core.errors import UsageError
from filter_templates.core.images import MIN_IMAGE_SIZE
from filter_templates.data import cache
from filter_templates.data.dataset import Dataset
from filter_templates.data.images import decode_images, image_size_of

__all__ = ["NAME", "SPLITS", "Listing", "list_images", "digest", "load"]

NAME = "folder"
SPLITS = ("train", "val", "test")  # val is optional
_JUNK = frozenset({"thumbs.db", "desktop.ini"})  # files operating systems leave in image folders
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
_TAR_BATCH_BYTES = 64 << 20  # compressed image bytes held at once while decoding an archive
_TAR_BATCH_FILES = 8192

Source = Union[Path, str]  # a file on disk, or a member name of the archive


@dataclass
class Listing:
    """Every image of a folder dataset, found without decoding any: ``files[split]`` holds
    ``(class index, name for messages, path or archive member)`` sorted by class, then name."""

    origin: Path
    is_tar: bool
    classes: tuple[str, ...]
    files: dict[str, list[tuple[int, str, Source]]] = field(default_factory=dict)
    key: str = ""  # changes when any file changes


def _is_tar(p: Path) -> bool:
    return p.is_file() and p.name.lower().endswith(_TAR_SUFFIXES)


def _layout_error(path: Path) -> UsageError:
    return UsageError(
        f"{path}: expected train/<class>/ and test/<class>/ image folders (optionally val/<class>/), "
        "or a tar/tar.gz of them"
    )


def _root(data_dir: Path) -> Path:
    """The folder (or archive) that holds train/ and test/: ``data_dir`` or its only sub-folder."""
    if not data_dir.exists():
        raise UsageError(f"data directory {data_dir} does not exist")
    if data_dir.is_file():
        if not _is_tar(data_dir):
            raise UsageError(f"{data_dir}: not a folder or a tar archive ({', '.join(_TAR_SUFFIXES)})")
        return data_dir
    if (data_dir / "train").is_dir():
        return data_dir
    subs = [p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(subs) == 1 and (subs[0] / "train").is_dir():
        return subs[0]
    raise _layout_error(data_dir)


def _visible(name: str) -> bool:
    return not name.startswith(".") and name.lower() not in _JUNK and name != "__MACOSX"


# ----------------------------------------------------------------------------------------- listing


def _scan_tree(root: Path) -> dict[str, dict[str, list[Path]]]:
    """split -> class -> sorted image paths, for the splits present."""
    found: dict[str, dict[str, list[Path]]] = {}
    for split in SPLITS:
        base = root / split
        if not base.is_dir():
            continue
        found[split] = {}
        for entry in sorted(os.scandir(base), key=lambda e: e.name):
            if entry.is_dir() and _visible(entry.name):
                files = sorted(e.name for e in os.scandir(entry.path) if e.is_file() and _visible(e.name))
                found[split][entry.name] = [Path(entry.path) / f for f in files]
    return found


def _tar_member(name: str) -> tuple[str, str, str, str | None] | None:
    """(prefix, split, class, file or None for the class folder itself) of a tree member."""
    parts = PurePosixPath(name).parts
    if any(not _visible(p) for p in parts):
        return None
    for depth in (3, 2):  # [prefix/]split/class/file, [prefix/]split/class
        if len(parts) >= depth and parts[-depth].lower() in SPLITS:
            prefix = "/".join(parts[:-depth])
            return prefix, parts[-depth].lower(), parts[-depth + 1], parts[-1] if depth == 3 else None
    return None


def _scan_tar(path: Path) -> dict[str, dict[str, list[str]]]:
    """split -> class -> sorted member names, from one pass over the archive's headers."""
    found: dict[str, dict[str, list[str]]] = {}
    prefixes: set[str] = set()
    try:
        with tarfile.open(path, "r|*") as tf:
            for m in tf:
                tm = _tar_member(m.name.rstrip("/"))
                if tm is None or not (m.isfile() or (m.isdir() and tm[3] is None)):
                    continue
                prefix, split, cls, fname = tm
                if m.isdir() and fname is None:
                    found.setdefault(split, {}).setdefault(cls, [])
                elif m.isfile() and fname is not None:
                    found.setdefault(split, {}).setdefault(cls, []).append(m.name)
                else:
                    continue
                prefixes.add(prefix)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise UsageError(f"{path}: cannot read the archive: truncated or corrupt ({exc})") from None
    if len(prefixes) > 1:
        raise UsageError(
            f"{path}: the images lie under several top folders ({', '.join(sorted(prefixes)[:3])}); "
            "expected one train/ + test/ tree"
        )
    return {s: {c: sorted(v) for c, v in sorted(classes.items())} for s, classes in found.items()}


def list_images(data_dir: str | os.PathLike[str]) -> Listing:
    """Every image of the folder dataset at ``data_dir`` (a folder or an archive), checked: a
    missing split, an empty class folder or a test/val class that train/ lacks is a UsageError
    naming the path."""
    root = _root(Path(data_dir).expanduser())
    is_tar = root.is_file()
    found: dict = _scan_tar(root) if is_tar else _scan_tree(root)
    where = (
        (lambda split, cls="": f"{root}:{split}/{cls}".rstrip("/"))
        if is_tar
        else (lambda split, cls="": str(root / split / cls).rstrip("/"))
    )
    for split in ("train", "test"):
        if split not in found:
            raise UsageError(f"{root}: no {split}/ folder; expected train/<class>/ and test/<class>/ image folders")
        if not found[split]:
            raise UsageError(f"{where(split)}: no class folders (expected {split}/<class>/<images>)")
    for split, classes in found.items():
        for cls, files in classes.items():
            if not files:
                raise UsageError(f"{where(split, cls)}: empty class folder (no images)")
    classes = tuple(sorted(found["train"]))
    for split in ("val", "test"):
        extra = sorted(set(found.get(split, {})) - set(classes))
        if extra:
            raise UsageError(
                f"{where(split, extra[0])}: class {extra[0]!r} is not among the training classes "
                f"(train/ has {', '.join(classes[:8])}{', ...' if len(classes) > 8 else ''})"
            )
    index = {c: i for i, c in enumerate(classes)}
    listing = Listing(origin=root, is_tar=is_tar, classes=classes)
    for split, by_class in found.items():
        listing.files[split] = [
            (index[c], f"{root}:{f}" if is_tar else str(f), f) for c, files in by_class.items() for f in files
        ]
    listing.key = _fingerprint(listing)
    return listing


def _fingerprint(listing: Listing) -> str:
    """What the images are, from their listing alone (nothing decoded): every file's name inside
    the tree, size and modification time (an archive's member names and its own size and time).
    Where the tree lies is left out, so a moved folder keeps it (and its cache); a changed,
    added or renamed file changes it, and so does a copy that does not keep modification times.
    It keys the cache and, through :func:`digest`, a run's identity."""
    h = hashlib.sha256(f"{NAME}|{'tar' if listing.is_tar else 'tree'}".encode())
    if listing.is_tar:
        st = listing.origin.stat()
        h.update(f"|{st.st_size}:{st.st_mtime_ns}".encode())
    for split, files in sorted(listing.files.items()):
        for _, _, src in files:
            if listing.is_tar:
                h.update(f"|{split}|{src}".encode())
            else:
                st = os.stat(src)
                h.update(f"|{Path(src).relative_to(listing.origin).as_posix()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def digest(data_dir: str | os.PathLike[str] | None) -> str:
    """The content digest of the folder dataset at ``data_dir`` (:func:`_fingerprint`), read from
    its listing without decoding an image: two folders of other images never share it."""
    return list_images(_required(data_dir)).key


# --------------------------------------------------------------------------------------- image size


def _sizes(listing: Listing) -> Iterator[tuple[str, tuple[int, int]]]:
    """(name, (width, height)) of every training image, read from headers only."""
    train = listing.files["train"]
    if not listing.is_tar:
        for _, name, p in train:
            yield name, image_size_of(name, p)
        return
    wanted = {src: name for _, name, src in train}
    for member, data in _tar_stream(listing.origin, wanted):
        yield wanted[member], image_size_of(wanted[member], data)


def common_size(listing: Listing) -> int:
    """The side of the training images when they all share one square size; else a UsageError
    that asks for ``--image-size``."""
    first: tuple[str, tuple[int, int]] | None = None
    for name, size in _sizes(listing):
        if first is None:
            first = (name, size)
        elif size != first[1]:
            raise UsageError(
                f"{listing.origin}: the training images have different sizes ({first[1][0]}x{first[1][1]} "
                f"{first[0]}, {size[0]}x{size[1]} {name}); pass --image-size N to resize them to N x N"
            )
    assert first is not None  # list_images refuses an empty train/
    w, h = first[1]
    if w != h:
        raise UsageError(
            f"{listing.origin}: the training images are {w}x{h}, not square; pass --image-size N to "
            "resize them (shorter side to N, centre crop)"
        )
    if w < MIN_IMAGE_SIZE:
        raise UsageError(
            f"{listing.origin}: the training images are {w}x{h}, below {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}; "
            "pass --image-size N to enlarge them"
        )
    return w


# ------------------------------------------------------------------------------------------ decoding


def _tar_stream(path: Path, wanted: dict) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of the wanted members, in archive order."""
    try:
        with tarfile.open(path, "r|*") as tf:
            for m in tf:
                if m.isfile() and m.name in wanted:
                    fh = tf.extractfile(m)
                    assert fh is not None
                    yield m.name, fh.read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise UsageError(f"{path}: cannot read the archive: truncated or corrupt ({exc})") from None


def _decode_tar(listing: Listing, split: str, out: np.ndarray, size: int) -> None:
    """Fill ``out`` with the split's images, streaming the archive in bounded batches."""
    files = listing.files[split]
    row = {src: i for i, (_, _, src) in enumerate(files)}
    batch: list[tuple[int, str, bytes]] = []
    held = 0

    def flush() -> None:
        nonlocal held
        if batch:
            arr = decode_images(
                [(name, data) for _, name, data in batch], (size, size), resize=True, progress_desc=f"decoding {split}"
            )
            out[np.array([i for i, _, _ in batch])] = arr
            batch.clear()
            held = 0

    for member, data in _tar_stream(listing.origin, row):
        batch.append((row[member], files[row[member]][1], data))
        held += len(data)
        if held >= _TAR_BATCH_BYTES or len(batch) >= _TAR_BATCH_FILES:
            flush()
    flush()


def _decode_split(listing: Listing, split: str, out: np.ndarray, size: int) -> None:
    if listing.is_tar:
        _decode_tar(listing, split, out, size)
    else:
        decode_images(
            [(name, src) for _, name, src in listing.files[split]],
            (size, size),
            resize=True,
            out=out,
            progress_desc=f"decoding {split}",
        )


def _build(listing: Listing, size: int, key: str, cache_dir: Path) -> Dataset:
    with cache.building(NAME, key, cache_dir) as b:
        arrays: dict[str, np.ndarray] = {}
        for split in SPLITS:
            if split not in listing.files:
                continue
            files = listing.files[split]
            arrays[f"{split}_x"] = x = b.array(f"{split}_x", (len(files), size, size, 3))
            arrays[f"{split}_y"] = y = b.array(f"{split}_y", (len(files),))
            y[:] = [label for label, _, _ in files]
            _decode_split(listing, split, x, size)
        ds = Dataset.normalised(
            NAME,
            listing.classes,
            arrays["train_x"],
            arrays["train_y"],
            source=str(listing.origin.resolve()),
            test_x=arrays["test_x"],
            test_y=arrays["test_y"],
            val_x=arrays.get("val_x"),
            val_y=arrays.get("val_y"),
        )
        return b.finish(ds)


def load(data_dir: str | os.PathLike[str] | None, image_size: int | None = None) -> Dataset:
    """The folder dataset at ``data_dir`` at ``image_size`` px (default: the training images'
    common size), from the cache when it is current, else decoded into it."""
    data_dir = _required(data_dir)
    if image_size is not None:
        validate.integer(image_size, "--image-size", MIN_IMAGE_SIZE)
    listing = list_images(data_dir)
    cache_dir = listing.origin.parent if listing.is_tar else listing.origin
    key = f"{listing.key}-{image_size if image_size is not None else 'native'}"
    ds = cache.load(NAME, key, cache_dir)
    if ds is None:
        ds = _build(listing, image_size if image_size is not None else common_size(listing), key, cache_dir)
    return dataclasses.replace(ds, digest=listing.key)


def _required(data_dir: str | os.PathLike[str] | None) -> str | os.PathLike[str]:
    if data_dir is None:
        raise UsageError(
            "--dataset folder needs --data-dir PATH (a folder with train/<class>/ and test/<class>/ "
            "images, or a tar/tar.gz of one)"
        )
    return data_dir
