"""Channel-wise layers of any class, and the per-channel tensors a forward uses directly.

A *channel-wise layer* acts on each channel of its input on its own and gives a tensor of the same
shape: a subclass of BatchNorm, GroupNorm or LayerNorm (timm's ``BatchNormAct2d``, ``GroupNormAct``,
``LayerNorm2d``, ``FrozenBatchNorm2d``-like modules whose only tensors are per-channel vectors), or
any module whose parameters and buffers are all vectors of one length (a layer scale, a learnable
per-channel bias). Discovery treats it as one layer, the norm of its channel group, whatever its own
forward does inside (an activation, a dropout).

Such a layer is re-created at a new width as a copy of itself whose per-channel tensors have the
new length: its class, its activation, eps and momentum are kept as they are. The new tensors are
initialised by the layer's own ``reset_parameters``/``reset_running_stats`` where it has them;
otherwise a constant vector (ones, zeros, a layer scale's ``1e-6``) keeps its constant and any other
vector is filled with its mean. A per-channel tensor the forward uses directly (``self.gamma *
x``) is resized by the same rule (:func:`resized_tensor`).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

__all__ = ["channel_count", "resized", "resized_tensor", "vector_dim"]

_NORM_CLASSES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
_SIZE_ATTRS = ("num_features", "num_channels", "num_parameters")


def vector_dim(shape: tuple[int, ...] | torch.Size) -> int | None:
    """The one dimension of a tensor longer than 1 (a per-channel vector, however viewed), else None."""
    long = [d for d, n in enumerate(shape) if n > 1]
    return long[0] if len(long) == 1 else None


def _tensors(module: nn.Module) -> list[torch.Tensor]:
    """Parameters and buffers with more than one value (a BatchNorm's step counter is not a channel)."""
    return [t for t in list(module.parameters()) + list(module.buffers()) if t.numel() > 1]


def channel_count(module: nn.Module) -> int | None:
    """The channels a channel-wise layer acts on, or None when ``module`` is not one."""
    if isinstance(module, _NORM_CLASSES):
        if isinstance(module, nn.LayerNorm):
            shape = tuple(module.normalized_shape)
            return shape[0] if len(shape) == 1 else None
        return int(module.num_channels if isinstance(module, nn.GroupNorm) else module.num_features)
    if any(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) for m in module.modules()):
        return None
    sizes = {t.shape[d] for t in _tensors(module) if (d := vector_dim(t.shape)) is not None}
    if len(sizes) != 1 or any(vector_dim(t.shape) is None for t in _tensors(module)):
        return None
    return int(sizes.pop())


def resized_tensor(t: torch.Tensor, dim: int, n: int) -> torch.Tensor:
    """``t`` with length ``n`` along ``dim``: its constant where it is constant, else its mean."""
    shape = list(t.shape)
    shape[dim] = n
    flat = t.detach().float()
    value = flat.flatten()[0] if bool((flat == flat.flatten()[0]).all()) else flat.mean()
    return torch.full(shape, float(value), dtype=t.dtype)  # on the default device: a meta-device build stays on meta


def resized(module: nn.Module, n: int) -> nn.Module:
    """A copy of channel-wise ``module`` on ``n`` channels, its settings kept (see the module's doc)."""
    old = channel_count(module)
    new = copy.deepcopy(module)
    for sub in new.modules():
        for name, t in list(sub.named_parameters(recurse=False)) + list(sub.named_buffers(recurse=False)):
            d = vector_dim(t.shape) if t is not None else None
            if t is None or d is None or t.shape[d] != old:
                continue
            value = resized_tensor(t, d, n)
            if isinstance(t, nn.Parameter):
                setattr(sub, name, nn.Parameter(value, requires_grad=t.requires_grad))
            else:
                sub.register_buffer(name, value, persistent=name not in sub._non_persistent_buffers_set)
        for attr in _SIZE_ATTRS:
            if getattr(sub, attr, None) == old:
                setattr(sub, attr, n)
        if isinstance(sub, nn.LayerNorm) and tuple(sub.normalized_shape) == (old,):
            sub.normalized_shape = (n,)
        if isinstance(sub, nn.GroupNorm):  # the group count stays where it divides the new width
            sub.num_groups = math.gcd(sub.num_groups, n)
    for sub in new.modules():
        for reset in ("reset_running_stats", "reset_parameters"):
            if hasattr(sub, reset) and isinstance(sub, _NORM_CLASSES):
                getattr(sub, reset)()
    return new
