"""What a checkpoint carries beyond weights: torch's random generator states, so a resumed run
draws exactly the numbers an uninterrupted one would.

Writing and reading checkpoint files (atomically, ``weights_only``) is :mod:`.rundir`'s job; the
names below are kept here for callers of the old ``checkpoint`` API.
"""

from __future__ import annotations

from typing import Any

import torch

from .rundir import atomic_save, atomic_write_json, atomic_write_text, remove_stale_temp_files
from .rundir import load_checkpoint as load

__all__ = ["atomic_save", "atomic_write_json", "atomic_write_text", "load", "remove_stale_temp_files",
           "rng_state", "set_rng_state"]


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
