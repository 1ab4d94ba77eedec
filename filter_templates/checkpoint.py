"""Crash-safe files for run directories: atomic writes and restricted loads.

A run can be killed at any instant (SIGKILL, power loss, a preempted cluster job). Every file a
run writes therefore goes to a temporary file in the same directory, is flushed and fsynced, and
then renamed over the target with ``os.replace`` (atomic on POSIX and Windows): a reader sees the
old complete file or the new complete one, never half of one. Checkpoints are read with
``torch.load(weights_only=True)``, which admits tensors and plain containers only, so a checkpoint
from elsewhere cannot run code (SPEC section 11).
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import UsageError

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_save", "load",
           "rng_state", "set_rng_state", "remove_stale_temp_files"]

_TMP_MARK = ".tmp-"


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}")


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); harmless to skip where directories can't be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> Path:
    path = Path(path)
    tmp = _temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return _atomic(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` made atomic. Keep ``obj`` to tensors, numbers, strings and plain containers so
    that :func:`load` (``weights_only=True``) can read it back."""
    return _atomic(path, lambda f: torch.save(obj, f))


def load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Read a file written by :func:`atomic_save`; a missing or unreadable file is a UsageError
    naming it (the message says why: not a checkpoint, refused content, truncated...)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "pickle protocol 4" notes on foreign files; errors still raise
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types (UnpicklingError, RuntimeError, EOFError...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights only load failed" in first.lower():  # torch's text goes on to advise the unsafe way
            first = "refused: not a torch file, or it holds objects beyond tensors and plain containers"
        raise UsageError(f"{path}: cannot be read as a checkpoint ({first[:300]})") from None


def remove_stale_temp_files(directory: str | Path) -> None:
    """Temporary files left by a run killed mid-write: never read, safe to delete."""
    for p in Path(directory).glob(f".*{_TMP_MARK}*"):
        p.unlink(missing_ok=True)


def rng_state(device: torch.device) -> dict[str, Any]:
    """torch's generator states as uint8 tensors (which ``weights_only`` admits)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
