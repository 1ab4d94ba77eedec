"""One run entry point: the CLI and every sweep engine call :func:`run_config`, which picks what a config
is -- a template's model trained once (``training.loop.train``) or a pruning baseline trained in
stages (``pruning.run.train_pruned``). The training loop knows nothing of pruning."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from filter_templates.pruning.run import train_pruned
from filter_templates.training.config import PRUNING, Summary, TrainConfig
from filter_templates.training.loop import open_checkpoint, train, with_data_digest

__all__ = ["run_config"]


def run_config(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    threads_source: str | None = None,
    checkpoint: dict | None = None,
) -> Summary:
    """Run ``config`` into ``out_dir`` and return its summary; the arguments are
    :func:`training.loop.train`'s (a pruning run shows no bar: its stages report through
    ``on_epoch``, and each stage chooses its own threads)."""
    if config.kind != PRUNING:
        return train(
            config,
            out_dir,
            resume=resume,
            progress=progress,
            on_epoch=on_epoch,
            threads_source=threads_source,
            checkpoint=checkpoint,
        )
    config = with_data_digest(config)
    state = open_checkpoint(config, out_dir, resume) if checkpoint is None else checkpoint
    return train_pruned(config, out_dir, state, on_epoch)
