"""The run schema: what a run is (``TrainConfig``, the union of its concerns: architecture, data,
recipe, pruning, execution), which of them make the experiment (all but execution) and which only
say how to execute it, the recipes' values for the fields left unset, the pruning setting's shape,
and what a finished run writes (``Summary``).

It lives apart from the training loop so that everything that only reads runs -- the results
store, the grid and plan of a sweep, the report -- learns the field names here without importing
the code that trains. It imports no training code itself.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, TypedDict

from filter_templates.core import trackers, validate
from filter_templates.core.errors import UsageError
from filter_templates.core.images import IMAGE_SIZE, MIN_IMAGE_SIZE
from filter_templates.data import split
from filter_templates.method.arch import Arch

__all__ = [
    "TrainConfig",
    "schedule_rows",
    "FIELDS",
    "RESULT_KEYS",
    "EXECUTION_KEYS",
    "CHOSEN_KEYS",
    "DATA_MEMORY_SHARE",
    "CONCERNS",
    "ArchitectureSettings",
    "DataSettings",
    "RecipeSettings",
    "PruningSettings",
    "ExecutionSettings",
    "names",
    "VALUE_BEFORE",
    "experiment",
    "DEVICES",
    "PRECISIONS",
    "MEMORY_FORMATS",
    "PROFILE_AUTO",
    "PROFILE_OFF",
    "RECIPES",
    "RECIPE_FIELDS",
    "SCHEDULES",
    "OPTIMIZERS",
    "MAX_CROP_PAD",
    "MAX_TTA_SHIFT",
    "TEMPLATE",
    "PRUNING",
    "KINDS",
    "PRUNE_METHODS",
    "PRUNE_L1",
    "PRUNE_GLOBAL",
    "PRUNE_SCRATCH",
    "PRUNE_BUDGET_KEYS",
    "check_prune",
    "kind_of",
    "method_of",
    "test_views",
    "Summary",
]

DEVICES = ("auto", "cpu", "cuda")
#: How a run may execute (``autotune`` picks among them when a field says ``auto``).
PRECISIONS = ("fp32", "bf16")
MEMORY_FORMATS = ("channels_last", "contiguous")
#: Which machine profile a run reads (``training.profile``): the user's config directory's, or none.
PROFILE_AUTO = "auto"
PROFILE_OFF = "off"

SCHEDULES = ("step", "linear")
OPTIMIZERS = ("sgd", "muon")
#: The settings each recipe gives the TrainConfig fields left unset (``training.recipe`` says what
#: each does).
RECIPES: dict[str, dict[str, Any]] = {
    "paper": {
        "batch_size": 64,
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": "step",
        "warmup": 0.0,
        "nesterov": False,
        "label_smoothing": 0.0,
        "norm_bias_decay": True,
        "ema": 0.0,
        "tta": False,
        "tta_shift": 0,
        "crop_pad": 4,
        "optimizer": "sgd",
        "muon_lr": 0.01,
        "whiten_init": False,
        "identity_init": False,
    },
    "fast": {
        "batch_size": 64,
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 2.5e-4,
        "schedule": "linear",
        "warmup": 0.25,
        "nesterov": True,
        "label_smoothing": 0.3,
        "norm_bias_decay": False,
        "ema": 0.0,
        "tta": True,
        "tta_shift": 1,
        "crop_pad": 1,
        "optimizer": "sgd",
        "muon_lr": 0.01,
        "whiten_init": True,
        "identity_init": True,
    },
}
RECIPE_FIELDS = tuple(RECIPES["paper"])
MAX_CROP_PAD = 16  # pixels: more would crop mostly padding out of a 32-pixel image
MAX_TTA_SHIFT = 4  # pixels a shifted test view may move (reflect padding needs it below the image size)

#: What a run is: a template's model trained from scratch, or a pruning baseline (``prune`` set).
TEMPLATE = "template"
PRUNING = "pruning"
KINDS = (TEMPLATE, PRUNING)
#: The pruning baselines (``pruning.adapter`` says what each does).
PRUNE_L1 = "prune-l1"
PRUNE_GLOBAL = "prune-l1-global"
PRUNE_SCRATCH = "prune-scratch"
PRUNE_METHODS = (PRUNE_L1, PRUNE_GLOBAL, PRUNE_SCRATCH)
#: Budgets a pruning ratio search can meet exactly and quickly (latency is too noisy to bisect on).
PRUNE_BUDGET_KEYS = ("params", "flops", "memory")
_PRUNE_KEYS = {"method", "budget", "at"}


_NOT_ADDED = object()  # an identity field every stored run has


def _identity(default: Any = None, *, was: Any = _NOT_ADDED, only_with: tuple[str, Any] | None = None) -> Any:
    """A field of the run's identity: changing it makes another experiment. ``was`` (a field added
    after runs were stored) is the value those runs had: a whole record without the field reads as
    having it, and identity leaves the field out at it, so those runs keep their store key and
    checkpoint. ``only_with=(field, value)``: the field acts (and counts) only where that field has
    that value."""
    return field(default=default, metadata={"was": was, "only_with": only_with})


def _from_recipe(*, was: Any = _NOT_ADDED, only_with: tuple[str, Any] | None = None) -> Any:
    """An identity field whose default (None) the recipe fills in (``RECIPES``)."""
    return _identity(None, was=was, only_with=only_with)


@dataclass
class ArchitectureSettings:
    """The architecture concern: the model a run trains (its family, template, width, filters)."""

    # for a pruning baseline, the base model it prunes (kind_of, method_of)
    arch: Arch = _identity()


@dataclass
class DataSettings:
    """The data concern: which images a run trains, selects and is tested on."""

    dataset: str = _identity("digits")
    # which images, where the name does not say it: a folder's content digest (data.data_digest_for),
    # so runs on two folders never pass for one experiment; None for the built-in datasets
    data_digest: str | None = _identity(was=None)
    limit_train: int | None = _identity()
    limit_test: int | None = _identity()
    val_split: int | float = _identity(0, was=0)  # images held out of the training split to select on (data.split)
    # side of the square images (a folder's are resized to it); arch.image_size too
    image_size: int = _identity(IMAGE_SIZE, was=IMAGE_SIZE)


@dataclass
class RecipeSettings:
    """The recipe concern: how the model is trained (the recipe's values fill the fields left
    None), and the seed."""

    recipe: str = _identity("fast")
    epochs: int = _identity(160)
    batch_size: int = _from_recipe()
    lr: float = _from_recipe()
    momentum: float = _from_recipe()
    weight_decay: float = _from_recipe()
    schedule: str = _from_recipe()
    warmup: float = _from_recipe()
    nesterov: bool = _from_recipe()
    label_smoothing: float = _from_recipe()
    norm_bias_decay: bool = _from_recipe()
    ema: float = _from_recipe()
    tta: bool = _from_recipe()
    tta_shift: int = _from_recipe()
    crop_pad: int = _from_recipe()
    optimizer: str = _from_recipe(was="sgd")
    muon_lr: float = _from_recipe(only_with=("optimizer", "muon"))
    whiten_init: bool = _from_recipe(was=False)
    identity_init: bool = _from_recipe(was=False)
    seed: int = _identity(0)


@dataclass
class PruningSettings:
    """The pruning concern: None for a template's model trained from scratch; for a pruning
    baseline, ``{method, budget, at}`` (``check_prune``)."""

    prune: dict | None = _identity(was=None)


@dataclass
class ExecutionSettings:
    """The execution concern: where and how to run, not what. No part of a run's identity: moving
    the data, the device or the trackers keeps the run (the ``CHOSEN_KEYS`` that change the numbers
    are kept by its checkpoint instead). Distributed training and pausing belong here."""

    data_dir: str | None = None
    download: bool = False
    device: str = "auto"
    precision: str = "auto"
    memory_format: str = "auto"
    threads: int | None = None  # torch's CPU threads (None: the caller's, see autotune.threads_for)
    # bytes the padded training split may take on the device; a larger one is streamed from its
    # memory-mapped cache (data.stream), with the same batches. None: DATA_MEMORY_SHARE of the
    # device's free memory, filled in when the run starts (config.json records the bytes)
    data_memory: int | None = None
    # the processes training this run (torchrun's WORLD_SIZE; None: those started, filled in). It
    # changes the numbers (each takes a share of every batch): a checkpoint resumes only with as many
    world_size: int | None = None
    sync_bn: bool | None = None  # BatchNorm statistics over the whole batch, not each process's share
    compile: bool | None = None  # torch.compile the training step (None: the profile's, else off)
    # the machine profile to read (training.profile): PROFILE_AUTO (the user's config directory), PROFILE_OFF or a file
    profile: str = PROFILE_AUTO
    # pause after this epoch of the planned ``epochs`` (None: run to the end); the schedule stays
    # the full run's, so continuing later ends exactly where a run never paused would
    stop_at: int | None = None
    # the trackers that receive the run (TensorBoard, MLflow, W&B) and where: core.trackers' normal form
    log: dict | None = None


#: The concerns of a run, in the order a config lists their fields. Identity is every concern but
#: ``ExecutionSettings``.
CONCERNS = (ArchitectureSettings, DataSettings, RecipeSettings, PruningSettings, ExecutionSettings)


@dataclass
class TrainConfig(ExecutionSettings, PruningSettings, RecipeSettings, DataSettings, ArchitectureSettings):
    """Everything that defines a training run: the fields of its concerns (``CONCERNS``), each
    declared once in its concern's class and read flat (``cfg.lr``, ``cfg.device``). The class a
    field is declared in decides its part: every concern but execution is the run's identity
    (``RESULT_KEYS``, :func:`experiment`); the CLI, the sweep grid and the results store derive
    their lists from these classes. Fields left None take the recipe's value, so ``to_dict()``
    (config.json, flat) holds every setting."""

    def __post_init__(self) -> None:
        if self.recipe in RECIPES:
            for name, value in RECIPES[self.recipe].items():
                if getattr(self, name) is None:
                    setattr(self, name, value)
        self.log = trackers.normal(self.log)
        for name in _FLOATS:
            v = getattr(self, name)  # JSON writes 1.0 as 1 sometimes
            if isinstance(v, int) and not isinstance(v, bool):
                setattr(self, name, float(v))
        self.validate()

    def validate(self) -> None:
        """Refuse values no run could use, naming the field (UsageError)."""
        if not isinstance(self.arch, Arch):
            raise UsageError("training config 'arch' must be an architecture record")
        if self.recipe not in RECIPES:
            raise UsageError(f"training config 'recipe' must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        if not isinstance(self.dataset, str) or not self.dataset:
            raise UsageError("training config 'dataset' must be a dataset name")
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise UsageError("training config 'data_dir' must be a path or null")
        if self.data_digest is not None and not isinstance(self.data_digest, str):
            raise UsageError("training config 'data_digest' must be a string or null")
        for name in ("epochs", "batch_size"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("seed", self.seed, minimum=0)
        for name in ("limit_train", "limit_test"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), minimum=1)
        split.check(self.val_split, "training config 'val_split'")
        _check_float("lr", self.lr, positive=True)
        _check_float("muon_lr", self.muon_lr, positive=True)
        _check_float("momentum", self.momentum, positive=False)
        _check_float("weight_decay", self.weight_decay, positive=False)
        _check_int("image_size", self.image_size, minimum=MIN_IMAGE_SIZE)
        if self.arch.image_size != self.image_size:
            raise UsageError(
                f"the model is built for {self.arch.image_size} px images but the training config's "
                f"image_size is {self.image_size}; build the architecture with image_size={self.image_size}"
            )
        for name in _BOOLS:
            if not isinstance(getattr(self, name), bool):
                raise UsageError(f"training config '{name}' must be true or false, got {getattr(self, name)!r}")
        _check_recipe_values(lambda name: getattr(self, name))
        check_prune(self.prune)
        if not isinstance(self.device, str) or not (self.device in DEVICES or self.device.startswith("cuda:")):
            raise UsageError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {self.device!r}")
        for name in ("threads", "data_memory", "world_size", "stop_at"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), minimum=1)
        for name in ("sync_bn", "compile"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), bool):
                raise UsageError(f"training config '{name}' must be true, false or null, got {getattr(self, name)!r}")
        if not isinstance(self.profile, str) or not self.profile:
            raise UsageError(
                f"training config 'profile' must be {PROFILE_AUTO}, {PROFILE_OFF} or a file, got {self.profile!r}"
            )
        for name, allowed in (("precision", PRECISIONS), ("memory_format", MEMORY_FORMATS)):
            if getattr(self, name) not in ("auto", *allowed):
                raise UsageError(
                    f"training config '{name}' must be one of auto, {', '.join(allowed)}, got {getattr(self, name)!r}"
                )

    @property
    def kind(self) -> str:
        """``TEMPLATE`` or ``PRUNING`` (:func:`kind_of`)."""
        return kind_of(self.to_dict())

    @property
    def method(self) -> str:
        """The arch's template, or the pruning baseline's method (:func:`method_of`)."""
        return method_of(self.to_dict())

    @property
    def stop_epoch(self) -> int:
        """The epoch a run of this config trains to this time: ``stop_at``, at most ``epochs``."""
        return self.epochs if self.stop_at is None else min(self.stop_at, self.epochs)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["arch"] = self.arch.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """Validate a config read from JSON; any problem is a UsageError."""
        if not isinstance(d, Mapping):
            raise UsageError("training config must be a JSON object")
        if "arch" not in d:
            raise UsageError("training config lacks 'arch'")
        unknown = set(d) - set(FIELDS)
        if unknown:
            raise UsageError(f"training config has unknown keys: {', '.join(sorted(unknown))}")
        kw = dict(d)
        if all(k in d for k in _ALWAYS_WRITTEN):  # a whole record, maybe from before some fields
            kw = {**VALUE_BEFORE, **kw}
        kw["arch"] = d["arch"] if isinstance(d["arch"], Arch) else Arch.from_dict(d["arch"])
        return cls(**kw)


def names(*concerns: type) -> tuple[str, ...]:
    """The field names of ``concerns`` (classes of ``CONCERNS``), in declaration order."""
    return tuple(f.name for c in concerns for f in dataclasses.fields(c))


FIELDS = names(*CONCERNS)
# The fields typed float (an int read from JSON becomes one) and bool (nothing else is accepted).
_FLOATS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.type == "float")
_BOOLS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.type == "bool")
#: Keys that say where/how to run: they may differ on resume and are no part of a sweep point's identity.
EXECUTION_KEYS = names(ExecutionSettings)
#: Keys whose change makes a checkpoint belong to a different experiment: every other concern's.
RESULT_KEYS = names(*(c for c in CONCERNS if c is not ExecutionSettings))
_IDENTITY = tuple(f for f in dataclasses.fields(TrainConfig) if f.name in RESULT_KEYS)
#: Each identity field added after runs were stored, with the value those runs had (its ``was``).
VALUE_BEFORE = {f.name: f.metadata["was"] for f in _IDENTITY if f.metadata["was"] is not _NOT_ADDED}
# The identity fields every stored record holds (none added later, none acting only with another):
# a record with them all is a whole ``to_dict()``, whose missing fields were added since.
_ALWAYS_WRITTEN = tuple(f.name for f in _IDENTITY if f.name not in VALUE_BEFORE and f.metadata["only_with"] is None)
#: Execution fields that change the numbers: a run decides them once and its checkpoint keeps them.
CHOSEN_KEYS = ("precision", "memory_format", "threads", "sync_bn", "compile")
#: The share of the device's free memory a training split may take when ``data_memory`` is not
#: given (divided among the processes of a run that share the device's host).
DATA_MEMORY_SHARE = 0.5


def experiment(config: Mapping[str, Any]) -> dict[str, Any]:
    """What makes a run's experiment, as stored records are compared: the identity fields of a
    ``to_dict()`` (every concern but execution), less a field that does not act (its ``only_with``
    unmet: ``muon_lr`` without Muon) and less a field at the value runs had before it existed (its
    ``was``), so records written before the field still match."""
    out = {}
    for f in _IDENTITY:
        if f.name not in config:
            continue
        v, only = config[f.name], f.metadata["only_with"]
        if (f.name in VALUE_BEFORE and v == VALUE_BEFORE[f.name]) or (
            only is not None and config.get(only[0]) != only[1]
        ):
            continue
        out[f.name] = v
    return out


def test_views(tta: bool, shift: int) -> int:
    """How many views of each test image the final evaluation averages (``training.loop.evaluate``):
    one, two with the mirror image (``tta``), four with the two shifted ones too (``shift`` > 0)."""
    return 1 if not tta else (4 if shift else 2)


def check_prune(spec: Any) -> None:
    """A training config's ``prune`` setting: None, or ``{"method", "budget": {"key", "value"}, "at"}``."""
    if spec is None:
        return
    if not isinstance(spec, Mapping) or set(spec) != _PRUNE_KEYS:
        raise UsageError(
            f"training config 'prune' must be null or an object with keys {', '.join(sorted(_PRUNE_KEYS))}"
        )
    if spec["method"] not in PRUNE_METHODS:
        raise UsageError(
            f"training config 'prune': unknown method {spec['method']!r}; choose from: {', '.join(PRUNE_METHODS)}"
        )
    b = spec["budget"]
    if not isinstance(b, Mapping) or set(b) != {"key", "value"} or b["key"] not in PRUNE_BUDGET_KEYS:
        raise UsageError(
            f"training config 'prune': budget must be {{key, value}} with key one of {', '.join(PRUNE_BUDGET_KEYS)}"
        )
    validate.number(b["value"], "training config 'prune' budget value", strict=True)
    validate.number(spec["at"], "training config 'prune' at", strict=True)
    if not 0 < spec["at"] < 1:
        raise UsageError(f"training config 'prune': 'at' must be strictly between 0 and 1, got {spec['at']!r}")


def kind_of(config: Mapping[str, Any]) -> str:
    """``PRUNING`` for a pruning baseline's config (a ``to_dict()``), ``TEMPLATE`` for any other."""
    return PRUNING if config.get("prune") else TEMPLATE


def method_of(config: Mapping[str, Any]) -> str:
    """What a run compares, as tables and rankings name it: the pruning method of a pruning
    baseline, else its model's template."""
    prune = config.get("prune")
    return str(prune["method"]) if prune else str(config["arch"]["template"])


def _check_int(name: str, v: Any, minimum: int) -> None:
    validate.integer(v, f"training config '{name}'", minimum)


def _check_float(name: str, v: Any, positive: bool) -> None:
    validate.number(v, f"training config '{name}'", strict=positive)


def _check_recipe_values(get: Callable[[str], Any]) -> None:
    """Refuse recipe settings no run could use (UsageError)."""
    if get("schedule") not in SCHEDULES:
        raise UsageError(f"training config 'schedule' must be one of {', '.join(SCHEDULES)}, got {get('schedule')!r}")
    for name in ("warmup", "label_smoothing", "ema"):
        validate.number(get(name), f"training config '{name}'", 0.0, strict=False, maximum=1.0)
    for name, high, unit in (
        ("crop_pad", MAX_CROP_PAD, "pixels of padding before the random crop"),
        ("tta_shift", MAX_TTA_SHIFT, "pixels the two shifted test views of the final evaluation move"),
    ):
        validate.integer(get(name), f"training config '{name}' ({unit})", 0, maximum=high)
    if get("optimizer") not in OPTIMIZERS:
        raise UsageError(
            f"training config 'optimizer' must be one of {', '.join(OPTIMIZERS)}, got {get('optimizer')!r}"
        )
    if get("nesterov") is True and not get("momentum"):
        raise UsageError("training config 'nesterov' needs a momentum above 0")


class _SummaryExtras(TypedDict, total=False):
    pruned: dict[str, Any]  # a pruning run's: ratio, per-layer counts and structure


class Summary(_SummaryExtras):
    """What ``summary.json`` holds: the one record a finished (or failed) run writes, built by
    ``training.loop.summarise`` alone. Accuracies are fractions in [0, 1]; a pruning run scores the
    rows of its last stage."""

    status: str  # core.status.DONE, FAILED or PAUSED
    reason: str | None  # why it failed
    stopped_at: int | None  # a paused run's last epoch, of its planned schedule (None: not paused)
    val_acc: float | None  # the last epoch's validation accuracy: what selection reads
    val: dict[str, Any] | None  # the validation set's size, source and digest (None: none)
    final_acc: float | None  # the last epoch's test accuracy
    # the best test accuracy seen over epochs: optimistic (picked on the test set), never used to select
    best_acc: float | None
    best_epoch: int | None
    epochs: int  # completed epochs
    # parameters, FLOPs, memory and latency on the training device, measured after training (None:
    # a pruning run that failed before its pruned model existed)
    resources: dict[str, Any] | None
    wall_s: float  # training + evaluation, every resumed part included
    device: str
    recipe: str
    precision: str
    data: dict[str, Any] | None  # classes, image size and the normalisation the run used
    memory_format: str
    execution: dict[str, Any]  # how precision, memory format, threads and compile were decided (and the profile read)
    device_name: str
    threads: int
    config: dict[str, Any]
    metrics: list[dict[str, Any]]


def schedule_rows(config: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """A run's metrics rows of its planned epochs, in order, as a TrainConfig dict plans them: a
    ``prune-scratch`` run's search (the base model trained to find a structure, when no sibling had
    found it) is no part of them; every other run's rows all are."""
    if (config.get("prune") or {}).get("method") == PRUNE_SCRATCH:
        return [r for r in rows if r.get("stage") == "scratch"]
    return list(rows)
