"""What a sweep runs: a grid of training configurations, from flags, a preset or a TOML file.

A :class:`SweepSpec` is the grid in words (families x templates x (widths or budgets) x datasets x
seeds plus the shared training settings); :func:`plan_grid` turns it into one ``TrainConfig`` per
point, in an order that keeps one dataset loaded at a time. With budgets, every (family, template,
budget, dataset) is first fitted (:func:`filter_templates.method.fit.fit`): the point
trains the widest model within the budget, and a budget the template cannot reach becomes a
:class:`BudgetPoint` without a configuration, with the reason. Everything is validated before
anything runs, so a typo fails in a second rather than after an hour of training.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the tomli backport, if installed
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]

from filter_templates.core import rundir, trackers, validate
from filter_templates.core.device import resolve_device
from filter_templates.core.errors import UsageError
from filter_templates.core.messages import note
from filter_templates.core.status import FITTED, UNREACHABLE
from filter_templates.data import data_facts, num_classes
from filter_templates.method.arch import ArchOptions
from filter_templates.method.fit import Budget, FitRequest, fit, parse_budget
from filter_templates.method.latency_fit import NoisyTiming
from filter_templates.method.measure import resources
from filter_templates.method.templates import BUILTIN_TEMPLATES, resolve_template
from filter_templates.models import get_family
from filter_templates.pruning import adapter as prune
from filter_templates.sweep.store import budget_point_key, point_key
from filter_templates.training.config import (
    PRUNE_BUDGET_KEYS,
    DataSettings,
    ExecutionSettings,
    RecipeSettings,
    TrainConfig,
    experiment,
    names,
)

__all__ = [
    "SweepSpec",
    "PRESETS",
    "PAPER_WIDTHS",
    "preset",
    "load_config",
    "expand",
    "plan_grid",
    "Grid",
    "BudgetPoint",
    "run_dir_name",
    "known_classes",
    "TRAIN_FIELDS",
    "GRID_FIELDS",
    "ARCH_FIELDS",
    "RUN_FIELDS",
]

PAPER_WIDTHS = (1.6, 1.3, 1.0, 0.8, 0.5, 0.25, 0.1, 0.05)

#: The TrainConfig fields that are axes of the grid (``datasets``, ``seeds``).
_POINT_FIELDS = ("dataset", "seed")
#: Settings shared by every point, passed through to TrainConfig unchanged: the data, recipe and
#: execution concerns' fields but the grid's axes (each point's architecture and pruning setting are
#: the grid's too).
TRAIN_FIELDS = tuple(k for k in names(DataSettings, RecipeSettings, ExecutionSettings) if k not in _POINT_FIELDS)
#: The axes of the grid and the pruning baselines' settings.
GRID_FIELDS = ("models", "templates", "widths", "budgets", "datasets", "seeds", "baselines", "prune_at", "prune_from")
#: The architecture options a sweep file, preset or flag sets (``SweepSpec.options``); the image size
#: is the dataset's (or the ``image_size`` training setting) and the reading is part of each model's name.
ARCH_FIELDS = ("divisor", "floor", "as_published")
#: The two ways to size the models of a grid: a sweep gives exactly one of them.
SIZE_FIELDS = ("widths", "budgets")
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
    budgets: list[str] = field(default_factory=list)  # "KEY=VALUE" as typed; instead of widths
    options: ArchOptions = ArchOptions()  # divisor, floor, as-published; the image size is set per dataset
    train: dict[str, Any] = field(default_factory=dict)  # TRAIN_FIELDS overrides (epochs, lr, ...)
    threads: int | None = None  # torch CPU threads of each local run (None: torch's choice)
    jobs: int = 1  # local runs at once, one process each
    baselines: list[str] = field(default_factory=list)  # pruning baselines beside the templates (budgets only)
    prune_at: float = 0.5  # the share of the epochs the baselines train before pruning
    prune_from: float = 1.0  # the width of the base model the baselines train and prune
    # How latency budgets are measured (runtimes.LatencySetting; None: eager torch at batch 1 on the
    # training device) or the latency table they are fitted against (latency_table.LatencyTable).
    latency: Any = None
    latency_table: Any = None

    def size(self) -> int:
        sizes = len(self.budgets) if self.budgets else len(self.widths)
        kinds = len(self.templates) + (len(self.baselines) if self.budgets else 0)
        return len(self.models) * kinds * sizes * len(self.datasets) * len(self.seeds)

    def merged(self, overrides: Mapping[str, Any]) -> "SweepSpec":
        """This spec with the non-None ``overrides`` (grid axes or train settings) applied.
        Widths and budgets replace each other: budgets given over a preset's widths sweep budgets."""
        spec = dataclasses.replace(self, train=dict(self.train))
        sizing = [k for k in SIZE_FIELDS if overrides.get(k) is not None]
        if len(sizing) > 1:
            raise UsageError("give widths or budgets, not both: budgets fit each model's width")
        for k in SIZE_FIELDS:
            if sizing and k not in sizing:
                setattr(spec, k, [])
        for k, v in overrides.items():
            if v is None:
                continue
            if k in GRID_FIELDS or k in RUN_FIELDS:
                setattr(spec, k, list(v) if isinstance(v, (list, tuple)) else v)
            elif k in ARCH_FIELDS:
                spec.options = spec.options.replace(**{k: v})
            elif k in TRAIN_FIELDS:
                spec.train[k] = v
            else:
                raise UsageError(f"unknown sweep setting {k!r}")
        return spec

    def to_dict(self) -> dict[str, Any]:
        grid = {k: getattr(self, k) for k in GRID_FIELDS + RUN_FIELDS}
        return {**grid, **{k: getattr(self.options, k) for k in ARCH_FIELDS}, **self.train}


# Quick: two families, all five templates, one small width on the embedded digits: the README's
# first command, venv included, in 5 minutes on 2 CPU cores. Measured here (AMD EPYC, 1 thread per
# run, benchmarks/budget_study_plan.py): the former grid (widths 0.1 and 0.05, 10 epochs) was ~15 min
# of wall clock; reverse and quadratic at 0.1 alone cost 2-4 min each (their widest layers sit at
# full resolution). One width, 6 epochs of the fast recipe. floor 8: at w=0.05 the thinnest layers
# get 2-3 filters (MobileNet's stem, reverse's last blocks), a bottleneck no shape survives; with a
# floor of 8 (same runs, same load) MobileNet reverse went from 31% to 62%, base 75% -> 87%, VGG-19
# quadratic 79% -> 93%, and no cell ends below 60% (chance: 10%).
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "models": ["vgg19", "mobilenet"],
        "templates": list(BUILTIN_TEMPLATES),
        "widths": [0.05],
        "floor": 8,
        "datasets": ["digits"],
        "seeds": [0],
        "epochs": 6,
        "batch_size": 64,
        # Two runs at once with one thread each: these models are too small to gain much from a
        # second thread, and on a CPU shared with anything else two threads of one process wait
        # on each other (measured here: up to 20x slower); two processes use both cores.
        "threads": 1,
        "jobs": 2,
    },
    # The published grid: 4 x 5 x 8 x 2 = 320 runs of 160 epochs at batch 64.
    "paper": {
        "models": ["vgg19", "resnet50", "googlenet", "mobilenet"],
        "templates": list(BUILTIN_TEMPLATES),
        "widths": list(PAPER_WIDTHS),
        "datasets": ["cifar10", "cifar100"],
        "seeds": [0],
        "as_published": True,
        "epochs": 160,
        "batch_size": 64,
        "recipe": "paper",
    },
}


def _from_mapping(d: Mapping[str, Any], where: str) -> SweepSpec:
    grid = {k: d[k] for k in GRID_FIELDS + ARCH_FIELDS + RUN_FIELDS if k in d}
    missing = [
        k if k != "widths" else "widths (or budgets)"
        for k in ("models", "widths", "datasets")
        if k not in grid and not (k == "widths" and "budgets" in grid)
    ]
    if missing:
        raise UsageError(f"{where}: missing {', '.join(missing)} (and no preset to take them from)")
    grid.setdefault("templates", list(BUILTIN_TEMPLATES))
    spec = SweepSpec(models=[], templates=[], widths=[], datasets=[])
    return spec.merged({**grid, **{k: d[k] for k in TRAIN_FIELDS if k in d}})


def preset(name: str) -> SweepSpec:
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}; choose from: {', '.join(PRESETS)}")
    return _from_mapping(PRESETS[name], f"preset {name!r}")


def load_config(path: str | Path) -> SweepSpec:
    """A sweep from a TOML file: the grid keys (``models``, ``templates``, ``widths`` or ``budgets``
    (``["params=1M", "flops=50M"]``), ``datasets``, ``seeds``, ``divisor``, ``floor``) and
    training settings (``epochs``, ``lr``, ...) at the top level; ``preset = "quick"`` starts from a
    preset and overrides what the file sets."""
    if tomllib is None:
        raise UsageError("reading TOML needs Python 3.11+ or 'pip install tomli'")
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
    allowed = {"preset", *GRID_FIELDS, *ARCH_FIELDS, *RUN_FIELDS, *TRAIN_FIELDS}
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise UsageError(
            f"sweep config {str(path)!r} has unknown keys {', '.join(unknown)}; accepted: {', '.join(sorted(allowed))}"
        )
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


@dataclass
class BudgetPoint:
    """One (family, method, budget, dataset, seed) of a budget sweep: the configuration that
    trains its fitted model, or ``config=None`` and the ``reason`` when the budget is unreachable.
    ``method``: the template, or the pruning baseline's method (its config prunes the base model)."""

    budget: "Budget"
    family: str
    method: str
    dataset: str
    seed: int
    ident: dict[str, Any]  # what identifies the point in the store (budget + settings, no width)
    config: "TrainConfig | None" = None
    fit: dict[str, Any] | None = None  # the fitted model's resources (+ capped, note)
    reason: str | None = None

    @property
    def key(self) -> str:
        return budget_point_key(self.ident)[0]

    def label(self) -> str:
        return f"{self.dataset} {self.family} {self.method} {self.budget} s{self.seed}"

    def record(self) -> dict[str, Any]:
        """The store's row (``Store.add_budget_points``)."""
        cfg = self.config
        return {
            "ident": self.ident,
            "budget_key": self.budget.key,
            "budget_value": self.budget.value,
            "family": self.family,
            "method": self.method,
            "dataset": self.dataset,
            "seed": self.seed,
            "status": UNREACHABLE if cfg is None else FITTED,
            "reason": self.reason,
            "width": None if cfg is None else cfg.arch.width,
            "filters": None if cfg is None else list(cfg.arch.filters),
            "fit": self.fit,
            "run_key": None if cfg is None else point_key(cfg.to_dict())[0],
        }


@dataclass
class Grid:
    """What a sweep trains (``configs``, in order) and, for a budget sweep, every budget point."""

    configs: list["TrainConfig"]
    budget_points: list[BudgetPoint] = field(default_factory=list)

    @property
    def unreachable(self) -> list[BudgetPoint]:
        return [p for p in self.budget_points if p.config is None]


def expand(spec: SweepSpec, classes_of: Callable[[str], int] | None = None) -> list["TrainConfig"]:
    """One TrainConfig per trainable grid point (see :func:`plan_grid`)."""
    return plan_grid(spec, classes_of).configs


def plan_grid(spec: SweepSpec, classes_of: Callable[[str], int] | None = None) -> Grid:
    """The grid's points, ordered dataset -> model -> template -> width (or budget) -> seed.

    ``classes_of(dataset)`` gives the class count (default: load the dataset, which also proves it
    is readable before any run starts). Every name and number is checked here: bad input is a
    UsageError before anything trains. Budget points are fitted here (params and FLOPs budgets in
    milliseconds; memory and latency budgets measure on the training device).
    """
    models = _list(spec, "models", str)
    templates = _list(spec, "templates", str)
    if spec.widths and spec.budgets:
        raise UsageError("a sweep takes widths or budgets, not both")
    budgets = _budgets(spec) if spec.budgets else None
    widths = _list(spec, "widths", float) if budgets is None else []
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
    base = _baselines(spec, budgets)
    lead, trail = base.ordered()
    classes_of = classes_of or _dataset_classes(spec)
    out = Grid(configs=[])
    for ds in datasets:
        classes = classes_of(ds)
        at_size = _for_dataset(spec, ds)
        for m in models:
            pruned = _pruned_base(at_size, m, classes, base)
            for t in [*lead, *templates, *trail]:
                if t in base.names:
                    for b in budgets or ():
                        _add(out, _baseline_points(at_size, pruned[0], t, b, ds, seeds, base, pruned[1]))
                    continue
                if budgets is None:
                    for w in widths:
                        arch = at_size.options.arch(m, t, w, classes)
                        for s in seeds:
                            out.configs.append(TrainConfig(arch=arch, dataset=ds, seed=s, **at_size.train))
                    continue
                for b in budgets:
                    for p in _budget_points(at_size, m, t, b, ds, classes, seeds):
                        out.budget_points.append(p)
                        if p.config is not None:
                            out.configs.append(p.config)
    return out


def _add(grid: Grid, points: list[BudgetPoint]) -> None:
    for p in points:
        grid.budget_points.append(p)
        if p.config is not None:
            grid.configs.append(p.config)


def _baselines(spec: SweepSpec, budgets: list["Budget"] | None) -> prune.Baselines:
    """The pruning baselines the spec asks for, checked (Torch-Pruning installed, a budget each
    can search a ratio for)."""
    if not spec.baselines:
        return prune.Baselines()
    base = prune.Baselines(tuple(_list(spec, "baselines", str)), spec.prune_at, spec.prune_from).validate()
    if budgets is None:
        raise UsageError("the pruning baselines meet a budget: give budgets (--budgets or --budget), not widths")
    for b in budgets:
        if b.key not in PRUNE_BUDGET_KEYS:
            raise UsageError(
                f"the pruning baselines search their ratio for a {', '.join(PRUNE_BUDGET_KEYS)} budget, not {b.key}"
            )
    return base


def _pruned_base(spec: SweepSpec, family: str, classes: int, base: prune.Baselines) -> tuple[Any, str | None]:
    """The base model the baselines prune, and why Torch-Pruning cannot prune it (None: it can),
    said once per model: its baselines are then unreachable, the templates still run."""
    if not base.names:
        return None, None
    arch = spec.options.arch(family, "base", base.from_width, classes)
    why = prune.cannot_prune(arch)
    if why is not None:
        why = f"Torch-Pruning cannot prune {family} ({why}); its pruning baselines are left out"
        note(f"{why}, the templates still run")
    return arch, why


def _baseline_points(
    spec: SweepSpec,
    arch: Any,
    method: str,
    budget: "Budget",
    dataset: str,
    seeds: list[int],
    base: prune.Baselines,
    why: str | None,
) -> list[BudgetPoint]:
    """The points of one pruning baseline (``method``) at one budget: the base model ``arch``
    trains, is pruned to the budget and fine-tuned (or, for prune-scratch, retrained)."""
    setting = {"method": method, "budget": budget.to_dict(), "at": base.at}
    points = []
    for s in seeds:
        cfg = TrainConfig(arch=arch, dataset=dataset, seed=s, prune=setting, **spec.train)
        d = cfg.to_dict()
        a = d.pop("arch")
        ident = experiment(d)
        ident["arch"] = {k: v for k, v in a.items() if k not in ("filters", "widths")}
        ident["budget"] = budget.to_dict()
        if budget.key == "latency":  # a millisecond in one runtime is not one in another
            ident["latency"] = _latency_identity(spec)
        points.append(BudgetPoint(budget, arch.family, method, dataset, s, ident, None if why else cfg, None, why))
    return points


#: Arch fields the fitted width decides: not part of a budget point's identity (the rest -- family,
#: template, classes, rounding options -- is).
_SIZED_BY_WIDTH = ("width", "filters", "stem_width", "widths")


def _for_dataset(spec: SweepSpec, dataset: str) -> SweepSpec:
    """``spec`` with ``image_size`` set in its options and training settings: the one given, else the dataset's
    own (a folder's common image size; 32 for the built-in ones). Models are built, counted and
    fitted at it, so every point of a dataset has one size. ``data_digest`` too: a folder's
    points are those of its images, whatever a settings file says."""
    facts = data_facts({**spec.train, "dataset": dataset})
    train = {**spec.train, "image_size": facts.image_size, "data_digest": facts.digest}
    return dataclasses.replace(spec, options=spec.options.replace(image_size=facts.image_size), train=train)


def _budgets(spec: SweepSpec) -> list["Budget"]:
    v = spec.budgets
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise UsageError(f"sweep 'budgets' must be a list of KEY=VALUE strings, got {v!r}")
    return list(dict.fromkeys(parse_budget(x) for x in v))


def _budget_points(
    spec: SweepSpec, family: str, template: str, budget: "Budget", dataset: str, classes: int, seeds: list[int]
) -> list[BudgetPoint]:
    """Fit one (family, template, budget, dataset) and make its point for every seed."""
    # the settings every seed shares, from a provisional config (so defaults are TrainConfig's own)
    probe = TrainConfig(arch=spec.options.arch(family, template, 1.0, classes), dataset=dataset, **spec.train)
    device = resolve_device(probe.device)  # a device that does not exist is an error, not an unreachable budget
    reason: str | None
    try:
        (r,) = fit(
            FitRequest(
                family,
                budget,
                [template],
                classes=classes,
                options=spec.options,
                batch_size=probe.batch_size,
                device=str(device),
                progress=False,
                latency=spec.latency,
                latency_table=spec.latency_table,
            )
        )
    except NoisyTiming:  # the machine, not the budget: stop rather than record it unreachable
        raise
    except UsageError as exc:  # below the smallest model this template can build
        arch, fitted, reason = None, None, " ".join(str(exc).split())
    else:
        arch, reason = r.arch, None
        fitted = {k: v for k, v in r.resources.items() if k not in ("device_name",)}
        if "train_memory_bytes" not in fitted:  # the CPU account is exact and fast
            fitted["train_memory_bytes"] = resources(arch, probe.batch_size, "cpu", latency=False)["train_memory_bytes"]
        fitted["capped"] = r.capped
        if r.note:
            fitted["note"] = r.note
    points = []
    for s in seeds:
        d = dataclasses.replace(probe, seed=s).to_dict()
        a = d.pop("arch")
        ident = experiment(d)
        ident["arch"] = {k: v for k, v in a.items() if k not in _SIZED_BY_WIDTH}
        ident["budget"] = budget.to_dict()
        if budget.key == "latency":  # a millisecond in one runtime is not one in another
            ident["latency"] = _latency_identity(spec)
        log = trackers.with_budget(spec.train.get("log"), str(budget))  # the budget among its tracker hparams
        cfg = None if arch is None else TrainConfig(arch=arch, dataset=dataset, seed=s, **{**spec.train, "log": log})
        points.append(BudgetPoint(budget, family, a["template"], dataset, s, ident, cfg, fitted, reason))
    return points


def _latency_identity(spec: SweepSpec) -> dict[str, Any]:
    """What decides a latency budget point's model besides the budget: where latency is measured."""
    table = spec.latency_table
    if table is not None:
        return {"table": {k: table.doc.get(k) for k in ("runtime", "version", "threads", "batch", "machine")}}
    s = spec.latency
    return (
        {"runtime": "torch", "batch": 1}
        if s is None
        else {"runtime": s.runtime, "batch": s.batch, "threads": s.threads}
    )


def known_classes(name: str) -> int:
    """The class count of a built-in dataset without reading it (``--dry-run``)."""
    return num_classes(name)


def _dataset_classes(spec: SweepSpec) -> Callable[[str], int]:
    def classes_of(name: str) -> int:
        return data_facts({**spec.train, "dataset": name}).classes

    return classes_of


def run_dir_name(config: "TrainConfig | Mapping[str, Any]", key: str) -> str:
    """A sweep's run folder: :func:`rundir.run_name` with the point's key."""
    return rundir.run_name(config if isinstance(config, Mapping) else config.to_dict(), key)
