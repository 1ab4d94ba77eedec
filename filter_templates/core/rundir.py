"""The run directory: the names of its files, the one atomic write, and reading what a run left.

A run directory holds ``config.json`` (the training configuration), ``metrics.jsonl`` (a line per
epoch), ``checkpoint.pt`` (after every epoch), ``model.pt`` (the final state_dict),
``summary.json`` (status, accuracies, resources, device), ``outcomes.npz`` (which validation and
test images each epoch's model got right: what compares two runs on the same images) and, written
by a sweep, ``resources.json`` (what it measured on top of the summary). Every module that reads or writes
one of them goes through this one.

A run can be killed at any instant (SIGKILL, power loss, a preempted cluster job). Every file is
therefore written to a temporary file in the same directory, flushed and fsynced, and renamed over
the target with ``os.replace`` (atomic on POSIX and Windows): a reader sees the old complete file
or the new complete one, never half of one. Checkpoints are read with
``torch.load(weights_only=True)``, which admits tensors and plain containers only, so a checkpoint
from elsewhere cannot run code.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Literal, Mapping, Sequence

import numpy as np
import torch

from filter_templates.core.errors import UsageError
from filter_templates.core.messages import note
from filter_templates.core.status import FAILED

__all__ = [
    "CONFIG",
    "METRICS",
    "CHECKPOINT",
    "MODEL",
    "SUMMARY",
    "RESOURCES",
    "TRACKING",
    "TRAIN_FILES",
    "RUN_FILES",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_save",
    "atomic_copy",
    "append_line",
    "remove_stale_temp_files",
    "check_writable",
    "writing",
    "load_checkpoint",
    "open_checkpoint",
    "start_run",
    "read_json",
    "read_config",
    "read_summary",
    "merge_resources",
    "write_resources",
    "read_metrics",
    "OUTCOMES",
    "Outcomes",
    "read_outcomes",
    "write_outcomes",
    "write_metrics",
    "append_metrics",
    "copy_run_files",
    "portable",
    "run_name",
]

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
SUMMARY = "summary.json"
RESOURCES = "resources.json"  # what a sweep measured on top of train's summary
TRACKING = "tracking.json"  # the tracker runs (TensorBoard, MLflow, W&B) a run logs to, and their last epoch
OUTCOMES = "outcomes.npz"  # per epoch, which validation and test images the model got right
#: What ``train`` writes; a run's ``export`` never replaces one of these.
TRAIN_FILES = (CONFIG, METRICS, CHECKPOINT, MODEL, SUMMARY, OUTCOMES)
#: Everything a run directory may hold: what a Ray trial's checkpoint carries between hosts.
RUN_FILES = (*TRAIN_FILES, RESOURCES, TRACKING)
#: What a finished checkpoint holds (``train`` writes them all).
CHECKPOINT_KEYS = frozenset({"config", "epoch", "model", "optimizer", "scheduler", "rng", "metrics"})

_TMP_MARK = ".tmp-"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


# --------------------------------------------------------------------------------------------
# Naming: run folders and the files commands write for a model
# --------------------------------------------------------------------------------------------


def portable(text: str, limit: int = 40) -> str:
    """``text`` as part of a file name on every system: letters, digits and ``.-_`` only (any
    other run of characters, ``:`` of ``package.module:function`` included, becomes ``_``), at
    most ``limit`` characters."""
    return _UNSAFE.sub("_", str(text))[:limit].strip("_")


def run_name(config: Mapping[str, Any], key: str | None = None) -> str:
    """A run folder's readable name, ``digits-vgg19-uniform-w0.1-s0`` (+ ``-<key prefix>`` where
    many runs share a folder: a sweep's), from a ``TrainConfig.to_dict()``. The full model and
    template names stay in the run's ``config.json``."""
    arch = config["arch"]
    reading = "-pub" if arch.get("as_published") else ""
    name = (
        f"{portable(config['dataset']) or 'data'}-{portable(arch['family']) or 'model'}-"
        f"{portable(arch['template']) or 'custom'}{reading}-w{float(arch['width']):g}-s{config['seed']}"
    )
    return name if key is None else f"{name}-{key[:10]}"


# --------------------------------------------------------------------------------------------
# Writing: the one atomic write
# --------------------------------------------------------------------------------------------


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


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it and rename it over ``path``.

    Nothing is left behind on failure; an existing ``path`` is untouched until the rename."""
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


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` made atomic. Keep ``obj`` to tensors, numbers, strings and plain containers so
    that :func:`load_checkpoint` (``weights_only=True``) can read it back."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Copy a file so that a reader of ``dst`` never sees half of it."""
    with open(src, "rb") as f:
        return atomic_write(dst, lambda out: shutil.copyfileobj(f, out))


def append_line(path: str | os.PathLike[str], line: str) -> None:
    """Append one line and fsync it: a kill mid-write tears at most this line (readers skip it)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())


def remove_stale_temp_files(directory: str | os.PathLike[str]) -> None:
    """Temporary files left by a run killed mid-write: never read, safe to delete."""
    for p in Path(directory).glob(f".*{_TMP_MARK}*"):
        p.unlink(missing_ok=True)


def check_writable(path: str | os.PathLike[str], flag: str, *, folder: bool) -> Path:
    """Refuse, before any work, an output ``path`` that cannot be written: a file where a folder
    is expected (or the reverse), or a location under a file or an unwritable folder. A missing
    folder is fine (it is created with its parents)."""
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            raise UsageError(f"{flag} {path} is a file, not a folder")
        if not folder and path.is_dir():
            raise UsageError(f"{flag} {path} is a folder; give a file name")
    p = path if folder and path.is_dir() else path.parent
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise UsageError(f"{flag} {path}: {p} is a file, not a folder")
    try:  # try it: permission bits do not stop root, and /proc or a read-only mount still refuse
        with tempfile.TemporaryFile(dir=p):
            pass
    except OSError as exc:
        raise UsageError(f"{flag} {path}: {p} is not writable ({exc.strerror or exc})") from None
    return path


class writing:
    """``with writing(flag, path):`` turns an OSError of the block into one usage-error line
    naming the flag and the path (a read-only or special file system, a full disk...)."""

    def __init__(self, flag: str, path: str | os.PathLike[str]) -> None:
        self.flag, self.path = flag, path

    def __enter__(self) -> "writing":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        if exc_type is not None and issubclass(exc_type, OSError):
            why = exc.strerror or str(exc)
            where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(self.path) else ""
            raise UsageError(f"{self.flag} {self.path}: cannot write: {why}{where}") from None
        return False


# --------------------------------------------------------------------------------------------
# Checkpoints: the restricted load, and which checkpoint a run continues
# --------------------------------------------------------------------------------------------


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Any:
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


def open_checkpoint(
    out_dir: str | os.PathLike[str],
    resume: bool,
    config: Mapping[str, Any],
    keys: Sequence[str],
    view: Callable[[Mapping[str, Any]], Mapping[str, Any]] = dict,
) -> dict | None:
    """The checkpoint in ``out_dir`` that a run of ``config`` (a TrainConfig dict) would continue,
    or None: start fresh.

    Refuses (UsageError) an output that is a file or cannot be written, an existing checkpoint
    without ``resume`` (nothing is overwritten), a finished or foreign run's folder without a
    checkpoint, and a checkpoint whose ``keys`` differ from ``config``'s, naming them (both seen
    through ``view``, which may leave out keys that make no difference).
    """
    out = Path(out_dir)
    check_writable(out, "--out", folder=True)
    path = out / CHECKPOINT
    if not path.exists():
        _refuse_finished_without_checkpoint(out)
        if resume:
            note(f"no checkpoint in {out}; starting fresh")
        return None
    if not resume:
        raise UsageError(
            f"{out} already holds a checkpoint; pass --resume to continue it "
            f"or choose another --out (nothing was overwritten)"
        )
    state = load_checkpoint(path)
    if not isinstance(state, dict) or not CHECKPOINT_KEYS <= set(state):
        raise UsageError(f"{path}: not a filter-templates checkpoint")
    saved, config = view(state["config"]), view(config)
    differing = [k for k in keys if saved.get(k) != config.get(k)]
    if differing:
        parts = [f"{k} (checkpoint {_show(k, saved.get(k))}, now {_show(k, config.get(k))})" for k in differing]
        raise UsageError(
            f"{path} is from a different configuration: {'; '.join(parts)}; "
            f"resume with the same settings or use another --out"
        )
    return state


def _refuse_finished_without_checkpoint(out: Path) -> None:
    """A folder with final weights or a finished summary but no checkpoint is a finished run (its
    checkpoint deleted to save space) or someone else's files: starting fresh would overwrite them.
    A failed run's folder (summary status "failed", no weights) may be started again."""
    if (out / MODEL).exists():
        raise UsageError(
            f"{out} holds {MODEL} but no {CHECKPOINT} to resume; choose another --out (nothing was overwritten)"
        )
    if (out / SUMMARY).exists() and (read_json(out / SUMMARY) or {}).get("status") != FAILED:
        raise UsageError(
            f"{out / SUMMARY} belongs to a run that is not a failed one and there is no "
            f"{CHECKPOINT} to resume; choose another --out (nothing was overwritten)"
        )


def _show(key: str, value: Any) -> str:
    if key == "arch" and isinstance(value, Mapping):
        return (
            f"{value.get('family')} {value.get('template')} w={value.get('width')} "
            f"classes={value.get('classes')} filters={value.get('filters')}"
        )
    return repr(value)


def start_run(out_dir: str | os.PathLike[str], config: Mapping[str, Any]) -> Path:
    """Make ``out_dir`` ready for a (re)started run: the folder, no half-written files, no final
    files of an earlier end of this run (rewritten at the end), and its ``config.json``."""
    out = Path(out_dir)
    with writing("--out", out):
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(out)
        for stale in (MODEL, SUMMARY):
            (out / stale).unlink(missing_ok=True)
        atomic_write_json(out / CONFIG, config)
    return out


# --------------------------------------------------------------------------------------------
# Reading: config, summary (+ resources), metrics
# --------------------------------------------------------------------------------------------


def read_json(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when it is missing, unreadable or not an object."""
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def read_config(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A run's ``config.json`` (None when absent or unreadable)."""
    return read_json(Path(run_dir) / CONFIG)


def read_summary(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A run's ``summary.json``, with the resources the sweep added (``resources.json``) merged in."""
    return merge_resources(run_dir, read_json(Path(run_dir) / SUMMARY))


def merge_resources(run_dir: str | os.PathLike[str], summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """``summary`` with ``resources.json`` under its own resources (train's own numbers win)."""
    extra = read_json(Path(run_dir) / RESOURCES)
    if summary is None or not extra:
        return summary
    return {**summary, "resources": {**extra, **(summary.get("resources") or {})}}


def write_resources(run_dir: str | os.PathLike[str], extra: Mapping[str, Any]) -> Path:
    return atomic_write_json(Path(run_dir) / RESOURCES, dict(extra))


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """A run's ``metrics.jsonl``, one entry per epoch (the last line wins if an epoch repeats);
    a torn last line from a kill mid-write is ignored."""
    by_epoch: dict[int, dict[str, Any]] = {}
    try:
        text = (Path(run_dir) / METRICS).read_text(encoding="utf-8")
    except OSError:
        return []
    for line in text.splitlines():
        try:
            row = json.loads(line)
            by_epoch[int(row["epoch"])] = row
        except (ValueError, KeyError, TypeError):
            continue
    return [by_epoch[e] for e in sorted(by_epoch)]


def write_metrics(run_dir: str | os.PathLike[str], metrics: Sequence[Mapping[str, Any]]) -> Path:
    """Replace ``metrics.jsonl`` with ``metrics`` (a resumed run's file equals its checkpoint's history)."""
    return atomic_write_text(Path(run_dir) / METRICS, "".join(json.dumps(m) + "\n" for m in metrics))


def append_metrics(run_dir: str | os.PathLike[str], row: Mapping[str, Any]) -> None:
    append_line(Path(run_dir) / METRICS, json.dumps(row))


def copy_run_files(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Copy every run file ``src`` has into ``dst`` (a Ray trial's checkpoint folder and its run
    folder, either way), each atomically."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        if (src / name).exists():
            atomic_copy(src / name, dst / name)


# --------------------------------------------------------------------------------------------
# Per-image outcomes: which images each epoch's model classified correctly
# --------------------------------------------------------------------------------------------

#: The splits whose per-image outcomes a run keeps.
OUTCOME_SPLITS = ("val", "test")


@dataclass(frozen=True)
class Outcomes:
    """Per split (``val``, ``test``), one boolean row per epoch: image ``i`` of the split (in its
    fixed order) classified correctly by that epoch's model. Two runs on the same split can then be
    compared image by image (a paired test); a split the run did not have is absent."""

    splits: Mapping[str, np.ndarray]  # name -> bool [epochs, images]

    def at(self, split: str, epoch: int) -> np.ndarray | None:
        """Split ``split``'s outcomes after ``epoch`` (1-based) epochs, or None when not recorded."""
        rows = self.splits.get(split)
        return None if rows is None or not 1 <= epoch <= len(rows) else rows[epoch - 1]

    def first(self, epochs: int) -> "Outcomes":
        """The outcomes of the first ``epochs`` epochs (a resumed run continues from its checkpoint's)."""
        return Outcomes({k: v[:epochs] for k, v in self.splits.items()})

    def add(self, epoch: Mapping[str, np.ndarray]) -> "Outcomes":
        """These outcomes with one more epoch's (one bool vector per split)."""
        out = dict(self.splits)
        for k, v in epoch.items():
            row = np.asarray(v, dtype=bool)[None]
            out[k] = row if k not in out else np.concatenate([out[k], row])
        return Outcomes(out)


def write_outcomes(run_dir: str | os.PathLike[str], outcomes: Outcomes) -> Path:
    """``outcomes.npz``: each split's rows packed eight images to a byte, with the image count."""

    def save(f: IO[bytes]) -> None:
        arrays: dict[str, np.ndarray] = {}
        for k, rows in outcomes.splits.items():
            arrays[k] = np.packbits(rows.astype(bool), axis=1)
            arrays[f"{k}_images"] = np.asarray(rows.shape[1], dtype=np.int64)
        np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub reads **kwds as its allow_pickle

    return atomic_write(Path(run_dir) / OUTCOMES, save)


def read_outcomes(run_dir: str | os.PathLike[str]) -> Outcomes | None:
    """A run's ``outcomes.npz`` (None when absent or unreadable). Read with ``allow_pickle=False``:
    plain arrays only, so a file from elsewhere cannot run code."""
    try:
        with np.load(Path(run_dir) / OUTCOMES, allow_pickle=False) as z:
            splits = {}
            for k in OUTCOME_SPLITS:
                if k in z.files and f"{k}_images" in z.files:
                    n = int(z[f"{k}_images"])
                    splits[k] = np.unpackbits(z[k], axis=1, count=n).astype(bool)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    return Outcomes(splits)
