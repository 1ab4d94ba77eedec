"""Export a trained run to ONNX or TorchScript for deployment.

The canonical artifact stays the run directory's state_dict plus the architecture record: the
model is rebuilt from ``Arch`` (no pickled modules anywhere) and only then traced/exported.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import IO

import torch
import torch.nn as nn

from filter_templates.core import rundir
from filter_templates.core.errors import UsageError
from filter_templates.core.images import IMAGE_SIZE
from filter_templates.method.arch import Arch
from filter_templates.method.onnx_model import example_input, onnx_available, write_onnx
from filter_templates.pruning.adapter import apply_structure
from filter_templates.pruning.run import run_structure

__all__ = ["FORMATS", "load_run_model", "export_run", "default_export_path", "onnx_available", "run_image_size"]

FORMATS = ("onnx", "torchscript")
_SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


def run_image_size(run_dir: str | Path) -> int:
    """The input side a run's model was trained at, read from its config.json without building
    anything (a user's network is then discovered at that size); 32 when the record names none."""
    doc = rundir.read_json(Path(run_dir) / rundir.CONFIG) if (Path(run_dir) / rundir.CONFIG).is_file() else None
    size = (doc or {}).get("arch", {}).get("image_size", IMAGE_SIZE) if isinstance(doc, dict) else IMAGE_SIZE
    return size if isinstance(size, int) and not isinstance(size, bool) and size >= 1 else IMAGE_SIZE


def _run_arch(run: Path) -> Arch:
    """The architecture from config.json, else from the checkpoint."""
    cfg_path = run / rundir.CONFIG
    if cfg_path.is_file():
        doc = rundir.read_json(cfg_path)
        if doc is None:
            raise UsageError(f"{cfg_path}: not a readable JSON object")
        if "arch" in doc:
            return Arch.from_dict(doc["arch"])
    if (run / rundir.CHECKPOINT).is_file():
        state = rundir.load_checkpoint(run / rundir.CHECKPOINT)
        if isinstance(state, dict) and "arch" in state:
            return Arch.from_dict(state["arch"])
    raise UsageError(
        f"{run}: no architecture record ({rundir.CONFIG} or {rundir.CHECKPOINT} with 'arch'); "
        f"is this a run directory written by `filter-templates train`?"
    )


def load_run_model(run_dir: str | Path) -> tuple[nn.Module, Arch]:
    """The run's model in eval mode on the CPU: final weights (model.pt) when the run finished,
    else the last checkpoint's."""
    run = Path(run_dir)
    if not run.is_dir():
        raise UsageError(f"--run {run}: no such directory")
    arch = _run_arch(run)
    if (run / rundir.MODEL).is_file():
        weights = rundir.load_checkpoint(run / rundir.MODEL)
    elif (run / rundir.CHECKPOINT).is_file():
        state = rundir.load_checkpoint(run / rundir.CHECKPOINT)
        weights = state.get("model") if isinstance(state, dict) else None
    else:
        raise UsageError(f"{run}: no weights ({rundir.MODEL} or {rundir.CHECKPOINT}); has the run finished an epoch?")
    if not isinstance(weights, dict):
        raise UsageError(f"{run}: the weights file does not hold a state_dict")
    model = arch.build()
    structure = run_structure(run)  # a pruning baseline: the shapes it was pruned to
    if structure is not None:
        apply_structure(model, structure)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise UsageError(f"{run}: weights do not match the architecture record ({str(exc).splitlines()[0]})") from None
    return model.eval(), arch


def default_export_path(run_dir: str | Path, fmt: str) -> Path:
    return Path(run_dir) / f"model{_SUFFIX[fmt]}"


def export_run(run_dir: str | Path, fmt: str, out: str | Path | None = None) -> Path:
    """Write the run's model as ``fmt`` ('onnx' or 'torchscript') to ``out`` (default: in the run
    directory) with a dynamic batch dimension; returns the path. Input: float NCHW [N, 3, S, S] at
    the run's image size S, normalised like training data; output: logits [N, classes]."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; choose from: {', '.join(FORMATS)}")
    model, arch = load_run_model(run_dir)
    path = Path(out) if out is not None else default_export_path(run_dir, fmt)
    if not path.parent.is_dir():
        raise UsageError(f"--out {path}: directory {path.parent} does not exist")
    rundir.check_writable(path, "--out", folder=False)
    if path.exists() and path.resolve().parent == Path(run_dir).resolve() and path.name in rundir.RUN_FILES:
        raise UsageError(f"--out {path} would overwrite the run's own {path.name}; choose another file")
    if path.exists() and not path.name.endswith(_SUFFIX[fmt]):  # only an earlier export is replaced
        raise UsageError(
            f"--out {path} exists and is not a {_SUFFIX[fmt]} file; choose another file (nothing was overwritten)"
        )
    example = example_input(arch.image_size)
    save = _torchscript if fmt == "torchscript" else write_onnx
    with rundir.writing("--out", path):
        rundir.atomic_write(path, lambda f: save(model, example, f))
    return path


def _torchscript(model: nn.Module, example: torch.Tensor, f: IO[bytes]) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export; it still works
        traced = torch.jit.trace(model, example)
    torch.jit.save(traced, f)
