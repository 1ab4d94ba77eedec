"""Pruning baselines: the methods a template is compared with at the same budget.

A template is trained once, from scratch, at its fitted width. The usual alternative trains the
original network, removes the channels that matter least and fine-tunes what is left. To compare
the two honestly, both must meet the same budget on the same data with the same recipe and the
same total number of epochs; this module gives the pruning side (with Torch-Pruning, an optional
extra behind :func:`torch_pruning`):

* ``prune-l1``: every layer loses the same share of its channels, lowest L1 norm first;
* ``prune-l1-global``: one ranking across layers (layer-adaptive: some layers keep more);
* ``prune-scratch``: the architecture ``prune-l1-global`` found, re-initialised and trained from
  scratch for all the epochs (the control for "is it the weights or the shape?").

The pruning ratio is searched (:func:`search_ratio`) so that the pruned model is the largest within
the budget, as ``fit`` finds the widest template model. A pruned model is recorded as the shapes of
the modules that changed (:func:`structure`), plain numbers that rebuild it from the base model
(:func:`apply_structure`) without Torch-Pruning and without unpickling anything.

How a pruning run trains (stages, resume) is :mod:`.run`'s job.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from filter_templates.core import validate
from filter_templates.core.device import device_name
from filter_templates.core.errors import UsageError
from filter_templates.method import measure
from filter_templates.models.generic import split_name
from filter_templates.training.config import PRUNE_GLOBAL, PRUNE_L1, PRUNE_METHODS

__all__ = [
    "INSTALL_HINT",
    "Baselines",
    "torch_pruning",
    "ignored_layers",
    "prune_once",
    "budget_value",
    "search_ratio",
    "Search",
    "structure",
    "apply_structure",
    "layer_counts",
    "cannot_prune",
    "model_resources",
    "RATIO_STEP",
]

INSTALL_HINT = "pip install -e '.[prune]'"
#: The ratio search stops when its bracket is this narrow: finer than one channel of a 2048-wide layer.
RATIO_STEP = 2.0**-12
MAX_HALVINGS = 10  # the largest ratio tried: 1 - 2**-10


@dataclass(frozen=True)
class Baselines:
    """Which pruning baselines a budget sweep or ``reduce`` adds, and how they start:
    ``at``: the share of the epochs the base model trains before it is pruned; ``from_width``:
    the width of the base model that is trained and pruned."""

    names: tuple[str, ...] = ()
    at: float = 0.5
    from_width: float = 1.0

    @classmethod
    def from_flags(cls, names: Sequence[str] | None, at: float | None, from_width: float | None) -> "Baselines":
        """``--baselines``, ``--prune-at``, ``--prune-from`` as given (None: the default)."""
        d = cls()
        return cls(tuple(names or ()), d.at if at is None else at, d.from_width if from_width is None else from_width)

    def validate(self) -> "Baselines":
        names = tuple(dict.fromkeys(self.names))
        for n in names:
            if n not in PRUNE_METHODS:
                raise UsageError(f"unknown baseline {n!r}; choose from: {', '.join(PRUNE_METHODS)}")
        validate.number(self.at, "--prune-at", strict=True)
        if not 0 < self.at < 1:
            raise UsageError(f"--prune-at must be a share of the epochs strictly between 0 and 1, got {self.at!r}")
        validate.number(self.from_width, "--prune-from", strict=True)
        if names:
            torch_pruning()
        return Baselines(names, float(self.at), float(self.from_width))

    def ordered(self) -> tuple[list[str], list[str]]:
        """(before the templates, after them): the global search runs first, so that ``prune-l1``
        finds the base model it trained and ``prune-scratch`` the architecture it found."""
        first = [n for n in self.names if n == PRUNE_GLOBAL]
        return first, [n for n in self.names if n not in first]


def torch_pruning() -> Any:
    """The ``torch_pruning`` module (the optional ``prune`` extra); one line saying how to get it."""
    try:
        import torch_pruning as tp
    except ImportError:
        raise UsageError(f"the pruning baselines need Torch-Pruning: {INSTALL_HINT}") from None
    return tp


# --------------------------------------------------------------------------------------------
# Pruning one model
# --------------------------------------------------------------------------------------------


def ignored_layers(model: nn.Module, classes: int, fixed: Sequence[str] = ()) -> list[nn.Module]:
    """What no method prunes: the classifier (the linear layers with ``classes`` outputs, else the
    last convolution or linear layer: its outputs are the answer) and the modules named in
    ``fixed`` (a user model's ``--fix``) with everything inside them."""
    layers: list[nn.Module] = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    out: list[nn.Module] = [m for m in layers if isinstance(m, nn.Linear) and m.out_features == classes] or layers[-1:]
    for name, m in model.named_modules():
        if any(name == f or name.startswith(f + ".") for f in fixed):
            out.append(m)
    return out


def _fixed(family: str) -> tuple[str, ...]:
    """The modules a user model's family name fixes (``--fix``)."""
    return split_name(family)[1] if ":" in family else ()


def prune_once(model: nn.Module, ratio: float, global_ranking: bool, arch: Any) -> nn.Module:
    """A pruned copy of ``model``: ``ratio`` of the prunable channels removed by L1 norm, per layer
    or (``global_ranking``) across layers; rounded to ``arch.divisor``. ``model`` is left as it is."""
    tp = torch_pruning()
    work = copy.deepcopy(model).cpu().eval()
    if ratio <= 0:
        return work
    pruner = tp.pruner.MetaPruner(
        work,
        torch.zeros(1, *measure.input_shape_of(arch)),
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio,
        global_pruning=global_ranking,
        ignored_layers=ignored_layers(work, arch.classes, _fixed(arch.family)),
        round_to=arch.divisor if arch.divisor > 1 else None,
    )
    pruner.step()
    return work


def budget_value(model: nn.Module, key: str, batch_size: int, input_shape: tuple[int, ...]) -> float:
    """What ``model`` uses of the budget ``key`` (params, FLOPs per image, training memory)."""
    if key == "params":
        return float(measure.count_params(model))
    if key == "flops":
        return float(measure.count_flops(model, input_shape))
    return float(measure.train_memory_bytes(copy.deepcopy(model).to("meta"), batch_size, input_shape))


@dataclass
class Search:
    """The ratio search's answer: the pruned ``model`` at ``ratio`` uses ``value`` of the budget;
    one step less pruning (``ratio - step``) uses ``over`` (more than the budget; None at ratio 0)."""

    model: nn.Module
    ratio: float
    value: float
    over: float | None
    step: float
    probes: int

    def record(self) -> dict[str, Any]:
        return {
            "ratio": self.ratio,
            "value": self.value,
            "over_at_ratio_minus_step": self.over,
            "step": self.step,
            "probes": self.probes,
        }


def search_ratio(model: nn.Module, arch: Any, spec: Mapping[str, Any], batch_size: int) -> Search:
    """Bisect the pruning ratio so the pruned model is the largest within ``spec["budget"]``: the
    smallest ratio whose model fits, to :data:`RATIO_STEP` (the resource shrinks as the ratio grows,
    until layers would be emptied). A budget no ratio meets is a UsageError saying what it reached."""
    key, limit = spec["budget"]["key"], float(spec["budget"]["value"])
    global_ranking = spec["method"] != PRUNE_L1
    probes = 0

    def at(r: float) -> tuple[nn.Module, float]:
        nonlocal probes
        probes += 1
        m = prune_once(model, r, global_ranking, arch)
        return m, budget_value(m, key, batch_size, measure.input_shape_of(arch))

    best, value = at(0.0)
    if value <= limit:
        return Search(best, 0.0, value, None, RATIO_STEP, probes)
    lo, over = 0.0, value
    # Bracket first, from below: near 1 a layer would lose every channel, Torch-Pruning leaves such a
    # layer whole, and the resource grows again; the bisection stays below the first ratio that fits.
    for k in range(1, MAX_HALVINGS + 1):
        hi = 1.0 - 2.0**-k
        m, v = at(hi)
        if v <= limit:
            best, value = m, v
            break
        lo, over = hi, v
    else:
        raise UsageError(
            f"{spec['method']}: no pruning ratio up to {hi:.2%} brings {key} within the budget of "
            f"{limit:,.0f} (the smallest pruned model has {min(over, value):,.0f})"
        )
    while hi - lo > RATIO_STEP:
        mid = (lo + hi) / 2
        m, v = at(mid)
        if v <= limit:
            hi, best, value = mid, m, v
        else:
            lo, over = mid, v
    return Search(best, hi, value, over, hi - lo, probes)


# --------------------------------------------------------------------------------------------
# The pruned structure as plain numbers
# --------------------------------------------------------------------------------------------

_ATTRS = ("in_channels", "out_channels", "groups", "num_features", "in_features", "out_features", "normalized_shape")


def _shape_of(m: nn.Module) -> dict[str, Any]:
    attrs = {a: getattr(m, a) for a in _ATTRS if isinstance(getattr(m, a, None), (int, tuple))}
    attrs = {a: list(v) if isinstance(v, tuple) else int(v) for a, v in attrs.items()}
    tensors = {
        n: list(t.shape)
        for n, t in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]
        if t is not None
    }
    return {"attrs": attrs, "tensors": tensors}


def structure(base: nn.Module, pruned: nn.Module) -> dict[str, dict[str, Any]]:
    """``{module name: {"attrs": ..., "tensors": {name: shape}}}`` for every module of ``pruned``
    whose shape differs from ``base``'s: what :func:`apply_structure` needs, in JSON."""
    before = dict(base.named_modules())
    out = {}
    for name, m in pruned.named_modules():
        now = _shape_of(m)
        if name in before and now != _shape_of(before[name]) and (now["attrs"] or now["tensors"]):
            out[name] = now
    return out


def apply_structure(model: nn.Module, record: Mapping[str, Mapping[str, Any]], *, reinit: bool = False) -> nn.Module:
    """Give ``model`` (built as the base) the recorded shapes, in place; the resized tensors are
    uninitialised (load weights next) unless ``reinit``: then every resized module draws fresh
    ones with its own ``reset_parameters``. A record that does not fit the model is a UsageError."""
    modules = dict(model.named_modules())
    for name, rec in record.items():
        m = modules.get(name)
        if m is None or not isinstance(rec, Mapping):
            raise UsageError(f"the pruned structure names a module {name!r} the model does not have")
        for a, v in (rec.get("attrs") or {}).items():
            setattr(m, a, tuple(v) if isinstance(v, list) else int(v))
        for t, shape in (rec.get("tensors") or {}).items():
            old = getattr(m, t, None)
            if not isinstance(old, torch.Tensor):
                raise UsageError(f"the pruned structure names a tensor {name}.{t} the model does not have")
            new = torch.empty([int(s) for s in shape], dtype=old.dtype, device=old.device)
            if isinstance(old, nn.Parameter):
                setattr(m, t, nn.Parameter(new, requires_grad=old.requires_grad))
            else:
                m.register_buffer(t, new)
        if reinit and hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return model


def layer_counts(model: nn.Module) -> dict[str, int]:
    """Output channels of every convolution and linear layer, by module name: the pruned per-layer counts."""
    return {
        n: int(getattr(m, "out_channels", getattr(m, "out_features", 0)))
        for n, m in model.named_modules()
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
    }


@functools.lru_cache(maxsize=64)
def cannot_prune(arch: Any) -> str | None:
    """Why Torch-Pruning cannot prune ``arch``'s model (None: it can): it is traced and pruned
    once (37% of the channels, a share that divides few layer widths evenly), on the CPU, and the
    pruned copy must still answer with one score per class."""
    try:
        with torch.random.fork_rng():
            model = arch.build()
        pruned = prune_once(model, 0.37, True, arch)
        with torch.no_grad():
            out = pruned.eval()(torch.zeros(2, *measure.input_shape_of(arch)))
        if tuple(out.shape) != (2, arch.classes):
            return f"its pruned copy answers with shape {tuple(out.shape)}, not (2, {arch.classes})"
    except UsageError:
        raise
    except Exception as exc:  # Torch-Pruning raises many kinds when it cannot trace or resize a model
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"{type(exc).__name__}: {first[:200]}"
    return None


def model_resources(model: nn.Module, arch: Any, batch_size: int, device: torch.device) -> dict[str, Any]:
    """The resources ``measure.resources`` gives ``arch``, for the built (pruned) ``model`` on ``device``."""
    shape = measure.input_shape_of(arch)
    meta = copy.deepcopy(model).to("meta")
    out: dict[str, Any] = {
        "params": measure.count_params(model),
        "flops": measure.count_flops(model, shape),
        "batch_size": batch_size,
        "train_memory_bytes": measure.train_memory_bytes(
            meta if device.type != "cuda" else model, batch_size, shape, device=device
        ),
        "train_memory_method": "cuda-peak" if device.type == "cuda" else "cpu-account",
    }
    lat = {b: measure.latency(model, b, device, input_shape=shape) for b in dict.fromkeys((batch_size, 1))}
    out["latency_s"] = {f"batch{b}": r["median_s"] for b, r in lat.items()}
    out["latency_iqr_s"] = {f"batch{b}": r["iqr_s"] for b, r in lat.items()}
    out.update(
        device=str(device), device_name=device_name(device), threads=torch.get_num_threads(), image_size=shape[1]
    )
    return out
