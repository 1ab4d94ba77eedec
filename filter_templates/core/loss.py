"""The loss a model trains with, in one place for the training step and the memory measurement,
so a network whose training forward returns auxiliary heads' logits beside its own is measured as
it trains."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["AUX_LOSS_WEIGHT", "training_loss"]

#: The weight of an auxiliary head's loss (GoogLeNet's 0.3): a network that returns a tuple in
#: training mode (torchvision's GoogLeNet and Inception-v3: the logits, then auxiliary heads' logits)
#: trains every head, so no parameter is left without a gradient.
AUX_LOSS_WEIGHT = 0.3


def training_loss(
    out: torch.Tensor | tuple[torch.Tensor, ...], y: torch.Tensor, label_smoothing: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The main logits and the loss to differentiate: cross-entropy of the logits, plus
    ``AUX_LOSS_WEIGHT`` times each auxiliary head's where the model returns several outputs."""
    if not isinstance(out, tuple):
        return out, F.cross_entropy(out, y, label_smoothing=label_smoothing)
    logits, *aux = (o for o in out if o is not None)
    loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    for a in aux:
        loss = loss + AUX_LOSS_WEIGHT * F.cross_entropy(a, y, label_smoothing=label_smoothing)
    return logits, loss
