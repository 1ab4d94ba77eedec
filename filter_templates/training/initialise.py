"""Two initialisations that start a network nearer to where a short schedule wants it (``fast`` recipe).

``whiten``: the convolution that reads the image starts as a patch-whitening filter bank, the pairs
+-v / sqrt(lambda + eps) of the leading eigenvectors v of its input patches' covariance, measured on
a sample of training images. This is airbench's first layer; there it is an added, frozen layer
with a kernel small enough to keep every direction, here the model's own first convolution keeps
its shape and trains on from that start (its few filters hold the leading directions only).
Only directions the images have are whitened: one whose variance is below ``WHITEN_FLOOR`` of the
leading one's gets no filter. Grey images stored as RGB (the digits) have three equal channels,
so 18 of the 27 directions of a 3x3 patch have no variance at all; a filter v / sqrt(eps) there
(norm 45) answers the images with floating-point cancellation only (std 1e-6 in fp32, 1e-2 in
bf16, where its weights are rounded), and the BatchNorm after it scales that noise up to a
channel of its own. Those filters keep the model's start instead.

``identity``: in a network without residual sums, every other convolution that can (one group, odd
kernel, at least as many outputs as inputs) gets the identity added on its first ``in_channels``
filters (``torch.nn.init.dirac_`` plus the weights the model made), so a deep plain stack starts
out passing its input through. Added, not instead: a convolution that is only the identity keeps
every channel apart, and a stack of them applies ReLU(BatchNorm(.)) to each channel alone, layer
after layer; on images with large flat areas (the digits' background) each pass zeroes all but a
channel's brightest pixels, and the gradient reaching the early layers grew 10^4-fold over 14
layers (VGG-19 w0.25 on digits, whitened first layer). With the model's own filters added, the
channels mix from the start and it stays near 0.5. A residual network has an identity path
already; there the start cost ResNet-50 9 points at the quick grid's settings, so
:func:`has_residual_sum` keeps it out.

Both are deterministic functions of the model and the sample and draw no random numbers: the data
order and every later draw are the same with or without them, and a resumed run loads its
checkpoint's weights over them. ``docs/training.md`` describes both.
"""

from __future__ import annotations

import operator
from typing import Iterable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from filter_templates.core.errors import UsageError
from filter_templates.models.discover import trace

__all__ = ["WHITEN_SAMPLE", "WHITEN_EPS", "WHITEN_FLOOR", "input_convolution", "whiten", "identity", "has_residual_sum"]

WHITEN_SAMPLE = 5000  # training images whose patches give the covariance (spread evenly over the split)
WHITEN_EPS = 5e-4  # added to each eigenvalue: a direction with almost no variance is not blown up
#: Relative variance below which a patch direction is not whitened: a standard deviation under 2^-8
#: of the leading direction's is below bf16's resolution (8 significant bits), so no bf16 kernel
#: can tell it from the rounding of the leading component; fp32 and bf16 runs get the same start.
WHITEN_FLOOR = 2.0**-16


@torch.no_grad()
def input_convolution(model: nn.Module, example: torch.Tensor) -> nn.Conv2d | None:
    """The convolution whose input is the model's input itself (found by one forward pass of
    ``example`` in eval mode, so no BatchNorm statistic moves); None if the model transforms the
    input before any convolution sees it."""
    found: list[nn.Conv2d] = []

    def hook(module: nn.Module, args: tuple) -> None:
        if not found and args and args[0] is example and isinstance(module, nn.Conv2d):
            found.append(module)

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    was_training = model.training
    try:
        model.eval()
        model(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return found[0] if found else None


_PATCH_BYTES = 2**27  # float64 patch rows whitening holds at once


def _patch_count(size: torch.Size, conv: nn.Conv2d) -> int:
    """Patches per image that ``F.unfold`` makes for ``conv`` (no padding, stride 1)."""
    h, w = size
    kh, kw = conv.kernel_size
    dh, dw = conv.dilation
    return max(0, h - dh * (kh - 1)) * max(0, w - dw * (kw - 1))


@torch.no_grad()
def whiten(
    conv: nn.Conv2d, batches: Iterable[torch.Tensor], eps: float = WHITEN_EPS, floor: float = WHITEN_FLOOR
) -> torch.Tensor:
    """Set ``conv``'s leading filters to the whitening pairs of its input patches (read from the
    normalised NCHW ``batches``) and their biases to 0; return the eigenvalues used, largest first.
    Only directions with at least ``floor`` times the leading variance get a pair; filters beyond
    twice their number keep their weights."""
    if conv.groups != 1:
        raise ValueError("whitening needs a convolution with one group")
    d = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    cov = torch.zeros(d, d, dtype=torch.float64)
    count = 0
    for batch in batches:
        # a bounded piece of the batch at a time: the patches of 500 large images would take gigabytes
        # (pieces of whole batches up to ~64 px, so smaller images sum exactly as they always have)
        per_image = d * _patch_count(batch.shape[2:], conv) * 8
        for x in batch.split(max(1, _PATCH_BYTES // max(1, per_image))):
            p = F.unfold(x.float(), conv.kernel_size, dilation=conv.dilation)  # [B, d, L], rows in weight order
            p = p.transpose(1, 2).reshape(-1, d).double()
            cov += p.T @ p
            count += len(p)
    if count == 0:
        raise ValueError("whitening needs at least one image")
    eigenvalues, eigenvectors = torch.linalg.eigh(cov / count)
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.T.flip(0)  # largest first, one per row
    present = int((eigenvalues >= floor * eigenvalues[0]).sum())  # eigh's eigenvalues of a PSD matrix: [0] > 0
    pairs = min(-(-conv.out_channels // 2), present)
    v = eigenvectors[:pairs] / torch.sqrt(eigenvalues[:pairs, None] + eps)
    filters = torch.cat([v, -v])[: conv.out_channels].reshape(-1, *conv.weight.shape[1:])
    conv.weight[: len(filters)] = filters.to(conv.weight.dtype)
    if conv.bias is not None:
        conv.bias[: len(filters)] = 0
    return eigenvalues[:pairs].float()


@torch.no_grad()
def identity(model: nn.Module, skip: nn.Module | None = None) -> int:
    """Add the identity to the first ``in_channels`` filters of every convolution that can (but
    ``skip``); return how many did."""
    done = 0
    for m in model.modules():
        if (
            isinstance(m, nn.Conv2d)
            and m is not skip
            and m.groups == 1
            and m.out_channels >= m.in_channels
            and all(k % 2 for k in m.kernel_size)
        ):
            m.weight[: m.in_channels] += nn.init.dirac_(torch.zeros_like(m.weight[: m.in_channels]))
            done += 1
    return done


_SUMS = (operator.add, operator.iadd, torch.add)


def has_residual_sum(model: nn.Module) -> bool | None:
    """Whether the model adds two computed tensors (a residual connection), read off its
    ``torch.fx`` graph; None when fx cannot trace the model."""
    try:
        graph = trace(model).graph
    except UsageError:
        return None
    for n in graph.nodes:
        is_sum = (n.op == "call_function" and n.target in _SUMS) or (
            n.op == "call_method" and n.target in ("add", "add_")
        )
        if is_sum and sum(isinstance(a, fx.Node) for a in n.args[:2]) == 2:
            return True
    return False
