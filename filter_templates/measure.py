"""What a model costs (SPEC section 4): parameters and forward FLOPs per image.

Everything here works on a built ``nn.Module`` so the numbers are the real model's, not a formula.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_params", "count_flops"]

INPUT_SHAPE = (3, 32, 32)


def count_params(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: tuple[int, int, int] = INPUT_SHAPE) -> int:
    """Forward FLOPs for one image (2 x MACs), by PyTorch's own counter, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, *input_shape, device=next(model.parameters()).device)
        with FlopCounterMode(display=False) as counter:
            model(x)
        return int(counter.get_total_flops())
    finally:
        model.train(was_training)
