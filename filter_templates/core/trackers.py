"""A run's ``log`` setting: which trackers receive it and where. It only says where a run is
watched, never what the run is, so it is an execution field of ``TrainConfig`` (no part of a run's
identity or store key). Torch-free: the run schema validates it without importing a tracker.

The normal form is ``{"to": [...], "dir", "uri", "project", "group", "budget"}``; a sweep's TOML may write the
list of trackers alone (``log = ["tensorboard"]``). Each tracker honours its own environment
variables where a setting is left out (``MLFLOW_TRACKING_URI``, ``WANDB_MODE``, ``WANDB_PROJECT``,
``WANDB_DIR``, ...).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Mapping

from filter_templates.core.errors import UsageError

__all__ = [
    "TRACKERS",
    "EXTRAS",
    "KEYS",
    "TENSORBOARD_DIR",
    "normal",
    "require",
    "local_folder",
    "with_budget",
    "prepare",
]

#: Tracker name -> (the module that must import, the package extra that installs it).
EXTRAS: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow"),
    "wandb": ("wandb", "wandb"),
}
TRACKERS = tuple(EXTRAS)
#: TensorBoard's event files when no folder is given (in the working directory of the command).
TENSORBOARD_DIR = "tensorboard"
#: The keys of the normal form: the trackers, a local folder (TensorBoard's event files, W&B's
#: run folders), MLflow's tracking URI, the project (W&B project, MLflow experiment prefix), the
#: group a sweep's or reduce's runs share, and the budget its models were fitted to (a hyperparameter).
KEYS = ("to", "dir", "uri", "project", "group", "budget")
_WHERE = "training config 'log'"


def normal(value: Any) -> dict[str, Any] | None:
    """``value`` (None, a list of tracker names, or a mapping with ``KEYS``) in its normal form;
    None when no tracker is named. A bad value is a UsageError naming it."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        value = {"to": list(value)}
    if not isinstance(value, Mapping):
        raise UsageError(f"{_WHERE} must be a list of trackers ({', '.join(TRACKERS)}) or null, got {value!r}")
    unknown = set(value) - set(KEYS)
    if unknown:
        raise UsageError(f"{_WHERE} has unknown keys: {', '.join(sorted(unknown))}")
    to = value.get("to") or []
    if not isinstance(to, (list, tuple)) or not all(isinstance(t, str) for t in to):
        raise UsageError(f"{_WHERE}: 'to' must be a list of tracker names")
    bad = [t for t in to if t not in TRACKERS]
    if bad:
        raise UsageError(f"unknown tracker {bad[0]!r}; choose from: {', '.join(TRACKERS)}")
    for key in KEYS[1:]:
        v = value.get(key)
        if v is not None and (not isinstance(v, str) or not v):
            raise UsageError(f"{_WHERE}: '{key}' must be a non-empty string or null, got {v!r}")
    if not to:
        given = [k for k in KEYS[1:] if value.get(k) is not None]
        if given:
            raise UsageError(f"{_WHERE}: '{given[0]}' needs a tracker to log to (--log {'|'.join(TRACKERS)})")
        return None
    return {"to": list(dict.fromkeys(to)), **{k: value.get(k) for k in KEYS[1:]}}


def require(settings: Mapping[str, Any] | None) -> None:
    """Refuse, in one line naming the extra, a tracker whose package is not installed."""
    for name in (settings or {}).get("to", ()):
        module, extra = EXTRAS[name]
        if importlib.util.find_spec(module) is None:
            raise UsageError(f"--log {name} needs the {module} package: pip install 'filter-templates[{extra}]'")


def local_folder(settings: Mapping[str, Any]) -> str | None:
    """The trackers' local folder as an absolute path, decided where the command is typed: the
    one given; else, with TensorBoard, ``TENSORBOARD_DIR`` in the working directory; else, with
    W&B, ``$WANDB_DIR`` or the working directory (W&B writes ``<it>/wandb/``); else none."""
    if settings.get("dir") is not None:
        return os.path.abspath(settings["dir"])
    if "tensorboard" in settings["to"]:
        return os.path.abspath(TENSORBOARD_DIR)
    if "wandb" in settings["to"]:
        return os.path.abspath(os.environ.get("WANDB_DIR") or os.curdir)
    return None


def with_budget(settings: Mapping[str, Any] | None, budget: str) -> dict[str, Any] | None:
    """``settings`` with the budget a run's model was fitted to, where none was given."""
    return None if settings is None else {**settings, "budget": settings.get("budget") or budget}


def prepare(value: Any, group: str | None = None, budget: str | None = None) -> dict[str, Any] | None:
    """``value`` as the runs of a command log it: in normal form, its trackers installed (else one
    line naming the extra), its folder absolute (:func:`local_folder`: the config travels to
    processes started elsewhere, Ray trials run in their trial folder), and ``group`` (a sweep's or
    reduce's runs share one) and ``budget`` filled in where not given."""
    settings = normal(value)
    if settings is None:
        return None
    require(settings)
    settings["dir"] = local_folder(settings)
    settings["group"] = settings["group"] or group
    return with_budget(settings, budget) if budget else settings
