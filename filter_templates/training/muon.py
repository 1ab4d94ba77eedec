"""Muon for the convolutions that feed a BatchNorm, SGD for every other parameter: one optimiser.

Why: Muon (K. Jordan, 2024; the optimiser of airbench94_muon) moves a filter bank in every direction
at the same rate: each step replaces a convolution's momentum by the nearest semi-orthogonal matrix
of the same shape (five Newton-Schulz iterations on ``(out, in*kh*kw)``). What it gives depends on
``muon_lr`` and on the length of the schedule (``docs/training.md``).

Like airbench, the weight is rescaled to Frobenius norm ``sqrt(out_channels)`` before each step,
so the learning rate alone sets the relative size of a step (no weight decay). That is only harmless
where a BatchNorm right after the convolution makes the output blind to the weight's scale, so only
such convolutions (found with ``torch.fx``: the conv's one consumer is a BatchNorm) and only ordinary
ones (``groups == 1``: orthogonalising a depthwise bank would couple its independent channels) go to
Muon. Everything else (classifier, biases, BatchNorm, depthwise convs) takes SGD exactly as
``torch.optim.SGD`` computes it.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.fx as fx
import torch.nn as nn

from filter_templates.core.errors import UsageError

__all__ = ["Muon", "orthogonalize", "muon_parameters"]

NS_COEFFS = (3.4445, -4.7750, 2.0315)  # the quintic of Jordan's Muon: fast growth of small singular values
NS_STEPS = 5


def orthogonalize(g: torch.Tensor, steps: int = NS_STEPS) -> torch.Tensor:
    """An approximately semi-orthogonal matrix with ``g``'s singular vectors (singular values ~0.7-1.2)."""
    a, b, c = NS_COEFFS
    x = g / (g.norm() + 1e-7)
    wide = x.size(0) <= x.size(1)
    if not wide:
        x = x.T
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return x if wide else x.T


def muon_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The weights of the ordinary convolutions whose only consumer is a BatchNorm."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as exc:  # fx raises many kinds on code it cannot trace
        raise UsageError(
            f"optimizer 'muon' needs a model torch.fx can trace, to find the convolutions "
            f"that feed a BatchNorm ({type(exc).__name__}: {exc}); use optimizer 'sgd'"
        ) from None
    found: dict[int, torch.Tensor] = {}
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        conv = model.get_submodule(node.target)
        if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
            continue
        users = list(node.users)
        if (
            len(users) == 1
            and users[0].op == "call_module"
            and isinstance(model.get_submodule(users[0].target), nn.BatchNorm2d)
        ):
            found[id(conv.weight)] = conv.weight
    return [p for p in model.parameters() if id(p) in found and p.requires_grad]


class Muon(torch.optim.Optimizer):
    """Param groups with ``muon=True`` take Muon steps (momentum, then orthogonalised); the others SGD
    with momentum, weight decay and optional Nesterov, as ``torch.optim.SGD`` (no dampening)."""

    def __init__(
        self, params: Iterable[Any], lr: float, momentum: float, weight_decay: float = 0.0, nesterov: bool = False
    ) -> None:
        super().__init__(
            params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov, muon=False)
        )

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]  # no closure: torch's overloads promise one
        if closure is not None:
            raise ValueError("Muon takes no closure")
        for group in self.param_groups:
            step = self._muon_step if group["muon"] else self._sgd_step
            for p in group["params"]:
                if p.grad is not None:
                    step(p, group)

    def _muon_step(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        grad = _grad(p)
        m = group["momentum"]
        buf = self.state[p].get("momentum_buffer")
        if buf is None:
            buf = self.state[p]["momentum_buffer"] = torch.zeros_like(p)
        buf.mul_(m).add_(grad)
        u = grad.add(buf, alpha=m) if group["nesterov"] else buf
        p.mul_(p.size(0) ** 0.5 / p.norm())
        x = orthogonalize(u.reshape(len(u), -1))
        x *= max(1.0, x.size(0) / x.size(1)) ** 0.5
        p.add_(x.view(p.shape), alpha=-group["lr"])

    def _sgd_step(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        m, wd = group["momentum"], group["weight_decay"]
        grad = _grad(p)
        d = grad.add(p, alpha=wd) if wd else grad
        if m:
            buf = self.state[p].get("momentum_buffer")
            if buf is None:
                buf = self.state[p]["momentum_buffer"] = d.clone()
            else:
                buf.mul_(m).add_(d)
            d = d.add(buf, alpha=m) if group["nesterov"] else buf
        p.add_(d, alpha=-group["lr"])


def _grad(p: torch.Tensor) -> torch.Tensor:
    """The gradient of a parameter the step loop found with one."""
    assert p.grad is not None  # step() passes only parameters with a gradient
    return p.grad
