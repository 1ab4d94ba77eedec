"""What a sweep runs: a grid of training configurations, from flags, a preset or a TOML file.

A :class:`SweepSpec` is the grid in words (families x templates x widths x datasets x seeds plus
the shared training settings); :func:`expand` turns it into one ``TrainConfig`` per point, in an
order that keeps one dataset loaded at a time. Everything is validated before anything runs, so a
typo fails in a second rather than after an hour of training.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .. import validate
from ..errors import UsageError

if TYPE_CHECKING:  # torch stays out of `import filter_templates.sweep.grid`
    from ..train import TrainConfig

__all__ = ["SweepSpec", "PRESETS", "PAPER_WIDTHS", "preset", "load_config", "expand", "run_dir_name", "known_classes",
           "TRAIN_FIELDS", "GRID_FIELDS", "RUN_FIELDS"]

PAPER_WIDTHS = (1.6, 1.3, 1.0, 0.8, 0.5, 0.25, 0.1, 0.05)
ALL_TEMPLATES = ("base", "reverse", "uniform", "quadratic", "negative-quadratic")

#: Settings shared by every point, passed through to TrainConfig unchanged.
TRAIN_FIELDS = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "channels_last", "bf16",
                "limit_train", "limit_test", "device", "data_dir", "download")
#: The axes of the grid and the architecture options.
GRID_FIELDS = ("models", "templates", "widths", "datasets", "seeds", "divisor", "floor")
#: How the local engine runs (not part of any run's configuration).
RUN_FIELDS = ("threads", "jobs")


@dataclass
class SweepSpec:
    """The grid and the training settings every point shares."""

    models: list[str]
    templates: list[str]
    widths: list[float]
    datasets: list[str]
    seeds: list[int] = field(default_factory=lambda: [0])
    divisor: int = 1
    floor: int = 1
    train: dict[str, Any] = field(default_factory=dict)  # TRAIN_FIELDS overrides (epochs, lr, ...)
    threads: int | None = None  # torch CPU threads of each local run (None: torch's choice)
    jobs: int = 1  # local runs at once, one process each

    def size(self) -> int:
        return len(self.models) * len(self.templates) * len(self.widths) * len(self.datasets) * len(self.seeds)

    def merged(self, overrides: Mapping[str, Any]) -> "SweepSpec":
        """This spec with the non-None ``overrides`` (grid axes or train settings) applied."""
        spec = dataclasses.replace(self, train=dict(self.train))
        for k, v in overrides.items():
            if v is None:
                continue
            if k in GRID_FIELDS or k in RUN_FIELDS:
                setattr(spec, k, list(v) if isinstance(v, (list, tuple)) else v)
            elif k in TRAIN_FIELDS:
                spec.train[k] = v
            else:
                raise UsageError(f"unknown sweep setting {k!r}")
        return spec

    def to_dict(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in GRID_FIELDS + RUN_FIELDS}, **self.train}


# Quick: two families, all five templates, the two smallest paper widths on the embedded digits,
# a few minutes on 2 CPU cores. Widths 0.1 and 0.05, not 0.25: the quadratic VGG at 0.25 costs
# 0.74 GFLOPs per image (its widest layers sit at full resolution), 6x the 0.1 model, and would
# blow the 5-minute budget. lr 0.05, not the paper's 0.1: with 6 epochs (lr / 10 after 3 and 4)
# these thin 16-layer nets barely leave chance level at 0.1 (measured: vgg19 base w0.1 77% at
# 0.05 against 31% at 0.1 even with 8 epochs; mobilenet base w0.05 45% against 10%).
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "models": ["vgg19", "mobilenet"],
        "templates": list(ALL_TEMPLATES),
        "widths": [0.1, 0.05],
        "datasets": ["digits"],
        "seeds": [0],
        "epochs": 10,
        "batch_size": 64,
        "lr": 0.05,
        # Two runs at once with one thread each: these models are too small to gain much from a
        # second thread, and on a CPU shared with anything else two threads of one process wait
        # on each other (measured here: up to 20x slower); two processes use both cores.
        "threads": 1,
        "jobs": 2,
    },
    # The published grid (SPEC section 8): 4 x 5 x 8 x 2 = 320 runs of 160 epochs at batch 64.
    "paper": {
        "models": ["vgg19", "resnet50", "googlenet", "mobilenet"],
        "templates": list(ALL_TEMPLATES),
        "widths": list(PAPER_WIDTHS),
        "datasets": ["cifar10", "cifar100"],
        "seeds": [0],
        "epochs": 160,
        "batch_size": 64,
    },
}


def _from_mapping(d: Mapping[str, Any], where: str) -> SweepSpec:
    grid = {k: d[k] for k in GRID_FIELDS + RUN_FIELDS if k in d}
    missing = [k for k in ("models", "widths", "datasets") if k not in grid]
    if missing:
        raise UsageError(f"{where}: missing {', '.join(missing)} (and no preset to take them from)")
    grid.setdefault("templates", list(ALL_TEMPLATES))
    spec = SweepSpec(models=[], templates=[], widths=[], datasets=[])
    return spec.merged({**grid, **{k: d[k] for k in TRAIN_FIELDS if k in d}})


def preset(name: str) -> SweepSpec:
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}; choose from: {', '.join(PRESETS)}")
    return _from_mapping(PRESETS[name], f"preset {name!r}")


def load_config(path: str | Path) -> SweepSpec:
    """A sweep from a TOML file: the grid keys (``models``, ``templates``, ``widths``, ``datasets``,
    ``seeds``, ``divisor``, ``floor``) and training settings (``epochs``, ``lr``, ...) at the top
    level; ``preset = "quick"`` starts from a preset and overrides what the file sets."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise UsageError("reading TOML needs Python 3.11+ or 'pip install tomli'") from None
    path = Path(path)
    try:
        with open(path, "rb") as f:
            d = tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"sweep config {str(path)!r} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read sweep config {str(path)!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"sweep config {str(path)!r} is not valid TOML: {exc}") from None
    allowed = {"preset", *GRID_FIELDS, *RUN_FIELDS, *TRAIN_FIELDS}
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise UsageError(f"sweep config {str(path)!r} has unknown keys {', '.join(unknown)}; "
                         f"accepted: {', '.join(sorted(allowed))}")
    if "preset" in d:
        if not isinstance(d["preset"], str):
            raise UsageError(f"sweep config {str(path)!r}: 'preset' must be a preset name")
        return preset(d["preset"]).merged({k: v for k, v in d.items() if k != "preset"})
    return _from_mapping(d, f"sweep config {str(path)!r}")


def _list(spec: SweepSpec, name: str, kind: type) -> list:
    v = getattr(spec, name)
    if not isinstance(v, list) or not v:
        raise UsageError(f"sweep '{name}' must be a non-empty list, got {v!r}")
    for x in v:
        if kind is float:
            ok, what = validate.is_number(x) and x > 0, "positive numbers"
        elif kind is int:
            ok, what = validate.is_integer(x) and x >= 0, "integers >= 0"
        else:
            ok = isinstance(x, str) and x != ""
            what = "names"
        if not ok:
            raise UsageError(f"sweep '{name}' must hold {what}, got {x!r}")
    return list(dict.fromkeys(float(x) if kind is float else x for x in v))  # drop repeats, keep order


def expand(spec: SweepSpec, classes_of: Callable[[str], int] | None = None) -> list["TrainConfig"]:
    """One TrainConfig per grid point, ordered dataset -> model -> template -> width -> seed.

    ``classes_of(dataset)`` gives the class count (default: load the dataset, which also proves it
    is readable before any run starts). Every name and number is checked here: bad input is a
    UsageError before anything trains.
    """
    from ..arch import make_arch
    from ..models import get_family
    from ..templates import resolve_template
    from ..train import TrainConfig

    models = _list(spec, "models", str)
    templates = _list(spec, "templates", str)
    widths = _list(spec, "widths", float)
    datasets = _list(spec, "datasets", str)
    seeds = _list(spec, "seeds", int)
    for m in models:
        get_family(m)
    for t in templates:
        resolve_template(t)
    unknown = set(spec.train) - set(TRAIN_FIELDS)
    if unknown:
        raise UsageError(f"unknown training settings: {', '.join(sorted(unknown))}")
    for name in RUN_FIELDS:
        if getattr(spec, name) is not None:
            validate.integer(getattr(spec, name), f"sweep '{name}'")
    classes_of = classes_of or _dataset_classes(spec)
    out = []
    for ds in datasets:
        classes = classes_of(ds)
        for m in models:
            for t in templates:
                for w in widths:
                    arch = make_arch(m, t, w, classes, divisor=spec.divisor, floor=spec.floor)
                    for s in seeds:
                        out.append(TrainConfig(arch=arch, dataset=ds, seed=s, **spec.train))
    return out


def known_classes(name: str) -> int:
    """The class count of a built-in dataset without reading it (``--dry-run``)."""
    from ..data import DATASETS
    from ..data.cifar import NUM_CLASSES

    counts = {**NUM_CLASSES, "digits": 10, "synthetic": 10}
    if name not in DATASETS or name not in counts:
        raise UsageError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    return counts[name]


def _dataset_classes(spec: SweepSpec) -> Callable[[str], int]:
    def classes_of(name: str) -> int:
        from ..train import load_data

        t = spec.train
        ds = load_data(name, t.get("data_dir"), bool(t.get("download", False)), t.get("limit_train"),
                       t.get("limit_test"))
        return int(ds.num_classes)

    return classes_of


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def run_dir_name(config: "TrainConfig | Mapping[str, Any]", key: str) -> str:
    """A readable, unique folder name: ``digits-vgg19-uniform-w0.1-s0-<key prefix>``."""
    d = config if isinstance(config, Mapping) else config.to_dict()
    arch = d["arch"]
    template = _UNSAFE.sub("_", str(arch["template"]))[:40].strip("_") or "custom"
    return f"{d['dataset']}-{arch['family']}-{template}-w{float(arch['width']):g}-s{d['seed']}-{key[:10]}"
