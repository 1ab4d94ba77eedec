"""How a model is optimised: the two recipes, the learning-rate schedule, the
optimiser's parameter groups and an exponential moving average (EMA) of the weights.

``paper`` is the study's protocol: SGD momentum 0.9, weight decay 5e-4 on every parameter, lr 0.1
divided by 10 at 50% and 75% of the epochs, plain cross-entropy, crops of the image padded by 4.
``fast`` is a short-schedule recipe: linear warmup then linear decay to zero (a one-cycle), Nesterov
momentum, label smoothing, a lighter weight decay and none on BatchNorm and bias parameters (values:
``training.config.RECIPES``), crops of the image padded less than ``paper``'s (a short run underfits; the milder shift
fits more), flip test-time augmentation where the dataset allows flips, two views shifted by a pixel
more in the final evaluation, and the whitening and identity starts of :mod:`.initialise`.
``docs/training.md`` says what each ingredient measurably did.

Everything here is a pure function of the step count or of tensors in the checkpoint, so a resumed
run continues bit for bit.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch

from filter_templates.training import muon
from filter_templates.training.config import TrainConfig

__all__ = ["lr_multiplier", "make_optimizer", "OptimizerSettings", "EMA"]

EMA_EVERY = 5  # steps between EMA updates (decay ** EMA_EVERY each time): the update costs a pass over the weights


def lr_multiplier(schedule: str, warmup: float, epochs: int, steps_per_epoch: int) -> Callable[[int], float]:
    """The factor on the peak lr before optimiser step ``s`` (0-based), for ``LambdaLR``.

    ``step``: 1, then 0.1 from epoch ``int(0.5 E)`` and 0.01 from ``int(0.75 E)`` (a milestone at
    epoch 0 is dropped, so a 1-epoch run keeps its lr). ``linear``: up from ~0 to 1 over the first
    ``warmup`` fraction of all steps, then down to 0 at the end.
    """
    total = epochs * steps_per_epoch
    if schedule == "step":
        milestones = [m * steps_per_epoch for m in (int(0.5 * epochs), int(0.75 * epochs)) if m >= 1]
        return lambda s: 0.1 ** sum(s >= m for m in milestones)
    ramp = max(1, round(warmup * total)) if warmup > 0 else 0

    def linear(s: int) -> float:
        if s < ramp:
            return (s + 1) / ramp
        return max(0.0, (total - s) / (total - ramp + 1))

    return linear


@dataclass(frozen=True)
class OptimizerSettings:
    """What an optimiser is made from: these fields of a ``TrainConfig``, which passes as one."""

    lr: float
    momentum: float
    weight_decay: float
    nesterov: bool
    norm_bias_decay: bool
    optimizer: str = "sgd"
    muon_lr: float = 0.01


def make_optimizer(model: torch.nn.Module, settings: OptimizerSettings | TrainConfig) -> torch.optim.Optimizer:
    """SGD; with ``norm_bias_decay=False`` the one-dimensional parameters (BatchNorm scales and
    shifts, biases) get no weight decay: shrinking them fights the normalisation, not overfitting.
    ``optimizer="muon"``: the convolutions that feed a BatchNorm take Muon steps at ``muon_lr`` (the
    schedule scales it as it scales ``lr``), the rest the same SGD (:mod:`.muon`). ``settings``:
    an :class:`OptimizerSettings` or a ``TrainConfig``."""
    s = settings
    lr, momentum, weight_decay, nesterov, optimizer = s.lr, s.momentum, s.weight_decay, s.nesterov, s.optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    orthogonal = muon.muon_parameters(model) if optimizer == "muon" else []
    taken = {id(p) for p in orthogonal}
    params = [p for p in params if id(p) not in taken]
    groups: list[dict[str, Any]]
    if s.norm_bias_decay or weight_decay == 0:
        groups = [{"params": params}]
    else:
        groups = [
            {"params": [p for p in params if p.ndim > 1]},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]
    if optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    if orthogonal:  # last, so param_groups[0]["lr"] stays the SGD lr that progress lines show
        groups.append({"params": orthogonal, "muon": True, "lr": s.muon_lr, "weight_decay": 0.0})
    return muon.Muon(
        [g for g in groups if g["params"]], lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov
    )


class EMA:
    """An exponential moving average of a model's floating-point weights and buffers, kept in a
    second copy of the model (evaluated and saved in place of the raw weights). ``decay`` is per
    step; early on it is ramped as ``min(decay, (1 + t) / (10 + t))`` so the average is not
    dominated by the random initialisation."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.updates = 0
        self._pairs = [(e, m) for e, m in zip(self.model.state_dict().values(), model.state_dict().values())]

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Call after optimiser step ``step`` (1-based); averages every ``EMA_EVERY`` steps."""
        if step % EMA_EVERY:
            return
        self.updates += 1
        t = self.updates * EMA_EVERY
        d = min(self.decay, (1 + t) / (10 + t)) ** EMA_EVERY
        floats = [(e, m) for e, m in self._pairs if e.is_floating_point()]
        torch._foreach_lerp_([e for e, _ in floats], [m for _, m in floats], 1.0 - d)
        for e, m in self._pairs:
            if not e.is_floating_point():
                e.copy_(m)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])
