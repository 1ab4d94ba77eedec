"""What a checkpoint carries beyond weights: torch's random generator states, so a resumed run
draws exactly the numbers an uninterrupted one would.

Writing and reading checkpoint files (atomically, ``weights_only``) is :mod:`.rundir`'s job.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["rng_state", "set_rng_state"]


def rng_state(device: torch.device) -> dict[str, Any]:
    """torch's generator states as uint8 tensors (which ``weights_only`` admits)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
