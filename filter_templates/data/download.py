"""Fetch the official CIFAR archives, check their published MD5, and extract them safely.

The download goes to a temporary file beside its destination and is renamed only after the
checksum matches, so an interrupted or tampered download never looks like data. Extraction refuses
any member that would land outside the target (absolute paths, ``..``, links, devices).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from filter_templates.core.errors import UsageError
from filter_templates.core.progress import Progress

__all__ = ["ARCHIVES", "MD5", "DEFAULT_BASE_URL", "archive_url", "md5_file", "fetch", "safe_extract"]

DEFAULT_BASE_URL = "https://www.cs.toronto.edu/~kriz/"
# dataset -> official archive file name (also its name under data_dir)
ARCHIVES = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}
# The published checksums. Tests patch this mapping to serve tiny fixture archives.
MD5 = {"cifar10": "c58f30108f718f92721af3b95e74349a", "cifar100": "eb9058c3a382ffc7106e4002c42a8d85"}

_BLOCK = 1 << 20


def archive_url(name: str) -> str:
    """Where ``name``'s archive is fetched from; ``FILTER_TEMPLATES_CIFAR_URL`` replaces the base (a mirror)."""
    base = os.environ.get("FILTER_TEMPLATES_CIFAR_URL") or DEFAULT_BASE_URL
    return base.rstrip("/") + "/" + ARCHIVES[name]


def md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)  # a published checksum, not a security primitive
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def fetch(name: str, data_dir: Path, *, timeout: float = 60.0) -> Path:
    """Download ``name``'s official archive into ``data_dir``, verify its MD5, return its path.

    An archive already there is verified instead of downloaded again.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    dest = data_dir / ARCHIVES[name]
    expected = MD5[name]
    if dest.exists():
        got = md5_file(dest)
        if got != expected:
            raise UsageError(
                f"{dest}: MD5 {got} does not match the published {expected}; "
                f"the file is damaged or not the official archive (delete it to download again)"
            )
        return dest
    url = archive_url(name)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=data_dir)
    tmp = Path(tmp_name)
    try:
        h = hashlib.md5(usedforsecurity=False)  # a published checksum, not a security primitive
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                length = resp.headers.get("Content-Length")
                bar = Progress(total=int(length) if length and length.isdigit() else None, desc=f"download {dest.name}")
                try:
                    for block in iter(lambda: resp.read(_BLOCK), b""):
                        out.write(block)
                        h.update(block)
                        bar.update(len(block))
                finally:
                    bar.close()
                out.flush()
                os.fsync(out.fileno())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise UsageError(f"cannot download {url}: {reason}") from None
        got = h.hexdigest()
        if got != expected:
            raise UsageError(
                f"downloaded {url} has MD5 {got}, not the published {expected}; "
                f"refusing to use it (nothing was kept in {data_dir})"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _check_member(m: tarfile.TarInfo, root: Path, archive: Path) -> None:
    if not (m.isfile() or m.isdir()):
        raise UsageError(f"{archive}: refusing to extract {m.name!r}: only regular files and folders are allowed")
    target = (root / m.name).resolve()
    if m.name.startswith(("/", "\\")) or not target.is_relative_to(root):
        raise UsageError(f"{archive}: refusing to extract {m.name!r}: it would land outside {root}")


def safe_extract(archive: Path, target: Path) -> list[Path]:
    """Extract ``archive`` into ``target`` and return the top-level entries it created.

    Everything is extracted into a temporary folder inside ``target`` first and moved into place
    afterwards, so a failure never leaves a half-extracted dataset that would be taken for data.
    Entries that already exist in ``target`` are left alone.
    """
    target.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=target))
    root = tmp.resolve()
    try:
        try:
            with tarfile.open(archive, "r:*") as tf:
                members = tf.getmembers()
                for m in members:
                    _check_member(m, root, archive)
                for m in members:
                    if hasattr(tarfile, "data_filter"):  # Python >= 3.12 and the security backports
                        tf.extract(m, root, set_attrs=False, filter="data")
                    else:
                        tf.extract(m, root, set_attrs=False)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise UsageError(f"{archive}: cannot extract: truncated or corrupt archive ({exc})") from None
        created = []
        for entry in sorted(tmp.iterdir()):
            dest = target / entry.name
            if not dest.exists():
                os.replace(entry, dest)
                created.append(dest)
        return created
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
